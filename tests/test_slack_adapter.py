"""The Slack adapter end to end: the real slack-bolt/slack_sdk clients against `FakeSlack`.

Why: what a Slack user experiences (placeholder, streamed edits, threads, slash commands
acknowledged within 3 s, safe formatting, errors that never crash the bot) only shows when the
real client libraries talk to a server speaking Slack's wire protocol. Every wait is on a
condition (``fake.wait_for``), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.core.conversation import APOLOGY, ConversationCore
from bot.core.summarize import MAP_INSTRUCTIONS
from bot.engines.contract import GenerationRequest
from bot.engines.worker import ModelWorker
from bot.errors import ConfigError
from bot.platforms.slack.app import (
    READING,
    SHORTCUT_CALLBACK_ID,
    STOPPED,
    THINKING,
    SlackAdapter,
)
from bot.platforms.slack.delivery import QUEUED
from bot.platforms.slack.events import (
    SLASH_COMMANDS,
    command_to_incoming,
    shortcut_to_incoming,
    to_incoming,
)
from bot.platforms.slack.format import PART_CHARS, WORD_JOINER
from bot.platforms.slack.message_shortcuts import (
    ASK_CALLBACK_ID,
    EXPLAIN_CALLBACK_ID,
    SUMMARIZE_CALLBACK_ID,
)
from bot.storage.interface import ChannelSettings, HistoryStore
from bot.types import ChannelKey, Reply, Turn
from tests.conftest import with_settings
from tests.fakes import slack_server
from tests.fakes.backends import EchoBackend, FailingBackend, GatedBackend
from tests.fakes.slack_server import DEFAULT_SIGNING_SECRET, FakeSlack, send_signed_event

CHANNEL = "C0GENERAL"
OTHER = "C0RANDOM1"
THIRD = "C0THIRD01"
DM = "D0DM00001"
ALICE = "U0ALICE01"
BOB = "U0BOB0001"
BOSS = "U0BOSS001"
BOT = "U0FAKEBOT"


# ---------------------------------------------------------------------- helpers


class SteppedBackend(EchoBackend):
    """Echoes one word per `step()`, so a test can watch the answer grow."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = threading.Semaphore(0)

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.steps.release()

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        def slow_emit(piece: str) -> None:
            while not self.steps.acquire(timeout=0.01):
                if should_stop():
                    return
            emit(piece)

        return super().generate(request, slow_emit, should_stop)


class ScriptedBackend(EchoBackend):
    """Answers with a fixed text, in a few pieces."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        self.answer = answer

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        self.prompts.append(request.prompt)
        step = max(1, len(self.answer) // 4)
        for i in range(0, len(self.answer), step):
            emit(self.answer[i:i + step])
        return self.answer


class FrozenClock:
    """A monotonic clock that only moves when told: makes edit throttling deterministic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_channel(CHANNEL, name="general", creator=BOB)
        server.add_channel(OTHER, name="random")
        server.add_user(ALICE, "alice", real_name="Alice Liddell")
        server.add_user(BOB, "bob", real_name="Bob Builder")
        server.add_user(BOSS, "boss", real_name="The Boss", is_admin=True)
        yield server


@pytest.fixture
def slack_settings(settings: Settings) -> Settings:
    return with_settings(settings, slack_bot_token="xoxb-test", slack_app_token="xapp-test")


