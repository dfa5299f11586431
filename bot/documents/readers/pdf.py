"""A PDF's text layer, page by page, with PDFium (pypdfium2).

Why pypdfium2: measured on a 100-page PDF it reads the text in 21 ms where pypdf takes
218 ms and pdfminer.six 1.2 s (docs/architecture.md); BSD-3/Apache-2.0. PDFium is not
thread-safe, which is one more reason this runs in the reader process, one file at a time.
"""

from __future__ import annotations

import pypdfium2 as pdfium

from bot.documents.readers.detect import ReadError
from bot.types import Section


def read_pdf(data: bytes) -> list[Section]:
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise ReadError("it is password-protected") from None
        raise ReadError("it is damaged or not really a PDF") from None
    sections: list[Section] = []
    try:
        pages = len(document)
        for index in range(pages):
            page = document[index]
            try:
                textpage = page.get_textpage()
                try:
                    text = textpage.get_text_range()
                finally:
                    textpage.close()
            finally:
                page.close()
            text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
            if text.strip():
                sections.append(Section(f"page {index + 1}", text.strip()))
    except pdfium.PdfiumError:
        raise ReadError("it is damaged (a page could not be read)") from None
    finally:
        document.close()
    if not sections:
        raise ReadError(f"it has no text layer (a scan or images only, {pages} page"
                        f"{'' if pages == 1 else 's'}); I can only read PDFs that contain text")
    return sections
