"""The controls of answers on Slack (issue #18), through the fake Slack and the real
slack-bolt app in Socket Mode: native streaming and its fallback, the assistant status and
suggested prompts, and block actions (Stop, Regenerate, Continue, feedback).

Every press must be acknowledged within Slack's 3 seconds: the fake records when it pushed
the envelope and when the ack came back (`Delivery.ack_latency`). The deadline is asserted
generously, as the platform's limit, not as a speed goal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.core.answering import STOPPED_MARK
from bot.core.controls import ONLY_ASKER
from bot.core.conversation import ConversationCore
from bot.engines.worker import ModelWorker
from bot.platforms.slack.answer_flow import THINKING, WRITING
from bot.storage.interface import HistoryStore
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, Turn
from tests.conftest import with_settings
from tests.fakes.slack_assistant import (
    AssistantApi,
    control_values,
    ephemeral_blocks,
    install,
    open_assistant_thread,
    send_block_action,
    submit_view,
)
from tests.fakes.slack_server import Delivery, FakeSlack
from tests.test_controls_core import NumberedBackend
from tests.test_slack_adapter import ALICE, BOB, CHANNEL, SteppedBackend, core_with, running

DEADLINE = 3.0
"""Slack's: an interaction not acknowledged within it shows the user an error."""
TEAM = "T0FAKE001"
CAROL = "U0CAROL01"
"""Neither the asker nor an admin (Bob created the channel: he counts as one)."""


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_channel(CHANNEL, name="general", creator=BOB)
        server.add_user(ALICE, "alice", real_name="Alice Liddell")
        server.add_user(BOB, "bob", real_name="Bob Builder")
        server.add_user(CAROL, "carol", real_name="Carol Danvers")
        yield server


@pytest.fixture
def tokens(settings: Settings) -> Settings:
    return with_settings(settings, slack_bot_token="xoxb-test", slack_app_token="xapp-test")


async def acked(slack: FakeSlack, delivery: Delivery) -> float:
    await slack.wait_for_ack(delivery)
    assert delivery.ack_latency is not None and delivery.ack_latency < DEADLINE
    return delivery.ack_latency


def bot_thread(slack: FakeSlack, thread: str) -> list[dict[str, Any]]:
    return [m for m in slack.messages(CHANNEL, thread_ts=thread) if m.get("bot_id")]


async def answered(slack: FakeSlack, thread: str, text: str) -> dict[str, Any]:
    """The bot's message in `thread` once it reads `text` and shows its controls."""
    def found() -> dict[str, Any] | None:
        return next((m for m in bot_thread(slack, thread) if m["text"] == text
                     and any(b["type"] != "section" for b in m.get("blocks") or [])), None)
    message = await slack.wait_for(found, message=f"never answered {text!r}")
    assert message is not None
    return message


async def test_native_stream_with_status_then_controls_under_it(
        tokens: Settings, history: HistoryStore, slack: FakeSlack) -> None:
    api = install(slack)
    backend = SteppedBackend()
    async with core_with(backend, history, tokens) as core, running(core, tokens, slack):
        mention = await slack.send_app_mention(CHANNEL, ALICE, "tell me about cats")
        thread = mention.event["ts"]
        await slack.wait_for(lambda: api.statuses)
        assert not bot_thread(slack, thread)  # "is thinking..." instead of a placeholder
        backend.step(5)
        message = await answered(slack, thread, "echo: tell me about cats")
    assert await acked(slack, mention) < DEADLINE
    assert [s["status"] for s in api.statuses] == ["is thinking...", ""]
    calls = api.stream_calls()
    assert calls[:3] == ["assistant.threads.setStatus", "assistant.threads.setStatus",
                         "chat.startStream"] and calls[-1] == "chat.stopStream"
    assert slack.calls_to("chat.update") == [] and len(bot_thread(slack, thread)) == 1
    (stream,) = api.streams.values()
    assert (stream["recipient_user_id"], stream["recipient_team_id"]) == (ALICE, TEAM)
    assert sorted(control_values(message)) == ["down", "regenerate", "up"]
    assert any(b["type"] == "context_actions" for b in message["blocks"])  # Slack's thumbs
    # While it streamed, only the asker saw a Stop button.
    (stop,) = slack.ephemerals
    assert (stop["user"], stop["text"], stop["thread_ts"]) == (ALICE, WRITING, thread)
    assert list(control_values(ephemeral_blocks(stop))) == ["stop"]
    assert await history.recent(ChannelKey("slack", CHANNEL)) == [
        Turn("user", "alice", "tell me about cats"),
        Turn("assistant", "Bot", "echo: tell me about cats")]


