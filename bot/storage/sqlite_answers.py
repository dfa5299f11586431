"""Answers and their feedback in the SQLite store (issue #18): a block of its own.

`SQLiteHistoryStore` mixes in `SQLiteAnswers`; the tables are created with ``IF NOT EXISTS``,
so a file an older version wrote gains them at the next start. Everything runs on the
store's private thread, like the rest of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from bot.storage.answer_records import (
    AnswerMeta,
    FeedbackCounts,
    FeedbackRecord,
    StoredAnswer,
    Vote,
)
from bot.storage.sqlite_runner import SQLiteRunner
from bot.types import ChannelKey, Turn

ANSWERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    platform    TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    thread_id   TEXT NOT NULL DEFAULT '',
    question_id TEXT NOT NULL,
    turn_id     INTEGER NOT NULL,
    asker_id    TEXT NOT NULL,
    persona     TEXT NOT NULL,
    model       TEXT NOT NULL,
    engine      TEXT NOT NULL,
    finish      TEXT NOT NULL,
    revision    INTEGER NOT NULL DEFAULT 1,
    created_at  REAL NOT NULL,
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
    value       INTEGER NOT NULL CHECK (value IN (-1, 1)),
    question    TEXT NOT NULL,
    answer      TEXT NOT NULL,
    persona     TEXT NOT NULL,
    model       TEXT NOT NULL,
    engine      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (platform, channel_id, thread_id, question_id, revision, voter_id)
);
CREATE INDEX IF NOT EXISTS feedback_by_age ON feedback (created_at);
"""

_CONV = "platform = ? AND channel_id = ? AND thread_id = ?"
_QUESTION = ("(SELECT q.{col} FROM turns AS q WHERE q.platform = a.platform"
             " AND q.channel_id = a.channel_id AND q.thread_id = a.thread_id"
             " AND q.message_id = a.question_id AND q.role = 'user' ORDER BY q.id LIMIT 1)")


def _where(key: ChannelKey) -> tuple[str, str, str]:
    return (key.platform, key.channel_id, key.thread_id or "")


