"""Command line of the benchmark: ``python -m bot.bench [--quick] [--model M] [--out F]``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import bot.engines.local.openmp  # noqa: F401 - as in the bot: before anything imports torch

# isort: split
from bot.bench import engine_modes, report
from bot.bench.system import load_average, machine, peak_rss_mb, rss_mb
from bot.config import Settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m bot.bench",
                                     description="Speed benchmark: batching, prompt cache, "
                                                 "start-up, event loop, memory.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer and shorter runs (a few minutes on 2 cores)")
    parser.add_argument("--model", default=defaults.model,
                        help="as MODEL in .env (default: the bundled SmolLM2-135M)")
    parser.add_argument("--cache-dir", type=Path, default=defaults.model_cache_dir,
                        help="converted-model cache to load from (default: data/models)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench.json"))
    parser.add_argument("--max-new-tokens", type=int, help="reply length of short requests")
    parser.add_argument("--long-tokens", type=int, help="reply length of the 1-request run")
    parser.add_argument("--history-tokens", type=int, default=1000,
                        help="history before the follow-up turn")
    parser.add_argument("--repeats", type=int, help="runs per measurement (median reported)")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                        help=f"MAX_BATCH_SIZE (default {defaults.max_batch_size}; at 16 the "
                             "16-request run is a full batch)")
    parser.add_argument("--skip-start", action="store_true",
                        help="skip the cold/warm start measurement")
    # -- issue #11: the bot in-process vs on a real llama.cpp server vs the server directly
    parser.add_argument("--engines", action="store_true",
                        help="instead: the bot on its in-process engine, the bot on a real "
                             "llama.cpp server (xllamacpp), and that server called directly, "
                             "at 1 and 8 requests at once (bench-results/engines.json)")
    parser.add_argument("--documents", action="store_true",
                        help="instead: summarise a 100-page PDF in-process and on a llama.cpp "
                             "server (bench-results/documents.json)")
    parser.add_argument("--server-threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="llama.cpp threads for --engines (1 is faster on a busy machine)")
    parser.add_argument("--skip-modes", action="store_true",
                        help="skip the engine modes (MODEL_QUANTIZE) vs plain generate runs")
    parser.add_argument("--modes", nargs="+", default=list(engine_modes.VARIANTS),
                        help="engine variants to compare (plain, off, bf16, int8)")
    return parser.parse_args(argv)


def engines_main(args: argparse.Namespace) -> int:
    """``--engines``: issue #11's comparison, its own table and JSON file."""
    from bot.bench import engines

    quick = args.quick
    results: dict[str, Any] = {
        "command": "python -m bot.bench " + " ".join(sys.argv[1:]),
        "cpu": machine()["cpu"], "cores": os.cpu_count(), "load_average_start": load_average(),
    }
    results.update(asyncio.run(engines.compare(
        max_new_tokens=args.max_new_tokens or (32 if quick else 64),
        long_tokens=args.long_tokens or (64 if quick else 128),
        repeats=args.repeats or (2 if quick else 4), threads=args.server_threads)))
    results["load_average_end"] = load_average()
    print(engines.table(results))
    out = args.out if args.out != Path("bench-results/bench.json") else Path(
        "bench-results/engines.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nWrote {out}", file=sys.stderr)
    return 0


