"""One contract for every history store: the same tests run on SQLite and on PostgreSQL.

Why: the core must not notice which store it has (issue #12). Each test gets `open_store`,
which opens a store on one shared backing (a SQLite file, or a fresh PostgreSQL database on
the session's real server), so a test can also open a second one as another instance would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.storage.interface import MAX_DOCUMENTS, ChannelSettings, HistoryStore
from bot.storage.postgres import PostgresHistoryStore
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, Document, Section, Turn

CHANNEL = ChannelKey("discord", "c1")
THREAD = ChannelKey("discord", "c1", "t1")
OTHER = ChannelKey("slack", "C2")
DAY = 86_400.0

StoreFactory = Callable[..., contextlib.AbstractAsyncContextManager[HistoryStore]]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens a store (as an async context manager) on this test's shared backing."""
    if request.param == "sqlite":
        path = tmp_path / "history.sqlite3"

        def sqlite(**options: Any) -> contextlib.AbstractAsyncContextManager[HistoryStore]:
            return SQLiteHistoryStore(path, **options)
        return sqlite
    url = request.getfixturevalue("postgres_url")

    def postgres(**options: Any) -> contextlib.AbstractAsyncContextManager[HistoryStore]:
        return PostgresHistoryStore(url, **options)
    return postgres


@pytest.fixture
async def store(open_store: StoreFactory) -> AsyncIterator[HistoryStore]:
    async with open_store() as opened:
        yield opened


async def texts(store: HistoryStore, key: ChannelKey) -> list[str]:
    return [t.text for t in await store.recent(key)]


async def test_turns_survive_reopening(open_store: StoreFactory) -> None:
    async with open_store() as store:
        await store.add(CHANNEL, Turn("user", "ada", "hello"), message_id="m1")
        await store.add(CHANNEL, Turn("assistant", "Bot", "hi ada"))
    async with open_store() as store:
        assert await store.recent(CHANNEL) == [Turn("user", "ada", "hello"),
                                               Turn("assistant", "Bot", "hi ada")]


async def test_channels_and_threads_are_separate(store: HistoryStore) -> None:
    await store.add(CHANNEL, Turn("user", "a", "in channel"))
    await store.add(THREAD, Turn("user", "b", "in thread"))
    await store.add(OTHER, Turn("user", "c", "on slack"))
    assert await texts(store, CHANNEL) == ["in channel"]
    assert await texts(store, THREAD) == ["in thread"]
    stats = await store.stats()
    assert (stats.channels, stats.turns) == (3, 3)


async def test_each_conversation_is_bounded(open_store: StoreFactory) -> None:
    async with open_store(max_per_channel=5) as store:
        for i in range(12):
            await store.add(CHANNEL, Turn("user", "a", f"m{i}"))
        await store.add(THREAD, Turn("user", "a", "other"))
        assert await texts(store, CHANNEL) == [f"m{i}" for i in range(7, 12)]
        assert [t.text for t in await store.recent(CHANNEL, 2)] == ["m10", "m11"]
        assert await store.count(CHANNEL) == 5
        assert await store.count(THREAD) == 1


async def test_reset_forgets_one_conversation(store: HistoryStore) -> None:
    for text in ("x", "y"):
        await store.add(CHANNEL, Turn("user", "a", text))
    await store.add(THREAD, Turn("user", "a", "z"))
    assert await store.reset(CHANNEL) == 2
    assert await store.recent(CHANNEL) == []
    assert await texts(store, THREAD) == ["z"]
    assert await store.reset(CHANNEL) == 0


async def test_text_is_stored_exactly(store: HistoryStore) -> None:
    odd = "emoji 🦉, quotes '\" ; DROP TABLE turns; --\n\ttabs, ünïcödé, 100% %s {x}"
    await store.add(CHANNEL, Turn("user", "Robert'); --", odd))
    assert await store.recent(CHANNEL) == [Turn("user", "Robert'); --", odd)]


async def test_retention_prunes_old_turns(open_store: StoreFactory) -> None:
    now = [1_000 * DAY]
    async with open_store(clock=lambda: now[0]) as store:
        await store.add(CHANNEL, Turn("user", "a", "old"))
        await store.add(THREAD, Turn("user", "a", "old in thread"))
        now[0] += 10 * DAY
        await store.add(CHANNEL, Turn("user", "a", "new"))
        assert await store.prune(7) == 2
        assert await texts(store, CHANNEL) == ["new"]
        assert await store.recent(THREAD) == []
        assert await store.prune(7) == 0