def erase_answers(db: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> None:
    """Delete the answers and votes matching `where` (over platform, channel_id, thread_id,
    question_id, created_at), inside the caller's transaction: /forget, /reset, retention."""
    db.execute(f"DELETE FROM answers WHERE {where}", params)
    db.execute(f"DELETE FROM feedback WHERE {where}", params)


class SQLiteAnswers:
    """The answer and feedback methods of `HistoryStore`, for the SQLite store."""

    _sql: SQLiteRunner
    _clock: Callable[[], float]

    def _insert_turn(self, db: sqlite3.Connection, key: ChannelKey, turn: Turn,
                     message_id: str | None) -> int:
        raise NotImplementedError  # the store's

    async def add_answer(self, key: ChannelKey, turn: Turn, *, question_id: str,
                         meta: AnswerMeta) -> None:
        await self._sql.run(self._add_answer, key, turn, question_id, meta)

    async def answer(self, key: ChannelKey, question_id: str) -> StoredAnswer | None:
        return await self._sql.run(self._answer, key, question_id)

    async def turns_before(self, key: ChannelKey, question_id: str,
                           limit: int | None = None) -> list[Turn] | None:
        return await self._sql.run(self._turns_before, key, question_id, limit)

    async def revise_answer(self, key: ChannelKey, question_id: str, text: str, *,
                            meta: AnswerMeta, new_revision: bool) -> int | None:
        return await self._sql.run(self._revise, key, question_id, text, meta, new_revision)

    async def vote(self, key: ChannelKey, question_id: str, voter_id: str, value: int, *,
                   now: float) -> Vote:
        if value not in (-1, 1):
            raise ValueError("a vote is +1 or -1")
        return await self._sql.run(self._vote, key, question_id, voter_id, value, now)

    async def feedback_counts(self, key: ChannelKey) -> FeedbackCounts:
        return await self._sql.run(self._counts, key)

    async def feedback_since(self, since: float) -> list[FeedbackRecord]:
        return await self._sql.run(self._since, since)

    # -- on the private thread -------------------------------------------------------

    def _add_answer(self, key: ChannelKey, turn: Turn, question_id: str,
                    meta: AnswerMeta) -> None:
        db = self._sql.conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            turn_id = self._insert_turn(db, key, turn, None)
            db.execute(
                "INSERT OR REPLACE INTO answers (platform, channel_id, thread_id, question_id,"
                " turn_id, asker_id, persona, model, engine, finish, revision, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (*_where(key), question_id, turn_id, meta.asker_id, meta.persona, meta.model,
                 meta.engine, meta.finish, self._clock()))
            # Answers whose text history dropped (its bound) go with it.
            db.execute(f"DELETE FROM answers WHERE {_CONV} AND turn_id NOT IN"
                       f" (SELECT id FROM turns WHERE {_CONV})", (*_where(key), *_where(key)))

    def _answer(self, key: ChannelKey, question_id: str) -> StoredAnswer | None:
        row = self._sql.conn().execute(
            "SELECT t.text, " + _QUESTION.format(col="text") + ", "
            + _QUESTION.format(col="author") + ", a.asker_id, a.persona, a.model, a.engine,"
            " a.finish, a.revision, a.created_at FROM answers AS a"
            " JOIN turns AS t ON t.id = a.turn_id"
            " WHERE a.platform = ? AND a.channel_id = ? AND a.thread_id = ?"
            " AND a.question_id = ?", (*_where(key), question_id)).fetchone()
        if row is None:
            return None
        text, question, author, asker, persona, model, engine, finish, revision, at = row
        return StoredAnswer(text, question, author,
                            AnswerMeta(asker, persona, model, engine, finish), revision, at)

    def _turns_before(self, key: ChannelKey, question_id: str,
                      limit: int | None) -> list[Turn] | None:
        db = self._sql.conn()
        found = db.execute(f"SELECT MIN(id) FROM turns WHERE {_CONV} AND message_id = ?"
                           " AND role = 'user'", (*_where(key), question_id)).fetchone()
        if found is None or found[0] is None:
            return None
        rows = db.execute(
            f"SELECT role, author, text FROM turns WHERE {_CONV} AND id < ?"
            " ORDER BY id DESC LIMIT ?", (*_where(key), found[0], limit or -1)).fetchall()
        return [Turn(role, author, text) for role, author, text in reversed(rows)]

    def _revise(self, key: ChannelKey, question_id: str, text: str, meta: AnswerMeta,
                new_revision: bool) -> int | None:
        db = self._sql.conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT a.turn_id, a.revision FROM answers AS a JOIN turns AS t"
                " ON t.id = a.turn_id WHERE a.platform = ? AND a.channel_id = ?"
                " AND a.thread_id = ? AND a.question_id = ?",
                (*_where(key), question_id)).fetchone()
            if row is None:
                return None
            turn_id, revision = row
            revision += int(new_revision)
            db.execute("UPDATE turns SET text = ? WHERE id = ?", (text, turn_id))
            db.execute(
                f"UPDATE answers SET persona = ?, model = ?, engine = ?, finish = ?,"
                f" revision = ? WHERE {_CONV} AND question_id = ?",
                (meta.persona, meta.model, meta.engine, meta.finish, revision, *_where(key),
                 question_id))
        return int(revision)

    def _vote(self, key: ChannelKey, question_id: str, voter_id: str, value: int,
              now: float) -> Vote:
        db = self._sql.conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            found = db.execute(
                "SELECT a.revision FROM answers AS a JOIN turns AS t ON t.id = a.turn_id"
                " WHERE a.platform = ? AND a.channel_id = ? AND a.thread_id = ?"
                " AND a.question_id = ?", (*_where(key), question_id)).fetchone()
            if found is None:
                return Vote(found=False)
            previous = db.execute(
                f"SELECT value FROM feedback WHERE {_CONV} AND question_id = ? AND revision = ?"
                " AND voter_id = ?", (*_where(key), question_id, found[0], voter_id)).fetchone()
            db.execute(
                "INSERT INTO feedback (platform, channel_id, thread_id, question_id, revision,"
                " voter_id, value, question, answer, persona, model, engine, created_at)"
                " SELECT a.platform, a.channel_id, a.thread_id, a.question_id, a.revision, ?, ?,"
                " COALESCE(" + _QUESTION.format(col="text") + ", ''), t.text, a.persona,"
                " a.model, a.engine, ? FROM answers AS a JOIN turns AS t ON t.id = a.turn_id"
                " WHERE a.platform = ? AND a.channel_id = ? AND a.thread_id = ?"
                " AND a.question_id = ? ON CONFLICT (platform, channel_id, thread_id,"
                " question_id, revision, voter_id) DO UPDATE SET value = excluded.value,"
                " answer = excluded.answer, created_at = excluded.created_at",
                (voter_id, value, now, *_where(key), question_id))
        return Vote(found=True, previous=None if previous is None else int(previous[0]))

    def _counts(self, key: ChannelKey) -> FeedbackCounts:
        up, down = self._sql.conn().execute(
            "SELECT COALESCE(SUM(value = 1), 0), COALESCE(SUM(value = -1), 0) FROM feedback"
            " WHERE platform = ? AND channel_id = ?", (key.platform, key.channel_id)).fetchone()
        return FeedbackCounts(int(up), int(down))

    def _since(self, since: float) -> list[FeedbackRecord]:
        rows = self._sql.conn().execute(
            "SELECT platform, channel_id, thread_id, question_id, revision, value, question,"
            " answer, persona, model, engine, created_at FROM feedback WHERE created_at >= ?"
            " ORDER BY created_at, rowid", (since,)).fetchall()
        return [FeedbackRecord(platform, channel, thread or None, question_id, revision, value,
                               question, answer, persona, model, engine, at)
                for (platform, channel, thread, question_id, revision, value, question, answer,
                     persona, model, engine, at) in rows]
