"""Per-channel conversation history in one SQLite file.

WAL mode with ``synchronous=NORMAL`` survives a killed process: every committed turn is in the
file once `add()` returns. All database work runs on one private thread (the aiosqlite
pattern), so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from bot.types import ChannelKey, Role, Turn

T = TypeVar("T")

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
"""


@dataclass(frozen=True, slots=True)
class HistoryStats:
    """Totals for `/status`."""

    channels: int
    turns: int


class HistoryStore:
    """Bounded per-channel history, keyed by platform + channel + thread.

    Args:
        path: the SQLite file; its folder is created if missing. ``":memory:"`` for tests.
        max_per_channel: older turns beyond this many are deleted as new ones arrive.
    """

    def __init__(self, path: str | Path, *, max_per_channel: int = 200) -> None:
        self.path = path
        self.max_per_channel = max_per_channel
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> HistoryStore:
        await self._run(self._open)
        return self

    async def __aenter__(self) -> HistoryStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Checkpoint and close the file, then stop the private thread."""
        if self._db is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

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

    # -- on the private thread -------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the history store is not open")
        return self._db

    def _open(self) -> None:
        if str(self.path) != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db

    def _close(self) -> None:
        db = self._conn()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        self._db = None

    def _add(self, key: ChannelKey, turn: Turn, message_id: str | None) -> None:
        db = self._conn()
        where = (key.platform, key.channel_id, key.thread_id or "")
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO turns (platform, channel_id, thread_id, role, author, text,"
                " message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*where, turn.role, turn.author, turn.text, message_id, time.time()))
            db.execute(
                "DELETE FROM turns WHERE platform = ? AND channel_id = ? AND thread_id = ?"
                " AND id <= (SELECT id FROM turns WHERE platform = ? AND channel_id = ?"
                " AND thread_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (*where, *where, self.max_per_channel))

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
        return cursor.rowcount

    def _stats(self) -> HistoryStats:
        channels, turns = self._conn().execute(
            "SELECT COUNT(DISTINCT platform || ':' || channel_id || ':' || thread_id),"
            " COUNT(*) FROM turns").fetchone()
        return HistoryStats(channels=channels, turns=turns)
