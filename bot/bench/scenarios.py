"""The benchmark's measurements; each returns a plain dict for the JSON report.

Everything runs in one process. The worker serves one model copy (its linear layers packed);
the plain `model.generate` baseline runs on a second, unmodified copy, alternating with the
worker so that other load on the machine hits both alike. Token counts come from
re-tokenizing each reply, the same way for both sides of every comparison.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bot.config import Settings
from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.local.model_source import ModelSource
from bot.engines.local.prompt_cache import PromptCache
from bot.engines.local.rendering import HFTokenCounter, PromptRenderer
from bot.engines.worker import ModelWorker
from bot.types import Prompt

QUESTIONS = [
    "What is the capital of France?", "Explain how rain forms.",
    "How many legs does a spider have?", "Give me three tips for sleeping well.",
    "Who wrote Romeo and Juliet?", "Why is the sky blue?",
    "What is the boiling point of water?", "How do plants make food?",
    "Which planet is closest to the sun?", "What is a good way to learn a language?",
    "What language is spoken in Brazil?", "Explain what a computer virus is.",
    "What is the largest ocean?", "How does a bicycle stay upright?",
    "What do bees make?", "Describe a healthy breakfast.",
]
STORY = "Write a long story about a robot who learns to paint. Describe every step."
HISTORY_LINES = [
    ("sam", "We need to plan the release of version two of the app before the end of the "
            "month, and the marketing team wants a date by Friday."),
    ("kim", "The payment screen still crashes on older phones, so I would not promise a "
            "date until that is fixed and tested on at least three devices."),
    ("lee", "I can take the crash. It looks like a memory problem when the camera opens "
            "at the same time as the card reader, which only happens on two models."),
    ("sam", "Great. Let us also move the onboarding redesign into this release, since the "
            "designs were approved last week and the copy is ready."),
    ("kim", "That adds about four days of work and another round of translation for the "
            "six languages we support, which usually takes a week."),
]


@dataclass(frozen=True, slots=True)
class Run:
    """One request: its reply, time to first text and in total, and its token count."""

    text: str
    ttft_s: float
    total_s: float
    tokens: int


@dataclass(slots=True)
class Bench:
    """What the scenarios share: the model, the worker (started after the baseline) and
    the options."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    renderer: PromptRenderer
    counter: HFTokenCounter
    worker: ModelWorker
    settings: Settings
    max_new_tokens: int
    repeats: int
    prompt_cache: PromptCache | None = None

    def count(self, text: str) -> int:
        return self.counter.count_text(text)

    def clear_cache(self) -> None:
        """Empty the prompt cache between requests.

        Safe from the event loop while no request is in flight: the worker stores a
        finished request's entry before its result reaches the loop.
        """
        if self.prompt_cache is not None:
            self.prompt_cache.clear()

    def greedy(self, max_new_tokens: int | None = None) -> SamplingParams:
        return SamplingParams(max_new_tokens=max_new_tokens or self.max_new_tokens,
                              temperature=0.0)

    def chat(self, text: str) -> Prompt:
        return [{"role": "system", "content": self.settings.system_prompt_text},
                {"role": "user", "content": f"ada: {text}"}]


async def timed(worker: ModelWorker, request: GenerationRequest,
                count: Callable[[str], int]) -> Run:
    """Submit `request` and time its first piece and its completion, from submission."""
    start = time.perf_counter()
    handle = worker.submit(request)
    first: float | None = None
    async for _ in handle:
        if first is None:
            first = time.perf_counter() - start
    completion = await handle.result()
    total = time.perf_counter() - start
    return Run(completion.text, total if first is None else first, total,
               count(completion.text))


def plain_generate(bench: Bench, prompt: Prompt, max_new_tokens: int) -> Run:
    """What a plain transformers script does: `model.generate`, greedy, one request."""
    ids = bench.renderer.encode(prompt)
    inputs = torch.tensor([ids])
    pad = bench.tokenizer.pad_token_id
    start = time.perf_counter()
    with torch.inference_mode():
        output = bench.model.generate(  # type: ignore[operator]
            input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad if pad is not None else bench.tokenizer.eos_token_id)
    total = time.perf_counter() - start
    text = bench.renderer.clean_reply(str(bench.tokenizer.decode(
        output[0, len(ids):], skip_special_tokens=True)))
    return Run(text, total, total, bench.count(text))


async def single(bench: Bench, plain: Bench, long_tokens: int) -> dict[str, Any]:
    """One long reply: plain `model.generate` on an unmodified copy of the model, and the
    same request through the worker, alternating so that other load hits both alike."""
    prompt = bench.chat(STORY)
    request = GenerationRequest(prompt, bench.greedy(long_tokens))
    plain_generate(plain, prompt, 8)  # warm-up
    await timed(bench.worker, GenerationRequest(prompt, bench.greedy(8)), bench.count)
    baseline: list[Run] = []
    runs: list[Run] = []
    for _ in range(bench.repeats):
        baseline.append(plain_generate(plain, prompt, long_tokens))
        runs.append(await timed(bench.worker, request, bench.count))
    ours = statistics.median(r.tokens / r.total_s for r in runs)
    theirs = statistics.median(r.tokens / r.total_s for r in baseline)
    return {"plain_generate_tok_s": theirs, "worker_tok_s": ours, "ratio": ours / theirs,
            "tokens": runs[0].tokens,
            "same_text": all(a.text == b.text for a, b in zip(runs, baseline, strict=True)),
            "plain_runs": [asdict(r) for r in baseline], "worker_runs": [asdict(r) for r in runs]}