async def test_a_refused_stream_falls_back_to_edits_and_is_not_tried_again(
        tokens: Settings, core: ConversationCore, slack: FakeSlack) -> None:
    api = install(slack, refuse_streaming="missing_scope", refuse_status="missing_scope",
                  feedback_block=False)
    async with running(core, tokens, slack):
        for text in ("first question", "second question"):
            mention = await slack.send_app_mention(CHANNEL, ALICE, text)
            message = await answered(slack, mention.event["ts"], f"echo: {text}")
            # The workspace refused feedback_buttons: two plain buttons instead.
            assert sorted(control_values(message)) == ["down", "regenerate", "up"]
            assert all(b["type"] in ("section", "actions") for b in message["blocks"])
    assert [c.method for c in slack.calls if c.method.startswith(("chat.start", "assistant"))
            ] == ["assistant.threads.setStatus", "chat.startStream"]
    assert any(m["text"] == THINKING for m in slack.posted(CHANNEL))  # the old placeholder
    assert not api.streams


async def test_a_stream_that_expires_mid_answer_goes_on_with_chat_update(
        tokens: Settings, history: HistoryStore, slack: FakeSlack) -> None:
    api = install(slack, expire_after=1)
    backend = SteppedBackend()
    async with core_with(backend, history, tokens) as core, running(core, tokens, slack):
        mention = await slack.send_app_mention(CHANNEL, ALICE, "one two three four five")
        thread = mention.event["ts"]
        for _ in range(6):
            backend.step()
            await slack.wait_for(lambda: api.streams)
        message = await answered(slack, thread, "echo: one two three four five")
    (ts,) = api.streams
    assert message["ts"] == ts and not api.streams[ts]["open"]
    assert [c.params["ts"] for c in slack.calls_to("chat.update") if c.ok][-1] == ts
    assert len(bot_thread(slack, thread)) == 1  # the same message, no second one


async def test_stop_keeps_the_text_stored_once_and_a_stranger_is_refused(
        tokens: Settings, history: HistoryStore, slack: FakeSlack) -> None:
    install(slack)
    backend = SteppedBackend()
    async with core_with(backend, history, tokens) as core, running(core, tokens, slack):
        mention = await slack.send_app_mention(CHANNEL, ALICE, "one two three four")
        thread = mention.event["ts"]
        backend.step(2)
        await slack.wait_for(lambda: slack.ephemerals)
        stop = ephemeral_blocks(slack.ephemerals[0])
        stranger = await send_block_action(slack, CHANNEL, stop, "stop", CAROL, ephemeral=True)
        await acked(slack, stranger)
        note = await slack.wait_for(lambda: slack.responses(CHANNEL))
        assert note[0]["body"]["text"] == ONLY_ASKER
        assert note[0]["body"]["response_type"] == "ephemeral"
        press = await send_block_action(slack, CHANNEL, stop, "stop", ALICE, ephemeral=True)
        await acked(slack, press)
        message = await answered(slack, thread, "echo: one" + STOPPED_MARK)
        backend.step(10)
    assert sorted(control_values(message)) == ["down", "regenerate", "up"]
    assert await history.recent(ChannelKey("slack", CHANNEL)) == [
        Turn("user", "alice", "one two three four"),
        Turn("assistant", "Bot", "echo: one" + STOPPED_MARK)]


async def test_regenerate_continue_and_votes_through_block_actions(
        tokens: Settings, history: HistoryStore, slack: FakeSlack) -> None:
    install(slack)
    tokens = with_settings(tokens, max_new_tokens=2)  # "answer N" fills the budget
    async with core_with(NumberedBackend(), history, tokens) as core, \
            running(core, tokens, slack) as adapter:
        mention = await slack.send_app_mention(CHANNEL, ALICE, "tell me")
        thread = mention.event["ts"]
        first = await answered(slack, thread, "answer 1")
        assert sorted(control_values(first)) == ["continue", "down", "regenerate", "up"]
        press = await send_block_action(slack, CHANNEL, first, "regenerate", ALICE)
        await acked(slack, press)
        second = await answered(slack, thread, "answer 2")
        assert second["ts"] == first["ts"]  # the same message, rewritten
        press = await send_block_action(slack, CHANNEL, second, "continue", ALICE)
        await acked(slack, press)
        await answered(slack, thread, "answer 2 and more words")
        for vote in ("up", "up", "down"):
            press = await send_block_action(slack, CHANNEL, second, vote, BOB)
            await acked(slack, press)
        notes = await slack.wait_for(lambda: len(slack.responses(CHANNEL)) == 3
                                     and slack.responses(CHANNEL))
        await slack.wait_for(lambda: not adapter._tasks)
    assert ["recorded" in notes[0]["body"]["text"], "already" in notes[1]["body"]["text"],
            "Changed" in notes[2]["body"]["text"]] == [True, True, True]
    assert [t.text for t in await history.recent(ChannelKey("slack", CHANNEL))] == [
        "tell me", "answer 2 and more words"]
    votes = await history.feedback_since(0)
    assert [(v.value, v.answer) for v in votes] == [(-1, "answer 2 and more words")]


