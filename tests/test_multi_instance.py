"""Several bot processes on one PostgreSQL: answered once, in order, and surviving kill -9.

Why: issue #12 promises that instances sharing a store behave as one bot. Only real processes
show it, so these start the production entry point twice (`tests.bot_launcher`) with a tiny
model, against the fake Slack (HTTP mode, as behind a load balancer) or the fake Discord
(two shard processes), and a real PostgreSQL (`tests.pg_fixtures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from bot.platforms.slack.events import kind_of
from tests.bot_launcher import BotProcess
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import DEFAULT_SIGNING_SECRET, FakeSlack

pytestmark = [pytest.mark.slow]

START_TIMEOUT = 120.0
REPLY_TIMEOUT = 60.0
CHANNEL = "C0SHARED1"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def common_settings(tmp_path: Path, name: str, model: Path, database_url: str,
                    max_new_tokens: int = 12) -> dict[str, str]:
    return {
        "MODEL": str(model),
        "MODEL_CACHE_DIR": str(tmp_path / "models"),
        "DATABASE_URL": database_url,
        "HISTORY_DB": str(tmp_path / f"{name}-unused.sqlite3"),
        "PERSONAS_DIR": str(tmp_path / "no-personas"),
        "KNOWLEDGE_DIR": str(tmp_path / "no-knowledge"),
        "KNOWLEDGE_DB": str(tmp_path / f"{name}-knowledge.sqlite3"),
        "BOT_NAME": "Bot",
        "MAX_NEW_TOKENS": str(max_new_tokens),
        "RATE_LIMIT_PER_MINUTE": "0",
        "LOG_LEVEL": "INFO",
    }


@contextlib.asynccontextmanager
async def bots(*settings: dict[str, str], ready: str) -> AsyncIterator[list[BotProcess]]:
    """Bot processes started together, each past `ready` in its log; always gone after."""
    procs = [BotProcess(s) for s in settings]
    try:
        for proc in procs:
            await proc.start()
        await asyncio.gather(*(p.wait_for_line(ready, START_TIMEOUT) for p in procs))
        yield procs
    finally:
        for proc in procs:
            await proc.close()


async def wait_until(fake: FakeSlack | FakeDiscord, predicate: Any, message: str,
                     procs: list[BotProcess]) -> None:
    """`fake.wait_for`, failing with the bots' last log lines."""
    try:
        await fake.wait_for(predicate, REPLY_TIMEOUT, message=message)
    except TimeoutError:
        logs = "\n\n".join(f"--- bot {i} ---\n{p.tail(30)}" for i, p in enumerate(procs))
        raise AssertionError(f"{message}\n{logs}") from None


def requests_by(proc: BotProcess) -> str:
    """The "request from ..." log lines of one bot: what it answered."""
    return "\n".join(line for line in proc.lines if "request from" in line)


def slack_settings(tmp_path: Path, name: str, fake: FakeSlack, model: Path, database_url: str,
                   **extra: str) -> dict[str, str]:
    return {**common_settings(tmp_path, name, model, database_url), **extra,
            "FAKE_SLACK_URL": fake.api_url, "SLACK_BOT_TOKEN": "xoxb-fake",
            "SLACK_SIGNING_SECRET": DEFAULT_SIGNING_SECRET, "PORT": str(free_port())}


def events_url(settings: dict[str, str]) -> str:
    return f"http://127.0.0.1:{settings['PORT']}/slack/events"


def answers(fake: FakeSlack, ts: str) -> list[str]:
    """The bot's finished answers in the thread under the message `ts` of CHANNEL (the
    adapter marks the final text as an answer; the streaming previews are status lines)."""
    return [m["text"] for m in fake.messages(CHANNEL, ts)
            if m.get("bot_id") and m.get("ts") != ts and kind_of(m) == "answer"]


def bot_posts(fake: FakeSlack, ts: str) -> list[dict[str, Any]]:
    """Everything the bot posted under `ts` (placeholders included)."""
    return fake.posted(CHANNEL, thread_ts=ts)


