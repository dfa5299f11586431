"""One SQLite connection on one private thread, awaited from the event loop.

The aiosqlite pattern without the dependency: every statement runs on the runner's thread,
so the event loop never waits on disk, and the connection is only ever used by one thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SQLiteRunner:
    """Opens `path` in WAL mode with `schema` applied, and runs functions against it.

    Args:
        path: the database file (its folder is created), or ``":memory:"``.
        schema: SQL run once at open; use ``CREATE ... IF NOT EXISTS``.
        name: the thread's name, for debugging.
    """

    def __init__(self, path: str | Path, schema: str, *, name: str) -> None:
        self.path = path
        self._schema = schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self.run(self._open)

    async def close(self) -> None:
        """Checkpoint the WAL into the main file, close, and stop the thread."""
        if self._db is not None:
            await self.run(self._close)
        self._executor.shutdown(wait=True)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the runner's thread; `fn` may call `conn()`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def conn(self) -> sqlite3.Connection:
        """The connection; only valid on the runner's thread."""
        if self._db is None:
            raise RuntimeError(f"{self.path} is not open")
        return self._db

    def _open(self) -> None:
        if str(self.path) != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA secure_delete=ON")  # deleted history is overwritten, not left behind
        db.executescript(self._schema)
        self._db = db

    def _close(self) -> None:
        db = self.conn()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        self._db = None
