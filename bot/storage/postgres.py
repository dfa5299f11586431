"""History, channel settings and the state several bot instances share, in PostgreSQL.

Selected by ``DATABASE_URL=postgresql://...``. Same behaviour as the SQLite store (the
contract tests in ``tests/test_store_contract.py`` run against both), plus what only a shared
server can give several processes: an event claimed once across instances, a per-channel lock
across instances (a session advisory lock), and a per-user rate limit counted across instances.

Why psycopg 3 (async) with its pool: fully typed (mypy strict without stubs), wheels with
libpq bundled, and the pool replaces broken connections by itself, so after a lost connection
the store reconnects without code of ours. While the server is unreachable every call raises
`StoreUnavailable` (a `UserError`: the user is told to try again), and nothing is reported as
stored that was not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import psycopg
from psycopg_pool import AsyncConnectionPool

from bot.errors import StoreUnavailable
from bot.storage import postgres_documents as pg_documents
from bot.storage.interface import ChannelSettings, HistoryStats
from bot.storage.postgres_answers import PostgresAnswers, erase_answers, insert_turn
from bot.storage.postgres_schema import migrate
from bot.types import ChannelKey, Document, Role, Turn

log = logging.getLogger(__name__)
T = TypeVar("T")

CLAIM_TTL = 86_400.0
"""Claimed event ids are kept a day: platforms redeliver within minutes, not days."""


def lock_id(text: str) -> int:
    """A stable signed 64-bit advisory lock key for `text`."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big",
                          signed=True)


