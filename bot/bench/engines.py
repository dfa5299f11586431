"""``python -m bot.bench --engines``: the bot on its in-process engine, the bot on a real
llama.cpp server, and that server called directly, on the same prompts (issue #11).

Each side runs in its own process so resident memory is its own: the in-process side loads
torch and the model; the remote side never imports torch (it is the bot as it runs with
``LLM_BASE_URL``). The bot sides go through `ConversationCore.handle` (history in SQLite,
prompt building, token counting, streaming), the direct side is a bare streaming client. The
direct and remote runs alternate, so other load on the machine hits both alike. Replies are
greedy and their tokens are counted the same way for every side (the server's ``/tokenize``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

QUESTIONS = [
    "What is the capital of France?", "Explain how rain forms.",
    "How many legs does a spider have?", "Give me three tips for sleeping well.",
    "Who wrote Romeo and Juliet?", "Why is the sky blue?",
    "What is the boiling point of water?", "How do plants make food?",
]
STORY = "Write a long story about a robot who learns to paint. Describe every step."


@dataclass(frozen=True, slots=True)
class Run:
    text: str
    ttft_s: float
    total_s: float


# ---------------------------------------------------------------------------- the child side


def _settings(max_new_tokens: int, history_db: Path, **changes: Any) -> Any:
    from bot.config import Settings

    return Settings(history_db=history_db, max_new_tokens=max_new_tokens, temperature=0.0,
                    max_queue=64, rate_limit_per_minute=0, **changes)


async def _bot_run(core: Any, question: str, key_id: str) -> Run:
    """One question through the core, timed from `handle()` to its first shown text."""
    from bot.types import ChannelKey, IncomingMessage

    start = time.perf_counter()
    first: list[float] = []

    async def progress(_: str) -> None:
        if not first:
            first.append(time.perf_counter() - start)

    msg = IncomingMessage(key=ChannelKey("console", key_id), message_id=key_id,
                          author_id="ada", author_name="ada", text=question)
    reply = await core.handle(msg, on_progress=progress)
    total = time.perf_counter() - start
    return Run(reply.text if reply else "", first[0] if first else total, total)


async def _direct_run(session: Any, base_url: str, messages: list[dict[str, str]],
                      max_new_tokens: int) -> Run:
    """The same prompt straight to the server: what any OpenAI client does."""
    import aiohttp

    from bot.engines.remote.sse import DONE, SSEParser, chunk_delta, decode_chunk

    body = {"messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0,
            "stream": True}
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    try:
        response = await session.post(f"{base_url}/chat/completions", json=body)
    except aiohttp.ServerDisconnectedError:  # a stale pooled connection: retry, as clients do
        response = await session.post(f"{base_url}/chat/completions", json=body)
    async with response:
        parser = SSEParser()
        async for line in response.content:
            data = parser.feed(line)
            if data is None or data == DONE:
                continue
            piece = chunk_delta(decode_chunk(data)).content
            if piece:
                if first is None and piece.strip():
                    first = time.perf_counter() - start
                parts.append(piece)
    total = time.perf_counter() - start
    return Run("".join(parts), first if first is not None else total, total)


def _prompt_of(settings: Any, question: str) -> list[dict[str, str]]:
    """The prompt the core builds for a first message in a channel."""
    from bot.core.prompting import to_messages
    from bot.types import Turn

    return to_messages(settings.system_prompt_text, [Turn("user", "ada", question)])


Side = Callable[[int, str], Awaitable[Run]]
"""Runs one request: (reply budget, question)."""


async def _rounds(count: int, repeats: int, budget: int, sides: dict[str, Side],
                  unique: Callable[[], int]) -> dict[str, Any]:
    """`count` requests at once per side, `repeats` rounds; which side goes first alternates.

    Every question carries a number of its own, so no side finds another's whole prompt in
    the server's prefix cache (the shared system prompt is cached for all, as in a bot).
    """
    runs: dict[str, list[Run]] = {name: [] for name in sides}
    walls: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            one = sides[name]
            questions = [STORY if count == 1 else QUESTIONS[i % len(QUESTIONS)]
                         for i in range(count)]
            start = time.perf_counter()
            runs[name] += await asyncio.gather(*(one(budget, f"{q} (#{unique()})")
                                                 for q in questions))
            walls[name].append(time.perf_counter() - start)
    return {name: {"runs": [asdict(x) for x in runs[name]], "walls_s": walls[name]}
            for name in sides}


async def child(side: str, base_url: str, max_new_tokens: int, long_tokens: int,
                repeats: int) -> dict[str, Any]:
    """One side's measurements (``remote`` also runs the direct client), as JSON."""
    from bot.core.conversation import ConversationCore
    from bot.storage.sqlite import SQLiteHistoryStore

    with tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        db = Path(folder) / "history.sqlite3"
        if side == "remote":
            import aiohttp

            from bot.engines.remote.engine import RemoteConfig, RemoteEngine

            settings = _settings(max_new_tokens, db, llm_base_url=base_url,
                                 llm_max_concurrency=8)
            engine: Any = RemoteEngine(RemoteConfig(base_url, max_concurrency=8, max_queue=64))
        else:
            from bot.app import hf_backend_factory
            from bot.engines.local.model_source import resolve_model
            from bot.engines.worker import ModelWorker

            settings = _settings(max_new_tokens, db)
            factory = hf_backend_factory(settings, resolve_model("bundled"))
            built: list[Any] = []

            def make() -> Any:
                built.append(factory())
                return built[-1]

            engine = ModelWorker(make, max_pending=64, timeout=3600)
        started = time.perf_counter()
        compiled: dict[str, Any] = {}
        async with engine, SQLiteHistoryStore(db) as history:
            ready_s = time.perf_counter() - started
            if side == "local":
                compiled = await _compiled_steps(built[-1])
            cores = {budget: ConversationCore(
                worker=engine, history=history,
                settings=dataclasses.replace(settings, max_new_tokens=budget))
                for budget in (max_new_tokens, long_tokens)}
            numbers = itertools.count(1)

            async def bot(budget: int, question: str) -> Run:
                return await _bot_run(cores[budget], question, f"c{next(numbers)}")

            sides: dict[str, Side] = {"bot": bot}
            session = None
            if side == "remote":
                # As the bot's client does: drop idle connections before llama.cpp does (5 s).
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(keepalive_timeout=2.0))

                async def direct(budget: int, question: str) -> Run:
                    assert session is not None
                    return await _direct_run(session, base_url,
                                             _prompt_of(settings, question), budget)

                sides = {"direct": direct, "bot": bot}
            try:
                for one in sides.values():  # warm-up: imports, connections, the system prompt
                    await asyncio.gather(*(one(max_new_tokens, f"{q} (#{next(numbers)})")
                                           for q in QUESTIONS))
                results = {
                    "1": await _rounds(1, repeats, long_tokens, sides, numbers.__next__),
                    "8": await _rounds(8, repeats, max_new_tokens, sides, numbers.__next__)}
                if side == "local":  # a round of its own: the watcher takes CPU (see above)
                    from bot.bench.scenarios import LoopWatch

                    watch = LoopWatch()
                    async with watch:
                        await _rounds(8, 1, max_new_tokens, sides, numbers.__next__)
                    compiled["loop_delay_ms_8_at_once"] = watch.summary()
            finally:
                if session is not None:
                    await session.close()
    from bot.bench.system import peak_rss_mb, rss_mb

    return {"side": side, "ready_s": ready_s, "results": results, "peak_rss_mb": peak_rss_mb(),
            "rss_mb_end": rss_mb(), "torch_loaded": "torch" in sys.modules,
            "compiled": compiled}