async def test_forget_erases_the_channel_its_threads_and_settings(store: HistoryStore) -> None:
    await store.add(CHANNEL, Turn("user", "a", "secret"))
    await store.add(THREAD, Turn("user", "a", "secret in thread"))
    await store.add(OTHER, Turn("user", "a", "kept"))
    await store.save_channel_settings(CHANNEL, ChannelSettings(persona="writer"))
    await store.save_channel_settings(OTHER, ChannelSettings(enabled=False))
    assert await store.forget_channel(THREAD) == 2  # from a thread: the whole channel
    assert await store.recent(CHANNEL) == [] and await store.recent(THREAD) == []
    assert await store.channel_settings(CHANNEL) == ChannelSettings()
    assert await texts(store, OTHER) == ["kept"]
    assert await store.channel_settings(OTHER) == ChannelSettings(enabled=False)


async def test_channel_settings_round_trip_every_field(store: HistoryStore) -> None:
    chosen = ChannelSettings(persona="support", system_prompt="Be brief.", thread_replies=False,
                             enabled=True, model="qwen2.5-7b-instruct")
    await store.save_channel_settings(CHANNEL, chosen)
    assert await store.channel_settings(CHANNEL) == chosen
    assert await store.channel_settings(THREAD) == chosen  # threads inherit the channel's
    await store.save_channel_settings(CHANNEL, ChannelSettings(model=None))
    assert await store.channel_settings(CHANNEL) == ChannelSettings()


async def test_delete_message_removes_only_that_turn(store: HistoryStore) -> None:
    await store.add(CHANNEL, Turn("user", "a", "one"), message_id="m1")
    await store.add(CHANNEL, Turn("user", "a", "two"), message_id="m2")
    assert await store.delete_message(CHANNEL, "m1") == 1
    assert await store.delete_message(THREAD, "m2") == 0  # another conversation
    assert await texts(store, CHANNEL) == ["two"]


async def test_has_assistant_turn(store: HistoryStore) -> None:
    await store.add(THREAD, Turn("user", "a", "hi"))
    assert not await store.has_assistant_turn(THREAD)
    await store.add(THREAD, Turn("assistant", "Bot", "hello"))
    assert await store.has_assistant_turn(THREAD)
    assert not await store.has_assistant_turn(CHANNEL)


async def test_channel_settings_round_trip_and_threads_inherit(store: HistoryStore) -> None:
    assert await store.channel_settings(CHANNEL) == ChannelSettings()
    first = ChannelSettings(persona="writer", system_prompt="Be 100% terse.",
                            thread_replies=False, enabled=True)
    await store.save_channel_settings(CHANNEL, first)
    assert await store.channel_settings(THREAD) == first
    second = ChannelSettings(persona=None, system_prompt=None, enabled=False)
    await store.save_channel_settings(THREAD, second)  # a thread saves its channel's
    assert await store.channel_settings(CHANNEL) == second
    assert await store.channel_settings(OTHER) == ChannelSettings()


async def test_an_event_is_claimed_once_across_instances(open_store: StoreFactory) -> None:
    async with open_store() as one, open_store() as two:
        assert await one.claim_event("slack:C1:1.0001", key=CHANNEL, order=1)
        assert not await one.claim_event("slack:C1:1.0001", key=CHANNEL, order=1)
        assert not await two.claim_event("slack:C1:1.0001")
        ids = [f"discord:message:{i}" for i in range(30)]
        won = await asyncio.gather(*(s.claim_event(i) for i in ids for s in (one, two)))
        assert sum(won) == len(ids)
        assert all(a != b for a, b in zip(won[::2], won[1::2], strict=True))
        await one.finish_event("slack:C1:1.0001")
    async with open_store() as again:  # a redelivery after a restart is still a repeat
        assert not await again.claim_event("discord:message:7")
        assert await again.claim_event("discord:message:new")


async def test_rate_limit_is_a_sliding_window_per_key(store: HistoryStore) -> None:
    assert await store.rate_hit("discord:ada", limit=2, now=1000.0) == 0
    assert await store.rate_hit("discord:ada", limit=2, now=1001.0) == 0
    assert await store.rate_hit("discord:ada", limit=2, now=1020.0) == pytest.approx(40.0)
    assert await store.rate_hit("discord:bob", limit=2, now=1020.0) == 0
    assert await store.rate_hit("discord:ada", limit=2, now=1060.5) == 0  # 1000 left
    assert await store.rate_hit("discord:ada", limit=2, now=1061.0) == 0  # 1001 left
    assert await store.rate_hit("discord:ada", limit=2, now=1061.5) == pytest.approx(59.0)
    for _ in range(5):
        assert await store.rate_hit("discord:ada", limit=0, now=1062.0) == 0  # off


