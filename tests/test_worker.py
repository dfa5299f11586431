"""The model worker with a real thread and fake backends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.worker import ModelWorker
from bot.errors import BusyError, GenerationError, ModelLoadError
from tests.fakes.backends import EchoBackend, FailingBackend, GatedBackend


def request(text: str, max_new_tokens: int = 50) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": text}],
                             SamplingParams(max_new_tokens=max_new_tokens))


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "model-worker"]


async def test_result_and_stream_come_from_the_worker_thread() -> None:
    backend = EchoBackend()
    async with ModelWorker(lambda: backend) as worker:
        handle = worker.submit(request("hello there world"))
        pieces = [piece async for piece in handle]
        completion = await handle.result()
    assert completion.text == "echo: hello there world"
    assert "".join(pieces) == completion.text
    assert len(pieces) == 4
    assert completion.stop_reason == "done"
    assert backend.thread_names == ["model-worker"]
    assert backend.closed


async def test_busy_when_the_queue_is_full() -> None:
    backend = GatedBackend()
    async with ModelWorker(lambda: backend, max_pending=2) as worker:
        first = worker.submit(request("one"))
        await asyncio.to_thread(backend.started.wait, 5)
        queued = [worker.submit(request("two")), worker.submit(request("three"))]
        assert worker.queue_depth == 3
        with pytest.raises(BusyError):
            worker.submit(request("four"))
        backend.gate.set()
        results = [(await h.result()).text for h in (first, *queued)]
    assert results == ["echo: one", "echo: two", "echo: three"]


async def test_cancelled_requests_are_skipped() -> None:
    backend = GatedBackend()
    async with ModelWorker(lambda: backend) as worker:
        first = worker.submit(request("first"))
        await asyncio.to_thread(backend.started.wait, 5)
        abandoned = worker.submit(request("abandoned"))
        waiter = asyncio.create_task(abandoned.result())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        last = worker.submit(request("last"))
        backend.gate.set()
        assert (await first.result()).text == "echo: first"
        assert (await last.result()).text == "echo: last"
    prompts = [p[-1]["content"] for p in backend.prompts]
    assert prompts == ["first", "last"]


async def test_cancel_stops_a_running_generation() -> None:
    backend = GatedBackend()
    async with ModelWorker(lambda: backend) as worker:
        handle = worker.submit(request("long"))
        await asyncio.to_thread(backend.started.wait, 5)
        handle.cancel()
        after = worker.submit(request("after"))
        backend.gate.set()
        assert (await after.result()).text == "echo: after"
    assert backend.prompts[-1][-1]["content"] == "after"


async def test_a_failing_request_fails_alone() -> None:
    async with ModelWorker(FailingBackend) as worker:
        bad = worker.submit(request("boom"))
        with pytest.raises(GenerationError, match="exploded"):
            await bad.result()
        good = worker.submit(request("fine"))
        assert (await good.result()).text == "echo: fine"
        assert worker.failed == 1
        assert worker.served == 1


async def test_timeout_keeps_the_partial_answer() -> None:
    backend = GatedBackend()
    async with ModelWorker(lambda: backend, timeout=0.05) as worker:
        completion = await worker.submit(request("slow")).result()
    assert completion.stop_reason == "timeout"
    assert completion.text == "stopped early"


async def test_stop_joins_the_thread_and_fails_queued_requests() -> None:
    backend = GatedBackend()
    worker = ModelWorker(lambda: backend, timeout=60)
    await worker.start()
    running = worker.submit(request("running"))
    await asyncio.to_thread(backend.started.wait, 5)
    queued = worker.submit(request("queued"))
    await worker.stop()
    assert worker_threads() == []
    assert (await running.result()).stop_reason == "shutdown"
    with pytest.raises(GenerationError, match="shutting down"):
        await queued.result()
    with pytest.raises(BusyError):
        worker.submit(request("late"))


async def test_load_failure_raises_and_leaves_no_thread() -> None:
    def broken() -> EchoBackend:
        raise OSError("weights not found")

    worker = ModelWorker(broken)
    with pytest.raises(ModelLoadError, match="weights not found"):
        await worker.start()
    assert worker_threads() == []
