"""Bytes in, a `Document` (or an `Image`) out, by the type the bytes turn out to be.

`read_bytes` is a pure function: it runs in the reader process (`bot.documents.sandbox`), and
tests call it directly. Every refusal is a `ReadError` whose message is one line for the user
("it is password-protected"), said after the file's name.
"""

from __future__ import annotations

from bot.documents.readers.detect import Kind, ReadError, detect
from bot.types import Document, Image, Section

__all__ = ["ReadError", "read_bytes", "detect", "Kind"]

DEFAULT_MAX_CHARS = 500_000


def read_bytes(data: bytes, name: str, *, max_chars: int = DEFAULT_MAX_CHARS,
               source: str = "file") -> Document | Image:
    """Read one shared file or fetched page.

    Raises:
        ReadError: empty, unknown type, encrypted, no text layer, corrupt, a zip bomb...
    """
    kind = detect(data, name)
    if kind.image:
        return Image(name, kind.mime, data)
    if kind.name == "PDF":
        from bot.documents.readers.pdf import read_pdf
        sections = read_pdf(data)
    elif kind.name == "DOCX":
        from bot.documents.readers.office import read_docx
        sections = read_docx(data)
    elif kind.name == "HTML":
        from bot.documents.readers.html import read_html
        sections = read_html(data)
    else:
        from bot.documents.readers.text import read_text
        sections = read_text(data, kind.name)
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise ReadError("it has no text in it")
    kept, note = _cut(sections, max_chars)
    return Document(name=name, source="link" if source == "link" else "file",
                    kind=kind.name, sections=tuple(kept), note=note)


def _cut(sections: list[Section], max_chars: int) -> tuple[list[Section], str]:
    """The sections within `max_chars` characters in all, and a note when some were cut."""
    kept: list[Section] = []
    used = 0
    for section in sections:
        if used + len(section.text) > max_chars:
            room = max_chars - used
            if room > 0:
                kept.append(Section(section.label, section.text[:room]))
            return kept, (f"it is long, so I read only its first {max_chars:,} characters "
                          f"(DOCUMENT_MAX_CHARS)")
        kept.append(section)
        used += len(section.text)
    return kept, ""
