"""`python -m bot.bench --documents` on the echo backend, so the benchmark cannot rot."""

from __future__ import annotations

from bot.bench.documents import hundred_page_pdf, summarise, table
from bot.config import Settings
from bot.documents.readers import read_bytes
from bot.engines.worker import ModelWorker
from bot.types import Document
from tests.fakes.backends import EchoBackend


async def test_the_pdf_is_long_and_its_summary_is_timed(settings: Settings) -> None:
    document = read_bytes(hundred_page_pdf(3), "report.pdf")
    assert isinstance(document, Document) and len(document.sections) == 3
    assert len(document.text) > 3 * 2_000
    async with ModelWorker(lambda: EchoBackend(), max_pending=16) as worker:
        run = await summarise(worker, document, settings)
    assert run["parts"] >= 2  # longer than the echo model's window: map-reduce
    assert run["first_progress_s"] >= 0 and run["total_s"] >= 0
    assert run["summary"].endswith("Sources: report.pdf")
    text = table({"pdf": {"pages": 3, "bytes": 1, "characters": 2, "read_s": 0.1},
                  "in-process": run})
    assert "| in-process |" in text
