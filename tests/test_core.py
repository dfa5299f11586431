"""The conversation core with a real worker thread and fake backends; no platform."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.config import Settings
from bot.core.conversation import APOLOGY, EMPTY_PROMPT_HINT, ConversationCore
from bot.engines.worker import ModelWorker
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, IncomingMessage, Turn
from tests.conftest import with_settings
from tests.fakes.backends import EchoBackend, FailingBackend, GatedBackend

KEY = ChannelKey("discord", "general")


def message(text: str, *, key: ChannelKey = KEY, addressed: bool = True, author: str = "ada",
            command: str | None = None, args: str = "", admin: bool = False,
            message_id: str = "m1") -> IncomingMessage:
    return IncomingMessage(key=key, message_id=message_id, author_id=f"id-{author}",
                           author_name=author, text=text, addressed=addressed, command=command,
                           args=args, is_admin=admin)


async def test_answers_and_records_both_turns(core: ConversationCore,
                                              history: HistoryStore) -> None:
    reply = await core.handle(message("hello there"))
    assert reply is not None
    assert reply.text == "echo: hello there"
    assert reply.reply_to == "m1" and reply.key == KEY
    assert await history.recent(KEY) == [Turn("user", "ada", "hello there"),
                                         Turn("assistant", "Bot", "echo: hello there")]


async def test_history_and_author_names_reach_the_prompt(core: ConversationCore,
                                                         backend: EchoBackend) -> None:
    await core.handle(message("the sky is green", addressed=False, author="bob"))
    await core.handle(message("what colour is the sky?"))
    prompt = backend.prompts[-1]
    assert prompt[0]["role"] == "system" and "Bot" in prompt[0]["content"]
    assert prompt[-1] == {"role": "user",
                          "content": "bob: the sky is green\nada: what colour is the sky?"}


async def test_unaddressed_messages_are_context_only(core: ConversationCore,
                                                     backend: EchoBackend,
                                                     history: HistoryStore) -> None:
    assert await core.handle(message("just chatting", addressed=False)) is None
    assert backend.prompts == []
    assert [t.text for t in await history.recent(KEY)] == ["just chatting"]


async def test_progress_streams_the_reply_so_far(core: ConversationCore) -> None:
    seen: list[str] = []

    async def progress(text: str) -> None:
        seen.append(text)

    reply = await core.handle(message("one two three"), on_progress=progress)
    assert seen == ["echo:", "echo: one", "echo: one two", "echo: one two three"]
    assert reply is not None and reply.text == seen[-1]


async def test_channels_do_not_share_history(core: ConversationCore,
                                             backend: EchoBackend) -> None:
    other = ChannelKey("discord", "general", thread_id="t1")
    await core.handle(message("secret in channel"))
    await core.handle(message("in the thread", key=other))
    assert "secret" not in str(backend.prompts[-1])


async def test_commands_help_status_reset(core: ConversationCore,
                                          history: HistoryStore) -> None:
    await core.handle(message("remember me"))
    help_reply = await core.handle(message("/help"))
    assert help_reply is not None
    for name in ("/ask", "/summarize", "/reset", "/help", "/status"):
        assert name in help_reply.text
    status = await core.handle(message("", command="status"))
    assert status is not None
    assert "Model: fake on cpu" in status.text and "Queue: 0" in status.text
    assert "Stored: 2 messages in this conversation, 2 in 1 conversation(s) in all; kept " \
        "until /reset or /forget" in status.text
    denied = await core.handle(message("/reset"))
    assert denied is not None and "Only members who can manage" in denied.text
    assert len(await history.recent(KEY)) == 2
    done = await core.handle(message("/reset", admin=True))
    assert done is not None and "forgot this conversation (2 messages)" in done.text
    assert await history.recent(KEY) == []


async def test_ask_and_unknown_commands(core: ConversationCore) -> None:
    reply = await core.handle(message("", command="ask", args="what now"))
    assert reply is not None and reply.text == "echo: what now"
    unknown = await core.handle(message("/frobnicate"))
    assert unknown is not None and "don't know the command /frobnicate" in unknown.text


async def test_summarize_reads_history_or_the_platform(core: ConversationCore,
                                                       backend: EchoBackend) -> None:
    empty = await core.handle(message("/summarize"))
    assert empty is not None and "nothing to summarise" in empty.text
    for i in range(3):
        await core.handle(message(f"point {i}", addressed=False))
    reply = await core.handle(message("/summarize 2"))
    assert reply is not None and reply.text.startswith("Summary of the last 2 messages:")
    assert backend.prompts[-1][-1]["content"] == "ada: point 1\nada: point 2"

    async def from_platform(count: int) -> list[Turn]:
        return [Turn("user", "zed", f"platform line {i}") for i in range(count)]

    reply = await core.handle(message("", command="summarize", args="3"),
                              fetch_transcript=from_platform)
    assert reply is not None and "last 3 messages" in reply.text
    assert backend.prompts[-1][-1]["content"].startswith("zed: platform line 0")
    bad = await core.handle(message("/summarize lots"))
    assert bad is not None and bad.text.startswith("Usage: /summarize")
    too_many = await core.handle(message("/summarize 501"))
    assert too_many is not None and "between 1 and 500" in too_many.text


async def test_busy_reply_and_nothing_recorded(settings: Settings,
                                               history: HistoryStore) -> None:
    backend = GatedBackend()
    async with ModelWorker(lambda: backend, max_pending=1) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        first = asyncio.create_task(core.handle(message("first")))
        await asyncio.to_thread(backend.started.wait, 5)
        queued = asyncio.create_task(core.handle(message("second",
                                                         key=ChannelKey("slack", "x"))))
        await asyncio.sleep(0)  # let it reach the queue (it has no lock to wait on)
        while worker.queue_depth < 2:
            await asyncio.sleep(0.01)
        busy = await core.handle(message("third", key=ChannelKey("slack", "y")))
        assert busy is not None and "busy" in busy.text
        backend.gate.set()
        assert (await first) is not None and (await queued) is not None
    assert await history.recent(ChannelKey("slack", "y")) == []


async def test_model_error_apologises_and_history_stays_intact(
        settings: Settings, history: HistoryStore, caplog: pytest.LogCaptureFixture) -> None:
    async with ModelWorker(FailingBackend) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        await core.handle(message("hello"))
        with caplog.at_level(logging.WARNING):
            failed = await core.handle(message("boom please"))
        assert failed is not None and failed.text == APOLOGY
        assert "generation failed" in caplog.text
        after = await core.handle(message("still there?"))
        assert after is not None and after.text == "echo: still there?"
    texts = [t.text for t in await history.recent(KEY)]
    assert texts == ["hello", "echo: hello", "boom please", "still there?",
                     "echo: still there?"]


async def test_generations_in_one_channel_are_serialised(core: ConversationCore,
                                                         history: HistoryStore) -> None:
    replies = await asyncio.gather(*(core.handle(message(f"q{i}", message_id=f"m{i}",
                                                         author=f"user{i}"))
                                     for i in range(5)))
    assert [r.text for r in replies if r] == [f"echo: q{i}" for i in range(5)]
    texts = [t.text for t in await history.recent(KEY)]
    assert texts == [x for i in range(5) for x in (f"q{i}", f"echo: q{i}")]


async def test_older_waiting_messages_of_the_same_user_are_dropped(
        settings: Settings, history: HistoryStore) -> None:
    backend = GatedBackend()
    async with ModelWorker(lambda: backend) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        first = asyncio.create_task(core.handle(message("first", message_id="m1")))
        await asyncio.to_thread(backend.started.wait, 5)
        waiting = [asyncio.create_task(core.handle(message(f"retry {i}", message_id=f"r{i}")))
                   for i in range(3)]
        deleted = asyncio.create_task(core.handle(message("oops", author="bob",
                                                          message_id="b1")))
        while not (core.inflight.is_latest(KEY, "id-ada", "r2")
                   and core.inflight.is_latest(KEY, "id-bob", "b1")):  # all are waiting now
            await asyncio.sleep(0.01)
        core.message_deleted(KEY, "b1")
        backend.gate.set()
        results = await asyncio.gather(first, *waiting, deleted)
    texts = [r.text if r else None for r in results]
    assert texts == ["echo: first", None, None, "echo: retry 2", None]
    assert [t.text for t in await history.recent(KEY)] == [
        "first", "echo: first", "retry 2", "echo: retry 2"]
    sample = core.metrics.registry.get_sample_value
    assert sample("bot_requests_total", {"platform": "discord", "outcome": "dropped"}) == 3


async def test_rate_limit_per_user_with_admins_exempt(settings: Settings,
                                                      history: HistoryStore) -> None:
    now = [0.0]
    async with ModelWorker(EchoBackend) as worker:
        core = ConversationCore(worker=worker, history=history, clock=lambda: now[0],
                                settings=with_settings(settings, rate_limit_per_minute=2))
        first = [await core.handle(message(f"m{i}", message_id=f"m{i}")) for i in range(2)]
        now[0] = 20.0
        limited = await core.handle(message("too many", message_id="m3"))
        other_user = await core.handle(message("hi", author="bob", message_id="b1"))
        admin = await core.handle(message("/status", admin=True, message_id="a1"))
        now[0] = 60.5
        again = await core.handle(message("later", message_id="m4"))
    assert all(r and r.text.startswith("echo:") for r in first)
    assert limited is not None
    assert limited.text == ("You're sending requests faster than I can answer (at most 2 a "
                            "minute). Please try again in 40 s.")
    assert other_user is not None and other_user.text == "echo: hi"
    assert admin is not None and admin.text.startswith("Model:")
    assert again is not None and again.text == "echo: later"
    assert "too many" not in [t.text for t in await history.recent(KEY)]


async def test_metrics_count_outcomes_and_timings(core: ConversationCore) -> None:
    await core.handle(message("hello"))
    await core.handle(message("/help"))
    await core.handle(message("x" * 100_000, message_id="big"))
    sample = core.metrics.registry.get_sample_value
    for outcome, expected in (("answered", 1), ("command", 1), ("refused", 1)):
        assert sample("bot_requests_total",
                      {"platform": "discord", "outcome": outcome}) == expected
    assert sample("bot_generation_seconds_count") == 1
    assert sample("bot_time_to_first_token_seconds_count") == 1
    assert sample("bot_generated_tokens_total") == 2  # "echo: hello" is 2 words here
    assert sample("bot_queue_depth") == 0


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01\x07", "\u200b\u200b"])
async def test_empty_messages_get_a_hint(core: ConversationCore, text: str,
                                         backend: EchoBackend) -> None:
    reply = await core.handle(message(text))
    assert reply is not None and reply.text == EMPTY_PROMPT_HINT
    assert backend.prompts == []


async def test_a_huge_message_is_refused_clearly(core: ConversationCore,
                                                 history: HistoryStore) -> None:
    reply = await core.handle(message("x" * 100_000))
    assert reply is not None
    assert "too long" in reply.text and "100,000" in reply.text and "16,000" in reply.text
    assert await history.recent(KEY) == []
    ok = await core.handle(message("short again"))
    assert ok is not None and ok.text == "echo: short again"


async def test_control_characters_are_removed_and_emoji_kept(core: ConversationCore,
                                                             history: HistoryStore) -> None:
    reply = await core.handle(message("hi\x1b[31m 🦉\x00 owl\r\nnext"))
    assert reply is not None
    turns = await history.recent(KEY)
    assert turns[0].text == "hi[31m 🦉 owl\nnext"


async def test_a_long_message_under_the_limit_is_cut_to_fit(settings: Settings,
                                                            history: HistoryStore) -> None:
    backend = EchoBackend()
    async with ModelWorker(lambda: backend) as worker:
        core = ConversationCore(worker=worker, history=history,
                                settings=with_settings(settings, max_input_chars=50_000))
        reply = await core.handle(message("word " * 5_000))
    assert reply is not None
    prompt = backend.prompts[-1]
    assert backend.token_counter().count_prompt(prompt) <= 512 - settings.max_new_tokens
    assert prompt[-1]["content"].endswith("[…]")


async def test_the_model_never_speaks_for_a_person(settings: Settings,
                                                   history: HistoryStore) -> None:
    class Impersonator(EchoBackend):
        def generate(self, request, emit, should_stop):  # type: ignore[no-untyped-def]
            for piece in ("Sure thing.", "\nada: thanks bot", "\nbob: me too"):
                emit(piece)
            return "Sure thing.\nada: thanks bot\nbob: me too"

    seen: list[str] = []

    async def progress(text: str) -> None:
        seen.append(text)

    async with ModelWorker(Impersonator) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        reply = await core.handle(message("can you help?"), on_progress=progress)
    assert reply is not None and reply.text == "Sure thing."
    assert all("ada:" not in shown for shown in seen)
    assert (await history.recent(KEY))[-1].text == "Sure thing."


async def test_a_busy_channel_cannot_starve_a_quiet_one(settings: Settings,
                                                        history: HistoryStore) -> None:
    backend = GatedBackend()
    busy, quiet = ChannelKey("discord", "busy"), ChannelKey("discord", "quiet")
    positions: list[int] = []

    async def queued(ahead: int) -> None:
        positions.append(ahead)

    async with ModelWorker(lambda: backend, max_pending=8) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        flood = [asyncio.create_task(core.handle(message(f"busy {i}", key=busy,
                                                         author=f"u{i}")))
                 for i in range(4)]
        await asyncio.to_thread(backend.started.wait, 5)
        late = asyncio.create_task(core.handle(message("quiet one", key=quiet),
                                               on_queued=queued))
        while worker.queue_depth < 2:  # the quiet request is queued behind "busy 0"
            await asyncio.sleep(0.01)
        backend.gate.set()
        await asyncio.gather(*flood, late)
    order = [p[-1]["content"].split(": ", 1)[-1] for p in backend.prompts]
    assert order.index("quiet one") == 1  # behind one request of the busy channel, not four
    assert positions == [1]


async def test_forget_is_admin_only_and_erases_the_channel(core: ConversationCore,
                                                           history: HistoryStore) -> None:
    await core.handle(message("remember this"))
    denied = await core.handle(message("/forget"))
    assert denied is not None and denied.text.startswith("Only members who can manage")
    done = await core.handle(message("/forget", admin=True))
    assert done is not None and done.text.startswith("Erased for good: 2 stored messages")
    assert await history.recent(KEY) == []


async def test_a_message_deleted_while_queued_is_not_answered(settings: Settings,
                                                              history: HistoryStore) -> None:
    backend = GatedBackend()
    other = ChannelKey("discord", "other")
    async with ModelWorker(lambda: backend, max_pending=8) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        first = asyncio.create_task(core.handle(message("busy here", key=other)))
        await asyncio.to_thread(backend.started.wait, 5)
        queued = asyncio.create_task(core.handle(message("delete me", message_id="gone")))
        while (KEY, "gone") not in core.inflight:  # queued behind the other channel's job
            await asyncio.sleep(0.01)
        core.message_deleted(KEY, "gone")
        backend.gate.set()
        assert await queued is None
        assert (await first) is not None
    assert await history.recent(KEY) == []
    assert [p[-1]["content"] for p in backend.prompts] == ["busy here"]
