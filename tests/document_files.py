"""Real files for the document tests, made with real writers (reportlab, python-docx, zlib).

Why generated, not checked in: each test states what is in its file, and the files cover what
users send (a multi-page PDF with a text layer, a DOCX with headings and a table, an article
page, a PNG) and what goes wrong (encrypted, scanned, truncated, a zip bomb).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Sequence

PAGES = (
    ("Brightbird Feeders: third quarter report",
     "Sales of the Brightbird feeder grew by 18 percent in the third quarter, to 42,000 "
     "units. The cedar model sold best in Canada and Norway."),
    ("Refunds",
     "Customers may return a feeder within 45 days of delivery for a full refund. Refunds are "
     "paid within 5 business days after the feeder arrives back in its original box."),
    ("Next steps",
     "A second factory opens in Porto in March. The plastic model is discontinued at the end "
     "of the year."),
)


def pdf(pages: Sequence[tuple[str, str]] = PAGES, *, password: str | None = None) -> bytes:
    """A PDF with one heading and paragraph per page (a real text layer)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.pdfencrypt import StandardEncryption
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    encrypt = StandardEncryption(password, canPrint=1) if password else None
    document = SimpleDocTemplate(buffer, pagesize=A4, encrypt=encrypt)
    story: list[object] = []
    for index, (heading, text) in enumerate(pages):
        if index:
            story.append(PageBreak())
        story += [Paragraph(heading, styles["Heading1"]), Paragraph(text, styles["BodyText"])]
    document.build(story)
    return buffer.getvalue()


def long_pdf(pages: int, words_per_page: int = 350) -> bytes:
    """A PDF of `pages` pages of varied prose, "Chapter N" on each (for long documents)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    vocabulary = ("river harbour lantern orchard meadow quarry bridge market winter garden "
                  "copper violin saddle canyon beacon ledger timber falcon").split()
    buffer = io.BytesIO()
    sheet = canvas.Canvas(buffer, pagesize=A4)
    for page in range(1, pages + 1):
        lines = [f"Chapter {page}"]
        words = [vocabulary[(page * 7 + i * 3 + i // 5) % len(vocabulary)]
                 for i in range(words_per_page)]
        for start in range(0, len(words), 14):
            lines.append(" ".join(words[start:start + 14]) + ".")
        text = sheet.beginText(40, 800)
        for line in lines:
            text.textLine(line)
        sheet.drawText(text)
        sheet.showPage()
    sheet.save()
    return buffer.getvalue()


def scanned_pdf() -> bytes:
    """A PDF whose page is only a picture (what a scanner makes): no text layer."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    sheet = canvas.Canvas(buffer, pagesize=A4)
    sheet.drawImage(ImageReader(io.BytesIO(png(40, 20))), 50, 600, width=400, height=200)
    sheet.showPage()
    sheet.save()
    return buffer.getvalue()


def docx(sections: Sequence[tuple[str, str]] = PAGES, *, table: bool = True) -> bytes:
    """A DOCX with a Heading 1 and a paragraph per section, and a small table."""
    import docx as python_docx

    document = python_docx.Document()
    for heading, text in sections:
        document.add_heading(heading, level=1)
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=2, cols=2)
        for row, cells in enumerate((("Model", "Units"), ("Cedar", "17,000"))):
            for column, value in enumerate(cells):
                grid.cell(row, column).text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def zip_bomb_docx(unpacked_mb: int = 120) -> bytes:
    """A DOCX-shaped ZIP whose document.xml inflates to `unpacked_mb` MB of zeros."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            block = b"0" * (1024 * 1024)
            for _ in range(unpacked_mb):
                member.write(block)
    return buffer.getvalue()


def html_article(title: str = "The Lighthouse Keeper",
                 paragraphs: Sequence[str] = ()) -> bytes:
    """An article page with the boilerplate real pages have (menu, cookie bar, comments)."""
    paragraphs = paragraphs or (
        "Every night for forty years, Mara climbed the 212 steps of the Aldercliff lighthouse "
        "to light the lamp, in storms and in fog, in summer and in the long winter dark.",
        "She kept a logbook of every ship that passed, in a small hand, with the weather, the "
        "wind and the name of each vessel; the books fill three shelves of the museum now.",
        "In 1987 the lamp was automated, and Mara moved to the village, where she still "
        "teaches children to read the tides and to tell a gannet from a gull.",
        "Asked whether she misses the tower, she laughs: the sea is the same from the "
        "harbour wall, she says, and the stairs were never her friends.")
    menu = "".join(f'<li><a href="/s{i}">Section {i}</a></li>' for i in range(20))
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    page = (f"<!doctype html><html><head><title>{title} | Coast News</title>"
            "<script>var tracking = 1;</script></head><body>"
            f"<header><nav><ul>{menu}</ul></nav></header>"
            '<div class="cookie">We use cookies. Accept all cookies?</div>'
            f"<main><article><h1>{title}</h1>{body}</article></main>"
            '<aside class="comments"><p>First comment! Great story, thanks for sharing it.'
            "</p></aside><footer>Copyright Coast News. All rights reserved.</footer>"
            "</body></html>")
    return page.encode()


def png(width: int = 8, height: int = 8) -> bytes:
    """A real PNG (a red-and-blue gradient), written with zlib."""
    rows = b"".join(b"\x00" + b"".join(bytes((x * 255 // width, 0, y * 255 // height))
                                       for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))
