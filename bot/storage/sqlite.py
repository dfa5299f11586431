"""The default store: per-channel history and channel settings in one SQLite file.

WAL mode with ``synchronous=NORMAL`` survives a killed process: every committed turn is in the
file once `add()` returns. All database work runs on one private thread (`SQLiteRunner`), so
the event loop never waits on disk.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

from bot.storage.interface import (
    MAX_DOCUMENTS,
    ChannelSettings,
    HistoryStats,
    document_from_row,
    sections_to_json,
)
from bot.storage.sqlite_answers import ANSWERS_SCHEMA, SQLiteAnswers, erase_answers
from bot.storage.sqlite_runner import SQLiteRunner
from bot.types import ChannelKey, Document, Role, Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    platform    TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    thread_id   TEXT NOT NULL DEFAULT '',
    role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    author      TEXT NOT NULL,
    text        TEXT NOT NULL,
    message_id  TEXT,
    created_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_channel ON turns (platform, channel_id, thread_id, id);
CREATE TABLE IF NOT EXISTS channel_settings (
    platform       TEXT NOT NULL,
    channel_id     TEXT NOT NULL,
    persona        TEXT,
    system_prompt  TEXT,
    thread_replies INTEGER NOT NULL DEFAULT 1,
    enabled        INTEGER NOT NULL DEFAULT 1,
    updated_at     REAL NOT NULL,
    model          TEXT,
    PRIMARY KEY (platform, channel_id)
);
CREATE TABLE IF NOT EXISTS claimed_events (
    event_id    TEXT PRIMARY KEY,
    claimed_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS claimed_by_age ON claimed_events (claimed_at);
""" + """
-- shared documents' text (issue #17), erased with the conversation
CREATE TABLE IF NOT EXISTS documents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    platform    TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    thread_id   TEXT NOT NULL DEFAULT '',
    message_id  TEXT,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    sections    TEXT NOT NULL,
    note        TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_by_channel
    ON documents (platform, channel_id, thread_id, id);
"""
CLAIM_TTL = 86_400.0
"""Claimed event ids are kept a day: platforms redeliver within minutes, not days."""