async def test_channel_lock_can_be_taken_again_after_use(store: HistoryStore) -> None:
    for order in (None, 5, 6):
        async with store.channel_lock(CHANNEL, order=order):
            await store.add(CHANNEL, Turn("user", "a", f"turn {order}"))
    with pytest.raises(ZeroDivisionError):
        async with store.channel_lock(CHANNEL):
            raise ZeroDivisionError
    async with store.channel_lock(CHANNEL):  # an exception inside released it
        pass
    assert await store.count(CHANNEL) == 3


# -- shared documents (issue #17) ------------------------------------------------------

def doc(name: str, text: str = "Refunds within 45 days.") -> Document:
    return Document(name, "file", "PDF", (Section("page 1", text), Section("page 2", "More.")))


async def test_documents_are_kept_with_their_conversation(open_store: StoreFactory) -> None:
    link = Document("https://x.example/a", "link", "HTML", (Section("", "Lighthouse\x00"),),
                    note="it is long")
    async with open_store() as store:
        await store.add_document(CHANNEL, doc("report.pdf"), message_id="m1")
        await store.add_document(CHANNEL, link, message_id="m2")
        await store.add_document(THREAD, doc("other.pdf"))
    async with open_store() as store:  # after a restart, as follow-ups need them
        found = await store.documents(CHANNEL)
        assert [d.name for d in found] == ["report.pdf", "https://x.example/a"]
        assert found[0] == doc("report.pdf")
        assert found[1].source == "link" and found[1].note == "it is long"
        assert found[1].sections[0].text.startswith("Lighthouse")
        assert [d.name for d in await store.documents(CHANNEL, limit=1)] == [
            "https://x.example/a"]
        assert [d.name for d in await store.documents(THREAD)] == ["other.pdf"]
        assert await store.documents(OTHER) == []
        # the documents one message shared (a regenerated answer reads its question's)
        assert await store.documents(CHANNEL, message_id="m1") == [doc("report.pdf")]
        assert await store.documents(CHANNEL, message_id="m3") == []


async def test_documents_are_bounded_per_conversation(store: HistoryStore) -> None:
    for n in range(MAX_DOCUMENTS + 3):
        await store.add_document(CHANNEL, doc(f"d{n}.pdf"))
    names = [d.name for d in await store.documents(CHANNEL, limit=100)]
    assert names == [f"d{n}.pdf" for n in range(3, MAX_DOCUMENTS + 3)]


async def test_documents_are_erased_like_turns(open_store: StoreFactory) -> None:
    now = [1_000_000.0]
    async with open_store(clock=lambda: now[0]) as store:
        await store.add_document(CHANNEL, doc("a.pdf"), message_id="m1")
        await store.add_document(CHANNEL, doc("b.pdf"), message_id="m2")
        await store.add_document(THREAD, doc("c.pdf"))
        await store.add_document(OTHER, doc("d.pdf"))
        await store.delete_message(CHANNEL, "m1")  # the user deleted the message
        assert [d.name for d in await store.documents(CHANNEL)] == ["b.pdf"]
        await store.reset(CHANNEL)  # /reset: this conversation only
        assert await store.documents(CHANNEL) == []
        assert [d.name for d in await store.documents(THREAD)] == ["c.pdf"]
        await store.forget_channel(CHANNEL)  # /forget: the channel and its threads
        assert await store.documents(THREAD) == []
        now[0] += 10 * DAY
        await store.add_document(OTHER, doc("e.pdf"))
        await store.prune(5)  # retention
        assert [d.name for d in await store.documents(OTHER)] == ["e.pdf"]


async def test_a_store_from_before_documents_gains_their_table(open_store: StoreFactory,
                                                               tmp_path: Path) -> None:
    async with open_store() as store:
        await store.add(CHANNEL, Turn("user", "ada", "from the old version"))
        if isinstance(store, SQLiteHistoryStore):
            await store._run(lambda: store._conn().execute("DROP TABLE documents"))
        else:
            assert isinstance(store, PostgresHistoryStore)
            await store._rowcount("DROP TABLE documents", ())
    async with open_store() as store:  # the next start creates it; nothing else changes
        await store.add_document(CHANNEL, doc("new.pdf"))
        assert [d.name for d in await store.documents(CHANNEL)] == ["new.pdf"]
        assert await texts(store, CHANNEL) == ["from the old version"]
