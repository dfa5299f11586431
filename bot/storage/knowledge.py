"""A knowledge base: Markdown and text files indexed into SQLite FTS5 (no extra service).

Files directly in the folder are global; files in a sub-folder named after a persona are that
persona's only. Indexing is incremental: a file is re-read only when its size or modification
time changed, and passages of deleted files are dropped.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from bot.storage.sqlite_runner import SQLiteRunner

log = logging.getLogger(__name__)

SUFFIXES = (".md", ".markdown", ".txt")
PASSAGE_CHARS = 700
_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset("""a an and are as at be by can do does for from how i in is it me my of
on or our so that the this to was what when where which who why will with you your""".split())

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kb_files (
    path     TEXT PRIMARY KEY,
    scope    TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256   TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS kb_passages USING fts5(
    path UNINDEXED, scope UNINDEXED, heading, text, tokenize = 'porter unicode61'
);
"""


@dataclass(frozen=True, slots=True)
class Passage:
    """A piece of one file, small enough that several fit in a prompt."""

    path: str
    heading: str
    text: str


@dataclass(frozen=True, slots=True)
class IndexStats:
    """What `/status` shows and what a reindex changed."""

    documents: int
    passages: int
    changed: int = 0


class KnowledgeBase:
    """The FTS5 index over `folder`, kept in its own SQLite file."""

    def __init__(self, folder: Path, db_path: str | Path) -> None:
        self.folder = folder
        self._sql = SQLiteRunner(db_path, _SCHEMA, name="knowledge")

    async def __aenter__(self) -> KnowledgeBase:
        await self._sql.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sql.close()

    async def reindex(self) -> IndexStats:
        """Bring the index in line with the folder; returns totals and files changed."""
        return await self._sql.run(self._reindex)

    async def stats(self) -> IndexStats:
        return await self._sql.run(self._stats)

    async def search(self, query: str, *, scope: str, limit: int = 4) -> list[Passage]:
        """The passages most relevant to `query`, global or in `scope` (a persona name)."""
        match = fts_query(query)
        if not match:
            return []
        return await self._sql.run(self._search, match, scope, limit)

    # -- on the runner's thread ------------------------------------------------------

    def _reindex(self) -> IndexStats:
        db = self._sql.conn()
        known = {row[0]: row[1:] for row in db.execute(
            "SELECT path, size, mtime_ns FROM kb_files")}
        seen: set[str] = set()
        changed = 0
        files = sorted(p for p in self.folder.rglob("*")
                       if p.is_file() and p.suffix.lower() in SUFFIXES) \
            if self.folder.is_dir() else []
        for path in files:
            rel = path.relative_to(self.folder).as_posix()
            seen.add(rel)
            stat = path.stat()
            if known.get(rel) == (stat.st_size, stat.st_mtime_ns):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            scope = rel.split("/", 1)[0].lower() if "/" in rel else ""
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM kb_passages WHERE path = ?", (rel,))
                db.executemany(
                    "INSERT INTO kb_passages (path, scope, heading, text) VALUES (?, ?, ?, ?)",
                    [(rel, scope, p.heading, p.text) for p in split_passages(rel, text)])
                db.execute(
                    "INSERT OR REPLACE INTO kb_files (path, scope, size, mtime_ns, sha256)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (rel, scope, stat.st_size, stat.st_mtime_ns,
                     hashlib.sha256(text.encode()).hexdigest()))
            changed += 1
        for gone in set(known) - seen:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM kb_passages WHERE path = ?", (gone,))
                db.execute("DELETE FROM kb_files WHERE path = ?", (gone,))
            changed += 1
        stats = self._stats()
        if changed:
            log.info("knowledge base: %d file(s) changed; %d documents, %d passages",
                     changed, stats.documents, stats.passages)
        return IndexStats(stats.documents, stats.passages, changed)

    def _stats(self) -> IndexStats:
        db = self._sql.conn()
        documents = db.execute("SELECT COUNT(*) FROM kb_files").fetchone()[0]
        passages = db.execute("SELECT COUNT(*) FROM kb_passages").fetchone()[0]
        return IndexStats(documents, passages)

    def _search(self, match: str, scope: str, limit: int) -> list[Passage]:
        rows = self._sql.conn().execute(
            "SELECT path, heading, text FROM kb_passages WHERE kb_passages MATCH ?"
            " AND scope IN ('', ?) ORDER BY bm25(kb_passages, 0.0, 0.0, 2.0, 1.0) LIMIT ?",
            (match, scope.lower(), limit)).fetchall()
        return [Passage(path, heading, text) for path, heading, text in rows]


def fts_query(text: str) -> str:
    """An FTS5 query matching any of the text's meaningful words (each quoted, so safe)."""
    words = [w for w in (m.group().lower() for m in _WORD.finditer(text))
             if w not in _STOPWORDS and len(w) > 1]
    unique = list(dict.fromkeys(words))[:32]
    return " OR ".join(f'"{w}"' for w in unique)


def split_passages(path: str, text: str) -> list[Passage]:
    """Split a document at Markdown headings, then at paragraphs, into passages."""
    passages: list[Passage] = []
    heading = Path(path).stem
    buffer: list[str] = []

    def flush() -> None:
        body = "\n\n".join(buffer).strip()
        if body:
            passages.append(Passage(path, heading, body))
        buffer.clear()

    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if not block:
            continue
        first, _, rest = block.partition("\n")
        if first.startswith("#"):
            flush()
            heading = first.lstrip("#").strip() or heading
            block = rest.strip()
            if not block:
                continue
        if buffer and sum(len(b) for b in buffer) + len(block) > PASSAGE_CHARS:
            flush()
        buffer.append(block)
    flush()
    return passages
