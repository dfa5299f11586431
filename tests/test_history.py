"""The SQLite history store: persistence, bounds, keys, reset."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.storage.interface import HistoryStore
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, Turn

CHANNEL = ChannelKey("discord", "c1")
THREAD = ChannelKey("discord", "c1", "t1")


async def test_turns_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "h.sqlite3"
    async with SQLiteHistoryStore(path) as store:
        await store.add(CHANNEL, Turn("user", "ada", "hello"), message_id="m1")
        await store.add(CHANNEL, Turn("assistant", "Bot", "hi ada"))
    async with SQLiteHistoryStore(path) as store:
        assert await store.recent(CHANNEL) == [Turn("user", "ada", "hello"),
                                               Turn("assistant", "Bot", "hi ada")]
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_channels_and_threads_are_separate(history: HistoryStore) -> None:
    await history.add(CHANNEL, Turn("user", "a", "in channel"))
    await history.add(THREAD, Turn("user", "b", "in thread"))
    await history.add(ChannelKey("slack", "c1"), Turn("user", "c", "on slack"))
    assert [t.text for t in await history.recent(CHANNEL)] == ["in channel"]
    assert [t.text for t in await history.recent(THREAD)] == ["in thread"]
    stats = await history.stats()
    assert (stats.channels, stats.turns) == (3, 3)


async def test_each_channel_is_bounded(tmp_path: Path) -> None:
    async with SQLiteHistoryStore(tmp_path / "h.db", max_per_channel=5) as store:
        for i in range(12):
            await store.add(CHANNEL, Turn("user", "a", f"m{i}"))
        await store.add(THREAD, Turn("user", "a", "other"))
        assert [t.text for t in await store.recent(CHANNEL)] == [f"m{i}" for i in range(7, 12)]
        assert [t.text for t in await store.recent(CHANNEL, 2)] == ["m10", "m11"]
        assert len(await store.recent(THREAD)) == 1


async def test_reset_forgets_one_channel(history: HistoryStore) -> None:
    await history.add(CHANNEL, Turn("user", "a", "x"))
    await history.add(CHANNEL, Turn("user", "a", "y"))
    await history.add(THREAD, Turn("user", "a", "z"))
    assert await history.reset(CHANNEL) == 2
    assert await history.recent(CHANNEL) == []
    assert len(await history.recent(THREAD)) == 1


async def test_text_is_stored_exactly(history: HistoryStore) -> None:
    odd = "emoji 🦉, quotes '\" ; DROP TABLE turns; --\n\ttabs and ünïcödé"
    await history.add(CHANNEL, Turn("user", "Robert'); --", odd))
    assert await history.recent(CHANNEL) == [Turn("user", "Robert'); --", odd)]


async def test_retention_prunes_old_turns(tmp_path: Path) -> None:
    import time

    async with SQLiteHistoryStore(tmp_path / "h.db") as store:
        await store.add(CHANNEL, Turn("user", "a", "old"))
        await store.add(CHANNEL, Turn("user", "a", "new"))
        await store._run(lambda: store._conn().execute(
            "UPDATE turns SET created_at = ? WHERE text = 'old'", (time.time() - 10 * 86_400,)))
        assert await store.prune(7) == 1
        assert [t.text for t in await store.recent(CHANNEL)] == ["new"]
        assert await store.prune(7) == 0


async def test_forget_erases_a_channel_for_good(tmp_path: Path) -> None:
    from bot.storage.sqlite import ChannelSettings

    path = tmp_path / "h.db"
    async with SQLiteHistoryStore(path) as store:
        await store.add(CHANNEL, Turn("user", "a", "a very secret sentence"))
        await store.add(THREAD, Turn("user", "a", "thread secret"))
        await store.add(ChannelKey("discord", "other"), Turn("user", "a", "keep me"))
        await store.save_channel_settings(CHANNEL, ChannelSettings(persona="writer"))
        assert await store.forget_channel(THREAD) == 2  # the whole channel, threads included
        assert await store.recent(CHANNEL) == [] and await store.recent(THREAD) == []
        assert await store.channel_settings(CHANNEL) == ChannelSettings()
        assert len(await store.recent(ChannelKey("discord", "other"))) == 1
    raw = path.read_bytes() + (path.with_name("h.db-wal").read_bytes()
                               if path.with_name("h.db-wal").exists() else b"")
    assert b"a very secret sentence" not in raw and b"thread secret" not in raw
    assert b"keep me" in raw


async def test_retention_loop_runs_until_cancelled(history: HistoryStore) -> None:
    import asyncio

    from bot.app import keep_retention

    calls: list[float] = []

    async def fake_prune(days: float) -> int:
        calls.append(days)
        return 0

    history.prune = fake_prune  # type: ignore[method-assign]
    task = asyncio.create_task(keep_retention(history, 30, every=0.01))
    while len(calls) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    assert calls[:3] == [30, 30, 30]
