"""Answers and their feedback in the PostgreSQL store (issue #18): a block of its own.

`PostgresHistoryStore` mixes in `PostgresAnswers` and runs `ANSWERS_SCHEMA` after its
numbered migrations, under the same migration lock; the statements are idempotent (``IF NOT
EXISTS``), so a database an older version created gains the tables at the next start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from bot.storage.answer_records import (
    AnswerMeta,
    FeedbackCounts,
    FeedbackRecord,
    StoredAnswer,
    Vote,
)
from bot.types import ChannelKey, Role, Turn

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

ANSWERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    platform    TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    thread_id   TEXT NOT NULL DEFAULT '',
    question_id TEXT NOT NULL,
    turn_id     BIGINT NOT NULL,
    asker_id    TEXT NOT NULL,
    persona     TEXT NOT NULL,
    model       TEXT NOT NULL,
    engine      TEXT NOT NULL,
    finish      TEXT NOT NULL,
    revision    INTEGER NOT NULL DEFAULT 1,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (platform, channel_id, thread_id, question_id)
);
CREATE INDEX IF NOT EXISTS answers_by_age ON answers (created_at);
CREATE TABLE IF NOT EXISTS feedback (
    platform    TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    thread_id   TEXT NOT NULL DEFAULT '',
    question_id TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    voter_id    TEXT NOT NULL,
    value       SMALLINT NOT NULL CHECK (value IN (-1, 1)),
    question    TEXT NOT NULL,
    answer      TEXT NOT NULL,
    persona     TEXT NOT NULL,
    model       TEXT NOT NULL,
    engine      TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (platform, channel_id, thread_id, question_id, revision, voter_id)
);
CREATE INDEX IF NOT EXISTS feedback_by_age ON feedback (created_at);
"""

_CONV = "platform = %s AND channel_id = %s AND thread_id = %s"
_A_CONV = "a.platform = %s AND a.channel_id = %s AND a.thread_id = %s AND a.question_id = %s"
_QUESTION = ("(SELECT q.{col} FROM turns AS q WHERE q.platform = a.platform"
             " AND q.channel_id = a.channel_id AND q.thread_id = a.thread_id"
             " AND q.message_id = a.question_id AND q.role = 'user' ORDER BY q.id LIMIT 1)")


def _where(key: ChannelKey) -> tuple[str, str, str]:
    return (key.platform, key.channel_id, key.thread_id or "")


async def erase_answers(conn: Conn, where: str, params: tuple[Any, ...]) -> None:
    """Delete the answers and votes matching `where`, in the caller's transaction."""
    await conn.execute(f"DELETE FROM answers WHERE {where}", params)
    await conn.execute(f"DELETE FROM feedback WHERE {where}", params)


async def insert_turn(conn: Conn, key: ChannelKey, turn: Turn, message_id: str | None, *,
                      now: float, keep: int) -> int:
    """Insert a turn and drop its conversation's oldest beyond `keep`, in the caller's
    transaction (`add`, `add_answer`); returns the new turn's id."""
    where = _where(key)
    row = await (await conn.execute(
        "INSERT INTO turns (platform, channel_id, thread_id, role, author, text, message_id,"
        " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (*where, turn.role, turn.author.replace("\x00", ""), turn.text.replace("\x00", ""),
         message_id, now))).fetchone()
    await conn.execute(
        f"DELETE FROM turns WHERE {_CONV} AND id <= (SELECT id FROM turns WHERE {_CONV}"
        " ORDER BY id DESC LIMIT 1 OFFSET %s)", (*where, *where, keep))
    return int(row[0]) if row else 0


