"""The core with a store several instances share: claims, shared rate limit, a lost database.

Two `ConversationCore`s on one PostgreSQL database stand for two bot instances (the
multi-process version is `tests/test_multi_instance.py`); workers run the echo backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.engines.worker import ModelWorker
from bot.errors import StoreUnavailable
from bot.storage.postgres import PostgresHistoryStore
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, IncomingMessage, Turn
from tests.conftest import with_settings
from tests.fakes.backends import EchoBackend
from tests.pg_server import running_postgres

KEY = ChannelKey("slack", "C1")


def message(text: str, *, author: str = "ada", message_id: str = "m1",
            addressed: bool = True) -> IncomingMessage:
    return IncomingMessage(key=KEY, message_id=message_id, author_id=f"id-{author}",
                           author_name=author, text=text, addressed=addressed)


@pytest.fixture
async def two_cores(postgres_url: str,
                    settings: Settings) -> AsyncIterator[tuple[ConversationCore, ...]]:
    limited = with_settings(settings, rate_limit_per_minute=3)
    async with PostgresHistoryStore(postgres_url) as one, \
            PostgresHistoryStore(postgres_url) as two, \
            ModelWorker(EchoBackend) as w1, ModelWorker(EchoBackend) as w2:
        yield (ConversationCore(worker=w1, history=one, settings=limited),
               ConversationCore(worker=w2, history=two, settings=limited))


async def test_an_event_claimed_by_one_core_is_not_claimed_by_the_other(
        two_cores: tuple[ConversationCore, ...]) -> None:
    one, two = two_cores
    async with one.claimed(KEY, "m1", "slack:C1:1.0001", order=1) as first:
        async with two.claimed(KEY, "m1", "slack:C1:1.0001", order=1) as second:
            assert (first, second) == (True, False)
    async with two.claimed(KEY, "m1", "slack:C1:1.0001") as again:  # a late retry
        assert not again


async def test_the_rate_limit_counts_across_instances(
        two_cores: tuple[ConversationCore, ...]) -> None:
    one, two = two_cores
    replies = [await core.handle(message(f"q{i}", message_id=f"m{i}"))
               for i, core in enumerate((one, two, one, two))]
    texts = [r.text if r else None for r in replies]
    assert texts[:3] == ["echo: q0", "echo: q1", "echo: q2"]
    assert texts[3] is not None and texts[3].startswith(
        "You're sending requests faster than I can answer (at most 3 a minute)")
    other = await two.handle(message("hi", author="bob", message_id="b1"))
    assert other is not None and other.text == "echo: hi"


async def test_turns_of_a_conversation_wait_for_an_earlier_claim_in_this_process(
        settings: Settings) -> None:
    async with SQLiteHistoryStore(":memory:") as store, ModelWorker(EchoBackend) as worker:
        core = ConversationCore(worker=worker, history=store, settings=settings)
        release = asyncio.Event()

        async def earlier() -> None:
            async with core.claimed(KEY, "a", "e-a", order=1):
                await release.wait()  # still on its way to the core (platform calls)
                await core.handle(message("first", author="ann", message_id="a"))

        async def later() -> None:
            async with core.claimed(KEY, "b", "e-b", order=2):
                await core.handle(message("second", author="bob", message_id="b"))

        tasks = [asyncio.create_task(earlier())]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(later()))
        await asyncio.sleep(0.2)
        assert await store.recent(KEY) == []  # the later one waits for the earlier one
        release.set()
        await asyncio.gather(*tasks)
        assert [t.text for t in await store.recent(KEY)] == [
            "first", "echo: first", "second", "echo: second"]


async def test_a_lost_database_gets_a_short_reply_and_nothing_half_stored(
        settings: Settings) -> None:
    with running_postgres() as server:
        async with PostgresHistoryStore(server.url, timeout=1.0) as store, \
                ModelWorker(EchoBackend) as worker:
            core = ConversationCore(worker=worker, history=store, settings=settings)
            assert (await core.handle(message("before"))) is not None
            server.pause()
            reply = await core.handle(message("during", message_id="m2"))
            assert reply is not None and reply.text == str(StoreUnavailable())
            assert await core.handle(message("context", message_id="m3",
                                             addressed=False)) is None
            server.resume()
            for _ in range(100):
                reply = await core.handle(message("after", message_id="m4"))
                if reply is not None and reply.text == "echo: after":
                    break
                await asyncio.sleep(0.1)
            assert await store.recent(KEY) == [
                Turn("user", "ada", "before"), Turn("assistant", "Bot", "echo: before"),
                Turn("user", "ada", "after"), Turn("assistant", "Bot", "echo: after")]
