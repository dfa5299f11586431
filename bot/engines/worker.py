"""The model worker: exactly one thread owns the model; the event loop never waits on it.

Requests go into a bounded queue from the event loop and come back as a `GenerationHandle`
(`handles`): an async stream of text pieces plus an awaitable `Completion`. A backend that
can batch (`BatchingBackend`) is served by `batching.BatchLoop`, where requests join and
leave a running batch between decoding steps; any other backend is served one request at a
time. Either way the core sees the same `submit()` / `GenerationHandle` surface.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable

from bot.engines.batching import BatchLoop
from bot.engines.contract import (
    Backend,
    BatchingBackend,
    DecodeBatch,
    GenerationRequest,
    ModelInfo,
    TokenCounter,
)
from bot.engines.handles import (
    Completion,
    GenerationHandle,
    QueueItem,
    StopReason,
    StopSignal,
    WorkerStats,
)
from bot.errors import BusyError, GenerationError, ModelLoadError

__all__ = ["Completion", "GenerationHandle", "ModelWorker", "StopReason"]

log = logging.getLogger(__name__)


class ModelWorker:
    """Owns one thread that loads the backend and serves requests, batched when it can.

    Args:
        make_backend: builds the backend; called on the worker thread so the model is
            created, and only ever used, there.
        max_pending: queued requests beyond which `submit` raises `BusyError` at once.
        timeout: seconds after which a generation is stopped and its partial text returned.
        max_batch_size: requests decoded together at most (batching backends only).
        batch_token_budget: bound on batch rows x the longest row's prompt-plus-reply tokens.
    """

    def __init__(self, make_backend: Callable[[], Backend], *, max_pending: int = 16,
                 timeout: float = 300.0, max_batch_size: int = 16,
                 batch_token_budget: int = 8192) -> None:
        self._make_backend = make_backend
        self._queue: queue.Queue[QueueItem] = queue.Queue(maxsize=max_pending)
        self._timeout = timeout
        self._max_batch_size = max_batch_size
        self._batch_token_budget = batch_token_budget
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stats = WorkerStats()
        self._info: ModelInfo | None = None
        self._counter: TokenCounter | None = None

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
        """Requests waiting plus those being generated."""
        return self._queue.qsize() + self._stats.active

    @property
    def served(self) -> int:
        return self._stats.served

    @property
    def failed(self) -> int:
        return self._stats.failed

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
        """Fail queued requests, end those in flight, and join the thread."""
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
        self._queue.put(StopSignal())
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
            batch = self._open_batch(backend)
            if batch is not None:
                BatchLoop(batch, self._queue, self._stats, self._stopping,
                          max_batch_size=self._max_batch_size,
                          token_budget=self._batch_token_budget).run()
            else:
                self._serve(backend)
        finally:
            try:
                backend.close()
            except Exception:
                log.exception("closing the model backend failed")

    @staticmethod
    def _open_batch(backend: Backend) -> DecodeBatch | None:
        if not isinstance(backend, BatchingBackend):
            return None
        try:
            return backend.open_batch()
        except Exception:
            log.exception("batching is unavailable; serving one request at a time")
            return None

    def _serve(self, backend: Backend) -> None:
        """One request at a time, for backends that cannot batch."""
        while True:
            item = self._queue.get()
            if isinstance(item, StopSignal):
                return
            if item.cancelled:
                log.debug("skipped a request whose caller gave up")
                continue
            self._stats.active = 1
            item.started = True
            outcome: Completion | GenerationError
            try:
                outcome = self._generate(backend, item)
                self._stats.served += 1
            except Exception as exc:
                self._stats.failed += 1
                log.exception("generation failed")
                outcome = GenerationError(f"{type(exc).__name__}: {exc}")
            # Counters are settled before the caller can observe the result.
            self._stats.active = 0
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