class PostgresHistoryStore(PostgresAnswers):
    """The `HistoryStore` protocol on a PostgreSQL server shared by several bot instances.

    Args:
        url: ``postgresql://user:password@host:port/database``.
        max_per_channel: older turns beyond this many are deleted as new ones arrive.
        pool_size: connections for queries.
        lock_pool_size: connections for channel locks (a lock holds one for a whole turn, so
            as many as turns run at once; the app passes MAX_QUEUE + pool_size); default
            twice `pool_size`.
        timeout: seconds to wait for a connection before a call fails with `StoreUnavailable`
            (a channel lock waits longer while the server is up: its connections may all be
            in turns, which end).
    """

    ORDER_WAIT = 30.0
    """Longest a turn waits for an earlier message of its conversation claimed elsewhere."""
    LOCK_WAIT = 300.0
    """Longest a turn waits for a free lock connection while the server is up."""

    def __init__(self, url: str, *, max_per_channel: int = 200, pool_size: int = 10,
                 lock_pool_size: int | None = None, timeout: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.max_per_channel = max_per_channel
        self.instance = uuid.uuid4().hex[:16]
        self.timeout = timeout
        self._clock = clock
        kwargs: dict[str, Any] = {"autocommit": True,
                                  "application_name": f"llm-chat-bot {self.instance}",
                                  "connect_timeout": max(2, int(timeout))}
        self._pool = AsyncConnectionPool(url, min_size=1, max_size=pool_size, open=False,
                                         kwargs=kwargs, timeout=timeout, name="history",
                                         check=AsyncConnectionPool.check_connection)
        self._lock_pool = AsyncConnectionPool(url, min_size=0,
                                              max_size=lock_pool_size or 2 * pool_size,
                                              open=False, kwargs=kwargs, name="locks",
                                              timeout=timeout,
                                              check=AsyncConnectionPool.check_connection)
        self._last_cleanup = 0.0
        self._last_rate_cleanup = 0.0
        self._opened = False

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> PostgresHistoryStore:
        """Connect and create or upgrade the schema.

        Raises:
            StoreUnavailable: the server cannot be reached within `timeout`.
            RuntimeError: the database was written by a newer version of the bot.
        """
        if self._opened:
            return self  # opening an open store again does nothing
        problem = await self._connect_error()  # one plain try first: a clear, quiet error
        if problem is not None:
            raise StoreUnavailable(f"cannot reach the PostgreSQL server ({problem})")
        try:
            await self._pool.open(wait=True, timeout=self.timeout)
            await self._lock_pool.open()
        except psycopg.OperationalError:
            await self.close()
            raise StoreUnavailable(f"cannot reach the PostgreSQL server (no connection "
                                   f"within {self.timeout:g} s)") from None
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise
        self._opened = True
        return self

    async def _connect_error(self) -> str | None:
        """Why a plain connection fails, or None when it works (the pool would only log
        its retries and then say that it timed out)."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.url, connect_timeout=max(2, int(self.timeout)))
        except psycopg.Error as exc:
            return " ".join(str(exc).split())[:300]
        await conn.close()
        return None

    async def __aenter__(self) -> PostgresHistoryStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._lock_pool.close()
        await self._pool.close()

    async def schema_version(self) -> int:
        async def read(conn: psycopg.AsyncConnection[Any]) -> int:
            row = await (await conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations")).fetchone()
            return int(row[0]) if row else 0
        return await self._with(read)

    async def _migrate(self) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await migrate(conn, self._clock())

    async def _with(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection; a lost server becomes `StoreUnavailable`."""
        try:
            async with self._pool.connection() as conn:
                return await work(conn)
        except psycopg.OperationalError as exc:
            log.warning("PostgreSQL is unavailable: %s", exc)
            raise StoreUnavailable() from exc

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            return await (await conn.execute(sql, params)).fetchall()
        return await self._with(run)

    async def _rowcount(self, sql: str, params: tuple[Any, ...]) -> int:
        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            return (await conn.execute(sql, params)).rowcount
        return await self._with(run)

    # -- history ---------------------------------------------------------------------

    async def add(self, key: ChannelKey, turn: Turn, *, message_id: str | None = None) -> None:
        """Append a turn and drop the channel's oldest beyond the bound (one transaction)."""

        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await self._insert_turn(conn, key, turn, message_id)
        await self._with(run)

    async def _insert_turn(self, conn: psycopg.AsyncConnection[Any], key: ChannelKey,
                           turn: Turn, message_id: str | None) -> int:
        return await insert_turn(conn, key, turn, message_id, now=self._clock(),
                                 keep=self.max_per_channel)

    async def recent(self, key: ChannelKey, limit: int | None = None) -> list[Turn]:
        rows = await self._fetchall(
            "SELECT role, author, text FROM (SELECT id, role, author, text FROM turns"
            " WHERE platform = %s AND channel_id = %s AND thread_id = %s"
            " ORDER BY id DESC LIMIT %s) AS latest ORDER BY id",
            (*_where(key), limit or self.max_per_channel))
        return [Turn(cast(Role, role), author, text) for role, author, text in rows]

    async def reset(self, key: ChannelKey) -> int:
        where = "platform = %s AND channel_id = %s AND thread_id = %s"
        return await self._delete_turns(where, _where(key),
                                        also=("answers", "feedback", "documents"))

    async def stats(self) -> HistoryStats:
        rows = await self._fetchall(
            "SELECT COUNT(DISTINCT (platform, channel_id, thread_id)), COUNT(*) FROM turns", ())
        channels, turns = rows[0]
        return HistoryStats(channels=int(channels), turns=int(turns))

    async def forget_channel(self, key: ChannelKey) -> int:
        """Delete the channel's turns (all threads) and settings in one transaction.

        PostgreSQL does not overwrite deleted rows in place: they stay in the table's pages
        until VACUUM reclaims them, and in the write-ahead log and any backups until those
        are recycled. The rows are gone for every query at once.
        """
        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            async with conn.transaction():
                deleted = (await conn.execute(
                    "DELETE FROM turns WHERE platform = %s AND channel_id = %s",
                    (key.platform, key.channel_id))).rowcount
                await conn.execute(
                    "DELETE FROM channel_settings WHERE platform = %s AND channel_id = %s",
                    (key.platform, key.channel_id))
                await conn.execute(
                    "DELETE FROM documents WHERE platform = %s AND channel_id = %s",
                    (key.platform, key.channel_id))
                await erase_answers(conn, "platform = %s AND channel_id = %s",
                                    (key.platform, key.channel_id))
            return deleted
        return await self._with(run)

    async def delete_message(self, key: ChannelKey, message_id: str) -> int:
        await self._rowcount(
            "DELETE FROM documents WHERE platform = %s AND channel_id = %s AND thread_id = %s"
            " AND message_id = %s", (*_where(key), message_id))
        # Votes hold a copy of the question: they go with it.
        return await self._delete_turns(
            "platform = %s AND channel_id = %s AND thread_id = %s AND message_id = %s",
            (*_where(key), message_id), also=("feedback",),
            also_where="platform = %s AND channel_id = %s AND thread_id = %s AND question_id = %s")

    async def prune(self, older_than_days: float) -> int:
        cutoff = self._clock() - older_than_days * 86_400
        return await self._delete_turns("created_at < %s", (cutoff,),
                                        also=("answers", "feedback", "documents"))

    # -- shared documents (issue #17; SQL in postgres_documents) ------------------------

    async def add_document(self, key: ChannelKey, document: Document, *,
                           message_id: str | None = None) -> None:
        """Keep a document's text; the conversation's oldest beyond `MAX_DOCUMENTS` go."""
        now = self._clock()
        await self._with(lambda conn: pg_documents.add(conn, key, document, message_id, now))

    async def documents(self, key: ChannelKey, limit: int = 3, *,
                        message_id: str | None = None) -> list[Document]:
        return await self._with(lambda conn: pg_documents.latest(conn, key, limit, message_id))

    async def count(self, key: ChannelKey) -> int:
        rows = await self._fetchall(
            "SELECT COUNT(*) FROM turns WHERE platform = %s AND channel_id = %s"
            " AND thread_id = %s", _where(key))
        return int(rows[0][0])

    async def has_assistant_turn(self, key: ChannelKey) -> bool:
        rows = await self._fetchall(
            "SELECT 1 FROM turns WHERE platform = %s AND channel_id = %s AND thread_id = %s"
            " AND role = 'assistant' LIMIT 1", _where(key))
        return bool(rows)

    async def channel_settings(self, key: ChannelKey) -> ChannelSettings:
        rows = await self._fetchall(
            "SELECT persona, system_prompt, thread_replies, enabled, model FROM channel_settings"
            " WHERE platform = %s AND channel_id = %s", (key.platform, key.channel_id))
        if not rows:
            return ChannelSettings()
        persona, prompt, thread_replies, enabled, model = rows[0]
        return ChannelSettings(persona, prompt, bool(thread_replies), bool(enabled), model)

    async def save_channel_settings(self, key: ChannelKey, settings: ChannelSettings) -> None:
        await self._rowcount(
            "INSERT INTO channel_settings (platform, channel_id, persona, system_prompt,"
            " thread_replies, enabled, updated_at, model)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (platform, channel_id) DO UPDATE SET persona = EXCLUDED.persona,"
            " system_prompt = EXCLUDED.system_prompt, thread_replies = EXCLUDED.thread_replies,"
            " enabled = EXCLUDED.enabled, updated_at = EXCLUDED.updated_at,"
            " model = EXCLUDED.model",
            (key.platform, key.channel_id, settings.persona,
             None if settings.system_prompt is None else _text(settings.system_prompt),
             settings.thread_replies, settings.enabled, self._clock(),
             None if settings.model is None else _text(settings.model)))

    # -- shared between instances -----------------------------------------------------

    async def claim_event(self, event_id: str, *, key: ChannelKey | None = None,
                          order: int | None = None) -> bool:
        """Whether this instance is the first to claim `event_id` (then it answers it)."""
        now = self._clock()
        claimed = await self._rowcount(
            "INSERT INTO claimed_events (event_id, conversation, order_key, instance,"
            " claimed_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
            (event_id, None if key is None else str(key), order, self.instance, now))
        if now - self._last_cleanup > 600:
            self._last_cleanup = now
            await self._rowcount("DELETE FROM claimed_events WHERE claimed_at < %s",
                                 (now - CLAIM_TTL,))
        return claimed == 1

    async def finish_event(self, event_id: str) -> None:
        """The claimed event was answered (or dropped): later turns need not wait for it."""
        await self._rowcount("UPDATE claimed_events SET done = TRUE WHERE event_id = %s",
                             (event_id,))

    @contextlib.asynccontextmanager
    async def channel_lock(self, key: ChannelKey, *,
                           order: int | None = None) -> AsyncIterator[None]:
        """Hold the conversation's lock across instances for one turn.

        A session advisory lock on a connection kept for the turn: if this process dies the
        server ends the session and the lock is free. With `order`, the lock is only kept
        once no earlier message of the conversation, claimed by another live instance, is
        still unfinished (up to `ORDER_WAIT`), so turns are stored in the order sent.
        """
        conversation = str(key)
        ident = lock_id(conversation)
        deadline = time.monotonic() + self.ORDER_WAIT
        delay = 0.01
        conn = await self._lock_connection()
        try:
            while True:
                row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)",
                                                (ident,))).fetchone()
                if row and row[0]:
                    if (order is None or time.monotonic() > deadline
                            or not await self._earlier_pending(conn, conversation, order)):
                        break
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (ident,))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
        except psycopg.OperationalError as exc:
            await self._lock_pool.putconn(conn)
            log.warning("PostgreSQL is unavailable: %s", exc)
            raise StoreUnavailable() from exc
        except BaseException:
            await self._lock_pool.putconn(conn)  # a broken or busy one is discarded
            raise
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.OperationalError):
                await conn.execute("SELECT pg_advisory_unlock(%s)", (ident,))
            await self._lock_pool.putconn(conn)

    async def _lock_connection(self) -> psycopg.AsyncConnection[Any]:
        """A connection to hold a lock on. When none comes within `timeout`, either the
        server is gone (`StoreUnavailable` at once) or every lock connection is in a turn
        (then wait longer: turns end)."""
        waited = 0.0
        while True:
            try:
                return await self._lock_pool.getconn(timeout=self.timeout)
            except psycopg.OperationalError:
                waited += self.timeout
                await self._rowcount("SELECT 1", ())  # raises StoreUnavailable if down
                if waited >= self.LOCK_WAIT:
                    raise StoreUnavailable("I'm too busy to answer here right now; please "
                                           "try again in a moment.") from None

    async def _earlier_pending(self, conn: psycopg.AsyncConnection[Any], conversation: str,
                               order: int) -> bool:
        """An earlier message here, claimed by another instance still connected, unfinished."""
        row = await (await conn.execute(
            "SELECT 1 FROM claimed_events AS c WHERE c.conversation = %s AND NOT c.done"
            " AND c.order_key < %s AND c.instance <> %s AND c.claimed_at > %s"
            " AND EXISTS (SELECT 1 FROM pg_stat_activity AS a"
            "             WHERE a.application_name = 'llm-chat-bot ' || c.instance) LIMIT 1",
            (conversation, order, self.instance, self._clock() - self.ORDER_WAIT))).fetchone()
        return row is not None

    async def rate_hit(self, key: str, *, limit: int, now: float,
                       window: float = 60.0) -> float:
        """Count one request for `key` unless it had `limit` in the last `window` seconds;
        returns 0 when counted, else the seconds until it may send again. Shared by all
        instances (a transaction-level advisory lock per key keeps the count exact)."""
        if limit <= 0:
            return 0.0

        async def run(conn: psycopg.AsyncConnection[Any]) -> float:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id("rate " + key),))
                await conn.execute("DELETE FROM rate_hits WHERE key = %s AND at <= %s",
                                   (key, now - window))
                row = await (await conn.execute(
                    "SELECT COUNT(*), MIN(at) FROM rate_hits WHERE key = %s", (key,))).fetchone()
                count, oldest = (int(row[0]), row[1]) if row else (0, None)
                if count >= limit and oldest is not None:
                    return float(oldest) + window - now
                await conn.execute("INSERT INTO rate_hits (key, at) VALUES (%s, %s)", (key, now))
                return 0.0
        wait = await self._with(run)
        if now - self._last_rate_cleanup > 600:  # senders who never came back
            self._last_rate_cleanup = now
            await self._rowcount("DELETE FROM rate_hits WHERE at <= %s", (now - window,))
        return wait


def _where(key: ChannelKey) -> tuple[str, str, str]:
    return (key.platform, key.channel_id, key.thread_id or "")


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL characters; the core strips them already."""
    return value.replace("\x00", "")
