"""Plain text, Markdown, code, logs, CSV/TSV and JSON, in parts an answer can name.

Markdown is cut at its headings; CSV/TSV into runs of rows that each repeat the header (a
passage without it would be numbers without meaning); everything else into runs of lines.
"""

from __future__ import annotations

import csv
import io
import json
import re

from bot.documents.readers.detect import decode_text
from bot.types import Section

LINES_PER_SECTION = 80
ROWS_PER_SECTION = 40
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def read_text(data: bytes, kind: str) -> list[Section]:
    text = decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
    if kind == "Markdown":
        return markdown_sections(text)
    if kind in ("CSV", "TSV"):
        return table_sections(text, "\t" if kind == "TSV" else ",")
    if kind == "JSON":
        text = _pretty_json(text)
    return line_sections(text)


def line_sections(text: str, size: int = LINES_PER_SECTION) -> list[Section]:
    """Runs of `size` lines, labelled "lines a-b" (one unlabelled section when short)."""
    lines = text.split("\n")
    if len(lines) <= size:
        return [Section("", text.strip("\n"))]
    return [Section(f"lines {start + 1}-{min(start + size, len(lines))}",
                    "\n".join(lines[start:start + size]))
            for start in range(0, len(lines), size)]


def markdown_sections(text: str) -> list[Section]:
    """One section per heading (the text before the first one is unlabelled)."""
    sections: list[Section] = []
    label, body = "", list[str]()
    fenced = False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            if "".join(body).strip():
                sections.append(Section(label, "\n".join(body).strip("\n")))
            label, body = match.group(1), [line]
        else:
            body.append(line)
    if "".join(body).strip():
        sections.append(Section(label, "\n".join(body).strip("\n")))
    return sections


def table_sections(text: str, delimiter: str) -> list[Section]:
    """Runs of rows, each with the header row first, labelled "rows a-b"."""
    rows = text.strip("\n").split("\n")
    try:
        csv.Sniffer().sniff(rows[0] if rows else "", delimiters=delimiter)
    except csv.Error:
        pass  # still split by lines: a malformed table is read as text
    header, body = rows[0], rows[1:]
    if len(body) <= ROWS_PER_SECTION:
        return [Section("", text.strip("\n"))]
    return [Section(f"rows {start + 2}-{min(start + ROWS_PER_SECTION, len(body)) + 1}",
                    "\n".join([header, *body[start:start + ROWS_PER_SECTION]]))
            for start in range(0, len(body), ROWS_PER_SECTION)]


def _pretty_json(text: str) -> str:
    """Indented JSON when the file is one long line (minified), so it splits into parts."""
    if text.count("\n") > 5 or len(text) < 200:
        return text
    try:
        return json.dumps(json.loads(text), indent=1, ensure_ascii=False)
    except ValueError:
        try:  # JSON lines
            return "\n".join(json.dumps(json.loads(line), ensure_ascii=False)
                             for line in io.StringIO(text) if line.strip())
        except ValueError:
            return text