@contextlib.asynccontextmanager
async def running(core: ConversationCore, settings: Settings, fake: FakeSlack,
                  **options: Any) -> AsyncIterator[SlackAdapter]:
    """A started adapter talking to `fake`; stopped (and checked to stop cleanly) after."""
    options.setdefault("edit_interval", 0.0)
    client = AsyncWebClient(token=settings.slack_bot_token or "xoxb-test", base_url=fake.api_url)
    adapter = SlackAdapter(core, settings, client=client, host="127.0.0.1", **options)
    serving = asyncio.create_task(adapter.start())
    ready = asyncio.create_task(adapter.ready.wait())
    try:
        await asyncio.wait({serving, ready}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # raises what start() raised
        assert adapter.ready.is_set(), "the adapter did not get ready in 5 s"
        yield adapter
    finally:
        ready.cancel()
        await adapter.stop()
        await asyncio.wait_for(serving, 5)


@contextlib.asynccontextmanager
async def core_with(backend: EchoBackend, history: HistoryStore, settings: Settings, *,
                    max_pending: int = 4) -> AsyncIterator[ConversationCore]:
    async with ModelWorker(lambda: backend, max_pending=max_pending) as worker:
        yield ConversationCore(worker=worker, history=history, settings=settings)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll an async condition (history lives behind a thread) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


def final(fake: FakeSlack, channel: str, thread_ts: str | None = None) -> list[str]:
    """Texts of the bot's messages now, in a thread (or top-level), placeholders excluded."""
    messages = fake.messages(channel, thread_ts=thread_ts) if thread_ts else [
        m for m in fake.messages(channel) if not m.get("thread_ts")
        or m.get("thread_ts") == m["ts"]]
    return [m["text"] for m in messages
            if m.get("user") == BOT and m["text"] not in (THINKING, READING)
            and not m["text"].endswith("…") and not m["text"].startswith("_Queued:")]


def all_bot_texts(fake: FakeSlack) -> list[str]:
    texts = [c.params.get("text", "") for c in fake.calls
             if c.method in ("chat.postMessage", "chat.update")]
    texts += [str(r["body"].get("text", "")) for r in fake.response_posts]
    return texts


# ---------------------------------------------------------------------- mentions, DMs, threads


async def test_mention_placeholder_then_streamed_edits_then_final(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    backend = SteppedBackend()
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        mention = await fake.send_app_mention(CHANNEL, ALICE, "tell me about cats")
        await fake.wait_for_ack(mention)
        thread = mention.event["ts"]
        placeholder = (await fake.wait_for(lambda: fake.posted(CHANNEL, thread_ts=thread)))[0]
        assert placeholder["text"] == THINKING

        def edits() -> list[str]:
            return [m["text"] for m in fake.updated(CHANNEL, placeholder["ts"])]

        backend.step()
        await fake.wait_for(lambda: edits() == ["echo: …"])
        backend.step()
        await fake.wait_for(lambda: edits()[-1:] == ["echo: tell …"])
        backend.step(3)
        done = await fake.wait_for(lambda: final(fake, CHANNEL, thread))

    assert mention.ack_latency is not None and mention.ack_latency < 3.0
    assert done == ["echo: tell me about cats"]
    assert edits()[-1] == "echo: tell me about cats" and len(edits()) >= 3
    assert len(fake.posted(CHANNEL)) == 1, "all in the one placeholder message"
    # A top-level mention is answered in a thread, with the channel as its context.
    channel_history = await history.recent(ChannelKey("slack", CHANNEL))
    assert channel_history == [Turn("user", "alice", "tell me about cats"),
                               Turn("assistant", "Bot", "echo: tell me about cats")]


async def test_edits_are_throttled(slack_settings: Settings, history: HistoryStore,
                                   fake: FakeSlack) -> None:
    clock = FrozenClock()  # time stands still: only the first progress edit is due
    async with core_with(EchoBackend(), history, slack_settings) as core, \
            running(core, slack_settings, fake, edit_interval=1.0, clock=clock):
        words = " ".join(f"w{i}" for i in range(25))
        mention = await fake.send_app_mention(CHANNEL, ALICE, words)
        await fake.wait_for(lambda: final(fake, CHANNEL, mention.event["ts"]))
    placeholder = fake.posted(CHANNEL, thread_ts=mention.event["ts"])[0]
    edits = fake.updated(CHANNEL, placeholder["ts"])
    assert len(edits) == 2, "one progress edit within the second, then the final text"
    assert edits[-1]["text"] == f"echo: {words}"


async def test_direct_message_is_answered_without_mention(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    async with running(core, slack_settings, fake):
        dm = await fake.send_message(DM, ALICE, "hello bot")
        await fake.wait_for_ack(dm)
        await fake.wait_for(lambda: final(fake, DM))
    assert final(fake, DM) == ["echo: hello bot"]
    assert all("thread_ts" not in m for m in fake.posted(DM)), "DMs are answered inline"
    turns = await core.history.recent(ChannelKey("slack", DM))
    assert turns[0] == Turn("user", "alice", "hello bot")


async def test_channel_messages_are_context_and_bot_messages_are_ignored(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    backend = EchoBackend()
    key = ChannelKey("slack", CHANNEL)
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        await fake.send_message(CHANNEL, BOB, "the sky is green today, <@U0ALICE01>",
                                channel_type="channel")
        await fake.send_message(CHANNEL, None, "I am another bot", channel_type="channel",
                                bot_id="B0OTHER01", subtype="bot_message")
        await fake.send_message(CHANNEL, BOT, "my own words", channel_type="channel",
                                bot_id=fake.bot_id)
        await fake.send_message(CHANNEL, BOB, "edited", channel_type="channel",
                                subtype="message_changed")
        await until(lambda: _has_turns(history, key, 1))
        mention = await fake.send_app_mention(CHANNEL, ALICE, "what colour is the sky?")
        await fake.wait_for(lambda: final(fake, CHANNEL, mention.event["ts"]))

    prompt = "\n".join(m["content"] for m in backend.prompts[-1])
    assert "bob: the sky is green today, @alice" in prompt
    assert "another bot" not in prompt and "my own words" not in prompt
    assert [t.text for t in await history.recent(key)][:1] == [
        "the sky is green today, @alice"]
    assert len(fake.posted(CHANNEL)) == 1, "only the mention was answered"


async def _has_turns(history: HistoryStore, key: ChannelKey, count: int) -> bool:
    return len(await history.recent(key)) >= count


async def test_mention_in_thread_reads_the_thread_as_context(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    backend = EchoBackend()
    root = fake.seed_message(CHANNEL, "Let's name the new cat", user=ALICE)
    fake.seed_message(CHANNEL, "How about Tom?", user=BOB, thread_ts=root["ts"])
    key = ChannelKey("slack", CHANNEL, root["ts"])
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        mention = await fake.send_app_mention(CHANNEL, ALICE, "what do you think?",
                                              thread_ts=root["ts"])
        await fake.wait_for(lambda: final(fake, CHANNEL, root["ts"]))
        # The bot now takes part in the thread: it answers there without a mention.
        await fake.send_message(CHANNEL, BOB, "Or Felix", channel_type="channel",
                                thread_ts=root["ts"])
        await fake.wait_for(lambda: len(final(fake, CHANNEL, root["ts"])) == 2)

    assert fake.posted(CHANNEL)[0]["thread_ts"] == root["ts"]
    assert mention.event["thread_ts"] == root["ts"]
    prompt = "\n".join(m["content"] for m in backend.prompts[-1])
    assert "alice: Let's name the new cat" in prompt and "bob: How about Tom?" in prompt
    assert [t.text for t in await history.recent(key)] == [
        "Let's name the new cat", "How about Tom?", "what do you think?",
        "echo: what do you think?", "Or Felix", "echo: Or Felix"]
    assert await history.recent(ChannelKey("slack", CHANNEL)) == [], \
        "a thread's conversation is kept apart from the channel's"


async def test_replies_in_the_bots_thread_are_answered_with_its_context(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    backend = EchoBackend()
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        mention = await fake.send_app_mention(CHANNEL, ALICE, "pick a number")
        thread = mention.event["ts"]
        await fake.wait_for(lambda: final(fake, CHANNEL, thread))
        # Unmentioned reply in the thread the bot answered in (its context is the channel's).
        await fake.send_message(CHANNEL, ALICE, "now double it", channel_type="channel",
                                thread_ts=thread)
        await fake.wait_for(lambda: len(final(fake, CHANNEL, thread)) == 2)
        # Elsewhere, unmentioned thread replies stay unanswered and unrecorded.
        other = fake.seed_message(CHANNEL, "unrelated", user=BOB)
        await fake.send_message(CHANNEL, ALICE, "chit chat", channel_type="channel",
                                thread_ts=other["ts"])
        top = await fake.send_app_mention(CHANNEL, BOB, "done")
        await fake.wait_for(lambda: final(fake, CHANNEL, top.event["ts"]))

    assert final(fake, CHANNEL, thread) == ["echo: pick a number", "echo: now double it"]
    prompt = "\n".join(m["content"] for m in backend.prompts[1])
    # Only alice talks in the thread: her lines carry no name prefix.
    assert "\n@Bot pick a number\n" in prompt and "echo: pick a number" in prompt
    assert fake.messages(CHANNEL, other["ts"])[-1]["text"] == "chit chat"
    assert await history.recent(ChannelKey("slack", CHANNEL, other["ts"])) == []


async def test_switched_off_channel_gets_no_answer(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    key = ChannelKey("slack", CHANNEL)
    await core.history.save_channel_settings(key, ChannelSettings(enabled=False))
    async with running(core, slack_settings, fake):
        mention = await fake.send_app_mention(CHANNEL, ALICE, "anyone?")
        await fake.wait_for(lambda: fake.calls_to("chat.delete"))
        dm = await fake.send_message(DM, ALICE, "still here?")
        await fake.wait_for(lambda: final(fake, DM))
    assert [m["user"] for m in fake.messages(CHANNEL, mention.event["ts"])] == [ALICE], \
        "the placeholder was taken back"
    assert dm.acked


async def test_mention_saying_summarize_in_a_thread_summarises_it(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    backend = EchoBackend()
    root = fake.seed_message(CHANNEL, "Release on Friday?", user=ALICE)
    fake.seed_message(CHANNEL, "Only if QA signs off", user=BOB, thread_ts=root["ts"])
    fake.seed_message(CHANNEL, "QA signed off", user=ALICE, thread_ts=root["ts"])
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        await fake.send_app_mention(CHANNEL, BOB, "summarize", thread_ts=root["ts"])
        done = await fake.wait_for(lambda: final(fake, CHANNEL, root["ts"]))

    assert done[0].startswith("Summary of the last 3 messages:")
    assert fake.calls_to("conversations.replies")[-1].params["ts"] == root["ts"]
    summary_prompt = next(p for p in backend.prompts if p[0]["content"] == MAP_INSTRUCTIONS)
    assert summary_prompt[1]["content"] == (
        "alice: Release on Friday?\nbob: Only if QA signs off\nalice: QA signed off")


async def test_repeated_event_delivery_is_answered_once(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    async with running(core, slack_settings, fake):
        mention = await fake.send_app_mention(CHANNEL, ALICE, "once please")
        retry = await fake.push_event(dict(mention.event))
        await fake.wait_for_ack(retry)
        await fake.wait_for(lambda: final(fake, CHANNEL, mention.event["ts"]))
        other = await fake.send_app_mention(CHANNEL, ALICE, "and another")
        await fake.wait_for(lambda: final(fake, CHANNEL, other.event["ts"]))
    assert len(fake.posted(CHANNEL, thread_ts=mention.event["ts"])) == 1


# ---------------------------------------------------------------------- commands, shortcut


async def test_slash_summarize_acks_at_once_and_reads_channel_history(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    backend = GatedBackend()
    fake.seed_message(CHANNEL, "We ship on Monday", user=ALICE)
    fake.seed_message(CHANNEL, "joined", user=BOB, subtype="channel_join")
    fake.seed_message(CHANNEL, "Docs are late, <@U0ALICE01>", user=BOB)
    fake.seed_message(CHANNEL, "build passed", user=None, bot_id="B0CI00001",
                      subtype="bot_message", username="ci")
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        command = await fake.send_slash_command("/summarize", "", CHANNEL, ALICE)
        await fake.wait_for_ack(command, timeout=3.0)
        assert not backend.gate.is_set(), "acknowledged while the model is still busy"
        placeholder = await fake.wait_for(lambda: fake.posted(CHANNEL))
        assert placeholder[0]["text"] == READING and "thread_ts" not in placeholder[0]
        backend.gate.set()
        done = await fake.wait_for(lambda: final(fake, CHANNEL))

        bad = await fake.send_slash_command("/summarize", "lots", CHANNEL, ALICE)
        await fake.wait_for_ack(bad)

    assert command.ack_latency is not None and command.ack_latency < 3.0
    assert command.ack_payload is None, "a plain ack: the answer follows in the channel"
    assert done == ["Summary of the last 3 messages:\necho: build passed"]
    assert fake.calls_to("conversations.history")
    summary_prompt = next(p for p in backend.prompts if p[0]["content"] == MAP_INSTRUCTIONS)
    assert summary_prompt[1]["content"] == (
        "alice: We ship on Monday\nbob: Docs are late, @alice\nci: build passed")
    assert bad.ack_payload is not None and bad.ack_payload["text"].startswith("Usage:")


async def test_summaries_skip_the_bots_own_status_and_summary_messages(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    fake.seed_message(CHANNEL, "first point", user=ALICE)
    async with running(core, slack_settings, fake):
        await fake.send_slash_command("/summarize", "", CHANNEL, ALICE)
        await fake.wait_for(lambda: final(fake, CHANNEL))
        fake.seed_message(CHANNEL, "second point", user=BOB)
        await fake.send_slash_command("/summarize", "10", CHANNEL, ALICE)
        await fake.wait_for(lambda: len(final(fake, CHANNEL)) == 2)
    assert final(fake, CHANNEL)[1] == "Summary of the last 2 messages:\necho: second point"


async def test_message_shortcut_summarises_the_thread(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    backend = EchoBackend()
    root = fake.seed_message(CHANNEL, "Which database?", user=ALICE)
    fake.seed_message(CHANNEL, "Postgres", user=BOB, thread_ts=root["ts"])
    reply = fake.seed_message(CHANNEL, "Agreed, Postgres", user=ALICE, thread_ts=root["ts"])
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        shortcut = await fake.send_message_shortcut(SHORTCUT_CALLBACK_ID, CHANNEL, reply["ts"],
                                                    root["ts"], BOB)
        await fake.wait_for_ack(shortcut)
        done = await fake.wait_for(lambda: final(fake, CHANNEL, root["ts"]))
    assert shortcut.ack_latency is not None and shortcut.ack_latency < 3.0
    assert done == ["Summary of the last 3 messages:\necho: Agreed, Postgres"]
    assert fake.calls_to("conversations.replies")[-1].params["ts"] == root["ts"]


async def test_ask_help_status_and_reset_permissions(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    key = ChannelKey("slack", CHANNEL)
    async with running(core, slack_settings, fake):
        ask = await fake.send_slash_command("/ask", "why is the sky blue? <!here>", CHANNEL,
                                            ALICE)
        await fake.wait_for_ack(ask)
        header = (await fake.wait_for(lambda: final(fake, CHANNEL)))[0]
        header_ts = fake.posted(CHANNEL)[0]["ts"]
        answer = await fake.wait_for(lambda: final(fake, CHANNEL, header_ts)[1:])

        for name in ("help", "bot-status"):
            await fake.send_slash_command(f"/{name}", "", CHANNEL, ALICE)
        await fake.wait_for(lambda: len(fake.responses(CHANNEL)) == 2)
        await fake.send_slash_command("/reset", "", CHANNEL, ALICE)
        await fake.wait_for(lambda: len(fake.responses(CHANNEL)) == 3)
        turns_before = len(await core.history.recent(key))
        await fake.send_slash_command("/reset", "", CHANNEL, BOSS)  # a workspace admin
        await fake.send_slash_command("/reset", "", CHANNEL, BOB)  # the channel's creator
        await fake.wait_for(lambda: len(fake.responses(CHANNEL)) == 5)
        empty = await fake.send_slash_command("/ask", "  ", CHANNEL, ALICE)
        await fake.wait_for_ack(empty)

    assert header == f"*alice* asked: why is the sky blue? @{WORD_JOINER}here"
    assert answer == [f"echo: why is the sky blue? @{WORD_JOINER}here"]
    responses = [r["body"] for r in fake.responses(CHANNEL)]
    assert all(r["response_type"] == "ephemeral" for r in responses)
    assert "/summarize" in responses[0]["text"] and "Model: fake" in responses[1]["text"]
    assert responses[2]["text"].startswith("Only members who can manage")
    assert turns_before == 2
    assert responses[3]["text"] == "Done: I forgot this conversation (2 messages)."
    assert responses[4]["text"] == "Done: I forgot this conversation (0 messages)."
    assert empty.ack_payload == {"text": "Usage: /ask <question>"}


async def test_persona_and_settings_are_admin_only(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    key = ChannelKey("slack", CHANNEL)
    async with running(core, slack_settings, fake):
        await fake.send_slash_command("/persona", "support", CHANNEL, ALICE)
        await fake.send_slash_command("/settings", "threads off", CHANNEL, ALICE)
        await fake.wait_for(lambda: len(fake.responses(CHANNEL)) == 2)
        unchanged = await core.history.channel_settings(key)
        await fake.send_slash_command("/persona", "support", CHANNEL, BOSS)
        await fake.wait_for(lambda: len(fake.responses(CHANNEL)) == 3)
        await fake.send_slash_command("/settings", "threads off", CHANNEL, BOB)
        await fake.wait_for(lambda: len(fake.responses(CHANNEL)) == 4)
        await fake.send_slash_command("/persona", "", CHANNEL, ALICE)
        await fake.wait_for(lambda: len(fake.responses(CHANNEL)) == 5)
    texts = [r["body"]["text"] for r in fake.responses(CHANNEL)]
    assert texts[0].startswith("Only members who can manage")
    assert texts[1].startswith("Only members who can manage")
    assert unchanged.persona is None and unchanged.thread_replies
    assert "now uses the *support* persona" in texts[2]
    assert texts[3] == "Saved: threads off."
    assert "uses the *support* persona" in texts[4]
    saved = await core.history.channel_settings(key)
    assert saved.persona == "support" and not saved.thread_replies


# ---------------------------------------------------------------------- formatting and size


async def test_markdown_is_converted_and_broadcasts_are_neutralised(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    # Slack sends literal "<" as "&lt;", so the model really sees (and echoes) "<!channel>".
    text = ("**bold** _it_ [site](https://example.com) &lt;!channel&gt; &lt;!here&gt; "
            "&lt;!everyone&gt; &lt;!subteam^S0TEAM|@devs&gt; <!here> @everyone @channel")
    async with running(core, slack_settings, fake):
        mention = await fake.send_app_mention(CHANNEL, ALICE, text)
        done = await fake.wait_for(lambda: final(fake, CHANNEL, mention.event["ts"]))
    assert done[0].startswith("echo: *bold* _it_ <https://example.com|site> &lt;!channel&gt;")
    assert "&lt;!subteam^S0TEAM|@devs&gt;" in done[0]
    for sent in all_bot_texts(fake):
        assert not re.search(r"<[!@#]", sent), sent
        assert not re.search(r"@(here|channel|everyone)\b", sent), sent


async def test_long_answers_are_split_into_several_messages(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod".split()
    paragraphs = [f"Paragraph {i}: " + " ".join(words[(i * j) % len(words)] + str(j)
                                                for j in range(120)) for i in range(12)]
    # (varied words: a paragraph that repeats one phrase 30 times would be cut as a loop)
    answer = "\n\n".join(paragraphs)
    async with core_with(ScriptedBackend(answer), history, slack_settings) as core, \
            running(core, slack_settings, fake):
        mention = await fake.send_app_mention(CHANNEL, ALICE, "write a lot")
        thread = mention.event["ts"]
        await fake.wait_for(lambda: sum(len(t) for t in final(fake, CHANNEL, thread))
                            >= len(answer) - 50)
    parts = final(fake, CHANNEL, thread)
    assert len(parts) >= 3
    assert all(len(p) <= PART_CHARS for p in parts)
    assert "\n\n".join(p.strip() for p in parts).split() == answer.split()


async def test_msg_too_long_is_split_further(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(slack_server, "MAX_MESSAGE_CHARS", 1_500)  # a stricter Slack
    answer = " ".join(f"word{i}" for i in range(1_000))  # ~8,900 chars, no paragraphs
    async with core_with(ScriptedBackend(answer), history, slack_settings) as core, \
            running(core, slack_settings, fake):
        mention = await fake.send_app_mention(CHANNEL, ALICE, "write a lot")
        thread = mention.event["ts"]
        await fake.wait_for(lambda: "word999" in "".join(final(fake, CHANNEL, thread)))
    parts = final(fake, CHANNEL, thread)
    assert all(len(p) <= 1_500 for p in parts)
    assert " ".join(parts).split() == answer.split()
    failed = [c for c in fake.calls if c.response.get("error") == "msg_too_long"]
    assert any(c.method == "chat.update" for c in failed)
    assert "msg_too_long" in caplog.text


# ---------------------------------------------------------------------- failures


async def test_busy_and_model_errors_get_a_short_reply_in_the_thread(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    backend = GatedBackend()
    async with core_with(backend, history, slack_settings, max_pending=1) as core, \
            running(core, slack_settings, fake):
        first = await fake.send_app_mention(CHANNEL, ALICE, "first")
        await asyncio.to_thread(backend.started.wait, 5)
        queued = await fake.send_app_mention(OTHER, ALICE, "second")
        await fake.wait_for(lambda: core.worker.queue_depth == 2)
        busy = await fake.send_app_mention(THIRD, BOB, "third")
        busy_reply = await fake.wait_for(lambda: final(fake, THIRD, busy.event["ts"]))
        backend.gate.set()
        await fake.wait_for(lambda: final(fake, OTHER, queued.event["ts"]))
        await fake.wait_for(lambda: final(fake, CHANNEL, first.event["ts"]))
    assert "busy" in busy_reply[0]

    failing = FailingBackend()
    async with core_with(failing, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        boom = await fake.send_app_mention(CHANNEL, ALICE, "boom")
        apology = await fake.wait_for(lambda: final(fake, CHANNEL, boom.event["ts"]))
        after = await fake.send_app_mention(CHANNEL, ALICE, "still there?")
        await fake.wait_for(lambda: final(fake, CHANNEL, after.event["ts"]))
    assert apology == [APOLOGY]
    assert "generation failed" in caplog.text


async def test_slack_api_errors_are_logged_and_worked_around(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    async with running(core, slack_settings, fake):
        # The placeholder fails: the answer is still posted.
        fake.fail_next("chat.postMessage", "not_in_channel")
        one = await fake.send_app_mention(CHANNEL, ALICE, "one")
        assert await fake.wait_for(lambda: final(fake, CHANNEL, one.event["ts"])) == [
            "echo: one"]
        # Rate limits are waited out (Retry-After) and retried.
        fake.fail_next("chat.postMessage", "ratelimited", retry_after=0)
        fake.fail_next("chat.update", "ratelimited", retry_after=0, times=3)
        two = await fake.send_app_mention(CHANNEL, ALICE, "two")
        assert await fake.wait_for(lambda: final(fake, CHANNEL, two.event["ts"])) == [
            "echo: two"]
        # /ask where the bot is not a member: the answer goes through the response URL.
        fake.fail_next("chat.postMessage", "not_in_channel")
        await fake.send_slash_command("/ask", "three", OTHER, ALICE)
        response = await fake.wait_for(lambda: fake.responses(OTHER))
        assert fake.posted(OTHER) == [], "no placeholder where the bot can't post"
        # /summarize where the bot cannot read: a clear message, no crash.
        fake.fail_next("conversations.history", "not_in_channel")
        await fake.send_slash_command("/summarize", "", CHANNEL, ALICE)
        cannot = await fake.wait_for(
            lambda: [t for t in final(fake, CHANNEL) if "can't read" in t])
        # /summarize in a channel the bot is not in: the error is shown privately.
        fake.fail_next("chat.postMessage", "not_in_channel")
        fake.fail_next("conversations.history", "not_in_channel")
        await fake.send_slash_command("/summarize", "", THIRD, ALICE)
        private = await fake.wait_for(lambda: fake.responses(THIRD))
        assert private[0]["body"]["response_type"] == "ephemeral"
        assert private[0]["body"]["text"].startswith("I can't read the messages here")
        # A Slack server error during the answer: logged, and the bot keeps going.
        fake.fail_next("chat.update", status=500, times=2)
        four = await fake.send_app_mention(CHANNEL, ALICE, "four")
        await fake.wait_for(lambda: final(fake, CHANNEL, four.event["ts"]))
        assert [m["text"] for m in fake.messages(CHANNEL, four.event["ts"])[1:]] == [
            "echo: four"], "the placeholder that could not be edited was replaced"
        five = await fake.send_app_mention(CHANNEL, ALICE, "five")
        await fake.wait_for(lambda: final(fake, CHANNEL, five.event["ts"]))

    assert response[0]["body"] == {"text": "echo: three", "response_type": "in_channel"}
    assert cannot[0].startswith("I can't read the messages here")
    assert "chat.postMessage failed: not_in_channel" in caplog.text
    assert "rate-limited" in caplog.text
    assert "http_500" in caplog.text or "internal_error" in caplog.text
    assert xoxb_never_logged(caplog)


def xoxb_never_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return "xoxb-test" not in caplog.text and "xapp-test" not in caplog.text


async def test_allowed_channels_limit_where_the_bot_answers(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    limited = with_settings(slack_settings, allowed_channels=frozenset({CHANNEL}))
    async with running(core, limited, fake):
        ignored = await fake.send_app_mention(OTHER, ALICE, "hello?")
        await fake.wait_for_ack(ignored)
        refused = await fake.send_slash_command("/ask", "hi", OTHER, ALICE)
        await fake.wait_for_ack(refused)
        dm = await fake.send_message(DM, ALICE, "dm works")
        await fake.wait_for(lambda: final(fake, DM))
        ok = await fake.send_app_mention(CHANNEL, ALICE, "hello")
        await fake.wait_for(lambda: final(fake, CHANNEL, ok.event["ts"]))
    assert fake.posted(OTHER) == []
    assert refused.ack_payload == {"text": "I'm not enabled in this channel."}
    assert dm.acked


async def test_stop_while_answering_cancels_cleanly(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    backend = GatedBackend()
    async with core_with(backend, history, slack_settings) as core:
        async with running(core, slack_settings, fake, drain_timeout=0.1):
            mention = await fake.send_app_mention(CHANNEL, ALICE, "never finishes")
            await asyncio.to_thread(backend.started.wait, 5)
        backend.gate.set()
    assert "cancelled 1 answer(s)" in caplog.text
    assert final(fake, CHANNEL, mention.event["ts"]) == [STOPPED]


# ---------------------------------------------------------------------- connection modes


async def test_stop_while_still_connecting_returns_at_once(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    fake.set_delay("auth.test", 1.0)  # Slack is slow to answer
    client = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)
    adapter = SlackAdapter(core, slack_settings, client=client)
    serving = asyncio.create_task(adapter.start())
    await fake.wait_for(lambda: fake.calls_to("auth.test"))
    await asyncio.wait_for(adapter.stop(), 0.5)
    await asyncio.wait_for(serving, 0.5)  # returns normally, without having connected
    assert not adapter.ready.is_set() and fake.connections == []


async def test_socket_mode_reconnects_after_a_dropped_connection(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    async with running(core, slack_settings, fake):
        first = await fake.send_app_mention(CHANNEL, ALICE, "before")
        await fake.wait_for(lambda: final(fake, CHANNEL, first.event["ts"]))
        assert await fake.drop_connections("close") == 1
        await fake.wait_for_connection(2, timeout=5.0)
        second = await fake.send_app_mention(CHANNEL, ALICE, "after")
        await fake.wait_for(lambda: final(fake, CHANNEL, second.event["ts"]))
    assert second.connection_id == 2
    assert [c.token for c in fake.calls_to("apps.connections.open")] == ["xapp-test"] * 2


async def test_http_mode_verifies_signatures(
        core: ConversationCore, settings: Settings, fake: FakeSlack) -> None:
    http = with_settings(settings, slack_bot_token="xoxb-test",
                         slack_signing_secret=DEFAULT_SIGNING_SECRET, port=0)
    async with running(core, http, fake) as adapter:
        assert not adapter.socket_mode and adapter.bound_port
        url = f"http://127.0.0.1:{adapter.bound_port}/slack/events"
        forged = await send_signed_event(url, DEFAULT_SIGNING_SECRET, fake.event_payload({
            "type": "app_mention", "user": ALICE, "text": f"<@{BOT}> evil", "ts": "1.000001",
            "channel": CHANNEL}), bad_signature=True)
        fake.use_http(url, DEFAULT_SIGNING_SECRET)
        mention = await fake.send_app_mention(CHANNEL, ALICE, "over http")
        command = await fake.send_slash_command("/summarize", "", CHANNEL, ALICE)
        await fake.wait_for(lambda: final(fake, CHANNEL, mention.event["ts"]))
        await fake.wait_for(lambda: [t for t in final(fake, CHANNEL) if "Summary" in t])
    assert forged.status == 401
    assert mention.http_status == 200 and command.http_status == 200
    assert command.ack_latency is not None and command.ack_latency < 3.0
    assert fake.posted(CHANNEL, thread_ts="1.000001") == []
    assert "evil" not in str(fake.calls)
    assert fake.connections == [], "no Socket Mode in HTTP mode"


async def test_configuration_errors(core: ConversationCore, settings: Settings,
                                    slack_settings: Settings, fake: FakeSlack) -> None:
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        SlackAdapter(core, with_settings(settings, slack_bot_token="xoxb-test"))
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
        SlackAdapter(core, with_settings(slack_settings, slack_app_token="xoxb-wrong"))
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN"):
        SlackAdapter(core, with_settings(slack_settings, slack_bot_token=None))
    fake.fail_next("auth.test", "invalid_auth")
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN.*invalid_auth"):
        async with running(core, slack_settings, fake):
            pass
    fake.fail_next("apps.connections.open", "invalid_auth")
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN.*invalid_auth"):
        async with running(core, slack_settings, fake):
            pass


async def test_send_posts_a_reply_in_its_thread(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    async with running(core, slack_settings, fake) as adapter:
        await adapter.send(Reply(ChannelKey("slack", CHANNEL), "**hi** <!here>",
                                 reply_to="1700000000.000100"))
        await adapter.send(Reply(ChannelKey("slack", DM), "inline", reply_to="1700000000.0002"))
    posted = fake.posted()
    assert posted[0]["text"] == "*hi* &lt;!here&gt;"
    assert posted[0]["thread_ts"] == "1700000000.000100"
    assert "thread_ts" not in posted[1]


# ---------------------------------------------------------------------- pure translation


def test_to_incoming_mentions_threads_and_dms() -> None:
    mention = {"type": "app_mention", "user": ALICE, "text": f"<@{BOT}> hi <@{BOB}>",
               "ts": "2.000001", "channel": CHANNEL}
    msg = to_incoming(mention, BOT, names={ALICE: "Alice", BOB: "Bob"})
    assert msg is not None
    assert (msg.key, msg.message_id, msg.author_name, msg.text, msg.addressed) == (
        ChannelKey("slack", CHANNEL), "2.000001", "Alice", "hi @Bob", True)
    threaded = to_incoming({**mention, "thread_ts": "1.000001"}, BOT)
    assert threaded is not None and threaded.key.thread_id == "1.000001"

    dm = {"type": "message", "channel_type": "im", "user": ALICE, "text": "yo",
          "ts": "3.0", "channel": DM}
    direct = to_incoming(dm, BOT)
    assert direct is not None and direct.addressed and direct.is_direct

    context = to_incoming({**dm, "channel_type": "channel", "channel": CHANNEL}, BOT)
    assert context is not None and not context.addressed and not context.is_direct


@pytest.mark.parametrize("event", [
    {"type": "message", "channel_type": "channel", "user": ALICE, "text": f"<@{BOT}> hi"},
    {"type": "message", "channel_type": "im", "user": BOT, "text": "mine"},
    {"type": "message", "channel_type": "im", "user": ALICE, "bot_id": "B1", "text": "bot"},
    {"type": "message", "channel_type": "im", "subtype": "bot_message", "text": "bot"},
    {"type": "message", "channel_type": "im", "user": ALICE, "subtype": "message_changed"},
    {"type": "message", "channel_type": "im", "user": ALICE, "subtype": "channel_join"},
    {"type": "reaction_added", "user": ALICE},
])
def test_to_incoming_ignores(event: dict[str, Any]) -> None:
    assert to_incoming({"ts": "1.0", "channel": CHANNEL, **event}, BOT) is None


@pytest.mark.parametrize(("text", "thread", "args"), [
    ("summarize", "1.0", "500"),
    ("Summarise this thread.", "1.0", "500"),
    ("summarize the last 20 messages", "1.0", "20"),
    ("summarize", None, ""),
    ("summarize 30", None, "30"),
    ("summarize this", "1.0", "500"),
    ("Can you summarize this thread, please?", "1.0", "500"),
])
def test_to_incoming_maps_a_summarize_mention(text: str, thread: str | None,
                                              args: str) -> None:
    event = {"type": "app_mention", "user": ALICE, "text": f"<@{BOT}> {text}", "ts": "2.0",
             "channel": CHANNEL, **({"thread_ts": thread} if thread else {})}
    msg = to_incoming(event, BOT)
    assert msg is not None and (msg.command, msg.args) == ("summarize", args)
    chat = to_incoming({**event, "text": f"<@{BOT}> summarize the French revolution"}, BOT)
    assert chat is not None and chat.command is None


def test_command_and_shortcut_translation() -> None:
    body = {"command": "/Summarize", "text": "20", "channel_id": CHANNEL, "user_id": ALICE,
            "user_name": "alice", "trigger_id": "t1"}
    msg = command_to_incoming(body)
    assert (msg.command, msg.args, msg.author_name, msg.key) == (
        "summarize", "20", "alice", ChannelKey("slack", CHANNEL))
    assert command_to_incoming({**body, "channel_id": DM}).is_direct

    shortcut = {"type": "message_action", "callback_id": SHORTCUT_CALLBACK_ID,
                "channel": {"id": CHANNEL}, "user": {"id": BOB, "name": "bob"},
                "message_ts": "5.0", "message": {"ts": "5.0", "thread_ts": "4.0"},
                "trigger_id": "t2"}
    msg = shortcut_to_incoming(shortcut)
    assert (msg.key, msg.command) == (ChannelKey("slack", CHANNEL, "4.0"), "summarize")
    unthreaded = shortcut_to_incoming({**shortcut, "message": {"ts": "5.0"}})
    assert unthreaded.key.thread_id == "5.0"


def test_manifest_declares_what_the_adapter_uses() -> None:
    yaml = pytest.importorskip("yaml")
    manifest = yaml.safe_load(Path(__file__).parent.parent.joinpath(
        "slack-app-manifest.yml").read_text(encoding="utf-8"))
    features, settings = manifest["features"], manifest["settings"]
    commands = sorted(c["command"] for c in features["slash_commands"])
    assert commands == sorted(SLASH_COMMANDS)
    reserved = {"/me", "/status", "/away", "/dnd", "/shrug", "/remind", "/msg", "/feed", "/who",
                "/collapse", "/expand", "/leave", "/join", "/open", "/search", "/topic",
                "/mute", "/invite", "/shortcuts"}
    assert not reserved & set(commands), "Slack rejects manifests naming built-in commands"
    assert [s["callback_id"] for s in features["shortcuts"]] == [
        SHORTCUT_CALLBACK_ID, EXPLAIN_CALLBACK_ID, ASK_CALLBACK_ID, SUMMARIZE_CALLBACK_ID]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    assert set(settings["event_subscriptions"]["bot_events"]) == {
        "app_mention", "message.channels", "message.groups", "message.im", "message.mpim",
        "assistant_thread_started"}
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert scopes == {"app_mentions:read", "assistant:write", "channels:history",
                      "channels:read", "chat:write", "commands", "files:read",
                      "groups:history", "groups:read", "im:history", "mpim:history",
                      "users:read"}
    assert features["assistant_view"]["assistant_description"]
    assert features["app_home"]["messages_tab_enabled"] is True


async def test_admin_commands_typed_in_a_mention_are_checked_with_slack(
        core: ConversationCore, slack_settings: Settings, fake: FakeSlack) -> None:
    root = fake.seed_message(CHANNEL, "a thread", user=ALICE)
    async with running(core, slack_settings, fake):
        await fake.send_app_mention(CHANNEL, ALICE, "hello there", thread_ts=root["ts"])
        await fake.wait_for(lambda: final(fake, CHANNEL, root["ts"]))
        await fake.send_app_mention(CHANNEL, ALICE, "/reset", thread_ts=root["ts"])
        await fake.wait_for(lambda: len(final(fake, CHANNEL, root["ts"])) == 2)
        await fake.send_app_mention(CHANNEL, BOSS, "/reset", thread_ts=root["ts"])
        await fake.wait_for(lambda: len(final(fake, CHANNEL, root["ts"])) == 3)
    refused, done = final(fake, CHANNEL, root["ts"])[1:]
    assert refused.startswith("Only members who can manage messages here")
    assert done.startswith("Done: I forgot this conversation")
    assert await core.history.recent(ChannelKey("slack", CHANNEL, root["ts"])) == []
    assert fake.calls_to("users.info") and fake.calls_to("conversations.info")


# ---------------------------------------------------------------------- queue and stale requests


async def test_a_waiting_mention_shows_its_place_in_the_queue(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack) -> None:
    backend = GatedBackend()
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake):
        first = await fake.send_app_mention(CHANNEL, ALICE, "first")
        await asyncio.to_thread(backend.started.wait, 5)
        second = await fake.send_app_mention(OTHER, BOB, "second")
        thread = second.event["ts"]
        placeholder = (await fake.wait_for(lambda: fake.posted(OTHER, thread_ts=thread)))[0]
        await fake.wait_for(lambda: [m["text"] for m in fake.updated(OTHER, placeholder["ts"])]
                            == [QUEUED.format(ahead=1)])
        backend.gate.set()
        done = await fake.wait_for(lambda: final(fake, OTHER, thread))
        await fake.wait_for(lambda: final(fake, CHANNEL, first.event["ts"]))
        assert fake.get_message(OTHER, placeholder["ts"])["text"] == "echo: second"
    assert QUEUED.format(ahead=1) == "_Queued: 1 ahead of you…_"
    assert done == ["echo: second"]
    assert [m["ts"] for m in fake.posted(OTHER)] == [placeholder["ts"]], \
        "the queue line was edited into the answer, not left behind"


async def test_a_mention_deleted_before_its_turn_is_never_answered(
        slack_settings: Settings, history: HistoryStore, fake: FakeSlack,
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = GatedBackend()
    root = fake.seed_message(CHANNEL, "a thread", user=ALICE)
    thread_key = ChannelKey("slack", CHANNEL, root["ts"])
    deleted: list[tuple[ChannelKey, str]] = []
    async with core_with(backend, history, slack_settings) as core, \
            running(core, slack_settings, fake) as adapter:
        original = core.message_deleted

        def spy(key: ChannelKey, message_id: str) -> None:
            deleted.append((key, message_id))
            original(key, message_id)

        monkeypatch.setattr(core, "message_deleted", spy)
        await fake.send_app_mention(CHANNEL, ALICE, "keep the model busy",
                                    thread_ts=root["ts"])
        await asyncio.to_thread(backend.started.wait, 5)
        # Bob asks in the same thread, then deletes his question before its turn comes.
        asked = await fake.send_app_mention(CHANNEL, BOB, "never mind", thread_ts=root["ts"])
        placeholder = (await fake.wait_for(
            lambda: fake.posted(CHANNEL, thread_ts=root["ts"])[1:]))[0]
        await fake.delete_user_message(CHANNEL, asked.event["ts"])
        # Slack does not promise an order: a deletion may even arrive before the message.
        early_ts = fake.new_ts()
        await fake.delete_user_message(CHANNEL, early_ts)
        await fake.send_app_mention(CHANNEL, BOB, "too late", ts=early_ts)
        await fake.wait_for(lambda: len(deleted) == 2)
        backend.gate.set()
        await fake.wait_for(lambda: final(fake, CHANNEL, root["ts"]))
        await fake.wait_for(lambda: not adapter._tasks)
        await fake.send_app_mention(CHANNEL, BOB, "still there?", thread_ts=root["ts"])
        await fake.wait_for(lambda: len(final(fake, CHANNEL, root["ts"])) == 2)

    assert deleted == [(thread_key, asked.event["ts"]),
                       (ChannelKey("slack", CHANNEL), early_ts)]
    assert final(fake, CHANNEL, root["ts"]) == ["echo: keep the model busy",
                                               "echo: still there?"]
    assert fake.get_message(CHANNEL, placeholder["ts"]) is None, "its placeholder was taken back"
    assert [m["user"] for m in fake.messages(CHANNEL, early_ts)] == [BOB], \
        "no answer, and its placeholder was taken back"
    assert len(backend.prompts) == 2
    assert [t.text for t in await history.recent(thread_key)] == [
        "a thread", "keep the model busy", "echo: keep the model busy", "still there?",
        "echo: still there?"]
    assert await history.recent(ChannelKey("slack", CHANNEL)) == []
