"""The answers and feedback part of the store contract (issue #18), on SQLite and PostgreSQL.

Same fixtures as `test_store_contract`: each test runs on a SQLite file and on a fresh
database of the session's real PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from bot.storage.answer_records import AnswerMeta, FeedbackCounts
from bot.storage.interface import HistoryStore
from bot.storage.postgres import PostgresHistoryStore
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, Turn
from tests.test_store_contract import CHANNEL, DAY, OTHER, THREAD, StoreFactory


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens a store on this test's backing: a SQLite file, or a fresh PostgreSQL database
    (as `test_store_contract.open_store` does)."""
    if request.param == "sqlite":
        path = tmp_path / "history.sqlite3"
        return lambda **options: SQLiteHistoryStore(path, **options)
    url = request.getfixturevalue("postgres_url")
    return lambda **options: PostgresHistoryStore(url, **options)


@pytest.fixture
async def db(stores: StoreFactory) -> AsyncIterator[HistoryStore]:
    async with stores() as opened:
        yield opened


META = AnswerMeta(asker_id="u-ada", persona="assistant", model="tiny", engine="in-process cpu")


async def ask(store: HistoryStore, key: ChannelKey, question_id: str, question: str,
              answer: str, meta: AnswerMeta = META) -> None:
    await store.add(key, Turn("user", "ada", question), message_id=question_id)
    await store.add_answer(key, Turn("assistant", "Bot", answer), question_id=question_id,
                           meta=meta)


async def test_an_answer_is_found_by_its_question_after_reopening(
        stores: StoreFactory) -> None:
    async with stores() as store:
        await ask(store, CHANNEL, "q1", "What is 2+2?", "4",
                  AnswerMeta("u-ada", "writer", "m", "e", finish="budget"))
    async with stores() as store:
        found = await store.answer(CHANNEL, "q1")
        assert found is not None
        assert (found.text, found.question, found.question_author) == ("4", "What is 2+2?", "ada")
        assert found.meta == AnswerMeta("u-ada", "writer", "m", "e", finish="budget")
        assert found.revision == 1
        assert await store.answer(CHANNEL, "nope") is None
        assert await store.answer(THREAD, "q1") is None  # another conversation
        assert [t.text for t in await store.recent(CHANNEL)] == ["What is 2+2?", "4"]


async def test_turns_before_a_question(db: HistoryStore) -> None:
    await db.add(CHANNEL, Turn("user", "bo", "earlier"), message_id="q0")
    await db.add(CHANNEL, Turn("assistant", "Bot", "earlier answer"))
    await ask(db, CHANNEL, "q1", "question", "answer")
    await db.add(CHANNEL, Turn("user", "bo", "later"), message_id="q2")
    assert await db.turns_before(CHANNEL, "q1") == [
        Turn("user", "bo", "earlier"), Turn("assistant", "Bot", "earlier answer")]
    assert await db.turns_before(CHANNEL, "q1", limit=1) == [
        Turn("assistant", "Bot", "earlier answer")]
    assert await db.turns_before(CHANNEL, "q0") == []
    assert await db.turns_before(CHANNEL, "gone") is None


async def test_revising_replaces_the_answer_in_place(db: HistoryStore) -> None:
    await ask(db, CHANNEL, "q1", "question", "first answer")
    await db.add(CHANNEL, Turn("user", "bo", "later"), message_id="q2")
    revised = AnswerMeta("u-ada", "writer", "m2", "e2", finish="stopped")
    assert await db.revise_answer(CHANNEL, "q1", "second answer", meta=revised,
                                     new_revision=True) == 2
    assert [t.text for t in await db.recent(CHANNEL)] == ["question", "second answer",
                                                             "later"]
    found = await db.answer(CHANNEL, "q1")
    assert found is not None and found.meta == revised and found.revision == 2
    # A continued answer keeps its revision.
    assert await db.revise_answer(CHANNEL, "q1", "second answer, continued", meta=revised,
                                     new_revision=False) == 2
    assert await db.revise_answer(CHANNEL, "gone", "x", meta=revised,
                                     new_revision=True) is None


async def test_one_vote_per_person_per_answer_and_a_change_replaces_it(
        db: HistoryStore) -> None:
    await ask(db, CHANNEL, "q1", "question", "answer")
    await ask(db, THREAD, "q2", "thread question", "thread answer")
    first = await db.vote(CHANNEL, "q1", "u-bo", 1, now=10.0)
    assert first.found and first.previous is None
    again = await db.vote(CHANNEL, "q1", "u-bo", 1, now=11.0)
    assert again.previous == 1
    changed = await db.vote(CHANNEL, "q1", "u-bo", -1, now=12.0)
    assert changed.previous == 1
    await db.vote(CHANNEL, "q1", "u-cy", 1, now=13.0)
    await db.vote(THREAD, "q2", "u-bo", 1, now=14.0)
    await db.vote(OTHER, "q1", "u-bo", 1, now=15.0)  # no such answer there
    assert not (await db.vote(CHANNEL, "gone", "u-bo", 1, now=16.0)).found
    # The channel's count includes its threads; the other channel has none.
    assert await db.feedback_counts(CHANNEL) == FeedbackCounts(up=2, down=1)
    assert await db.feedback_counts(OTHER) == FeedbackCounts()
    records = await db.feedback_since(0.0)
    assert [(r.question_id, r.value, r.question, r.answer) for r in records] == [
        ("q1", -1, "question", "answer"), ("q1", 1, "question", "answer"),
        ("q2", 1, "thread question", "thread answer")]
    assert records[2].thread_id == "t1" and records[0].thread_id is None
    assert (records[0].persona, records[0].model, records[0].engine) == (
        "assistant", "tiny", "in-process cpu")
    assert [r.question_id for r in await db.feedback_since(13.5)] == ["q2"]


