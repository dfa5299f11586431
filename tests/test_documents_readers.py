"""Readers on real files: the type comes from the bytes, every bad file is one clear line.

Files are made by `tests.document_files` with real writers; the reader process is the real
child process (`ReaderProcess`), killed and restarted when a file outlives its time limit.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.documents.passages import rank, split_passages, terms
from bot.documents.readers import ReadError, read_bytes
from bot.documents.readers.detect import detect
from bot.documents.sandbox import ReaderProcess
from bot.types import Document, Image, Section
from tests import document_files as files


def test_a_pdf_is_read_page_by_page() -> None:
    document = read_bytes(files.pdf(), "report.pdf")
    assert isinstance(document, Document)
    assert document.kind == "PDF"
    assert [s.label for s in document.sections] == ["page 1", "page 2", "page 3"]
    assert "within 45 days of delivery" in document.sections[1].text


def test_the_type_comes_from_the_bytes_not_the_name() -> None:
    document = read_bytes(files.pdf(), "message.txt")
    assert isinstance(document, Document) and document.kind == "PDF"
    assert detect(files.docx(), "upload.bin").name == "DOCX"
    assert detect(files.png(), "photo.pdf").mime == "image/png"
    assert detect(b"<!doctype html><html><body>x</body></html>", "page").name == "HTML"


def test_a_docx_is_read_by_headings_with_its_table() -> None:
    document = read_bytes(files.docx(), "notes.docx")
    assert isinstance(document, Document) and document.kind == "DOCX"
    assert [s.label for s in document.sections] == [
        "Brightbird Feeders: third quarter report", "Refunds", "Next steps"]
    assert "Cedar | 17,000" in document.sections[-1].text


def test_an_article_page_keeps_the_story_and_drops_the_menus() -> None:
    document = read_bytes(files.html_article(), "https://news.example/lighthouse")
    assert isinstance(document, Document) and document.kind == "HTML"
    assert "212 steps" in document.text and "gannet" in document.text
    for boilerplate in ("Section 3", "First comment", "Copyright", "tracking"):
        assert boilerplate not in document.text


def test_text_formats_are_split_into_named_parts() -> None:
    markdown = read_bytes(b"# Intro\nhello\n\n## Setup\nrun make\n", "README.md")
    assert isinstance(markdown, Document)
    assert [s.label for s in markdown.sections] == ["Intro", "Setup"]
    log = read_bytes("\n".join(f"line {i}" for i in range(200)).encode(), "app.log")
    assert isinstance(log, Document)
    assert [s.label for s in log.sections] == ["lines 1-80", "lines 81-160", "lines 161-200"]
    table = "name,units\n" + "\n".join(f"model{i},{i}" for i in range(100))
    csv = read_bytes(table.encode(), "sales.csv")
    assert isinstance(csv, Document) and csv.kind == "CSV"
    assert all(s.text.startswith("name,units\n") for s in csv.sections)
    minified = json.dumps({"items": [{"id": i, "name": f"item {i}"} for i in range(50)]})
    data = read_bytes(minified.encode(), "data.json")
    assert isinstance(data, Document) and data.kind == "JSON" and data.text.count("\n") > 50
    code = read_bytes(b"def main():\n    return 1\n", "tool.py")
    assert isinstance(code, Document) and code.kind == "code"


def test_an_image_comes_back_as_an_image() -> None:
    image = read_bytes(files.png(), "photo.png")
    assert isinstance(image, Image) and image.mime == "image/png"


def test_a_long_document_is_cut_and_says_so() -> None:
    document = read_bytes(b"word " * 5000, "long.txt", max_chars=1000)
    assert isinstance(document, Document)
    assert len(document.text) == 1000
    assert "1,000 characters" in document.note and "DOCUMENT_MAX_CHARS" in document.note


@pytest.mark.parametrize(("name", "make", "reason"), [
    ("empty.txt", lambda: b"", "it is empty"),
    ("blank.txt", lambda: b"  \n\n ", "it has no text in it"),
    ("secret.pdf", lambda: files.pdf(password="hunter2"), "password-protected"),
    ("scan.pdf", files.scanned_pdf, "no text layer"),
    ("cut.pdf", lambda: files.pdf()[:700], "damaged"),
    ("bomb.docx", files.zip_bomb_docx, "zip bomb"),
    ("tight.docx", lambda: files.zip_bomb_docx(8), "zip bomb"),
    ("program.exe", lambda: b"MZ\x90\x00\x03\x00\x00\x00" * 50, "not a type I can read"),
    ("old.doc", lambda: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "old Office"),
    ("budget.xlsx", lambda: _zip({"xl/workbook.xml": "<w/>"}), "spreadsheet"),
])
def test_each_bad_file_is_refused_with_one_line(name: str, make: object, reason: str) -> None:
    assert callable(make)
    with pytest.raises(ReadError) as refused:
        read_bytes(make(), name)
    assert reason in str(refused.value)
    assert "\n" not in str(refused.value)


def _zip(members: dict[str, str]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, text in members.items():
            archive.writestr(member, text)
    return buffer.getvalue()


async def test_the_reader_process_reads_and_survives_a_bad_file() -> None:
    async with ReaderProcess(timeout=60) as reader:
        document = await reader.read(files.docx(), "notes.docx")
        assert isinstance(document, Document) and document.kind == "DOCX"
        with pytest.raises(ReadError, match="password-protected"):
            await reader.read(files.pdf(password="x"), "secret.pdf")
        again = await reader.read(files.pdf(), "report.pdf")
        assert isinstance(again, Document) and again.kind == "PDF"
        assert reader.restarts == 0


async def test_a_file_over_the_time_limit_kills_the_reader_which_starts_afresh() -> None:
    async with ReaderProcess(timeout=60) as reader:
        await reader.read(b"warm up", "a.txt")
        reader.timeout = 0.000_001  # no file can be read this fast: the limit must trip
        with pytest.raises(ReadError, match="took longer than"):
            await reader.read(files.long_pdf(20), "long.pdf")
        reader.timeout = 60
        document = await reader.read(files.pdf(), "report.pdf")
        assert isinstance(document, Document)
        assert reader.restarts == 1


async def test_a_reader_that_dies_fails_that_file_only() -> None:
    async with ReaderProcess(timeout=60) as reader:
        await reader.read(b"warm up", "a.txt")
        assert reader._child is not None
        reader._child.kill()  # as if a parser crashed the process under this file
        with pytest.raises(ReadError, match="reader fail"):
            await reader.read(files.pdf(), "report.pdf")
        document = await reader.read(files.pdf(), "report.pdf")
        assert isinstance(document, Document)


def test_passages_are_ranked_by_the_question_and_keep_their_page() -> None:
    document = read_bytes(files.long_pdf(12), "long.pdf")
    assert isinstance(document, Document)
    extra = Document("faq.txt", "file", "text", (
        Section("Refunds", "Refunds are paid within five business days of the return."),))
    passages = split_passages([document, extra])
    assert all(len(p.text) <= 1_200 for p in passages)
    best = rank(passages, "How long until refunds are paid?", 3)
    assert best[0].document == "faq.txt" and best[0].label == "Refunds"
    assert rank(passages, "the and of", 3) == []  # no meaningful word: nothing matches
    assert terms("Refunds paid") == ["refund", "paid"]


async def test_reading_runs_off_the_event_loop() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(tick())
    async with ReaderProcess(timeout=60) as reader:
        await reader.read(files.long_pdf(30), "long.pdf")
    ticking.cancel()
    assert ticks > 10  # the loop kept running while the child read the file
