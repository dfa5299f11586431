"""Continuous batching on the worker thread: requests join and leave between decoding steps.

The loop takes waiting requests off the worker's queue while the batch has room (at most
`max_batch_size` sequences, and rows x the longest row's tokens within `token_budget`, since
left padding makes every row as long as the longest), prefills the newcomers (each starts
streaming as soon as its first token is known), then runs one decoding step for all of them.
Finished, cancelled and timed-out requests leave between steps, the last two with their text
so far. A request whose prefill fails fails alone; a failed step fails the requests in that
batch, and the loop goes on serving.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot.engines.contract import DecodeBatch, StepOutput
from bot.engines.handles import (
    Completion,
    GenerationHandle,
    QueueItem,
    StopReason,
    StopSignal,
    WorkerStats,
)
from bot.errors import GenerationError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Member:
    handle: GenerationHandle
    cost: int
    deadline: float


class BatchLoop:
    """Serves `jobs` through `batch` until a `StopSignal` arrives or `stopping` is set.

    Args:
        batch: the backend's batch; used only from this thread.
        jobs: the worker's bounded queue; requests stay there (counting towards its bound)
            until the batch has room for them, except the next one, held here.
        stats: counters shared with the worker.
        stopping: set by `ModelWorker.stop()`; running requests end with "shutdown".
        max_batch_size: sequences decoded together at most.
        token_budget: bound on rows x the longest row's prompt-plus-reply tokens.
    """

    def __init__(self, batch: DecodeBatch, jobs: queue.Queue[QueueItem], stats: WorkerStats,
                 stopping: threading.Event, *, max_batch_size: int, token_budget: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._batch = batch
        self._jobs = jobs
        self._stats = stats
        self._stopping = stopping
        self._max_batch_size = max(1, max_batch_size)
        self._token_budget = token_budget
        self._clock = clock
        self._ids = itertools.count()
        self._running: dict[int, _Member] = {}
        self._held: tuple[GenerationHandle, int] | None = None

    def run(self) -> None:
        while True:
            if not self._running and self._held is None:
                item = self._jobs.get()
                if isinstance(item, StopSignal):
                    break
                self._hold(item)
            if self._stopping.is_set() or not self._admit_waiting():
                break
            self._drop_stopped()
            if self._running:
                self._step()
        self._shutdown()

    # -- admission -------------------------------------------------------------------

    def _hold(self, handle: GenerationHandle) -> None:
        """Take `handle` off the queue; it waits here until the batch has room."""
        if handle.cancelled:
            log.debug("skipped a request whose caller gave up")
            return
        try:
            cost = self._batch.cost(handle.request)
        except Exception as exc:
            self._fail([handle], exc)
            return
        self._held = (handle, cost)
        self._count()

    def _admit_waiting(self) -> bool:
        """Admit waiting requests while they fit; False once the queue says stop."""
        joining: list[tuple[GenerationHandle, int]] = []
        stop = False
        while True:
            if self._held is None:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, StopSignal):
                    stop = True
                    break
                self._hold(item)
                continue
            handle, cost = self._held
            if handle.cancelled:
                self._held = None
                continue
            if (self._running or joining) and not self._fits(cost, joining):
                break
            handle.started = True
            joining.append(self._held)
            self._held = None
        if joining:
            self._admit(joining)
        self._count()
        return not stop

    def _fits(self, cost: int, joining: list[tuple[GenerationHandle, int]]) -> bool:
        costs = [cost, *(m.cost for m in self._running.values()), *(c for _, c in joining)]
        if len(costs) > self._max_batch_size:
            return False
        return len(costs) * max(costs) <= self._token_budget

    def _admit(self, joining: list[tuple[GenerationHandle, int]]) -> None:
        """Prefill the joiners together (each starts streaming as soon as its first token is
        known); if that fails, retry the rest one by one, so a bad one fails alone."""
        waiting = {next(self._ids): (handle, cost) for handle, cost in joining}
        started = self._clock()
        first_done: list[int] = []

        def ready(seq_id: int, output: StepOutput) -> None:
            handle, cost = waiting.pop(seq_id)
            self._running[seq_id] = _Member(handle, cost, started + handle.timeout)
            if output.piece:
                handle._emit(output.piece)
            if output.finished:
                first_done.append(seq_id)

        try:
            self._batch.admit([(seq_id, h.request) for seq_id, (h, _) in waiting.items()],
                              ready)
        except Exception as exc:
            left = list(waiting.values())
            if len(left) == 1:
                self._fail([left[0][0]], exc)
            else:
                for handle, cost in left:
                    self._admit([(handle, cost)])
        self._count()
        for seq_id in first_done:
            self._end(seq_id, "done")

    # -- decoding --------------------------------------------------------------------

    def _step(self) -> None:
        try:
            outputs = self._batch.step()
        except Exception as exc:
            members = list(self._running.values())
            self._running.clear()
            try:
                self._batch.clear()
            except Exception:
                log.exception("clearing the batch after a failed step failed")
            self._fail([m.handle for m in members], exc)
            return
        for seq_id, output in outputs.items():
            if seq_id in self._running:
                self._deliver(seq_id, output)

    def _deliver(self, seq_id: int, output: StepOutput) -> None:
        if output.piece:
            self._running[seq_id].handle._emit(output.piece)
        if output.finished:
            self._end(seq_id, "done")

    def _drop_stopped(self) -> None:
        now = self._clock()
        for seq_id, member in list(self._running.items()):
            if member.handle.cancelled:
                self._end(seq_id, "done")  # nobody is waiting: just free the row
            elif now > member.deadline:
                self._end(seq_id, "timeout")

    def _end(self, seq_id: int, reason: StopReason) -> None:
        member = self._running.pop(seq_id)
        try:
            text = self._batch.finish(seq_id)
        except Exception as exc:
            self._fail([member.handle], exc)
            return
        self._stats.served += 1
        self._count()  # settled before the caller can observe the result
        member.handle._finish(Completion(text, reason))

    # -- endings ---------------------------------------------------------------------

    def _shutdown(self) -> None:
        for seq_id in list(self._running):
            self._end(seq_id, "shutdown")
        if self._held is not None:
            handle, _ = self._held
            self._held = None
            self._count()
            handle._finish(GenerationError("the bot is shutting down"))

    def _fail(self, handles: Iterable[GenerationHandle], exc: Exception) -> None:
        failed = list(handles)
        log.error("generation failed for %d request(s)", len(failed), exc_info=exc)
        self._stats.failed += len(failed)
        self._count()
        for handle in failed:
            handle._finish(GenerationError(f"{type(exc).__name__}: {exc}"))

    def _count(self) -> None:
        self._stats.active = len(self._running) + (self._held is not None)
