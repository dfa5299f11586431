"""DOCX with python-docx, after a check that the container cannot unpack into a bomb.

Why the check: a DOCX is a ZIP, and python-docx reads every part into memory; a 100 KB file
can claim gigabytes. Python's zipfile never inflates an entry past its declared size (and
then fails its CRC), so checking the declared sizes first bounds the memory for certain.
"""

from __future__ import annotations

import io
import zipfile

from bot.documents.readers.detect import ReadError
from bot.types import Section

MAX_UNZIPPED = 100_000_000
"""The most a DOCX may unpack to (a 500-page report with images is far below)."""
MAX_RATIO = 200
"""Compression ratio above which a large entry is taken for a bomb (text zips about 5-10x)."""


def check_zip(data: bytes, *, limit: int = MAX_UNZIPPED) -> None:
    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ReadError("it is damaged (a broken DOCX container)") from None
    total = sum(info.file_size for info in infos)
    if total > limit:
        raise ReadError(f"it unpacks to {total / 1e6:,.0f} MB, more than I open "
                        f"({limit / 1e6:,.0f} MB; a zip bomb?)")
    if any(info.file_size > 1_000_000 and info.file_size > MAX_RATIO * max(
            info.compress_size, 1) for info in infos):
        raise ReadError("it is packed more tightly than any real document (a zip bomb?)")


def read_docx(data: bytes) -> list[Section]:
    check_zip(data)
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises KeyError, ValueError, lxml errors...
        raise ReadError(f"it is damaged ({type(exc).__name__} in the DOCX)") from None
    # Style names looked up once: python-docx's per-paragraph `style` scans every style
    # (0.9 s for 800 paragraphs), this map makes the whole read 30x faster.
    names = {style.style_id: style.name or "" for style in document.styles}
    sections: list[Section] = []
    label, body = "", list[str]()

    def flush() -> None:
        if "".join(body).strip():
            sections.append(Section(label, "\n".join(body).strip()))
        body.clear()

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = [cell.text.strip() for cell in row.cells]
                body.append(" | ".join(dict.fromkeys(cells)))  # merged cells repeat
            continue
        text = block.text.strip()
        style = names.get(block._p.style or "", "")
        if text and style.startswith(("Heading", "Title")):
            flush()
            label = text
        if text:
            body.append(text)
    flush()
    return sections
