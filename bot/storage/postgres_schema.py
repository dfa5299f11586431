"""The PostgreSQL store's schema: numbered migrations, applied once each, in order.

`migrate` runs at every start inside one transaction under an advisory lock, so of several
instances starting together one upgrades and the others find it done; a database newer than
this code stops the start with a message instead of being written to. The answer and
document tables are created idempotently after the numbered steps.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from bot.storage import postgres_documents as pg_documents
from bot.storage.postgres_answers import ANSWERS_SCHEMA

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    # 1: history and channel settings, as in the SQLite store
    """
    CREATE TABLE turns (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        platform    TEXT NOT NULL,
        channel_id  TEXT NOT NULL,
        thread_id   TEXT NOT NULL DEFAULT '',
        role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        author      TEXT NOT NULL,
        text        TEXT NOT NULL,
        message_id  TEXT,
        created_at  DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX turns_by_channel ON turns (platform, channel_id, thread_id, id);
    CREATE INDEX turns_by_age ON turns (created_at);
    CREATE TABLE channel_settings (
        platform       TEXT NOT NULL,
        channel_id     TEXT NOT NULL,
        persona        TEXT,
        system_prompt  TEXT,
        thread_replies BOOLEAN NOT NULL DEFAULT TRUE,
        enabled        BOOLEAN NOT NULL DEFAULT TRUE,
        updated_at     DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (platform, channel_id)
    );
    """,
    # 2: what instances share: claimed events (with their order in a conversation) and hits
    """
    CREATE TABLE claimed_events (
        event_id    TEXT PRIMARY KEY,
        conversation TEXT,
        order_key   BIGINT,
        instance    TEXT NOT NULL,
        done        BOOLEAN NOT NULL DEFAULT FALSE,
        claimed_at  DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX claimed_pending ON claimed_events (conversation, order_key) WHERE NOT done;
    CREATE INDEX claimed_by_age ON claimed_events (claimed_at);
    CREATE TABLE rate_hits (
        key TEXT NOT NULL,
        at  DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX rate_hits_by_key ON rate_hits (key, at);
    """,
    # 3: the served model a channel's admins chose with /model (remote engines)
    """
    ALTER TABLE channel_settings ADD COLUMN model TEXT;
    """,
)
MIGRATION_LOCK = 0x6C6C6D626F74  # "llmbot": one instance migrates at a time


async def migrate(conn: psycopg.AsyncConnection[Any], now: float) -> None:
    """Bring the schema up to date, inside the caller's transaction on `conn`."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER"
                       " PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
    row = await (await conn.execute(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations")).fetchone()
    current = int(row[0]) if row else 0
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"the database is at schema version {current}, newer than this bot "
            f"knows ({len(MIGRATIONS)}); upgrade the bot")
    for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
        await conn.execute(sql)
        await conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)",
                           (version, now))
        log.info("PostgreSQL schema upgraded to version %d", version)
    await conn.execute(pg_documents.SCHEMA)
    await conn.execute(ANSWERS_SCHEMA)  # idempotent, apart from the numbered ones