async def rows(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return await (await conn.execute(sql, params)).fetchall()


async def stored_turns(database_url: str, channel: str) -> list[tuple[str, str, str | None]]:
    return [(r[0], r[1], r[2]) for r in await rows(
        database_url, "SELECT role, text, message_id FROM turns WHERE channel_id = %s"
        " ORDER BY id", channel)]


async def wait_claimed(database_url: str, event_id: str) -> None:
    async with asyncio.timeout(10):
        while not await rows(database_url, "SELECT 1 FROM claimed_events WHERE event_id = %s",
                             event_id):
            await asyncio.sleep(0.005)


async def test_slack_event_and_its_retries_sent_to_two_instances_are_answered_once(
        tmp_path: Path, tiny_model_dir: Path, postgres_url: str) -> None:
    async with FakeSlack() as fake:
        one = slack_settings(tmp_path, "one", fake, tiny_model_dir, postgres_url)
        two = slack_settings(tmp_path, "two", fake, tiny_model_dir, postgres_url)
        async with bots(one, two, ready="Slack: HTTP mode listening") as procs:
            fake.use_http(events_url(one), also=[events_url(two)], retries=2)
            # three people (a newer message from one person drops their older waiting one)
            mentions = [await fake.send_app_mention(CHANNEL, f"U0HUMAN0{i}", f"question {i}")
                        for i in range(3)]
            for delivery in mentions:
                ts = delivery.event["ts"]
                await wait_until(fake, lambda ts=ts: answers(fake, ts), f"no answer to {ts}",
                                 procs)
            await asyncio.sleep(1.0)  # a duplicate would have posted by now
            for delivery in mentions:
                assert delivery.http_status == 200
                ts = delivery.event["ts"]
                assert len(answers(fake, ts)) == 1
                assert len(bot_posts(fake, ts)) == 1  # one placeholder, edited into the answer
            turns = await stored_turns(postgres_url, CHANNEL)
            assert [role for role, _, _ in turns] == ["user", "assistant"] * 3
            assert [text for role, text, _ in turns if role == "user"] == [
                f"question {i}" for i in range(3)]
            skipped = sum(1 for p in procs for line in p.lines
                          if "was claimed by another instance" in line)
            # 6 deliveries of each: every instance claims once (its retries it knows already),
            # and the instance that lost the claim says so
            assert skipped == 3
            assert all(p.returncode is None for p in procs)


async def test_turns_of_one_channel_sent_to_alternating_instances_stay_in_order(
        tmp_path: Path, tiny_model_dir: Path, postgres_url: str) -> None:
    async with FakeSlack() as fake:
        settings = [slack_settings(tmp_path, name, fake, tiny_model_dir, postgres_url,
                                   MAX_NEW_TOKENS="24") for name in ("one", "two")]
        async with bots(*settings, ready="Slack: HTTP mode listening") as procs:
            sent: list[str] = []
            for i in range(6):  # a round-robin load balancer, messages in quick succession
                fake.use_http(events_url(settings[i % 2]))
                delivery = await fake.send_app_mention(CHANNEL, f"U0PERSON{i}", f"turn {i}")
                sent.append(delivery.event["ts"])
                await wait_claimed(postgres_url, f"slack:{CHANNEL}:{sent[-1]}")
            for ts in sent:
                await wait_until(fake, lambda ts=ts: answers(fake, ts), f"no answer to {ts}",
                                 procs)
            turns = await stored_turns(postgres_url, CHANNEL)
        assert [(role, mid) for role, _, mid in turns] == [
            pair for ts in sent for pair in (("user", ts), ("assistant", None))]
        assert [text for role, text, _ in turns if role == "user"] == [
            f"turn {i}" for i in range(6)]
        instances = {row[0] for row in await rows(
            postgres_url, "SELECT instance FROM claimed_events WHERE event_id LIKE %s",
            "slack:%")}
        assert len(instances) == 2  # both instances answered some of them


async def test_kill_9_of_one_instance_mid_answer_the_other_keeps_serving(
        tmp_path: Path, tiny_model_dir: Path, postgres_url: str) -> None:
    async with FakeSlack() as fake:
        victim = slack_settings(tmp_path, "victim", fake, tiny_model_dir, postgres_url,
                                MAX_NEW_TOKENS="1000")
        survivor = slack_settings(tmp_path, "survivor", fake, tiny_model_dir, postgres_url)
        async with bots(victim, survivor, ready="Slack: HTTP mode listening") as procs:
            fake.use_http(events_url(victim))
            doomed = (await fake.send_app_mention(CHANNEL, "U0HUMAN01", "a long one")).event

            def answer_started() -> bool:
                # Acknowledged, as in test_crash_safety: the answer has begun to appear (the
                # "Thinking…" placeholder comes before the message is stored, like typing).
                posts = bot_posts(fake, doomed["ts"])
                return bool(posts and fake.updated(CHANNEL, ts=posts[0]["ts"]))

            await wait_until(fake, answer_started, "the victim never started answering", procs)
            await procs[0].kill()  # mid-answer: its answer is growing, not finished
            assert not answers(fake, doomed["ts"])
            # The load balancer now sends everything to the survivor, the same channel too.
            fake.use_http(events_url(survivor))
            started = time.monotonic()
            after = []
            for i in range(3):
                after.append((await fake.send_app_mention(CHANNEL, f"U0OTHER0{i}",
                                                          f"after {i}")).event)
                await wait_claimed(postgres_url, f"slack:{CHANNEL}:{after[-1]['ts']}")
            for event in after:
                await wait_until(fake, lambda ts=event["ts"]: answers(fake, ts),
                                 "the survivor did not answer", procs)
            waited = time.monotonic() - started
            turns = await stored_turns(postgres_url, CHANNEL)
            assert procs[1].returncode is None
    # The acknowledged message is stored (its answer died with the victim), then the rest.
    assert turns[0] == ("user", "a long one", doomed["ts"])
    assert [(role, mid) for role, _, mid in turns[1:]] == [
        pair for event in after for pair in (("user", event["ts"]), ("assistant", None))]
    assert waited < 25, "a dead instance's claim held the channel up"


async def test_socket_mode_instances_fail_over(
        tmp_path: Path, tiny_model_dir: Path, postgres_url: str) -> None:
    async with FakeSlack() as fake:
        settings = [{**slack_settings(tmp_path, name, fake, tiny_model_dir, postgres_url),
                     "SLACK_APP_TOKEN": "xapp-fake"} for name in ("one", "two")]
        async with bots(*settings, ready="Slack: Socket Mode connected") as procs:
            await fake.wait_for(lambda: len(fake.open_connections) == 2, 10,
                                message="both instances should hold a connection")
            first = (await fake.send_app_mention(CHANNEL, "U0HUMAN01", "hello")).event
            await wait_until(fake, lambda: answers(fake, first["ts"]), "no answer", procs)
            serving = [i for i, p in enumerate(procs) if "request from" in requests_by(p)]
            assert len(serving) == 1  # Slack gave the event to one connection only
            await procs[serving[0]].kill()
            await fake.wait_for(lambda: len(fake.open_connections) == 1, 10,
                                message="the killed instance's connection should close")
            second = (await fake.send_app_mention(CHANNEL, "U0HUMAN02", "still there?")).event
            await wait_until(fake, lambda: answers(fake, second["ts"]), "no failover", procs)
            other = procs[1 - serving[0]]
            assert "request from U0HUMAN02" in requests_by(other)
            turns = await stored_turns(postgres_url, CHANNEL)
        assert [(role, mid) for role, _, mid in turns] == [
            ("user", first["ts"]), ("assistant", None), ("user", second["ts"]),
            ("assistant", None)]


def discord_settings(tmp_path: Path, name: str, fake: FakeDiscord, model: Path,
                     database_url: str, shard: int, **extra: str) -> dict[str, str]:
    return {**common_settings(tmp_path, name, model, database_url), **extra,
            "FAKE_DISCORD_URL": f"http://127.0.0.1:{fake.port}", "DISCORD_TOKEN": fake.token,
            "DISCORD_SHARD_COUNT": "2", "DISCORD_SHARD_IDS": str(shard)}


async def test_two_shard_processes_each_answer_their_own_servers(
        tmp_path: Path, tiny_model_dir: Path, postgres_url: str) -> None:
    async with FakeDiscord(default_guild=False) as fake:
        user = fake.create_user("alice", global_name="Alice")
        channels = []
        for shard in (0, 1):
            guild = await fake.create_guild(f"guild on shard {shard}", members=[user],
                                            shard=(shard, 2))
            assert (guild.id >> 22) % 2 == shard
            channels.append(await fake.create_channel(guild, "general"))
        ops_port = free_port()
        settings = [discord_settings(tmp_path, "shard0", fake, tiny_model_dir, postgres_url, 0,
                                     OPS_PORT=str(ops_port), OPS_HOST="127.0.0.1"),
                    discord_settings(tmp_path, "shard1", fake, tiny_model_dir, postgres_url, 1)]
        async with bots(*settings, ready="connected to Discord") as procs:
            assert sorted(tuple(i.get("shard") or ()) for i in fake.identifies) == [
                (0, 2), (1, 2)]
            asked = {}
            for shard, channel in enumerate(channels):
                posted = await fake.send_user_message(
                    channel, user, f"{fake.bot_user.mention} hello shard {shard}")
                asked[shard] = posted["id"]
            dm = await fake.create_dm_channel(user)
            dm_posted = await fake.send_user_message(dm, user, "hello in a DM")
            status = await fake.send_user_message(channels[0], user,
                                                  f"{fake.bot_user.mention} /status")

            def replied(message_id: str) -> list[dict[str, Any]]:
                return [r.json or {} for r in fake.message_creates()
                        if str(((r.json or {}).get("message_reference") or {})
                               .get("message_id")) == str(message_id)]

            for message_id in (*asked.values(), dm_posted["id"], status["id"]):
                await wait_until(fake, lambda m=message_id: replied(m),
                                 f"no reply to {message_id}", procs)
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{ops_port}/healthz") as response:
                health = json.loads(await response.text())
            zero, one = requests_by(procs[0]), requests_by(procs[1])
            await asyncio.sleep(0.5)
            for shard in (0, 1):
                assert len(replied(asked[shard])) == 1
            assert f"discord:{channels[0].id}" in zero and f"discord:{channels[0].id}" not in one
            assert f"discord:{channels[1].id}" in one and f"discord:{channels[1].id}" not in zero
            assert f"discord:{dm.id}" in zero and f"discord:{dm.id}" not in one
            assert len(replied(dm_posted["id"])) == 1
            status_text = " ".join(str(r.get("content")) for r in replied(status["id"]))
            assert "Discord shards here: 0 (" in status_text and "of 2" in status_text
            assert health["platforms"]["discord"]["shard_count"] == 2
            assert list(health["platforms"]["discord"]["shards"]) == ["0"]
            registrations = [r for r in fake.find_requests(method="PUT")
                             if r.path.endswith("/commands")]
            assert len(registrations) == 1
            assert any("not registering slash commands" in line for line in procs[1].lines)


async def test_two_processes_on_the_same_discord_session_answer_once(
        tmp_path: Path, tiny_model_dir: Path, postgres_url: str) -> None:
    """Without sharding both processes get every event (a standby, or a mistake): each
    message and each slash command is still answered by one of them only."""
    async with FakeDiscord() as fake:
        assert fake.default_channel is not None and fake.default_user is not None
        channel, user = fake.default_channel, fake.default_user
        settings = []
        for name in ("one", "two"):
            both = discord_settings(tmp_path, name, fake, tiny_model_dir, postgres_url, 0)
            del both["DISCORD_SHARD_COUNT"], both["DISCORD_SHARD_IDS"]
            settings.append(both)
        async with bots(*settings, ready="connected to Discord") as procs:
            posted = await fake.send_user_message(channel, user,
                                                  f"{fake.bot_user.mention} once, please")
            command = await fake.invoke_slash_command("help", channel_id=channel)
            await wait_until(fake, lambda: command.followups, "no answer to /help", procs)

            def replies() -> list[Any]:
                return [r for r in fake.message_creates(channel)
                        if str(((r.json or {}).get("message_reference") or {})
                               .get("message_id")) == str(posted["id"])]

            await wait_until(fake, replies, "no answer to the mention", procs)
            await asyncio.sleep(1.0)  # a second answer would have come by now
            assert len(replies()) == 1
            assert len(command.callbacks) == 1 and len(command.followups) == 1
            assert sum("was claimed by another instance" in line
                       for p in procs for line in p.lines) == 2

