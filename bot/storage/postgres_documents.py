"""The PostgreSQL store's table of shared documents (issue #17), kept apart from the rest.

Its schema is a block of its own, created if missing at every start (not a numbered
migration), so a database of any earlier version gains it, and other tables can be added
beside it without renumbering.
"""

from __future__ import annotations

from typing import Any

import psycopg

from bot.storage.interface import MAX_DOCUMENTS, document_from_row, sections_to_json
from bot.types import ChannelKey, Document

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    platform    TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    thread_id   TEXT NOT NULL DEFAULT '',
    message_id  TEXT,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    sections    TEXT NOT NULL,
    note        TEXT NOT NULL DEFAULT '',
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_by_channel
    ON documents (platform, channel_id, thread_id, id);
CREATE INDEX IF NOT EXISTS documents_by_age ON documents (created_at);
"""


async def add(conn: psycopg.AsyncConnection[Any], key: ChannelKey, document: Document,
              message_id: str | None, now: float) -> None:
    """Insert `document` and drop the conversation's oldest beyond `MAX_DOCUMENTS`."""
    where = (key.platform, key.channel_id, key.thread_id or "")
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO documents (platform, channel_id, thread_id, message_id, name, source,"
            " kind, sections, note, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (*where, message_id, _text(document.name), document.source, document.kind,
             _text(sections_to_json(document)), _text(document.note), now))
        await conn.execute(
            "DELETE FROM documents WHERE platform = %s AND channel_id = %s AND thread_id = %s"
            " AND id <= (SELECT id FROM documents WHERE platform = %s AND channel_id = %s"
            " AND thread_id = %s ORDER BY id DESC LIMIT 1 OFFSET %s)",
            (*where, *where, MAX_DOCUMENTS))


async def latest(conn: psycopg.AsyncConnection[Any], key: ChannelKey, limit: int,
                 message_id: str | None = None) -> list[Document]:
    rows = await (await conn.execute(
        "SELECT name, source, kind, sections, note FROM (SELECT * FROM documents"
        " WHERE platform = %s AND channel_id = %s AND thread_id = %s"
        " AND (%s::text IS NULL OR message_id = %s) ORDER BY id DESC LIMIT %s) AS latest"
        " ORDER BY id",
        (key.platform, key.channel_id, key.thread_id or "", message_id, message_id,
         limit))).fetchall()
    return [document_from_row(*row) for row in rows]


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL characters."""
    return value.replace("\x00", "")
