"""Documents cut into passages, and the passages ranked for a question (BM25).

Pure functions over `Document` values: the core imports this module (never the readers or the
fetcher). Why BM25 in Python rather than SQLite FTS5: a conversation's documents are a few
thousand passages at most (a 100-page PDF is about 300), ranked in milliseconds, and the
same code then serves both stores (SQLite and PostgreSQL) with nothing to index or clean up.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bot.types import Document

PASSAGE_CHARS = 1_000
_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset("""a an and are as at be by can do does did for from has have how i in is
it its me my of on or our so that the their them there these this those to was were what when
where which who whom why will with you your about into than then also not no but if any all
he she they we his her him would could should may might shall been being am""".split())
K1 = 1.4
B = 0.75


@dataclass(frozen=True, slots=True)
class Passage:
    """A piece of a document small enough that several fit in a prompt."""

    document: str
    label: str
    text: str
    order: int
    """Position among all passages, so chosen passages can be put back in document order."""


def split_passages(documents: Sequence[Document], max_chars: int = PASSAGE_CHARS
                   ) -> list[Passage]:
    """Every document's sections cut at paragraphs (then lines, then words) into passages of
    at most about `max_chars` characters, in document order."""
    passages: list[Passage] = []
    for document in documents:
        for section in document.sections:
            for piece in _pieces(section.text, max_chars):
                passages.append(Passage(document.name, section.label, piece, len(passages)))
    return passages


def _pieces(text: str, max_chars: int) -> list[str]:
    blocks: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip()
        if len(paragraph) <= max_chars:
            if paragraph:
                blocks.append(paragraph)
            continue
        lines = paragraph.split("\n") if "\n" in paragraph else _sentences(paragraph)
        blocks.extend(_hard_cut(line, max_chars) for line in lines if line.strip())
    pieces: list[str] = []
    current = ""
    for block in blocks:
        for part in block.split("\x00"):
            if current and len(current) + len(part) + 2 > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current}\n\n{part}" if current else part
    if current:
        pieces.append(current)
    return pieces


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?。！？])\s+", text)


def _hard_cut(text: str, max_chars: int) -> str:
    """A too-long line cut at spaces into parts joined by NUL (split again by the caller)."""
    if len(text) <= max_chars:
        return text
    parts, rest = [], text
    while len(rest) > max_chars:
        cut = rest.rfind(" ", 0, max_chars)
        cut = cut if cut > max_chars // 2 else max_chars
        parts.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    parts.append(rest)
    return "\x00".join(p for p in parts if p)


def terms(text: str) -> list[str]:
    """Meaningful words, lower-cased, with a plural/-ing/-ed ending taken off."""
    return [_stem(w) for w in (m.group().lower() for m in _WORD.finditer(text))
            if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())]


def _stem(word: str) -> str:
    for ending in ("ies", "ing", "ed", "es", "s"):
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            return word[: -len(ending)] + ("y" if ending == "ies" else "")
    return word


def rank(passages: Sequence[Passage], query: str, limit: int) -> list[Passage]:
    """The `limit` passages that best match `query` (BM25), best first; none that share no
    meaningful word with it."""
    wanted = set(terms(query))
    if not wanted or not passages:
        return []
    bags = [Counter(terms(f"{p.label} {p.text}")) for p in passages]
    average = sum(sum(b.values()) for b in bags) / len(bags) or 1.0
    frequency = Counter(t for bag in bags for t in wanted if t in bag)
    total = len(bags)
    scored: list[tuple[float, int]] = []
    for index, bag in enumerate(bags):
        length = sum(bag.values())
        score = 0.0
        for term in wanted:
            count = bag.get(term, 0)
            if not count:
                continue
            idf = math.log(1 + (total - frequency[term] + 0.5) / (frequency[term] + 0.5))
            score += idf * count * (K1 + 1) / (count + K1 * (1 - B + B * length / average))
        if score > 0:
            scored.append((score, index))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [passages[index] for _, index in scored[:limit]]
