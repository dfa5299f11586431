"""The transformers backend on a tiny random-weight model, through the real worker thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from bot.app import hf_backend_factory
from bot.config import Settings
from bot.engines.contract import Backend, GenerationRequest, SamplingParams
from bot.engines.local.model_source import resolve_model
from bot.engines.worker import ModelWorker

PROMPT = [{"role": "system", "content": "Be brief."},
          {"role": "user", "content": "alice: what is the weather like?"}]
GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0)


async def test_streamed_pieces_add_up_to_the_reply(
        tiny_backend_factory: Callable[[], Backend]) -> None:
    async with ModelWorker(tiny_backend_factory) as worker:
        assert worker.info.device == "cpu" and worker.info.dtype == "float32"
        assert worker.info.context_tokens == 1024  # capped by the model's own window
        handle = worker.submit(GenerationRequest(PROMPT, GREEDY))
        pieces = [piece async for piece in handle]
        completion = await handle.result()
        again = await worker.submit(GenerationRequest(PROMPT, GREEDY)).result()
    assert len(pieces) > 1
    assert "".join(pieces).strip() == completion.text
    assert completion.text and again.text == completion.text  # greedy is deterministic


async def test_sampling_settings_are_used(tiny_backend_factory: Callable[[], Backend]) -> None:
    sampled = SamplingParams(max_new_tokens=24, temperature=1.5, top_p=0.95)
    async with ModelWorker(tiny_backend_factory) as worker:
        texts = {(await worker.submit(GenerationRequest(PROMPT, sampled)).result()).text
                 for _ in range(4)}
    assert len(texts) > 1


async def test_a_model_without_chat_template_gets_a_transcript(
        tiny_base_model_dir: Path, settings: Settings) -> None:
    factory = hf_backend_factory(settings, resolve_model(str(tiny_base_model_dir)))
    async with ModelWorker(factory) as worker:
        completion = await worker.submit(GenerationRequest(PROMPT, GREEDY)).result()
    assert completion.stop_reason == "done"
    assert "\n" not in completion.text.strip() or ":" not in completion.text


async def test_transcript_prompt_shape(tiny_base_model_dir: Path, settings: Settings) -> None:
    backend = hf_backend_factory(settings, resolve_model(str(tiny_base_model_dir)))()
    from bot.engines.local.hf_backend import HFBackend

    assert isinstance(backend, HFBackend)
    assert not backend.renderer.uses_template
    text = backend.renderer.render([*PROMPT, {"role": "assistant", "content": "Sunny."},
                                    {"role": "user", "content": "bob: and tomorrow?"}])
    assert text == ("Be brief.\n\nalice: what is the weather like?\nBot: Sunny.\n"
                    "bob: and tomorrow?\nBot:")
    assert backend.renderer.clean_reply(" Rain.\nalice: thanks") == "Rain."


async def test_the_event_loop_stays_responsive_while_the_model_works(
        tiny_backend_factory: Callable[[], Backend]) -> None:
    long_run = SamplingParams(max_new_tokens=300, temperature=0.0)
    async with ModelWorker(tiny_backend_factory) as worker:
        handle = worker.submit(GenerationRequest(PROMPT, long_run))
        started = time.perf_counter()
        worst, ticks = 0.0, 0
        while not handle._future.done():
            tick = time.perf_counter()
            await asyncio.sleep(0.002)
            worst = max(worst, time.perf_counter() - tick - 0.002)
            ticks += 1
        elapsed = time.perf_counter() - started
        completion = await handle.result()
    # The loop kept ticking all along: its worst stall is a small part of the generation.
    assert len(completion.text) > 50
    assert ticks >= 10
    assert worst < elapsed / 4, f"loop stalled {worst:.3f}s during a {elapsed:.3f}s generation"
