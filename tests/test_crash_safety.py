"""Crash safety: ``kill -9`` the real bot while people talk to it; nothing acknowledged is lost.

Why: a host can kill the process at any instant (OOM killer, a crashed machine, an impatient
operator). The bot promises that a message it has started answering is in its history, that an
answer it finished showing is stored with it, and that the SQLite store opens cleanly after
the crash. Only a real process that really dies can show that, so this test runs the production
entry point in a subprocess (`tests.bot_launcher`) against the fake Discord of this process,
drives several users in several channels and a thread, kills it at random moments mid-traffic
a few times, checks a snapshot of the store after each kill, then restarts the bot on the same
file and checks that it answers with the old history as context and shuts down cleanly.

What counts as acknowledged: a reply to the message has appeared in the channel, be it a
"Queued: N ahead of you" line or the start of the answer (the "typing" indicator is not one).
The launcher notes each reply the adapter finished showing, so a finished answer can be told
from one the kill cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import shutil
import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.core.prompting import to_messages
from bot.platforms.discord.text import neutralize_broadcasts
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import Turn
from tests.bot_launcher import BotProcess
from tests.fakes.discord_server import FakeChannel, FakeDiscord, FakeUser, RecordedRequest

pytestmark = [pytest.mark.slow, pytest.mark.soak]

CYCLES = 5
"""Start, drive, kill -9: this many times, then one clean restart."""
USERS = 6
SEED = 20240607
START_TIMEOUT = 90.0
REPLY_TIMEOUT = 30.0
QUEUED = re.compile(r"Queued: \d+ ahead of you…")
WORDS = ("weather", "trains", "cats", "bread", "chess", "rain", "music", "maps", "tea", "code")


@dataclass(frozen=True)
class Sent:
    """A mention a user posted, as the bot should have stored it."""

    message_id: str
    channel_id: int
    author: str
    text: str
    cycle: int


@dataclass(frozen=True)
class Row:
    """One stored turn."""

    id: int
    key: tuple[str, str, str]
    role: str
    author: str
    text: str
    message_id: str | None
    created_at: float


@dataclass
class Ledger:
    """What was sent and what the checks have established so far, across cycles."""

    sent: dict[str, Sent] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    checked_up_to: int = 0
    acknowledged: int = 0
    finished: int = 0
    interrupted: int = 0


def bot_settings(tmp_path: Path, fake: FakeDiscord, model: Path) -> dict[str, str]:
    return {
        "FAKE_DISCORD_URL": f"http://127.0.0.1:{fake.port}",
        "DISCORD_TOKEN": fake.token,
        "MODEL": str(model),
        "MODEL_CACHE_DIR": str(tmp_path / "models"),
        "HISTORY_DB": str(tmp_path / "history.sqlite3"),
        "PERSONAS_DIR": str(tmp_path / "no-personas"),
        "KNOWLEDGE_DIR": str(tmp_path / "no-knowledge"),
        "KNOWLEDGE_DB": str(tmp_path / "knowledge.sqlite3"),
        "BOT_NAME": "Bot",
        "MAX_NEW_TOKENS": "8",
        "MAX_QUEUE": "64",
        "RATE_LIMIT_PER_MINUTE": "0",
        "LOG_LEVEL": "INFO",
        "LAUNCHER_FINISHED_LOG": str(tmp_path / "finished.txt"),
        "LAUNCHER_PROMPT_LOG": str(tmp_path / "prompts.jsonl"),
    }


@contextlib.asynccontextmanager
async def running_bot(settings: dict[str, str]) -> AsyncIterator[BotProcess]:
    """A bot process that has connected to the fake; always gone when the block ends."""
    bot = BotProcess(settings)
    await bot.start()
    try:
        await bot.wait_for_line("connected to Discord", START_TIMEOUT)
        yield bot
    finally:
        await bot.close()


def replies(fake: FakeDiscord) -> dict[str, list[RecordedRequest]]:
    """The bot's posted messages, by the id of the message each one replies to ('' if none)."""
    found: dict[str, list[RecordedRequest]] = defaultdict(list)
    for request in fake.message_creates():
        if request.faulted or not isinstance(request.response, dict):
            continue
        reference = (request.json or {}).get("message_reference") or {}
        found[str(reference.get("message_id", ""))].append(request)
    return found


async def drive(fake: FakeDiscord, where: list[FakeChannel], user: FakeUser, rng: random.Random,
                ledger: Ledger, cycle: int, on_acknowledged: asyncio.Event) -> None:
    """One person: mention the bot somewhere, wait until the answer starts, repeat.

    Waiting for the answer to start, as people do, keeps the core's stale-request rule (a
    newer message from the same person in the same channel drops the older one) out of play.
    """
    for n in range(1, 1000):
        channel = rng.choice(where)
        text = f"{user.username} asks {n} about {rng.choice(WORDS)} and {rng.choice(WORDS)}"
        posted = await fake.send_user_message(channel, user, f"{fake.bot_user.mention} {text}")
        ledger.sent[posted["id"]] = Sent(posted["id"], channel.id, str(user.global_name),
                                         text, cycle)
        await fake.wait_for(lambda mid=posted["id"]: mid in replies(fake), REPLY_TIMEOUT,
                            message=f"no answer to {text!r} in {REPLY_TIMEOUT} s")
        ledger.acknowledged += 1
        on_acknowledged.set()