async def concurrency(bench: Bench, count: int) -> dict[str, Any]:
    """`count` short questions at once through the worker vs one after another.

    The two alternate `repeats` times so that other load on the machine hits both alike.
    As in a bot that has answered before, the prompt cache holds one other conversation, so
    both reuse the system prompt's keys and values; the requests themselves carry no
    conversation key, so neither leaves anything in the cache for the other.
    """
    bench.clear_cache()
    await timed(bench.worker, GenerationRequest(bench.chat("Hello!"), bench.greedy(4),
                                                cache_key="bench-warm"), bench.count)
    requests = [GenerationRequest(bench.chat(q), bench.greedy()) for q in QUESTIONS[:count]]
    sequential: list[Run] = []
    together: list[Run] = []
    sequential_s = together_s = 0.0
    for _ in range(bench.repeats):
        start = time.perf_counter()
        sequential += [await timed(bench.worker, r, bench.count) for r in requests]
        sequential_s += time.perf_counter() - start
        start = time.perf_counter()
        together += await asyncio.gather(*(timed(bench.worker, r, bench.count)
                                           for r in requests))
        together_s += time.perf_counter() - start
    # The event loop's delays, in a run of its own: the watcher wakes the loop every few
    # milliseconds, and that thread would take CPU from the timed runs on 2 cores.
    lag = LoopWatch()
    async with lag:
        await asyncio.gather(*(timed(bench.worker, r, bench.count) for r in requests))
    seq_rate = sum(r.tokens for r in sequential) / sequential_s
    rate = sum(r.tokens for r in together) / together_s
    return {
        "requests": count,
        "sequential_tok_s": seq_rate, "concurrent_tok_s": rate, "ratio": rate / seq_rate,
        "sequential_s": sequential_s, "concurrent_s": together_s,
        "tokens": sum(r.tokens for r in together),
        "reply_tokens": [r.tokens for r in together[:count]],
        "ttft_s": [r.ttft_s for r in together],
        "max_ttft_s": max(r.ttft_s for r in together),
        "sequential_ttft_s": [r.ttft_s for r in sequential],
        "same_text": sum(a.text == b.text for a, b in zip(sequential, together, strict=True)),
        "runs": len(together),
        "loop_delay_ms": lag.summary(),
    }


def long_history(bench: Bench, tokens: int) -> Prompt:
    """A channel conversation of at least `tokens` tokens, ending with a bot turn."""
    prompt: Prompt = [{"role": "system", "content": bench.settings.system_prompt_text}]
    i = 0
    while bench.counter.count_prompt(prompt) < tokens:
        author, line = HISTORY_LINES[i % len(HISTORY_LINES)]
        prompt.append({"role": "user", "content": f"{author}: {line} (note {i})"})
        prompt.append({"role": "assistant", "content": f"Noted, {author}: point {i} is "
                                                       "on the list for the release plan."})
        i += 1
    return prompt


async def prompt_cache(bench: Bench, history_tokens: int,
                       reused: Callable[[], int]) -> dict[str, Any]:
    """A follow-up after a long history: time to first token with and without the cache."""
    history = long_history(bench, history_tokens)
    cached: list[Run] = []
    uncached: list[Run] = []
    reused_tokens = uncached_reused = 0
    first_prompt = [*history, {"role": "user", "content": "ada: What should we do first?"}]
    for _ in range(bench.repeats):
        bench.clear_cache()
        first = await timed(bench.worker, GenerationRequest(first_prompt, bench.greedy(),
                                                            cache_key="bench"), bench.count)
        follow_up = [*first_prompt, {"role": "assistant", "content": first.text},
                     {"role": "user", "content": "lee: And who tests the payment screen?"}]
        cached.append(await timed(bench.worker, GenerationRequest(
            follow_up, bench.greedy(), cache_key="bench"), bench.count))
        reused_tokens = reused()
        bench.clear_cache()  # nothing left to reuse, not even the system prompt
        uncached.append(await timed(bench.worker, GenerationRequest(
            follow_up, bench.greedy()), bench.count))
        uncached_reused = reused()
    with_cache = statistics.median(r.ttft_s for r in cached)
    without = statistics.median(r.ttft_s for r in uncached)
    return {
        "prompt_tokens": bench.counter.count_prompt(follow_up),
        "reused_tokens": reused_tokens, "uncached_reused_tokens": uncached_reused,
        "ttft_cached_s": with_cache, "ttft_uncached_s": without, "ratio": without / with_cache,
        "same_text": all(a.text == b.text for a, b in zip(cached, uncached, strict=True)),
        "cached_runs": [asdict(r) for r in cached], "uncached_runs": [asdict(r) for r in uncached],
    }


async def start_times(source: ModelSource, settings: Settings) -> dict[str, Any]:
    """Model ready from an empty cache folder (GGUF conversion) vs from the converted copy."""
    from bot.app import hf_backend_factory

    if source.kind != "gguf":
        return {"skipped": f"the model is a {source.kind}, not a GGUF file"}
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as folder:
        fresh = Settings(model_cache_dir=Path(folder), bot_name=settings.bot_name,
                         context_tokens=settings.context_tokens)
        factory = hf_backend_factory(fresh, source)
        times = []
        for _ in ("cold", "warm"):
            start = time.perf_counter()
            async with ModelWorker(factory):
                times.append(time.perf_counter() - start)
    return {"cold_s": times[0], "warm_s": times[1], "ratio": times[0] / times[1]}


class LoopWatch:
    """Measures how late the event loop wakes a 5 ms sleeper while work goes on."""

    INTERVAL = 0.005

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.INTERVAL)
            self.delays.append(max(0.0, time.perf_counter() - start - self.INTERVAL))

    def summary(self) -> dict[str, float]:
        if not self.delays:
            return {"max": 0.0, "p99": 0.0, "samples": 0}
        ordered = sorted(self.delays)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return {"max": ordered[-1] * 1000, "p99": p99 * 1000, "samples": len(ordered)}