async def test_presses_work_after_a_restart(tokens: Settings, slack: FakeSlack,
                                            tmp_path: Path) -> None:
    install(slack)
    path = tmp_path / "restart.sqlite3"
    first: dict[str, Any] = {}
    for round_ in (1, 2):
        backend = NumberedBackend()
        async with SQLiteHistoryStore(path) as store, \
                ModelWorker(lambda b=backend: b, max_pending=4) as worker:
            core = ConversationCore(worker=worker, history=store, settings=tokens)
            async with running(core, tokens, slack) as adapter:
                if round_ == 1:
                    mention = await slack.send_app_mention(CHANNEL, ALICE, "question")
                    thread = mention.event["ts"]
                    first = await answered(slack, thread, "answer 1")
                    await slack.wait_for(lambda: not adapter._tasks)
                    continue
                press = await send_block_action(slack, CHANNEL, first, "regenerate", ALICE)
                await acked(slack, press)
                await answered(slack, thread, "answer 1")  # a new process's first answer
                await slack.wait_for(lambda: len(slack.calls_to("chat.update")) >= 2)
                await slack.wait_for(lambda: not adapter._tasks)
                found = await store.answer(ChannelKey("slack", CHANNEL), thread)
                assert found is not None and found.revision == 2


async def test_assistant_view_gets_suggested_prompts(
        tokens: Settings, core: ConversationCore, slack: FakeSlack) -> None:
    api: AssistantApi = install(slack)
    async with running(core, tokens, slack):
        root, opened = await open_assistant_thread(slack, "D0ALICE01", ALICE)
        await acked(slack, opened)
        await slack.wait_for(lambda: api.prompts)
        # A question in the assistant thread streams natively there.
        asked = await slack.send_message("D0ALICE01", ALICE, "hello", thread_ts=root)
        await slack.wait_for(lambda: any(m.get("text") == "echo: hello"
                                         for m in slack.messages("D0ALICE01", root)))
        await acked(slack, asked)
    (suggested,) = api.prompts
    assert (suggested["channel_id"], suggested["thread_ts"]) == ("D0ALICE01", root)
    assert [p["title"] for p in suggested["prompts"]][:2] == ["Ask me anything",
                                                              "Draft a message"]
    assert api.streams


async def test_explain_shortcut_answers_in_the_messages_thread(
        tokens: Settings, core: ConversationCore, slack: FakeSlack) -> None:
    install(slack)
    async with running(core, tokens, slack):
        target = slack.seed_message(CHANNEL, "The build is red again.", user=BOB)
        shortcut = await slack.send_message_shortcut("explain_message", CHANNEL, target["ts"])
        await acked(slack, shortcut)
        await answered(slack, target["ts"], "echo: Explain this message: what it says, and "
                                            "what it means.")
    stored = await core.history.recent(ChannelKey("slack", CHANNEL, target["ts"]))
    assert stored[0].text == ("bob wrote:\n> The build is red again.\n\n"
                              "Explain this message: what it says, and what it means.")


async def test_ask_about_this_opens_a_form_then_answers_in_the_thread(
        tokens: Settings, core: ConversationCore, slack: FakeSlack) -> None:
    api = install(slack)
    async with running(core, tokens, slack):
        target = slack.seed_message(CHANNEL, "Deploys are frozen until Monday.", user=BOB)
        shortcut = await slack.send_message_shortcut("ask_about_message", CHANNEL, target["ts"])
        await acked(slack, shortcut)
        (form,) = await slack.wait_for(lambda: api.views)
        submitted = await submit_view(slack, form, {"question": "Can I ship on Sunday?"},
                                      ALICE)
        await acked(slack, submitted)
        message = await answered(slack, target["ts"], "echo: Can I ship on Sunday?")
    assert sorted(control_values(message)) == ["down", "regenerate", "up"]
    stored = await core.history.recent(ChannelKey("slack", CHANNEL, target["ts"]))
    assert stored[0] == Turn("user", "alice", "bob wrote:\n> Deploys are frozen until "
                                              "Monday.\n\nCan I ship on Sunday?")
