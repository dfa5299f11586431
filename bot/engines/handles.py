"""The event-loop side of one request, shared by the worker's serving loops.

Results cross back to the loop only through `loop.call_soon_threadsafe`, with `done()` guards
(the aiosqlite pattern), so a slow model can never stall Discord heartbeats or Slack acks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from bot.engines.contract import GenerationRequest

log = logging.getLogger(__name__)

StopReason = Literal["done", "timeout", "shutdown", "error"]
"""Why generation ended; "error": a remote server's stream broke mid-answer (text kept)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """The whole reply, and why generation ended (a timeout keeps the partial text)."""

    text: str
    stop_reason: StopReason = "done"
    tokens: int | None = None
    """Reply tokens as the engine counted them (a remote server's usage); None: count text."""


class _End:
    """Marks the end of a handle's piece stream."""


_END = _End()


class GenerationHandle:
    """The event-loop side of one request.

    Iterate it for text pieces as they are generated; await `result()` for the completion.
    `cancel()` (or cancelling a task awaiting `result()`) makes the worker skip the request,
    or stop it between tokens if it already started.
    """

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop,
                 timeout: float) -> None:
        self.request = request
        self.timeout = timeout
        self._loop = loop
        self._future: asyncio.Future[Completion] = loop.create_future()
        self._pieces: asyncio.Queue[str | _End] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.started = False
        """Set by the worker thread when generation begins (queued until then)."""
        self.thinking = False
        """A reasoning model is thinking (remote engines); an empty piece signals changes."""

    # -- event-loop side -------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while True:
            piece = await self._pieces.get()
            if isinstance(piece, _End):
                return
            yield piece

    async def result(self) -> Completion:
        """Wait for the completion; raises `GenerationError` if the model failed."""
        try:
            return await asyncio.shield(self._future)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Give up on this request; the worker skips or stops it."""
        self._cancelled.set()
        if not self._future.done():
            self._future.cancel()
        self._pieces.put_nowait(_END)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- worker-thread side ----------------------------------------------------------

    def _emit(self, piece: str) -> None:
        self._call_soon(self._pieces.put_nowait, piece)

    def _finish(self, outcome: Completion | BaseException) -> None:
        self._call_soon(self._settle, outcome)

    def _settle(self, outcome: Completion | BaseException) -> None:
        if not self._future.done():
            if isinstance(outcome, BaseException):
                self._future.set_exception(outcome)
                # Callers that gave up (shutdown fails every queued request) may never await
                # it; mark it seen so asyncio does not log "exception was never retrieved".
                self._future.exception()
            else:
                self._future.set_result(outcome)
        self._pieces.put_nowait(_END)

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            log.debug("dropped a result for a closed event loop")


class StopSignal:
    """Put on the request queue to tell the worker thread to exit."""


QueueItem = GenerationHandle | StopSignal


@dataclass(slots=True)
class WorkerStats:
    """Counters the serving loop keeps and the worker reports (`queue_depth`, tests)."""

    served: int = 0
    failed: int = 0
    active: int = 0
