"""The controls of answers on Discord (issue #18), through the fake Discord and the real
discord.py client: buttons, message commands, forums and a user-installed app.

Every press is acknowledged within Discord's 3 seconds: the fake records when the
interaction was dispatched and when its callback arrived (`callback_delay`), and answers an
interaction acknowledged later with Discord's "Unknown interaction", so a slow ack fails
the test. The figure asserted is the platform's deadline, generously, not a speed goal; on
a quiet machine an ack takes a few milliseconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.core.answering import STOPPED_MARK
from bot.core.controls import GONE, ONLY_ASKER
from bot.core.conversation import ConversationCore
from bot.engines.worker import ModelWorker
from bot.storage.interface import HistoryStore
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, Turn
from tests.conftest import with_settings
from tests.fakes.backends import EchoBatchBackend
from tests.fakes.discord_interactions import (
    FORUM_CHANNEL,
    buttons,
    create_forum_post,
    press_button,
    run_message_command,
    submit_modal,
)
from tests.fakes.discord_server import FakeDiscord, InteractionHandle, Perm
from tests.test_controls_core import NumberedBackend
from tests.test_discord_adapter import alice, channel, make_core, mention, serving, settled

DEADLINE = 3.0
"""Discord's: an interaction not acknowledged within it fails for the user."""


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


async def message_becomes(fake: FakeDiscord, message: dict[str, Any],
                          done: Callable[[dict[str, Any]], bool]) -> None:
    """Wait until the stored `message` satisfies `done` (edits land asynchronously)."""
    mid = int(message["id"])
    await fake.wait_for(lambda: done(fake.messages[mid]), message="the edit never came")


def labels(message: dict[str, Any]) -> list[str]:
    return [b.get("label") or b["emoji"]["name"] for b in buttons(message)]


def key_of(fake: FakeDiscord) -> ChannelKey:
    return ChannelKey("discord", str(channel(fake).id))


