"""Command line of the evaluation: ``python -m bot.eval [--limit N] [--sets ...] [--out F]``.

Settings come from the environment and `.env`, as for the bot (MODEL, SYSTEM_PROMPT,
REPETITION_PENALTY, ...); decoding is always greedy so runs can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from dotenv import load_dotenv

import bot.engines.local.openmp  # noqa: F401 - as in the bot: before anything imports torch

# isort: split
from bot.app import hf_backend_factory, remote_engine
from bot.config import Settings
from bot.engines.local.model_source import resolve_model
from bot.engines.service import ManagedEngine
from bot.engines.worker import ModelWorker
from bot.errors import ConfigError
from bot.eval.report import table
from bot.eval.runner import Options, evaluate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m bot.eval", description=__doc__)
    parser.add_argument("--limit", type=int, default=0,
                        help="items of each set (default: all; the slow test uses a few)")
    parser.add_argument("--sets", default=",".join(defaults.sets),
                        help=f"comma-separated, from {','.join(defaults.sets)}")
    parser.add_argument("--knowledge-dir", type=Path, default=defaults.knowledge_dir,
                        help="knowledge base for the support questions")
    parser.add_argument("--out", type=Path, help="write scores and every reply as JSON")
    parser.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    return parser.parse_args(argv)


def engine_for(settings: Settings) -> ManagedEngine:
    """The engine the bot would use: the inference server at LLM_BASE_URL, else MODEL
    in-process (its queue made roomy: the evaluation submits whole sets at once)."""
    if settings.llm_base_url:
        return remote_engine(dataclasses.replace(settings, max_queue=10_000))
    return ModelWorker(hf_backend_factory(settings, resolve_model(settings.model)),
                       max_pending=10_000, timeout=settings.generation_timeout,
                       max_batch_size=settings.max_batch_size,
                       batch_token_budget=settings.batch_token_budget)


async def run(settings: Settings, options: Options) -> dict[str, object]:
    worker = engine_for(settings)
    started = time.monotonic()
    async with worker:
        results = await evaluate(worker, settings, options)
    report = results.to_json()
    report["seconds"] = round(time.monotonic() - started, 1)
    report["engine"] = f"server {settings.llm_base_url}" if settings.llm_base_url else "in-process"
    report["settings"] = {"system_prompt": settings.system_prompt,
                          "repetition_penalty": settings.repetition_penalty}
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_dotenv(args.env_file, override=False)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    sets = tuple(s.strip() for s in args.sets.split(",") if s.strip())
    unknown = set(sets) - set(Options().sets)
    if unknown:
        print(f"unknown set(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    options = Options(limit=args.limit, sets=sets, knowledge_dir=args.knowledge_dir)
    report = asyncio.run(run(settings, options))
    print(table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