def documents_main(args: argparse.Namespace) -> int:
    """``--documents``: issue #17's 100-page PDF summary, its own table and JSON file."""
    from bot.bench import documents

    results: dict[str, Any] = {"command": "python -m bot.bench " + " ".join(sys.argv[1:]),
                               "cpu": machine()["cpu"], "cores": os.cpu_count(),
                               "load_average_start": load_average()}
    results.update(asyncio.run(documents.compare(threads=args.server_threads,
                                                 pages=10 if args.quick else 100)))
    results["load_average_end"] = load_average()
    print(documents.table(results))
    out = args.out if args.out != Path("bench-results/bench.json") else Path(
        "bench-results/documents.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nWrote {out}", file=sys.stderr)
    return 0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every scenario in turn; returns the JSON report."""
    from bot.bench import scenarios
    from bot.engines.local.model_source import resolve_model

    quick = args.quick
    options = {"quick": quick,
               "max_new_tokens": args.max_new_tokens or (24 if quick else 64),
               "long_tokens": args.long_tokens or (48 if quick else 128),
               "repeats": args.repeats or (1 if quick else 3),
               "history_tokens": args.history_tokens}
    settings = dataclasses.replace(Settings(), max_batch_size=args.max_batch_size)
    source = resolve_model(args.model)
    results: dict[str, Any] = {
        "command": "python -m bot.bench " + " ".join(sys.argv[1:]),
        "machine": machine(), "load_average_start": load_average(),
        "options": {**options, "model": source.display_name,
                    "max_batch_size": settings.max_batch_size,
                    "batch_token_budget": settings.batch_token_budget,
                    "prompt_cache_mb": settings.prompt_cache_mb},
    }
    results.update(await serve(args, settings, options))
    if not args.skip_start:
        _progress("cold start (GGUF conversion) and warm start")
        results["start"] = await scenarios.start_times(source, settings)
    memory = results["peak_rss_mb"]
    memory["overall"] = max(peak_rss_mb(), memory["serving"], memory["serving_now"])
    if not args.skip_modes:
        results["engine_modes"] = engine_modes.run_modes(argparse.Namespace(
            model=args.model, cache_dir=args.cache_dir, long_tokens=options["long_tokens"],
            max_new_tokens=options["max_new_tokens"], variants=args.modes,
            rounds=1 if quick else 2), _progress)
    results["load_average_end"] = load_average()
    return results


async def serve(args: argparse.Namespace, settings: Settings,
                options: dict[str, Any]) -> dict[str, Any]:
    """The worker's scenarios; peak memory is read before a second, unmodified model copy
    is loaded for the plain `model.generate` comparison."""
    import torch

    from bot.bench import scenarios
    from bot.engines.local.hf_backend import HFBackend
    from bot.engines.local.model_cache import load_pretrained
    from bot.engines.local.model_source import resolve_model
    from bot.engines.local.rendering import HFTokenCounter, PromptRenderer
    from bot.engines.worker import ModelWorker

    source = resolve_model(args.model)
    model, tokenizer = load_pretrained(source, dtype=torch.float32, cache_dir=args.cache_dir)
    renderer = PromptRenderer(tokenizer, settings.bot_name)
    built: list[HFBackend] = []

    def make_backend() -> HFBackend:
        built.append(HFBackend(model, tokenizer, name=source.display_name,
                               bot_name=settings.bot_name,
                               context_tokens=settings.context_tokens,
                               prompt_cache_mb=settings.prompt_cache_mb))
        bench.prompt_cache = built[-1].prompt_cache
        return built[-1]

    worker = ModelWorker(make_backend, max_pending=64, timeout=3600,
                         max_batch_size=settings.max_batch_size,
                         batch_token_budget=settings.batch_token_budget)
    bench = scenarios.Bench(model, tokenizer, renderer, HFTokenCounter(renderer), worker,
                            settings, options["max_new_tokens"], options["repeats"])
    results: dict[str, Any] = {}
    async with worker:  # the worker packs the model's linear layers as it starts
        results["concurrency"] = {}
        for count in (8, 16):
            _progress(f"{count} requests, in sequence and at once")
            results["concurrency"][str(count)] = await scenarios.concurrency(bench, count)
        full = "16" if settings.max_batch_size >= 16 else "8"
        results["loop_delay_ms"] = results["concurrency"][full]["loop_delay_ms"]
        _progress(f"follow-up after a {options['history_tokens']}-token history")
        results["prompt_cache"] = await scenarios.prompt_cache(
            bench, options["history_tokens"], lambda: built[-1].batch_stats.last_reused)
        results["peak_rss_mb"] = {"serving": peak_rss_mb(), "serving_now": rss_mb()}
        _progress("1 request: plain model.generate (on a second, unmodified copy) vs worker")
        plain_model, _ = load_pretrained(source, dtype=torch.float32, cache_dir=args.cache_dir)
        plain = dataclasses.replace(bench, model=plain_model)
        results["single"] = await scenarios.single(bench, plain, options["long_tokens"])
    return results


def _progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}...", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.engines:
        return engines_main(args)
    if args.documents:
        return documents_main(args)
    results = asyncio.run(run(args))
    print(report.table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nWrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