class PostgresAnswers:
    """The answer and feedback methods of `HistoryStore`, for the PostgreSQL store."""

    _clock: Callable[[], float]

    async def _with(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError  # the store's

    async def _insert_turn(self, conn: Conn, key: ChannelKey, turn: Turn,
                           message_id: str | None) -> int:
        raise NotImplementedError  # the store's

    async def _delete_turns(self, where: str, params: tuple[Any, ...], *,
                            also: tuple[str, ...], also_where: str | None = None) -> int:
        """Delete the turns matching `where` and, in the same transaction, the rows of the
        tables `also` matching `also_where` (default: the same condition); returns the turns
        deleted. /reset, retention and deleted messages take their answers and votes along."""
        async def run(conn: Conn) -> int:
            async with conn.transaction():
                deleted = (await conn.execute(f"DELETE FROM turns WHERE {where}",
                                              params)).rowcount
                for table in also:
                    await conn.execute(f"DELETE FROM {table} WHERE {also_where or where}",
                                       params)
            return deleted
        return await self._with(run)

    async def add_answer(self, key: ChannelKey, turn: Turn, *, question_id: str,
                         meta: AnswerMeta) -> None:
        async def run(conn: Conn) -> None:
            async with conn.transaction():
                turn_id = await self._insert_turn(conn, key, turn, None)
                await conn.execute(
                    "INSERT INTO answers (platform, channel_id, thread_id, question_id, turn_id,"
                    " asker_id, persona, model, engine, finish, revision, created_at) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s) ON CONFLICT (platform,"
                    " channel_id, thread_id, question_id) DO UPDATE SET turn_id ="
                    " EXCLUDED.turn_id, asker_id = EXCLUDED.asker_id, persona = EXCLUDED.persona,"
                    " model = EXCLUDED.model, engine = EXCLUDED.engine, finish = EXCLUDED.finish,"
                    " revision = 1, created_at = EXCLUDED.created_at",
                    (*_where(key), question_id, turn_id, meta.asker_id, meta.persona,
                     meta.model, meta.engine, meta.finish, self._clock()))
                await conn.execute(
                    f"DELETE FROM answers WHERE {_CONV} AND turn_id NOT IN"
                    f" (SELECT id FROM turns WHERE {_CONV})", (*_where(key), *_where(key)))
        await self._with(run)

    async def answer(self, key: ChannelKey, question_id: str) -> StoredAnswer | None:
        async def run(conn: Conn) -> StoredAnswer | None:
            row = await (await conn.execute(
                "SELECT t.text, " + _QUESTION.format(col="text") + ", "
                + _QUESTION.format(col="author") + ", a.asker_id, a.persona, a.model,"
                " a.engine, a.finish, a.revision, a.created_at FROM answers AS a"
                " JOIN turns AS t ON t.id = a.turn_id WHERE " + _A_CONV,
                (*_where(key), question_id))).fetchone()
            if row is None:
                return None
            text, question, author, asker, persona, model, engine, finish, revision, at = row
            return StoredAnswer(text, question, author,
                                AnswerMeta(asker, persona, model, engine, finish),
                                int(revision), float(at))
        return await self._with(run)

    async def turns_before(self, key: ChannelKey, question_id: str,
                           limit: int | None = None) -> list[Turn] | None:
        async def run(conn: Conn) -> list[Turn] | None:
            found = await (await conn.execute(
                f"SELECT MIN(id) FROM turns WHERE {_CONV} AND message_id = %s"
                " AND role = 'user'", (*_where(key), question_id))).fetchone()
            if found is None or found[0] is None:
                return None
            rows = await (await conn.execute(
                f"SELECT role, author, text FROM turns WHERE {_CONV} AND id < %s"
                " ORDER BY id DESC LIMIT %s", (*_where(key), found[0], limit))).fetchall()
            turns: list[Turn] = []
            for role, author, text in reversed(rows):
                kind: Role = "assistant" if role == "assistant" else "user"
                turns.append(Turn(kind, author, text))
            return turns
        return await self._with(run)

    async def revise_answer(self, key: ChannelKey, question_id: str, text: str, *,
                            meta: AnswerMeta, new_revision: bool) -> int | None:
        async def run(conn: Conn) -> int | None:
            async with conn.transaction():
                row = await (await conn.execute(
                    "SELECT a.turn_id, a.revision FROM answers AS a JOIN turns AS t"
                    " ON t.id = a.turn_id WHERE " + _A_CONV + " FOR UPDATE OF a",
                    (*_where(key), question_id))).fetchone()
                if row is None:
                    return None
                turn_id, revision = row[0], int(row[1]) + int(new_revision)
                await conn.execute("UPDATE turns SET text = %s WHERE id = %s",
                                   (text.replace("\x00", ""), turn_id))
                await conn.execute(
                    f"UPDATE answers SET persona = %s, model = %s, engine = %s, finish = %s,"
                    f" revision = %s WHERE {_CONV} AND question_id = %s",
                    (meta.persona, meta.model, meta.engine, meta.finish, revision,
                     *_where(key), question_id))
                return revision
        return await self._with(run)

    async def vote(self, key: ChannelKey, question_id: str, voter_id: str, value: int, *,
                   now: float) -> Vote:
        if value not in (-1, 1):
            raise ValueError("a vote is +1 or -1")

        async def run(conn: Conn) -> Vote:
            async with conn.transaction():
                found = await (await conn.execute(
                    "SELECT a.revision FROM answers AS a JOIN turns AS t ON t.id = a.turn_id"
                    " WHERE " + _A_CONV + " FOR UPDATE OF a",
                    (*_where(key), question_id))).fetchone()
                if found is None:
                    return Vote(found=False)
                previous = await (await conn.execute(
                    f"SELECT value FROM feedback WHERE {_CONV} AND question_id = %s"
                    " AND revision = %s AND voter_id = %s",
                    (*_where(key), question_id, found[0], voter_id))).fetchone()
                await conn.execute(
                    "INSERT INTO feedback (platform, channel_id, thread_id, question_id,"
                    " revision, voter_id, value, question, answer, persona, model, engine,"
                    " created_at) SELECT a.platform, a.channel_id, a.thread_id, a.question_id,"
                    " a.revision, %s, %s, COALESCE(" + _QUESTION.format(col="text")
                    + ", ''), t.text, a.persona, a.model, a.engine, %s FROM answers AS a"
                    " JOIN turns AS t ON t.id = a.turn_id WHERE " + _A_CONV
                    + " ON CONFLICT (platform, channel_id, thread_id, question_id, revision,"
                    " voter_id) DO UPDATE SET value = EXCLUDED.value, answer = EXCLUDED.answer,"
                    " created_at = EXCLUDED.created_at",
                    (voter_id, value, now, *_where(key), question_id))
                return Vote(found=True, previous=None if previous is None else int(previous[0]))
        return await self._with(run)

    async def feedback_counts(self, key: ChannelKey) -> FeedbackCounts:
        async def run(conn: Conn) -> FeedbackCounts:
            row = await (await conn.execute(
                "SELECT COUNT(*) FILTER (WHERE value = 1), COUNT(*) FILTER (WHERE value = -1)"
                " FROM feedback WHERE platform = %s AND channel_id = %s",
                (key.platform, key.channel_id))).fetchone()
            return FeedbackCounts(int(row[0]), int(row[1])) if row else FeedbackCounts()
        return await self._with(run)

    async def feedback_since(self, since: float) -> list[FeedbackRecord]:
        async def run(conn: Conn) -> list[FeedbackRecord]:
            rows = await (await conn.execute(
                "SELECT platform, channel_id, thread_id, question_id, revision, value,"
                " question, answer, persona, model, engine, created_at FROM feedback"
                " WHERE created_at >= %s ORDER BY created_at", (since,))).fetchall()
            return [FeedbackRecord(platform, channel, thread or None, question_id,
                                   int(revision), int(value), question, answer, persona,
                                   model, engine, float(at))
                    for (platform, channel, thread, question_id, revision, value, question,
                         answer, persona, model, engine, at) in rows]
        return await self._with(run)