class SQLiteHistoryStore(SQLiteAnswers):
    """Bounded per-channel history, keyed by platform + channel + thread.

    Args:
        path: the SQLite file; its folder is created if missing. ``":memory:"`` for tests.
        max_per_channel: older turns beyond this many are deleted as new ones arrive.
        clock: wall-clock seconds for the turns' timestamps (retention), injectable for tests.

    One process uses the file: claimed events are kept in it (a redelivery after a restart
    is still answered once), the per-channel lock is the core's in-process one, and the rate
    limit counts in memory.
    """

    def __init__(self, path: str | Path, *, max_per_channel: int = 200,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_per_channel = max_per_channel
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._opened = False
        self._last_cleanup = 0.0
        self._sql = SQLiteRunner(path, _SCHEMA + ANSWERS_SCHEMA, name="history")
        self._run = self._sql.run
        self._conn = self._sql.conn

    async def open(self) -> SQLiteHistoryStore:
        """Open the file; opening an open store again does nothing (`async with` after
        an explicit open, as the app does)."""
        if not self._opened:
            await self._sql.open()
            await self._run(self._migrate)
            self._opened = True
        return self

    def _migrate(self) -> None:
        """Add columns newer versions need to a file an older version created."""
        db = self._conn()
        columns = {row[1] for row in db.execute("PRAGMA table_info(channel_settings)")}
        if "model" not in columns:
            db.execute("ALTER TABLE channel_settings ADD COLUMN model TEXT")

    async def __aenter__(self) -> SQLiteHistoryStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Checkpoint and close the file, then stop the private thread."""
        await self._sql.close()

    async def add(self, key: ChannelKey, turn: Turn, *, message_id: str | None = None) -> None:
        """Append a turn and drop the channel's oldest beyond the bound."""
        await self._run(self._add, key, turn, message_id)

    async def recent(self, key: ChannelKey, limit: int | None = None) -> list[Turn]:
        """The channel's last `limit` turns (all kept turns by default), oldest first."""
        return await self._run(self._recent, key, limit or self.max_per_channel)

    async def reset(self, key: ChannelKey) -> int:
        """Forget the channel; returns how many turns were deleted."""
        return await self._run(self._reset, key)

    async def stats(self) -> HistoryStats:
        return await self._run(self._stats)

    async def forget_channel(self, key: ChannelKey) -> int:
        """Delete everything stored for `key`'s channel (all its threads, its settings), for
        good: deleted rows are overwritten and the WAL is checkpointed. Returns turns deleted."""
        return await self._run(self._forget_channel, key)

    async def delete_message(self, key: ChannelKey, message_id: str) -> int:
        """Delete the turn of one platform message (the user deleted it)."""
        return await self._run(self._delete_message, key, message_id)

    async def prune(self, older_than_days: float) -> int:
        """Delete turns older than the retention period; returns how many."""
        return await self._run(self._prune, self._clock() - older_than_days * 86_400)

    async def count(self, key: ChannelKey) -> int:
        """Turns stored for this conversation."""
        return await self._run(self._count, key)

    async def has_assistant_turn(self, key: ChannelKey) -> bool:
        """Whether the bot has spoken in this conversation (a thread it is part of)."""
        return await self._run(self._has_assistant_turn, key)

    async def channel_settings(self, key: ChannelKey) -> ChannelSettings:
        """The settings of `key`'s channel (threads share their channel's settings)."""
        return await self._run(self._channel_settings, key)

    async def save_channel_settings(self, key: ChannelKey, settings: ChannelSettings) -> None:
        await self._run(self._save_channel_settings, key, settings)

    async def add_document(self, key: ChannelKey, document: Document, *,
                           message_id: str | None = None) -> None:
        await self._run(self._add_document, key, document, message_id)

    async def documents(self, key: ChannelKey, limit: int = 3, *,
                        message_id: str | None = None) -> list[Document]:
        return await self._run(self._documents, key, limit, message_id)

    # -- state shared between instances: one instance here -----------------------------

    async def claim_event(self, event_id: str, *, key: ChannelKey | None = None,
                          order: int | None = None) -> bool:
        """True for the first claim of `event_id` (kept a day, across restarts)."""
        return await self._run(self._claim, event_id, self._clock())

    async def finish_event(self, event_id: str) -> None:
        """Nothing to do: one process, whose own lock keeps each conversation in order."""

    @contextlib.asynccontextmanager
    async def channel_lock(self, key: ChannelKey, *,
                           order: int | None = None) -> AsyncIterator[None]:
        """Nothing beyond the core's in-process lock: only one process uses this file."""
        yield

    async def rate_hit(self, key: str, *, limit: int, now: float,
                       window: float = 60.0) -> float:
        """A sliding window per key, in memory (least recently seen keys forgotten first)."""
        if limit <= 0:
            return 0.0
        hits = self._hits.pop(key, None) or deque()
        while hits and now - hits[0] >= window:
            hits.popleft()
        self._hits[key] = hits  # re-inserted: dict order is least recently seen first
        if len(hits) >= limit:
            return hits[0] + window - now
        hits.append(now)
        if len(self._hits) > 100_000:
            del self._hits[next(iter(self._hits))]
        return 0.0

    # -- on the private thread -------------------------------------------------------

    def _claim(self, event_id: str, now: float) -> bool:
        db = self._conn()
        with db:
            claimed = db.execute("INSERT OR IGNORE INTO claimed_events VALUES (?, ?)",
                                 (event_id, now)).rowcount == 1
            if now - self._last_cleanup > 600:
                self._last_cleanup = now
                db.execute("DELETE FROM claimed_events WHERE claimed_at < ?", (now - CLAIM_TTL,))
        return claimed

    def _add(self, key: ChannelKey, turn: Turn, message_id: str | None) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            self._insert_turn(db, key, turn, message_id)

    def _insert_turn(self, db: sqlite3.Connection, key: ChannelKey, turn: Turn,
                     message_id: str | None) -> int:
        """Insert a turn and drop the conversation's oldest beyond the bound (in the
        caller's transaction); returns the new turn's id."""
        where = (key.platform, key.channel_id, key.thread_id or "")
        turn_id = db.execute(
            "INSERT INTO turns (platform, channel_id, thread_id, role, author, text,"
            " message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*where, turn.role, turn.author, turn.text, message_id, self._clock())).lastrowid
        db.execute(
            "DELETE FROM turns WHERE platform = ? AND channel_id = ? AND thread_id = ?"
            " AND id <= (SELECT id FROM turns WHERE platform = ? AND channel_id = ?"
            " AND thread_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (*where, *where, self.max_per_channel))
        return int(turn_id or 0)

    def _recent(self, key: ChannelKey, limit: int) -> list[Turn]:
        rows = self._conn().execute(
            "SELECT role, author, text FROM (SELECT id, role, author, text FROM turns"
            " WHERE platform = ? AND channel_id = ? AND thread_id = ?"
            " ORDER BY id DESC LIMIT ?) ORDER BY id",
            (key.platform, key.channel_id, key.thread_id or "", limit)).fetchall()
        return [Turn(cast(Role, role), author, text) for role, author, text in rows]

    def _reset(self, key: ChannelKey) -> int:
        db = self._conn()
        with db:
            cursor = db.execute(
                "DELETE FROM turns WHERE platform = ? AND channel_id = ? AND thread_id = ?",
                (key.platform, key.channel_id, key.thread_id or ""))
            db.execute(
                "DELETE FROM documents WHERE platform = ? AND channel_id = ? AND thread_id = ?",
                (key.platform, key.channel_id, key.thread_id or ""))
            erase_answers(db, "platform = ? AND channel_id = ? AND thread_id = ?",
                          (key.platform, key.channel_id, key.thread_id or ""))
        return cursor.rowcount

    def _stats(self) -> HistoryStats:
        channels, turns = self._conn().execute(
            "SELECT COUNT(DISTINCT platform || ':' || channel_id || ':' || thread_id),"
            " COUNT(*) FROM turns").fetchone()
        return HistoryStats(channels=channels, turns=turns)

    def _has_assistant_turn(self, key: ChannelKey) -> bool:
        row = self._conn().execute(
            "SELECT 1 FROM turns WHERE platform = ? AND channel_id = ? AND thread_id = ?"
            " AND role = 'assistant' LIMIT 1",
            (key.platform, key.channel_id, key.thread_id or "")).fetchone()
        return row is not None

    def _channel_settings(self, key: ChannelKey) -> ChannelSettings:
        row = self._conn().execute(
            "SELECT persona, system_prompt, thread_replies, enabled, model FROM channel_settings"
            " WHERE platform = ? AND channel_id = ?", (key.platform, key.channel_id)).fetchone()
        if row is None:
            return ChannelSettings()
        persona, prompt, thread_replies, enabled, model = row
        return ChannelSettings(persona, prompt, bool(thread_replies), bool(enabled), model)

    def _save_channel_settings(self, key: ChannelKey, settings: ChannelSettings) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO channel_settings (platform, channel_id, persona,"
            " system_prompt, thread_replies, enabled, updated_at, model)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key.platform, key.channel_id, settings.persona, settings.system_prompt,
             int(settings.thread_replies), int(settings.enabled), self._clock(),
             settings.model))

    def _forget_channel(self, key: ChannelKey) -> int:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            deleted = db.execute("DELETE FROM turns WHERE platform = ? AND channel_id = ?",
                                 (key.platform, key.channel_id)).rowcount
            db.execute("DELETE FROM channel_settings WHERE platform = ? AND channel_id = ?",
                       (key.platform, key.channel_id))
            db.execute("DELETE FROM documents WHERE platform = ? AND channel_id = ?",
                       (key.platform, key.channel_id))
            erase_answers(db, "platform = ? AND channel_id = ?", (key.platform, key.channel_id))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def _prune(self, cutoff: float) -> int:
        db = self._conn()
        with db:
            deleted = db.execute("DELETE FROM turns WHERE created_at < ?", (cutoff,)).rowcount
            documents = db.execute("DELETE FROM documents WHERE created_at < ?",
                                   (cutoff,)).rowcount
            erased = db.execute("SELECT COUNT(*) FROM feedback WHERE created_at < ?",
                                (cutoff,)).fetchone()[0]
            erase_answers(db, "created_at < ?", (cutoff,))
        if deleted or documents or erased:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def _count(self, key: ChannelKey) -> int:
        row = self._conn().execute(
            "SELECT COUNT(*) FROM turns WHERE platform = ? AND channel_id = ? AND thread_id = ?",
            (key.platform, key.channel_id, key.thread_id or "")).fetchone()
        return int(row[0])

    def _delete_message(self, key: ChannelKey, message_id: str) -> int:
        db = self._conn()
        where = (key.platform, key.channel_id, key.thread_id or "", message_id)
        with db:
            db.execute("DELETE FROM documents WHERE platform = ? AND channel_id = ?"
                       " AND thread_id = ? AND message_id = ?", where)
            deleted = db.execute(
                "DELETE FROM turns WHERE platform = ? AND channel_id = ? AND thread_id = ?"
                " AND message_id = ?", where).rowcount
            # Votes hold a copy of the question: they go with it.
            db.execute("DELETE FROM feedback WHERE platform = ? AND channel_id = ?"
                       " AND thread_id = ? AND question_id = ?", where)
        return deleted

    def _add_document(self, key: ChannelKey, document: Document,
                      message_id: str | None) -> None:
        db = self._conn()
        where = (key.platform, key.channel_id, key.thread_id or "")
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO documents (platform, channel_id, thread_id, message_id, name,"
                " source, kind, sections, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*where, message_id, document.name, document.source, document.kind,
                 sections_to_json(document), document.note, self._clock()))
            db.execute(
                "DELETE FROM documents WHERE platform = ? AND channel_id = ? AND thread_id = ?"
                " AND id <= (SELECT id FROM documents WHERE platform = ? AND channel_id = ?"
                " AND thread_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (*where, *where, MAX_DOCUMENTS))

    def _documents(self, key: ChannelKey, limit: int,
                   message_id: str | None) -> list[Document]:
        rows = self._conn().execute(
            "SELECT name, source, kind, sections, note FROM (SELECT * FROM documents"
            " WHERE platform = ? AND channel_id = ? AND thread_id = ?"
            " AND (? IS NULL OR message_id = ?) ORDER BY id DESC LIMIT ?) ORDER BY id",
            (key.platform, key.channel_id, key.thread_id or "", message_id, message_id,
             limit)).fetchall()
        return [document_from_row(*row) for row in rows]