async def test_a_regenerated_answer_is_rated_afresh(db: HistoryStore) -> None:
    await ask(db, CHANNEL, "q1", "question", "bad answer")
    await db.vote(CHANNEL, "q1", "u-bo", -1, now=1.0)
    await db.revise_answer(CHANNEL, "q1", "good answer", meta=META, new_revision=True)
    assert (await db.vote(CHANNEL, "q1", "u-bo", 1, now=2.0)).previous is None
    records = await db.feedback_since(0.0)
    assert [(r.revision, r.value, r.answer) for r in records] == [
        (1, -1, "bad answer"), (2, 1, "good answer")]


async def test_forget_reset_and_retention_erase_answers_and_votes(
        stores: StoreFactory) -> None:
    now = [1_000 * DAY]
    async with stores(clock=lambda: now[0]) as store:
        await ask(store, CHANNEL, "q1", "secret", "answer")
        await ask(store, THREAD, "q2", "secret in thread", "answer")
        await ask(store, OTHER, "q3", "kept", "answer")
        for key, question in ((CHANNEL, "q1"), (THREAD, "q2"), (OTHER, "q3")):
            await store.vote(key, question, "u-bo", 1, now=now[0])
        await store.reset(THREAD)
        assert await store.answer(THREAD, "q2") is None
        assert [r.question_id for r in await store.feedback_since(0)] == ["q1", "q3"]
        await store.forget_channel(CHANNEL)
        assert await store.answer(CHANNEL, "q1") is None
        assert [r.question_id for r in await store.feedback_since(0)] == ["q3"]
        now[0] += 10 * DAY
        await ask(store, OTHER, "q4", "new", "answer")
        await store.vote(OTHER, "q4", "u-bo", -1, now=now[0])
        await store.prune(7)
        assert await store.answer(OTHER, "q3") is None
        assert [r.question_id for r in await store.feedback_since(0)] == ["q4"]


async def test_deleting_the_question_deletes_the_votes_that_copy_it(db: HistoryStore) -> None:
    await ask(db, CHANNEL, "q1", "question", "answer")
    await db.vote(CHANNEL, "q1", "u-bo", 1, now=1.0)
    await db.delete_message(CHANNEL, "q1")
    assert await db.feedback_since(0) == []
    found = await db.answer(CHANNEL, "q1")
    assert found is not None and found.question is None  # the bot's answer itself stays


async def test_an_answer_cut_from_history_by_its_bound_is_gone(stores: StoreFactory) -> None:
    async with stores(max_per_channel=3) as store:
        await ask(store, CHANNEL, "q1", "question", "answer")
        for i in range(3):
            await store.add(CHANNEL, Turn("user", "bo", f"m{i}"))
        assert await store.answer(CHANNEL, "q1") is None
        assert not (await store.vote(CHANNEL, "q1", "u-bo", 1, now=1.0)).found


def test_an_older_sqlite_file_gains_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the schema before issue #18, with a stored turn
        db.executescript(
            "CREATE TABLE turns (id INTEGER PRIMARY KEY AUTOINCREMENT, platform TEXT NOT NULL,"
            " channel_id TEXT NOT NULL, thread_id TEXT NOT NULL DEFAULT '', role TEXT NOT NULL,"
            " author TEXT NOT NULL, text TEXT NOT NULL, message_id TEXT,"
            " created_at REAL NOT NULL);"
            "INSERT INTO turns (platform, channel_id, role, author, text, message_id,"
            " created_at) VALUES ('discord', 'c1', 'user', 'ada', 'old question', 'q0', 1);")

    async def upgrade() -> None:
        async with SQLiteHistoryStore(path) as store:
            assert [t.text for t in await store.recent(CHANNEL)] == ["old question"]
            await store.add_answer(CHANNEL, Turn("assistant", "Bot", "late answer"),
                                   question_id="q0", meta=META)
            assert (await store.vote(CHANNEL, "q0", "u-bo", 1, now=1.0)).found

    asyncio.run(upgrade())


async def test_an_older_postgres_database_gains_the_tables(postgres_url: str) -> None:
    async with PostgresHistoryStore(postgres_url) as store:
        await store.add(CHANNEL, Turn("user", "ada", "old question"), message_id="q0")
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("DROP TABLE answers; DROP TABLE feedback")  # as before issue #18
    async with PostgresHistoryStore(postgres_url) as store:
        await store.add_answer(CHANNEL, Turn("assistant", "Bot", "late answer"),
                               question_id="q0", meta=META)
        assert (await store.vote(CHANNEL, "q0", "u-bo", 1, now=1.0)).found
        assert await store.schema_version() == 3  # the numbered migrations are untouched