async def _compiled_steps(backend: Any) -> dict[str, Any]:
    """For the own Llama step: which steps were compiled when it was ready; then wait for
    every build (they would take CPU from the timed rounds), measuring the event loop's
    delays meanwhile, as a bot serving during its first start would see them."""
    steps = getattr(backend, "steps", None)
    if steps is None:
        return {}
    from bot.bench.scenarios import LoopWatch

    out: dict[str, Any] = {"at_ready": steps.describe()}
    watch = LoopWatch()
    building = time.perf_counter()
    async with watch:
        while steps.building:
            _progress(f"local: waiting for compiled steps ({steps.describe()})")
            await asyncio.to_thread(steps.wait)
    out["waited_s"] = time.perf_counter() - building
    out["loop_delay_ms_while_compiling"] = watch.summary()
    out["after"] = steps.describe()
    return out


# ---------------------------------------------------------------------------- the parent side


def _tokens(root: str, text: str) -> int:
    import urllib.request

    body = json.dumps({"content": text, "add_special": False}).encode()
    request = urllib.request.Request(f"{root}/tokenize", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return len(json.loads(response.read())["tokens"])


def _summarise(side: dict[str, Any], root: str) -> dict[str, Any]:
    """tokens/s (aggregate over each round's wall time) and time to first token."""
    out: dict[str, Any] = {}
    for count, data in side.items():
        runs = data["runs"]
        tokens = [_tokens(root, r["text"]) for r in runs]
        per_round = int(count)
        rates = [sum(tokens[i:i + per_round]) / wall
                 for i, wall in zip(range(0, len(runs), per_round), data["walls_s"],
                                    strict=True)]
        out[count] = {"tok_s": statistics.median(rates),
                      "ttft_s": statistics.median(r["ttft_s"] for r in runs),
                      "max_ttft_s": max(r["ttft_s"] for r in runs),
                      "tokens": sum(tokens), "requests": len(runs)}
    return out


async def compare(*, max_new_tokens: int, long_tokens: int, repeats: int, threads: int,
                  parallel: int = 8) -> dict[str, Any]:
    """Start the server, run both children, and put the figures side by side."""
    from bot.bench.llama_server import LlamaServer

    async with LlamaServer(parallel=parallel, ctx=parallel * 1024, threads=threads) as server:
        server_start = server.started_in
        remote = await _run_child("remote", server.base_url, max_new_tokens, long_tokens,
                                  repeats)
        server_rss = server.peak_rss_mb()
        local = await _run_child("local", server.base_url, max_new_tokens, long_tokens,
                                 repeats)
        summary = {
            "direct": _summarise({c: remote["results"][c]["direct"] for c in ("1", "8")},
                                 server.root),
            "bot_remote": _summarise({c: remote["results"][c]["bot"] for c in ("1", "8")},
                                     server.root),
            "bot_local": _summarise({c: local["results"][c]["bot"] for c in ("1", "8")},
                                    server.root),
        }
    overhead = {}
    for count in ("1", "8"):
        direct, bot = summary["direct"][count], summary["bot_remote"][count]
        overhead[count] = {
            "tok_s_loss_pct": 100 * (1 - bot["tok_s"] / direct["tok_s"]),
            "ttft_added_ms": 1000 * (bot["ttft_s"] - direct["ttft_s"]),
            "speedup_vs_local": bot["tok_s"] / summary["bot_local"][count]["tok_s"],
        }
    return {
        "options": {"max_new_tokens": max_new_tokens, "long_tokens": long_tokens,
                    "repeats": repeats,
                    "server_threads": threads, "server_parallel": parallel},
        "summary": summary, "overhead": overhead,
        "memory_mb": {"bot_remote": remote["peak_rss_mb"], "llama_server": server_rss,
                      "bot_local": local["peak_rss_mb"]},
        "ready_s": {"llama_server": server_start, "bot_remote": remote["ready_s"],
                    "bot_local": local["ready_s"]},
        "torch_loaded": {"bot_remote": remote["torch_loaded"],
                         "bot_local": local["torch_loaded"]},
        "bot_local_rss_end_mb": local["rss_mb_end"], "compiled_steps": local["compiled"],
    }


async def _run_child(side: str, base_url: str, max_new_tokens: int, long_tokens: int,
                     repeats: int) -> dict[str, Any]:
    _progress(f"{side}: the bot" + (" and the server called directly" if side == "remote"
                                    else " on its in-process engine"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.bench.engines", side, base_url, str(max_new_tokens),
        str(long_tokens), str(repeats), stdout=asyncio.subprocess.PIPE, env={**os.environ})
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the {side} benchmark exited with {proc.returncode}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def table(results: dict[str, Any]) -> str:
    s, o, m = results["summary"], results["overhead"], results["memory_mb"]
    lines = ["| measurement | bot, in-process | bot on llama.cpp | llama.cpp direct |",
             "|---|---|---|---|"]
    for count in ("1", "8"):
        lines.append(f"| {count} at once: tokens/s (aggregate) | "
                     f"{s['bot_local'][count]['tok_s']:.1f} | "
                     f"{s['bot_remote'][count]['tok_s']:.1f} | "
                     f"{s['direct'][count]['tok_s']:.1f} |")
        lines.append(f"| {count} at once: first token (median) | "
                     f"{s['bot_local'][count]['ttft_s'] * 1000:.0f} ms | "
                     f"{s['bot_remote'][count]['ttft_s'] * 1000:.0f} ms | "
                     f"{s['direct'][count]['ttft_s'] * 1000:.0f} ms |")
    lines.append(f"| peak resident memory | {m['bot_local']:.0f} MiB | {m['bot_remote']:.0f} "
                 f"MiB bot + {m['llama_server']:.0f} MiB server | |")
    compiled = results.get("compiled_steps") or {}
    if "at_ready" in compiled:  # the own step served (not transformers' forward)
        lines.append(f"| in-process: compiled steps when ready, after | {compiled['at_ready']} | "
                     f"{compiled['after']} | |")
        for name in ("loop_delay_ms_while_compiling", "loop_delay_ms_8_at_once"):
            lag = compiled.get(name, {})
            lines.append(f"| in-process: event loop delay, {name[14:].replace('_', ' ')} | "
                         f"max {lag.get('max', 0):.1f} ms, p99 {lag.get('p99', 0):.1f} ms | | |")
    lines.append("")
    for count in ("1", "8"):
        lines.append(f"{count} at once: the bot on llama.cpp loses "
                     f"{o[count]['tok_s_loss_pct']:.1f}% tokens/s (target <= 5%) and adds "
                     f"{o[count]['ttft_added_ms']:.0f} ms to the first token (target <= 50 ms) "
                     f"over calling the server directly; {o[count]['speedup_vs_local']:.2f}x "
                     "the in-process engine's tokens/s")
    return "\n".join(lines)


def _progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}...", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.bench.engines")
    parser.add_argument("side", choices=["remote", "local"])
    parser.add_argument("base_url")
    parser.add_argument("max_new_tokens", type=int)
    parser.add_argument("long_tokens", type=int)
    parser.add_argument("repeats", type=int)
    args = parser.parse_args(argv)
    if args.side == "local":
        import bot.engines.local.openmp  # noqa: F401 - as in the bot: before torch loads
    result = asyncio.run(child(args.side, args.base_url, args.max_new_tokens, args.long_tokens,
                               args.repeats))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