async def answer_message(fake: FakeDiscord, question: dict[str, Any],
                         done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The bot's reply to `question`, once `done(reply)` holds."""
    def found() -> dict[str, Any] | None:
        for message in fake.channel_history(int(question["channel_id"])):
            reference = message.get("message_reference") or {}
            if reference.get("message_id") == question["id"] and done(message):
                return message
        return None
    result = await fake.wait_for(found, message="the answer never got there")
    assert result is not None
    return result


async def acked(handle: InteractionHandle) -> float:
    """The press's acknowledgement delay, checked against Discord's deadline."""
    callback = await handle.wait_callback()
    assert callback.status in (200, 204), callback.response
    delay = handle.callback_delay
    assert delay is not None and delay < DEADLINE
    return delay


async def private_note(handle: InteractionHandle, text: str) -> None:
    """The presser (and only the presser) was told `text`."""
    (note,) = await handle.wait_followups(1)
    assert note.json["content"] == text and note.json["flags"] & 64  # ephemeral


async def test_stop_cancels_the_generation_keeps_the_text_and_refuses_strangers(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    backend = EchoBatchBackend(steps=2)
    bob = fake.create_user("bob")
    async with make_core(backend, settings, history) as core, \
            serving(fake, core, settings) as adapter:
        question = await mention(fake, "one two three four five six")
        writing = await answer_message(fake, question, lambda m: m["content"] == "echo: one two")
        assert labels(writing) == ["Stop"]
        stranger = await press_button(fake, writing, "Stop", bob)
        await acked(stranger)
        await private_note(stranger, ONLY_ASKER)
        press = await press_button(fake, writing, "Stop")
        delay = await acked(press)
        final = await answer_message(fake, question,
                                     lambda m: m["content"].endswith(STOPPED_MARK))
        await settled(fake, adapter)
        backend.allow(100)
    assert final["content"] == "echo: one two" + STOPPED_MARK
    assert labels(final) == ["Regenerate", "👍", "👎"]  # no Continue: it was stopped
    assert press.callbacks[0].json["type"] == 6  # a deferred update of the message
    assert await history.recent(key_of(fake)) == [
        Turn("user", "Alice", "one two three four five six"),
        Turn("assistant", "Bot", "echo: one two" + STOPPED_MARK)]
    assert not fake.schema_errors
    print(f"Stop acknowledged after {delay * 1000:.1f} ms")


async def test_regenerate_replaces_the_answer_and_continue_goes_on(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    settings = with_settings(settings, max_new_tokens=2)  # "answer N" fills the budget
    async with make_core(NumberedBackend(), settings, history) as core, \
            serving(fake, core, settings) as adapter:
        question = await mention(fake, "tell me something")
        first = await answer_message(fake, question, lambda m: len(buttons(m)) == 4)
        assert first["content"] == "answer 1"
        assert labels(first) == ["Regenerate", "Continue", "👍", "👎"]
        regenerate = await press_button(fake, first, "Regenerate")
        await acked(regenerate)
        await message_becomes(fake, first, lambda m: m["content"] == "answer 2"
                              and len(buttons(m)) == 4)
        await settled(fake, adapter)
        assert [t.text for t in await history.recent(key_of(fake))] == [
            "tell me something", "answer 2"]
        more = await press_button(fake, first, "Continue")
        await acked(more)
        await message_becomes(fake, first, lambda m: m["content"] == "answer 2 and more words")
        await settled(fake, adapter)
    assert [t.text for t in await history.recent(key_of(fake))] == [
        "tell me something", "answer 2 and more words"]
    # The new text went through the interaction's webhook (works without channel access).
    assert regenerate.original_edits and more.original_edits
    assert not fake.schema_errors


async def test_votes_are_private_stored_once_and_changed_once(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    bob = fake.create_user("bob")
    async with serving(fake, core, settings) as adapter:
        question = await mention(fake, "hello")
        answer = await answer_message(fake, question, lambda m: len(buttons(m)) == 3)
        await settled(fake, adapter)
        notes = []
        for emoji in ("👍", "👍", "👎"):
            handle = await press_button(fake, answer, emoji, bob)
            await acked(handle)
            (note,) = await handle.wait_followups(1)
            assert note.json["flags"] & 64
            notes.append(note.json["content"])
    assert "recorded" in notes[0] and "already" in notes[1] and "Changed" in notes[2]
    votes = await core.history.feedback_since(0)
    assert [(v.value, v.question, v.answer) for v in votes] == [(-1, "hello", "echo: hello")]


async def test_presses_after_a_restart_and_on_erased_answers(
        fake: FakeDiscord, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "restart.sqlite3"
    answer: dict[str, Any] = {}
    for round_ in (1, 2, 3):
        backend = NumberedBackend()
        async with SQLiteHistoryStore(path) as store, \
                ModelWorker(lambda b=backend: b, max_pending=4) as worker:
            core = ConversationCore(worker=worker, history=store, settings=settings)
            async with serving(fake, core, settings) as adapter:
                if round_ == 1:
                    question = await mention(fake, "the question")
                    answer = await answer_message(fake, question, lambda m: len(buttons(m)))
                    await settled(fake, adapter)
                elif round_ == 2:  # a new process: the buttons still work
                    handle = await press_button(fake, answer, "Regenerate")
                    await acked(handle)
                    await message_becomes(fake, answer, lambda m: m["content"] == "answer 1"
                                          and len(buttons(m)) == 3)
                    await settled(fake, adapter)
                    await store.forget_channel(key_of(fake))
                else:  # erased: explained privately, and the stale buttons go
                    vote = await press_button(fake, answer, "👍")
                    await acked(vote)
                    await private_note(vote, GONE)
                    handle = await press_button(fake, answer, "Regenerate")
                    await acked(handle)
                    await private_note(handle, GONE)
                    await message_becomes(fake, answer, lambda m: not buttons(m))
    assert not fake.schema_errors


async def test_slash_ask_answers_carry_the_controls(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    async with make_core(NumberedBackend(), settings, history) as core, \
            serving(fake, core, settings) as adapter:
        handle = await fake.invoke_slash_command("ask", {"prompt": "why?"})
        await fake.wait_for(lambda: handle.original_message is not None
                            and len(buttons(handle.original_message)) == 3)
        await settled(fake, adapter)
        original = handle.original_message
        assert original is not None and original["content"].endswith("answer 1")
        again = await press_button(fake, original, "Regenerate")
        await acked(again)
        await message_becomes(fake, original, lambda m: m["content"] == "> why?\nanswer 2")
        await settled(fake, adapter)
    key = key_of(fake)
    assert [t.text for t in await history.recent(key)] == ["why?", "answer 2"]


async def test_message_commands_explain_ask_and_summarize_from_here(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    bob = fake.create_user("bob")
    async with serving(fake, core, settings) as adapter:
        await fake.send_user_message(channel(fake), bob, "before the target")
        target = await fake.send_user_message(channel(fake), bob, "The build is red again.")
        await fake.send_user_message(channel(fake), alice(fake), "I'll look at it")

        explain = await run_message_command(fake, "Explain", target)
        await acked(explain)
        await explain.wait_followups(1)
        await settled(fake, adapter)
        explained = explain.original_message
        assert explained is not None
        # The echo model repeats the newest line it got: the question about the message.
        assert explained["content"].endswith("Explain this message: what it says, and what "
                                             "it means.")
        assert labels(explained) == ["Regenerate", "👍", "👎"]

        opened = await run_message_command(fake, "Ask about this", target)
        assert await acked(opened) < DEADLINE and opened.callbacks[0].json["type"] == 9
        asked = await submit_modal(fake, opened, {"question": "Who broke it?"})
        await acked(asked)
        await asked.wait_followups(1)
        await settled(fake, adapter)
        assert asked.original_message is not None
        assert asked.original_message["content"] == "> Who broke it?\necho: Who broke it?"

        summary = await run_message_command(fake, "Summarize from here", target)
        await acked(summary)
        await summary.wait_followups(1)
        await settled(fake, adapter)
    history = await core.history.recent(key_of(fake))
    quoted = [t.text for t in history if t.text.startswith("bob wrote:")]
    assert quoted == [
        "bob wrote:\n> The build is red again.\n\n" + question
        for question in ("Explain this message: what it says, and what it means.",
                         "Who broke it?")]
    assert summary.original_message is not None
    # From the target on: it, Alice's reply and the bot's two answers; not the one before.
    assert summary.original_message["content"].startswith("Summary of the last 4 messages")
    assert not fake.schema_errors


async def test_a_user_installed_app_says_it_cannot_read_a_server_it_is_not_in(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    async with serving(fake, core, settings) as adapter:
        target = await fake.send_user_message(channel(fake), alice(fake), "hello there")
        fake.fail_next("GET", "/channels/{channel_id}/messages", 403, code=50001,
                       message="Missing Access")
        summary = await run_message_command(fake, "Summarize from here", target,
                                            guild_installed=False)
        await acked(summary)
        await summary.wait_followups(1)
        explain = await run_message_command(fake, "Explain", target, guild_installed=False)
        await explain.wait_followups(1)
        await settled(fake, adapter)
    assert summary.original_message is not None
    assert "not a member of this server" in summary.original_message["content"]
    assert explain.original_message is not None
    assert "echo:" in explain.original_message["content"]  # the message itself was enough


async def test_a_forum_post_is_answered_in_its_thread(
        fake: FakeDiscord, core: ConversationCore, settings: Settings) -> None:
    assert fake.default_guild is not None
    async with serving(fake, core, settings) as adapter:
        forum = await fake.create_channel(fake.default_guild, "help", type=FORUM_CHANNEL)
        thread, first = await create_forum_post(fake, forum, alice(fake), "Printer",
                                                f"{fake.bot_user.mention} my printer jams")
        await answer_message(fake, first, lambda m: m["content"] == "echo: my printer jams")
        await settled(fake, adapter)
        await fake.send_user_message(thread, alice(fake), "and now?")  # unmentioned, in thread
        await fake.wait_for(lambda: any(m["content"] == "echo: and now?"
                                        for m in fake.channel_history(thread)))
        await settled(fake, adapter)
    key = ChannelKey("discord", str(forum.id), str(thread.id))
    assert [t.text for t in await core.history.recent(key)] == [
        "my printer jams", "echo: my printer jams", "and now?", "echo: and now?"]


async def test_admins_may_regenerate_someone_elses_answer(
        fake: FakeDiscord, settings: Settings, history: HistoryStore) -> None:
    mod = fake.create_user("mod")
    async with make_core(NumberedBackend(), settings, history) as core, \
            serving(fake, core, settings) as adapter:
        question = await mention(fake, "q")
        answer = await answer_message(fake, question, lambda m: len(buttons(m)) == 3)
        await settled(fake, adapter)
        handle = await press_button(fake, answer, "Regenerate", mod,
                                    member_permissions=Perm.MANAGE_MESSAGES | Perm.VIEW_CHANNEL)
        await acked(handle)
        await message_becomes(fake, answer, lambda m: m["content"] == "answer 2")
        await settled(fake, adapter)
