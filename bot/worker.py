"""The model worker: exactly one thread owns the model; the event loop never waits on it.

Requests go into a bounded queue from the event loop and come back as a `GenerationHandle`:
an async stream of text pieces plus an awaitable `Completion`. Results cross back to the loop
only through `loop.call_soon_threadsafe`, with `done()` guards (the aiosqlite pattern), so a
slow model can never stall Discord heartbeats or Slack acks.

`ModelWorker` is the only implementation today; a batching worker or a remote backend keeps
the same `submit()` / `GenerationHandle` surface, which is all the core relies on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from bot.errors import BusyError, GenerationError, ModelLoadError
from bot.generation import Backend, GenerationRequest, ModelInfo, TokenCounter

log = logging.getLogger(__name__)

StopReason = Literal["done", "timeout", "shutdown"]


@dataclass(frozen=True, slots=True)
class Completion:
    """The whole reply, and why generation ended (a timeout keeps the partial text)."""

    text: str
    stop_reason: StopReason = "done"


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
            else:
                self._future.set_result(outcome)
        self._pieces.put_nowait(_END)

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            log.debug("dropped a result for a closed event loop")


class _Stop:
    """Tells the worker thread to exit."""


class ModelWorker:
    """Owns one thread that loads the backend and serves requests one at a time.

    Args:
        make_backend: builds the backend; called on the worker thread so the model is
            created, and only ever used, there.
        max_pending: queued requests beyond which `submit` raises `BusyError` at once.
        timeout: seconds after which a generation is stopped and its partial text returned.
    """

    def __init__(self, make_backend: Callable[[], Backend], *, max_pending: int = 16,
                 timeout: float = 300.0) -> None:
        self._make_backend = make_backend
        self._queue: queue.Queue[GenerationHandle | _Stop] = queue.Queue(maxsize=max_pending)
        self._timeout = timeout
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._active = 0
        self._info: ModelInfo | None = None
        self._counter: TokenCounter | None = None
        self.served = 0
        self.failed = 0

    async def __aenter__(self) -> ModelWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError("the worker has not started")
        return self._info

    @property
    def token_counter(self) -> TokenCounter:
        if self._counter is None:
            raise RuntimeError("the worker has not started")
        return self._counter

    @property
    def queue_depth(self) -> int:
        """Requests waiting plus the one being generated."""
        return self._queue.qsize() + self._active

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """Start the thread and wait until the model has loaded.

        Raises:
            ModelLoadError: the backend could not be built; no thread is left running.
        """
        if self._thread is not None:
            raise RuntimeError("the worker was already started")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(loop, ready),
                                        name="model-worker", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            raise

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue a request without waiting.

        Raises:
            BusyError: the queue is full (or the worker is shutting down).
        """
        if not self.running or self._stopping.is_set():
            raise BusyError("I'm restarting right now; please try again in a moment.")
        handle = GenerationHandle(request, asyncio.get_running_loop(), self._timeout)
        try:
            self._queue.put_nowait(handle)
        except queue.Full:
            raise BusyError() from None
        return handle

    async def stop(self) -> None:
        """Fail queued requests, end the one in flight, and join the thread."""
        if self._thread is None:
            return
        self._stopping.set()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, GenerationHandle):
                item._finish(GenerationError("the bot is shutting down"))
        self._queue.put(_Stop())
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    # -- the worker thread -----------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            backend = self._make_backend()
            self._info = backend.info
            self._counter = backend.token_counter()
        except Exception as exc:  # reported to start(), which raises it
            log.debug("model load failed", exc_info=True)
            error = exc if isinstance(exc, ModelLoadError) else ModelLoadError(str(exc))
            loop.call_soon_threadsafe(_settle_ready, ready, error)
            return
        loop.call_soon_threadsafe(_settle_ready, ready, None)
        try:
            self._serve(backend)
        finally:
            try:
                backend.close()
            except Exception:
                log.exception("closing the model backend failed")

    def _serve(self, backend: Backend) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, _Stop):
                return
            if item.cancelled:
                log.debug("skipped a request whose caller gave up")
                continue
            self._active = 1
            outcome: Completion | GenerationError
            try:
                outcome = self._generate(backend, item)
                self.served += 1
            except Exception as exc:
                self.failed += 1
                log.exception("generation failed")
                outcome = GenerationError(f"{type(exc).__name__}: {exc}")
            # Counters are settled before the caller can observe the result.
            self._active = 0
            item._finish(outcome)

    def _generate(self, backend: Backend, handle: GenerationHandle) -> Completion:
        deadline = time.monotonic() + handle.timeout
        reason: list[StopReason] = []

        def should_stop() -> bool:
            if handle.cancelled:
                return True
            if self._stopping.is_set():
                reason.append("shutdown")
                return True
            if time.monotonic() > deadline:
                reason.append("timeout")
                return True
            return False

        text = backend.generate(handle.request, handle._emit, should_stop)
        return Completion(text, reason[0] if reason else "done")


def _settle_ready(ready: asyncio.Future[None], error: BaseException | None) -> None:
    if ready.done():
        return
    if error is None:
        ready.set_result(None)
    else:
        ready.set_exception(error)


class GenerationService(Protocol):
    """What the core needs from a worker: `ModelWorker`, a batching worker, or a remote one."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def token_counter(self) -> TokenCounter: ...

    @property
    def queue_depth(self) -> int: ...

    def submit(self, request: GenerationRequest) -> GenerationHandle: ...
