"""Memory, speed and quality of the in-process engine's modes vs plain `model.generate`.

Each variant (plain fp32 `model.generate`, `MODEL_QUANTIZE=off`, `int8`, ...) runs in a
child process of its own, so its resident memory is its own; the children run one after
another, the order reversed in every other round so that load from other work on the
machine hits all variants alike. Each child reports:

* resident memory: the highest VmRSS sampled while it serves, and VmHWM (which includes
  start-up, e.g. converting the weights);
* one request: tokens/s of a greedy 128-token story (as `scenarios.single`);
* 8 concurrent: aggregate tokens/s of 8 short questions submitted at once through the
  worker, or one after another for plain `model.generate` (what a plain script does);
* the quality guard: mean log-likelihood per token of tests/data/pride_and_prejudice_ch1-2.txt
  and whether any greedy reply is degenerate (`bot.engines.local.quality`).

Run alone with ``python -m bot.bench.engine_modes``; ``python -m bot.bench`` includes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bot.engines.local.openmp  # noqa: F401 - as in the bot: before anything imports torch

# isort: split
from bot.bench.system import peak_rss_mb, rss_mb
from bot.config import Settings

VARIANTS = ("plain", "off", "int8")
GUARD_TEXT = Path(__file__).resolve().parents[2] / "tests" / "data" / (
    "pride_and_prejudice_ch1-2.txt")
CONCURRENT = 8


class RssSampler:
    """The highest VmRSS seen, sampled every 50 ms on a thread while serving."""

    def __init__(self) -> None:
        self.highest = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.highest = max(self.highest, rss_mb())

    @contextmanager
    def running(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.highest = max(self.highest, rss_mb())


async def measure(variant: str, model_setting: str, cache_dir: Path, long_tokens: int,
                  short_tokens: int, quality: bool) -> dict[str, Any]:
    """One variant's figures (runs in the child process)."""
    import torch

    from bot.bench.scenarios import QUESTIONS, STORY
    from bot.engines.contract import GenerationRequest, SamplingParams
    from bot.engines.local.hf_backend import HFBackend
    from bot.engines.local.model_cache import kernel_cache_file, load_pretrained
    from bot.engines.local.model_source import resolve_model
    from bot.engines.local.quality import is_degenerate, mean_log_likelihood
    from bot.engines.local.rendering import HFTokenCounter, PromptRenderer
    from bot.engines.worker import ModelWorker

    settings = Settings()
    source = resolve_model(model_setting)
    started = time.perf_counter()
    model, tokenizer = load_pretrained(source, dtype=torch.float32, cache_dir=cache_dir)
    model.eval()  # type: ignore[no-untyped-call]
    renderer = PromptRenderer(tokenizer, settings.bot_name)
    counter = HFTokenCounter(renderer)

    def chat(text: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": settings.system_prompt_text},
                {"role": "user", "content": f"ada: {text}"}]

    def greedy(tokens: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=tokens, temperature=0.0)

    story = GenerationRequest(chat(STORY), greedy(long_tokens))
    questions = [GenerationRequest(chat(q), greedy(short_tokens)) for q in QUESTIONS[:CONCURRENT]]
    out: dict[str, Any] = {"variant": variant}
    replies: list[str] = []
    if variant == "plain":
        out["ready_s"] = time.perf_counter() - started

        def plain(request: GenerationRequest) -> str:
            ids = torch.tensor([renderer.encode(request.prompt)])
            with torch.inference_mode():
                generated = model.generate(  # type: ignore[operator]
                    input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                    max_new_tokens=request.sampling.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            return renderer.clean_reply(str(tokenizer.decode(generated[0, ids.shape[1]:],
                                                             skip_special_tokens=True)))

        with RssSampler().running() as sampler:
            plain(GenerationRequest(story.prompt, greedy(4)))  # warm-up
            start = time.perf_counter()
            text = plain(story)
            out["single_tok_s"] = counter.count_text(text) / (time.perf_counter() - start)
            start = time.perf_counter()
            replies = [plain(q) for q in questions]
            took = time.perf_counter() - start
        out["story"] = text
    else:
        backend_box: list[HFBackend] = []

        def make() -> HFBackend:
            backend_box.append(HFBackend(
                model, tokenizer, name=source.display_name, bot_name=settings.bot_name,
                context_tokens=settings.context_tokens, prompt_cache_mb=0, quantize=variant,
                kernel_cache=kernel_cache_file(source, cache_dir)))
            return backend_box[-1]

        async def ask(worker: ModelWorker, request: GenerationRequest) -> str:
            handle = worker.submit(request)
            async for _ in handle:
                pass
            return (await handle.result()).text

        async with ModelWorker(make, max_pending=64, timeout=3600,
                               max_batch_size=settings.max_batch_size,
                               batch_token_budget=settings.batch_token_budget) as worker:
            out["ready_s"] = time.perf_counter() - started
            conversion = backend_box[0].conversion
            if conversion is not None:
                out["kernels"] = conversion.kernels
                out["linear_weight_mib"] = conversion.weight_bytes / 2**20
            with RssSampler().running() as sampler:
                await ask(worker, GenerationRequest(story.prompt, greedy(4)))  # warm-up
                start = time.perf_counter()
                text = await ask(worker, story)
                out["single_tok_s"] = counter.count_text(text) / (time.perf_counter() - start)
                start = time.perf_counter()
                replies = list(await asyncio.gather(*(ask(worker, q) for q in questions)))
                took = time.perf_counter() - start
            out["story"] = text
    out["concurrent_tok_s"] = sum(counter.count_text(r) for r in replies) / took
    out["rss_serving_mib"] = sampler.highest
    out["rss_peak_mib"] = max(peak_rss_mb(), sampler.highest)
    if quality:
        ids = list(tokenizer(GUARD_TEXT.read_text())["input_ids"])
        out["log_likelihood"] = mean_log_likelihood(model, ids)
        encoded = [list(tokenizer(r, add_special_tokens=False)["input_ids"])
                   for r in [text, *replies]]
        out["degenerate_replies"] = sum(is_degenerate(ids) for ids in encoded)
        out["degenerate"] = [r for r, ids in zip([text, *replies], encoded, strict=True)
                             if is_degenerate(ids)]
    return out


def _child(variant: str, args: argparse.Namespace, quality: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "bot.bench.engine_modes", "--child", variant,
               "--model", args.model, "--cache-dir", str(args.cache_dir),
               "--long-tokens", str(args.long_tokens),
               "--max-new-tokens", str(args.max_new_tokens)]
    if quality:
        command.append("--quality")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench child {variant} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_modes(args: argparse.Namespace,
              progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every variant of `args.variants` in `args.rounds` rounds; medians and ratios."""
    variants: list[str] = list(args.variants)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for round_no in range(args.rounds):
        order = variants if round_no % 2 == 0 else variants[::-1]
        for variant in order:
            progress(f"engine mode {variant} (round {round_no + 1} of {args.rounds})")
            runs[variant].append(_child(variant, args, quality=round_no == 0))
    summary: dict[str, Any] = {}
    for variant, results in runs.items():
        first = results[0]
        summary[variant] = {
            "single_tok_s": statistics.median(r["single_tok_s"] for r in results),
            "concurrent_tok_s": statistics.median(r["concurrent_tok_s"] for r in results),
            "rss_serving_mib": max(r["rss_serving_mib"] for r in results),
            "rss_peak_mib": max(r["rss_peak_mib"] for r in results),
            "ready_s": statistics.median(r["ready_s"] for r in results),
            "log_likelihood": first.get("log_likelihood"),
            "degenerate_replies": first.get("degenerate_replies"),
            "kernels": first.get("kernels"),
            "linear_weight_mib": first.get("linear_weight_mib"),
            "same_story_as_plain": None,
            "runs": results,
        }
    plain = summary.get("plain")
    if plain is not None:
        for figures in summary.values():
            figures["single_ratio"] = figures["single_tok_s"] / plain["single_tok_s"]
            figures["concurrent_ratio"] = (figures["concurrent_tok_s"]
                                           / plain["concurrent_tok_s"])
            if plain["log_likelihood"] is not None and figures["log_likelihood"] is not None:
                figures["ll_change"] = ((plain["log_likelihood"] - figures["log_likelihood"])
                                        / abs(plain["log_likelihood"]))
            figures["same_story_as_plain"] = (figures["runs"][0]["story"]
                                              == plain["runs"][0]["story"])
    return {"variants": summary, "rounds": args.rounds,
            "options": {"long_tokens": args.long_tokens,
                        "max_new_tokens": args.max_new_tokens, "concurrent": CONCURRENT}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--cache-dir", type=Path, default=defaults.model_cache_dir)
    parser.add_argument("--long-tokens", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.bench.engine_modes",
                                     description=__doc__.splitlines()[0] if __doc__ else "")
    add_arguments(parser)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quality", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench-results/engine-modes.json"))
    args = parser.parse_args(argv)
    if args.child:
        result = asyncio.run(measure(args.child, args.model, args.cache_dir, args.long_tokens,
                                     args.max_new_tokens, args.quality))
        print(json.dumps(result))
        return 0
    modes = run_modes(args, lambda what: print(f"[{time.strftime('%H:%M:%S')}] {what}...",
                                               file=sys.stderr, flush=True))
    from bot.bench.report import engine_mode_rows, format_table

    print(format_table(engine_mode_rows(modes)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(modes, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
