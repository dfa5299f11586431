"""What only the PostgreSQL store does: locks across instances, schema upgrades, outages.

The behaviour both stores share is in `tests/test_store_contract.py`; these run against the
session's real server (`tests.pg_fixtures`), and the outage test against a server of its own.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from bot.errors import StoreUnavailable
from bot.storage.postgres import PostgresHistoryStore
from bot.storage.postgres_schema import MIGRATIONS
from bot.types import ChannelKey, Turn
from tests.pg_server import running_postgres

KEY = ChannelKey("slack", "C1")


async def test_channel_lock_holds_across_instances(postgres_url: str) -> None:
    async with PostgresHistoryStore(postgres_url) as one, \
            PostgresHistoryStore(postgres_url) as two:
        order: list[str] = []
        release = asyncio.Event()

        async def first() -> None:
            async with one.channel_lock(KEY):
                order.append("one in")
                await release.wait()
                order.append("one out")

        async def second() -> None:
            async with two.channel_lock(KEY):
                order.append("two in")

        holder = asyncio.create_task(first())
        while not order:
            await asyncio.sleep(0.01)
        waiter = asyncio.create_task(second())
        async with two.channel_lock(ChannelKey("slack", "C2")):  # other channels are free
            pass
        await asyncio.sleep(0.3)
        assert order == ["one in"]
        release.set()
        await asyncio.gather(holder, waiter)
        assert order == ["one in", "one out", "two in"]


async def test_a_turn_waits_for_an_earlier_message_claimed_by_another_instance(
        postgres_url: str) -> None:
    async with PostgresHistoryStore(postgres_url) as one, \
            PostgresHistoryStore(postgres_url) as two:
        assert await one.claim_event("e1", key=KEY, order=1)
        assert await two.claim_event("e2", key=KEY, order=2)
        got_lock = asyncio.Event()

        async def later() -> None:
            async with two.channel_lock(KEY, order=2):
                got_lock.set()

        waiter = asyncio.create_task(later())
        await asyncio.sleep(0.3)
        assert not got_lock.is_set()
        async with one.channel_lock(KEY, order=1):  # the earlier one is not held up
            await one.add(KEY, Turn("user", "a", "first"))
        await one.finish_event("e1")
        await asyncio.wait_for(waiter, 10)
        # an unfinished earlier claim of the same instance does not block (its own lock
        # keeps its order), nor does one in another conversation
        assert await two.claim_event("e3", key=KEY, order=3)
        assert await one.claim_event("e4", key=ChannelKey("slack", "C9"), order=1)
        async with two.channel_lock(KEY, order=4):
            pass


async def test_claims_of_a_dead_instance_do_not_hold_up_the_others(postgres_url: str) -> None:
    async with PostgresHistoryStore(postgres_url) as survivor:
        async with PostgresHistoryStore(postgres_url) as dying:
            assert await dying.claim_event("e1", key=KEY, order=1)
        # closed: its connections are gone, as after kill -9
        assert await survivor.claim_event("e2", key=KEY, order=2)
        async with asyncio.timeout(5):
            async with survivor.channel_lock(KEY, order=2):
                pass


async def test_rate_limit_counts_across_instances(postgres_url: str) -> None:
    async with PostgresHistoryStore(postgres_url) as one, \
            PostgresHistoryStore(postgres_url) as two:
        results = await asyncio.gather(*(
            store.rate_hit("slack:U1", limit=5, now=100.0 + i / 100)
            for i in range(12) for store in (one, two)))
        assert sum(1 for wait in results if wait == 0) == 5


async def test_schema_is_created_and_upgraded_at_start(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                           " applied_at DOUBLE PRECISION NOT NULL)")
        await conn.execute(MIGRATIONS[0])  # a database left by the first schema version
        await conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
        await conn.execute("INSERT INTO turns (platform, channel_id, role, author, text,"
                           " created_at) VALUES ('slack', 'C1', 'user', 'ada', 'kept', 1)")
    async with PostgresHistoryStore(postgres_url) as store:
        assert await store.schema_version() == len(MIGRATIONS)
        assert [t.text for t in await store.recent(KEY)] == ["kept"]
        assert await store.claim_event("new table works")
    async with PostgresHistoryStore(postgres_url) as store:  # opening again changes nothing
        assert await store.schema_version() == len(MIGRATIONS)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO schema_migrations VALUES (99, 0)")
    with pytest.raises(RuntimeError, match="schema version 99"):
        await PostgresHistoryStore(postgres_url).open()


async def test_an_unreachable_server_fails_fast_and_the_store_reconnects() -> None:
    with running_postgres() as server:
        async with PostgresHistoryStore(server.url, timeout=1.0) as store:
            await store.add(KEY, Turn("user", "ada", "before the outage"))
            server.pause()
            with pytest.raises(StoreUnavailable):
                await store.add(KEY, Turn("user", "ada", "during the outage"))
            with pytest.raises(StoreUnavailable):
                await store.recent(KEY)
            with pytest.raises(StoreUnavailable):
                async with store.channel_lock(KEY):
                    pass
            server.resume()
            for _ in range(100):  # the pool reconnects in the background
                try:
                    await store.add(KEY, Turn("user", "ada", "after the outage"))
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.1)
            assert [t.text for t in await store.recent(KEY)] == [
                "before the outage", "after the outage"]


async def test_opening_with_the_server_down_says_so() -> None:
    with running_postgres() as server:
        server.pause()
        with pytest.raises(StoreUnavailable, match="cannot reach"):
            await PostgresHistoryStore(server.url, timeout=1.0).open()


async def test_all_lock_connections_in_turns_makes_a_turn_wait_not_fail(
        postgres_url: str) -> None:
    async with PostgresHistoryStore(postgres_url, lock_pool_size=1, timeout=0.5) as store:
        release = asyncio.Event()
        done: list[str] = []

        async def first() -> None:
            async with store.channel_lock(KEY):
                await release.wait()
            done.append("first")

        async def second() -> None:
            async with store.channel_lock(ChannelKey("slack", "C2")):  # no free connection
                done.append("second")

        holder = asyncio.create_task(first())
        await asyncio.sleep(0.1)
        waiter = asyncio.create_task(second())
        await asyncio.sleep(1.2)  # longer than `timeout`: still waiting, not failed
        assert not waiter.done()
        release.set()
        await asyncio.gather(holder, waiter)
        assert done == ["first", "second"]