def snapshot(db: Path, into: Path) -> Path:
    """Copy the database and its WAL as the crash left them (not the shared-memory index,
    which SQLite rebuilds, as after a reboot), so checking never tidies the original."""
    into.mkdir()
    for suffix in ("", "-wal"):
        source = db.with_name(db.name + suffix)
        if source.exists():
            shutil.copy2(source, into / source.name)
    return into / db.name


def read_rows(db: Path) -> list[Row]:
    """Every stored turn, after checking the file's integrity."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        rows = conn.execute(
            "SELECT id, platform, channel_id, thread_id, role, author, text, message_id,"
            " created_at FROM turns ORDER BY id").fetchall()
    return [Row(r[0], (r[1], r[2], r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]


def by_key(rows: list[Row]) -> dict[tuple[str, str, str], list[Row]]:
    grouped: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row.key].append(row)
    return grouped


def pairs(rows: list[Row]) -> Iterator[tuple[Row, Row | None]]:
    """A conversation's turns as (question, answer) pairs; a question without its answer is
    paired with None. Every addressed message takes the channel's lock from storing the
    question to storing the answer, so nothing else can come between them."""
    index = 0
    while index < len(rows):
        question = rows[index]
        assert question.role == "user", f"an answer without its question: {question}"
        answer = rows[index + 1] if index + 1 < len(rows) else None
        if answer is not None and answer.role == "assistant":
            yield question, answer
            index += 2
        else:
            yield question, None
            index += 1


def finished_posts(settings: dict[str, str]) -> set[str]:
    """Ids of the bot messages whose answer the adapter had finished showing."""
    path = Path(settings["LAUNCHER_FINISHED_LOG"])
    return set(path.read_text().split()) if path.exists() else set()


async def check_store(fake: FakeDiscord, db: Path, ledger: Ledger, cycle: int,
                      finished: set[str]) -> list[Row]:
    """The invariants a kill -9 must not break, on a snapshot of the store right after it."""
    rows = read_rows(db)
    async with SQLiteHistoryStore(db) as store:  # the production open path works on it too
        assert (await store.stats()).turns == len(rows)

    # Every stored question is a message someone sent, unchanged, stored once.
    questions = [row for row in rows if row.role == "user"]
    assert len({q.message_id for q in questions}) == len(questions), "a message stored twice"
    for question in questions:
        sent = ledger.sent.get(str(question.message_id))
        assert sent is not None, f"stored a message nobody sent: {question}"
        assert (question.author, question.text) == (sent.author, sent.text)

    # Turns written in this run come in (question, answer) pairs; only the last question of
    # a conversation may lack its answer: the kill came while it was being generated.
    cut_short: set[str] = set()
    for turns in by_key([row for row in rows if row.id > ledger.checked_up_to]).values():
        run_pairs = list(pairs(turns))
        for index, (question, answer) in enumerate(run_pairs):
            if answer is not None:
                ledger.answers[str(question.message_id)] = answer.text
            else:
                assert index == len(run_pairs) - 1, f"an unanswered question mid-run: {question}"
                cut_short.add(str(question.message_id))
    ledger.checked_up_to = max((row.id for row in rows), default=0)

    stored = {str(q.message_id) for q in questions}
    for message_id, posts in replies(fake).items():
        sent = ledger.sent.get(message_id)
        assert sent is not None, f"the bot posted something that answers no message: {posts}"
        assert len(posts) == 1, f"{len(posts)} replies to {sent}"
        post = posts[0]
        assert int(post.match_info["channel_id"]) == sent.channel_id, "reply in another channel"
        if sent.cycle != cycle:
            continue  # checked after its own run; a restart must not answer it again (above)
        shown = str(fake.messages[int(post.response["id"])]["content"])
        # Acknowledged, so it must be stored.
        assert message_id in stored, f"acknowledged ({shown!r}) but lost: {sent}"
        answer = ledger.answers.get(message_id)
        if str(post.response["id"]) in finished:
            assert answer is not None, f"a finished answer was not stored: {sent}"
            assert shown == neutralize_broadcasts(answer)
            ledger.finished += 1
        elif answer is not None:  # stored, but the kill came before it was all shown
            assert QUEUED.fullmatch(shown) or neutralize_broadcasts(answer).startswith(
                shown.strip()), (shown, answer)
        else:
            assert message_id in cut_short
            ledger.interrupted += 1
    return rows


async def run_and_kill(fake: FakeDiscord, settings: dict[str, str], where: list[FakeChannel],
                       users: list[FakeUser], ledger: Ledger, cycle: int,
                       rng: random.Random) -> None:
    """Start the bot, let people talk to it, and kill -9 it at a random moment."""
    acknowledged_before = ledger.acknowledged
    wanted = rng.randint(2, 12)
    async with running_bot(settings) as bot:
        progress = asyncio.Event()
        people = [asyncio.create_task(drive(fake, where, user, random.Random(rng.random()),
                                            ledger, cycle, progress)) for user in users]
        try:
            while ledger.acknowledged - acknowledged_before < wanted:
                progress.clear()
                waiter = asyncio.create_task(progress.wait())
                done, _ = await asyncio.wait({waiter, *people}, timeout=REPLY_TIMEOUT,
                                             return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                for task in done & set(people):
                    task.result()  # a person who got no answer fails the test here
                assert done, f"no progress in {REPLY_TIMEOUT} s:\n{bot.tail()}"
            # Not synchronisation: this places the kill at a random point of the pipeline
            # (prompt building, generation, storing, posting, editing).
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            status = await bot.kill()
        finally:
            for task in people:
                task.cancel()
            await asyncio.gather(*people, return_exceptions=True)
    assert status == -signal.SIGKILL


async def test_kill_9_mid_traffic_loses_nothing_acknowledged(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    rng = random.Random(SEED)
    ledger = Ledger()
    async with FakeDiscord() as fake:
        guild = fake.default_guild
        general = fake.default_channel
        assert guild is not None and general is not None
        where = [general, await fake.create_channel(guild, "random"),
                 await fake.create_channel(guild, "help"),
                 await fake.create_thread(general, "a thread")]
        users = [fake.create_user(f"user{i}", global_name=f"User {i}") for i in range(USERS)]
        settings = bot_settings(tmp_path, fake, tiny_model_dir)
        db = Path(settings["HISTORY_DB"])

        started = time.monotonic()
        for cycle in range(CYCLES):
            await run_and_kill(fake, settings, where, users, ledger, cycle, rng)
            await check_store(fake, snapshot(db, tmp_path / f"after-kill-{cycle}"), ledger,
                              cycle, finished_posts(settings))
        assert ledger.finished > 0

        # Restart on the crashed file: the bot answers with the old history as its context.
        rows = read_rows(snapshot(db, tmp_path / "before-restart"))
        key, old = max(by_key(rows).items(), key=lambda item: len(item[1]))
        channel = fake.channels[int(key[2] or key[1])]
        prompts = Path(settings["LAUNCHER_PROMPT_LOG"])
        prompts_before = len(prompts.read_text().splitlines())
        author = users[0]
        text = "user0 asks again after the crash"
        async with running_bot(settings) as bot:
            posted = await fake.send_user_message(channel, author,
                                                  f"{fake.bot_user.mention} {text}")
            await fake.wait_for(
                lambda: {post.response["id"] for post in replies(fake).get(posted["id"], ())}
                & finished_posts(settings), REPLY_TIMEOUT,
                message=f"no answer after the restart:\n{bot.tail()}")
            status = await bot.terminate(timeout=30)
            log = bot.tail(200)
        assert status == 0, log
        elapsed = time.monotonic() - started

        new_prompts = [json.loads(line) for line in prompts.read_text().splitlines()
                       [prompts_before:]]
        # One answer; the prompt may be built twice (a history cut is made deeper so the next
        # turns keep the same beginning), and the last one built is the one sent.
        assert new_prompts, "no prompt in the launcher's prompt log"
        prompt = new_prompts[-1]
        newest = Turn("user", str(author.global_name), text)
        history = [Turn(row.role, row.author, row.text) for row in old]  # type: ignore[arg-type]
        system = prompt[0]["content"]
        assert any(to_messages(system, [*history[-kept:], newest]) == prompt
                   for kept in range(len(history), 0, -1)), "the old history was not used"

        # A clean shutdown leaves a checkpointed store with the new exchange appended.
        assert not db.with_name(db.name + "-wal").exists() or \
            db.with_name(db.name + "-wal").stat().st_size == 0
        final = by_key(read_rows(db))[key]
        assert final[:len(old)] == old
        question, answer = final[len(old):]
        assert (question.message_id, question.text) == (posted["id"], text)
        assert answer.role == "assistant"
        (post,) = replies(fake)[posted["id"]]
        assert fake.messages[int(post.response["id"])]["content"] == \
            neutralize_broadcasts(answer.text)
        assert not fake.handler_errors
    print(f"\ncrash safety: {CYCLES} kills, {len(ledger.sent)} messages sent, "
          f"{ledger.acknowledged} acknowledged, {ledger.finished} finished answers checked "
          f"verbatim, {ledger.interrupted} cut off by the kill; {elapsed:.1f} s")
