"""What a file is, from its bytes (its name only tells text formats apart).

Why bytes: a name can lie or be missing (a link, ``message.txt``), and a reader fed the wrong
format fails in confusing ways. Magic numbers decide binary formats; text is text when it
decodes cleanly.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath


class ReadError(Exception):
    """A shared file or page that cannot be read; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class Kind:
    """A detected type: its display name and, for images, the MIME type."""

    name: str
    mime: str = ""

    @property
    def image(self) -> bool:
        return self.mime.startswith("image/")


READABLE = "text, Markdown, code, CSV, JSON, logs, PDF, DOCX or HTML"
_IMAGES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
           (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_TEXT_KINDS = {".csv": "CSV", ".tsv": "TSV", ".tab": "TSV", ".json": "JSON", ".jsonl": "JSON",
               ".md": "Markdown", ".markdown": "Markdown", ".log": "log", ".txt": "text",
               ".htm": "HTML", ".html": "HTML", ".xhtml": "HTML"}
_CODE = frozenset(".py .js .ts .tsx .jsx .java .c .h .cc .cpp .hpp .cs .go .rs .rb .php .sh "
                  ".bash .zsh .ps1 .sql .kt .swift .scala .lua .pl .r .m .yaml .yml .toml .ini "
                  ".cfg .conf .xml .css .scss .vue .dart .ex .exs .hs .ml .clj .tf .dockerfile "
                  ".gradle .bat".split())


def detect(data: bytes, name: str) -> Kind:
    """The type of `data`; raises `ReadError` for empty files and types the bot cannot read."""
    if not data:
        raise ReadError("it is empty")
    head = data[:16]
    for magic, mime in _IMAGES:
        if head.startswith(magic):
            return Kind("image", mime)
    if head.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return Kind("image", "image/webp")
    if data.lstrip()[:5] == b"%PDF-" or b"%PDF-" in data[:1024]:
        return Kind("PDF")
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(data, name)
    if head.startswith(_OLE):
        suffix = PurePosixPath(name).suffix.lower()
        if suffix in (".docx", ".xlsx", ".pptx"):
            raise ReadError("it is password-protected (an encrypted Office file)")
        raise ReadError("it is an old Office file (.doc/.xls/.ppt); save it as DOCX or PDF")
    if not looks_like_text(data):
        raise ReadError(f"it is not a type I can read ({READABLE})")
    suffix = PurePosixPath(name.split("?", 1)[0]).suffix.lower()
    start = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if suffix in (".htm", ".html", ".xhtml") or start.startswith((b"<!doctype html", b"<html")) \
            or (start.startswith(b"<") and (b"<body" in data[:4096].lower()
                                            or b"<head" in data[:4096].lower())):
        return Kind("HTML")
    if suffix in _TEXT_KINDS:
        return Kind(_TEXT_KINDS[suffix])
    if suffix in _CODE or PurePosixPath(name).name.lower() in ("dockerfile", "makefile"):
        return Kind("code")
    if start[:1] in (b"{", b"["):
        return Kind("JSON")
    return Kind("text")


def _zip_kind(data: bytes, name: str) -> Kind:
    try:
        names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ReadError("it is damaged (a broken ZIP/DOCX container)") from None
    if "word/document.xml" in names:
        return Kind("DOCX")
    if "xl/workbook.xml" in names:
        raise ReadError("it is a spreadsheet (XLSX), which I can't read; export it as CSV")
    if "ppt/presentation.xml" in names:
        raise ReadError("it is a presentation (PPTX), which I can't read; export it as PDF")
    raise ReadError(f"it is a ZIP archive, which I don't open ({READABLE} only)")


def looks_like_text(data: bytes) -> bool:
    """Whether `data` decodes as text: UTF-8/16 (BOM), or mostly printable single bytes."""
    sample = data[:65536]
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 4:  # a character cut by the sample's end
            return True
    printable = sum(1 for b in sample if b >= 32 or b in (9, 10, 13))
    return printable / len(sample) > 0.95


def decode_text(data: bytes) -> str:
    """Text from bytes: a BOM's encoding, else UTF-8, else Windows-1252 (never fails)."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")
