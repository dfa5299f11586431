"""``python -m bot.bench --documents``: summarising a 100-page PDF, in-process and on
llama.cpp's server (issue #17).

The PDF is written with reportlab (a dev dependency) from public-domain prose (Pride and
Prejudice, chapters 1-2, repeated), read by the bot's own reader process, and summarised
through the full core as a file shared with no question: map-reduce over the whole document
with "reading part i of n" progress, then the combined summary streamed. Measured: reading,
the first progress line, the first token of the summary itself, and the total.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import tempfile
import time
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.documents.sandbox import ReaderProcess
from bot.engines.service import ManagedEngine
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, Document, IncomingMessage, Shared

TEXT = Path(__file__).resolve().parents[2] / "tests" / "data" / "pride_and_prejudice_ch1-2.txt"
PAGE_CHARS = 2_400


def hundred_page_pdf(pages: int = 100) -> bytes:
    """A `pages`-page PDF of prose, about 2,400 characters a page (a dense report)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

    paragraphs = [p.strip() for p in TEXT.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    styles = getSampleStyleSheet()
    story: list[object] = []
    index = 0
    for page in range(pages):
        story.append(Paragraph(f"Part {page + 1}", styles["Heading2"]))
        used = 0
        while used < PAGE_CHARS:
            text = paragraphs[index % len(paragraphs)].replace("&", "&amp;").replace(
                "<", "&lt;").replace("_", "")
            story.append(Paragraph(text, styles["BodyText"]))
            used += len(text)
            index += 1
        story.append(PageBreak())
    buffer = io.BytesIO()
    SimpleDocTemplate(buffer, pagesize=A4).build(story)
    return buffer.getvalue()


async def summarise(engine: ManagedEngine, document: Document,
                    settings: Settings) -> dict[str, Any]:
    """One summary through the core; times of the first progress, first summary token, end."""
    with tempfile.TemporaryDirectory(prefix="bench-docs-") as folder:
        settings = dataclasses.replace(settings, history_db=Path(folder) / "h.sqlite3",
                                       temperature=0.0, rate_limit_per_minute=0)
        async with SQLiteHistoryStore(settings.history_db) as history:
            core = ConversationCore(worker=engine, history=history, settings=settings)
            started = time.perf_counter()
            marks: dict[str, float] = {}
            parts = [0]

            async def progress(text: str) -> None:
                now = time.perf_counter() - started
                if text.startswith("_Reading"):
                    marks.setdefault("first_progress_s", now)
                    parts[0] = int(text.split(" of ")[1].split("…")[0])
                else:
                    marks.setdefault("first_summary_token_s", now)

            reply = await core.handle(IncomingMessage(
                ChannelKey("console", "bench"), "b1", "u1", "ada", "",
                shared=Shared(documents=(document,))), on_progress=progress)
            total = time.perf_counter() - started
    text = reply.text if reply is not None else ""
    return {**marks, "total_s": round(total, 1), "parts": parts[0],
            "summary_chars": len(text), "summary": text[:600]}


async def compare(*, threads: int, pages: int = 100) -> dict[str, Any]:
    """The same PDF summarised in-process and on a llama.cpp server, one after the other."""
    from bot.app import hf_backend_factory
    from bot.bench.llama_server import LlamaServer
    from bot.engines.local.model_source import resolve_model
    from bot.engines.remote.engine import RemoteConfig, RemoteEngine
    from bot.engines.worker import ModelWorker

    data = await asyncio.to_thread(hundred_page_pdf, pages)
    async with ReaderProcess(timeout=120, max_chars=2_000_000) as reader:
        began = time.perf_counter()
        document = await reader.read(data, "report-100-pages.pdf")
        read_s = time.perf_counter() - began
    assert isinstance(document, Document)
    settings = Settings()
    results: dict[str, Any] = {
        "pdf": {"pages": len(document.sections), "bytes": len(data),
                "characters": len(document.text), "read_s": round(read_s, 2)}}
    local = ModelWorker(hf_backend_factory(settings, resolve_model(settings.model)),
                        max_pending=64, timeout=3600, max_batch_size=settings.max_batch_size,
                        batch_token_budget=settings.batch_token_budget)
    async with local:
        results["pdf"]["tokens"] = await asyncio.to_thread(local.token_counter.count_text,
                                                           document.text)
        results["in-process"] = await summarise(local, document, settings)
    async with LlamaServer(parallel=4, ctx=4 * settings.context_tokens,
                           threads=threads) as server:
        remote = RemoteEngine(RemoteConfig(server.base_url, max_concurrency=4,
                                           timeout=3600, context_tokens=settings.context_tokens))
        async with remote:
            results["llama.cpp server"] = await summarise(remote, document, settings)
    return results


def table(results: dict[str, Any]) -> str:
    pdf = results["pdf"]
    lines = [f"A {pdf['pages']}-page PDF ({pdf['bytes'] / 1e6:.2f} MB, {pdf['characters']:,} "
             f"characters, {pdf.get('tokens', 0):,} tokens) read in {pdf['read_s']} s, "
             "then summarised with no question:", "",
             "| engine | parts | first progress | first summary token | total |",
             "|---|---|---|---|---|"]
    for engine in ("in-process", "llama.cpp server"):
        run = results.get(engine)
        if run:
            lines.append(f"| {engine} | {run['parts']} | {run.get('first_progress_s', 0):.1f} s "
                         f"| {run.get('first_summary_token_s', 0):.1f} s | {run['total_s']} s |")
    return "\n".join(lines)
