"""Both adapters under bad input and platform faults, through the fake servers.

Why: a community bot meets payloads nobody planned for (missing fields, wrong types,
unknown event types, a megabyte of text) and platforms that misbehave (rate limits, 5xx,
missing permissions). Each must cost at most that one event or answer, leave a log line,
and never take the handler or the connection down; so every test ends by checking the
bot still answers. Waits are on the fakes' records, never on sleeps.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession

from bot.config import Settings
from bot.core.conversation import EMPTY_PROMPT_HINT, ConversationCore
from bot.platforms.slack.app import SHORTCUT_CALLBACK_ID
from tests.conftest import with_settings
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import (
    DEFAULT_SIGNING_SECRET,
    FakeSlack,
    post_signed,
    sign_slack_request,
)
from tests.test_discord_adapter import (
    alice,
    bot_messages,
    channel,
    mention,
    serving,
    settled,
    wait_bot_text,
)
from tests.test_slack_adapter import ALICE, BOB, BOT, CHANNEL, DM, OTHER, final, running

TOO_LONG = "That message is too long for me"


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
async def slack_fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_channel(CHANNEL, name="general", creator=BOB)
        server.add_channel(OTHER, name="random")
        server.add_user(ALICE, "alice", real_name="Alice Liddell")
        server.add_user(BOB, "bob", real_name="Bob Builder")
        yield server


@pytest.fixture
def slack_settings(settings: Settings) -> Settings:
    return with_settings(settings, slack_bot_token="xoxb-test", slack_app_token="xapp-test")


async def post_large(url: str, body: str) -> int:
    """POST a signed body of over a megabyte (streamed, as aiohttp wants large bodies)."""
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": timestamp,
               "X-Slack-Signature": sign_slack_request(DEFAULT_SIGNING_SECRET, timestamp, body)}
    async with ClientSession() as session, session.post(
            url, data=io.BytesIO(body.encode()), headers=headers) as response:
        return response.status


def messages_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(logger)]


# ---------------------------------------------------------------------------- Discord: input


async def test_discord_survives_malformed_gateway_events(
        discord_fake: FakeDiscord, core: ConversationCore, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = discord_fake
    caplog.set_level(logging.DEBUG, logger="bot")
    async with serving(fake, core, settings) as adapter:
        real = await fake.send_user_message(channel(fake), alice(fake), "a real message")
        guild_id = str(channel(fake).guild_id)

        def variant(**changes: Any) -> dict[str, Any]:
            return {**real, "id": str(fake.snowflake()), "guild_id": guild_id, **changes}

        odd: list[tuple[str, Any]] = [
            ("MESSAGE_CREATE", {}),  # every field missing
            ("MESSAGE_CREATE", "not an object"),
            ("MESSAGE_CREATE", None),
            ("MESSAGE_CREATE", [1, 2, 3]),
            ("MESSAGE_CREATE", variant(author=None)),
            ("MESSAGE_CREATE", variant(content=12345)),  # discord.py takes it; we cannot
            ("MESSAGE_CREATE", variant(type=9999)),  # a message type from the future
            ("MESSAGE_CREATE", variant(channel_id="not-a-number")),
            ("MESSAGE_DELETE", {"id": "x"}),
            ("MESSAGE_DELETE_BULK", {"ids": None, "channel_id": str(channel(fake).id)}),
            ("INTERACTION_CREATE", {}),
            ("INTERACTION_CREATE", {"id": "1", "type": 2, "token": "t", "version": 1,
                                    "application_id": str(fake.application_id),
                                    "channel_id": str(channel(fake).id),
                                    "data": {"id": "9", "name": "no-such-command", "type": 1}}),
            ("SOMETHING_DISCORD_ADDS_LATER", {"x": 1}),
        ]
        for event, data in odd:
            await fake.dispatch(event, data)
        # A megabyte of text, mentioning the bot: refused with a short reply.
        await mention(fake, "x" * 1_000_000)
        await fake.wait_for(lambda: [m for m in bot_messages(fake, channel(fake))
                                     if m["content"].startswith(TOO_LONG)])
        await mention(fake, "still there?")
        await wait_bot_text(fake, channel(fake), "echo: still there?")
        await settled(fake, adapter)
        assert len(fake.identifies) == 1 and not fake.resumes, "the gateway never dropped"
    logged = messages_of(caplog, "bot.platforms.discord")
    skipped = [m for m in logged if m.startswith("ignored a Discord")]
    assert len(skipped) >= 8, logged
    assert any("MESSAGE_CREATE event" in m for m in skipped)
    assert any("INTERACTION_CREATE event" in m for m in skipped)
    assert any("message in #general" in m for m in skipped)  # the non-text content
    assert not fake.handler_errors


# ---------------------------------------------------------------------------- Discord: faults


async def test_discord_rate_limit_is_waited_out_while_other_channels_are_served(
        discord_fake: FakeDiscord, core: ConversationCore, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = discord_fake
    assert fake.default_guild is not None
    async with serving(fake, core, settings):
        other = await fake.create_channel(fake.default_guild, "other")
        fake.fail_next("POST", f"/channels/{channel(fake).id}/messages", 429, retry_after=0.5)
        await mention(fake, "slow lane")
        await fake.wait_for(lambda: [r for r in fake.message_creates(channel(fake))
                                     if r.status == 429])
        await mention(fake, "fast lane", where=other)
        fast = await wait_bot_text(fake, other, "echo: fast lane")
        slow = await wait_bot_text(fake, channel(fake), "echo: slow lane")
    assert int(fast["id"]) < int(slow["id"]), "the other channel did not wait for the limit"
    assert [r.status for r in fake.message_creates(channel(fake))] == [429, 200]
    assert "rate limited" in caplog.text.lower()  # discord.py says so itself


async def test_discord_server_errors_are_logged_and_other_channels_still_answered(
        discord_fake: FakeDiscord, core: ConversationCore, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = discord_fake
    assert fake.default_guild is not None
    async with serving(fake, core, settings) as adapter:
        other = await fake.create_channel(fake.default_guild, "other")
        # 503 is not retried by discord.py: every try of this answer fails.
        broken = fake.fail_next("POST", f"/channels/{channel(fake).id}/messages", 503,
                                times=100)
        await mention(fake, "into the void")
        await fake.wait_for(lambda: "was not delivered" in caplog.text)
        await mention(fake, "meanwhile", where=other)
        await wait_bot_text(fake, other, "echo: meanwhile")
        fake.clear_faults()
        # A single 500 is retried by discord.py (after 1 s) and the answer arrives.
        fake.fail_next("POST", f"/channels/{channel(fake).id}/messages", 500)
        await mention(fake, "second try")
        await wait_bot_text(fake, channel(fake), "echo: second try", timeout=10)
        await settled(fake, adapter)
    assert broken.remaining < 100
    assert "Discord refused a message in #general (" in caplog.text
    assert "(HTTP 503, code" in caplog.text
    lost = [r for r in caplog.records if "was not delivered" in r.getMessage()]
    assert lost and lost[0].levelno == logging.WARNING and "#general" in lost[0].getMessage()
    assert [m["content"] for m in bot_messages(fake, channel(fake))] == ["echo: second try"]


# ---------------------------------------------------------------------------- Slack: input


async def test_slack_socket_mode_survives_malformed_events(
        core: ConversationCore, slack_settings: Settings, slack_fake: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = slack_fake
    async with running(core, slack_settings, fake) as adapter:
        events: list[Any] = [
            {"type": "app_mention"},  # every field missing
            {"type": "app_mention", "user": ["U1"], "channel": {"id": CHANNEL}, "ts": 5,
             "text": ["hi"]},
            {"type": "message", "channel_type": "im", "user": ALICE, "channel": DM,
             "ts": "1.000001", "subtype": {"odd": True}},
            # Usable, with odd optional fields: an empty DM outside any thread.
            {"type": "message", "channel_type": "im", "user": ALICE, "channel": DM,
             "ts": "1.000002", "thread_ts": {"odd": True}, "text": None},
            {"type": "message", "subtype": "message_deleted"},
            {"type": "message", "subtype": "message_deleted", "channel": CHANNEL,
             "deleted_ts": "1.0", "previous_message": "gone"},
            {"type": "message", "subtype": "a_subtype_from_the_future", "channel": CHANNEL},
            {"type": "reaction_added", "user": ALICE},
        ]
        for event in events:
            await fake.wait_for_ack(await fake.push_event(event))
        unreadable = await fake.push_envelope(
            "events_api", {"type": "event_callback", "event": "not an object"})
        await fake.wait_for_ack(unreadable)  # acknowledged, so Slack does not resend it
        for payload in ([1, 2], None, "text"):
            await fake.push_envelope("events_api", payload)
        await fake.push_envelope("an_envelope_type_from_the_future", {"x": 1})
        huge = await fake.send_app_mention(CHANNEL, ALICE, "y" * 1_000_000)
        refused = await fake.wait_for(lambda: final(fake, CHANNEL, huge.event["ts"]))
        ok = await fake.send_app_mention(CHANNEL, ALICE, "still there?")
        await fake.wait_for(lambda: final(fake, CHANNEL, ok.event["ts"]))
        await fake.wait_for(lambda: not adapter._tasks)
        assert len(fake.connections) == 1 and fake.connections[0].open
    assert refused[0].startswith(TOO_LONG)
    assert final(fake, CHANNEL, ok.event["ts"]) == ["echo: still there?"]
    assert "ignored an events envelope that could not be read" in caplog.text
    assert "unexpected error in the Slack adapter" not in caplog.text
    posted_to = {c.params.get("channel") for c in fake.calls_to("chat.postMessage")}
    assert posted_to == {CHANNEL, DM}, "nothing was sent for the malformed events"
    assert final(fake, DM) == [EMPTY_PROMPT_HINT]


async def test_slack_http_mode_rejects_unreadable_bodies_and_keeps_serving(
        core: ConversationCore, settings: Settings, slack_fake: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = slack_fake
    http = with_settings(settings, slack_bot_token="xoxb-test",
                         slack_signing_secret=DEFAULT_SIGNING_SECRET, port=0)
    async with running(core, http, fake) as adapter:
        url = f"http://127.0.0.1:{adapter.bound_port}/slack/events"
        statuses = {}
        for body in ("[1, 2]", '"text"', "null", "not json", "",
                     json.dumps({"type": "event_callback", "event": "not an object"})):
            response = await post_signed(url, DEFAULT_SIGNING_SECRET, body, "application/json")
            statuses[body] = response.status
        form = await post_signed(url, DEFAULT_SIGNING_SECRET, "payload=not-json",
                                 "application/x-www-form-urlencoded")
        odd_event = await post_signed(url, DEFAULT_SIGNING_SECRET, json.dumps(
            fake.event_payload({"type": "app_mention", "user": 7, "channel": None})),
            "application/json")
        oversized = await post_large(url, json.dumps(
            fake.event_payload({"type": "app_mention", "user": ALICE, "channel": CHANNEL,
                                "ts": "9.000001", "text": f"<@{BOT}> " + "z" * 2_000_000})))
        fake.use_http(url, DEFAULT_SIGNING_SECRET)
        ok = await fake.send_app_mention(CHANNEL, ALICE, "over http, still there?")
        await fake.wait_for(lambda: final(fake, CHANNEL, ok.event["ts"]))
    assert set(statuses.values()) == {400}, statuses
    assert form.status == 400
    assert odd_event.status in (200, 400)  # well-formed JSON with odd fields: never acted on
    assert oversized == 413
    assert final(fake, CHANNEL, ok.event["ts"]) == ["echo: over http, still there?"]
    warnings = messages_of(caplog, "bot.platforms.slack")
    assert sum("could not be read" in m for m in warnings) >= 7, warnings
    assert any("over the size limit" in m for m in warnings)
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text


async def test_slack_odd_commands_and_shortcuts_cost_only_themselves(
        core: ConversationCore, slack_settings: Settings, slack_fake: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = slack_fake
    async with running(core, slack_settings, fake) as adapter:
        for payload in ({"command": "/ask"}, {"command": "/summarize", "text": "5"},
                        {"command": "/bot-status", "user_id": ["U1"], "channel_id": 3}):
            await fake.wait_for_ack(await fake.push_envelope("slash_commands", payload))
        for payload in ({"type": "message_action", "callback_id": SHORTCUT_CALLBACK_ID},
                        {"type": "message_action", "callback_id": SHORTCUT_CALLBACK_ID,
                         "user": "U1", "channel": "C1", "message": "m"}):
            await fake.push_envelope("interactive", payload)
        await fake.wait_for(lambda: not adapter._tasks)
        ok = await fake.send_app_mention(CHANNEL, ALICE, "still there?")
        await fake.wait_for(lambda: final(fake, CHANNEL, ok.event["ts"]))
    assert "unexpected error in the Slack adapter" not in caplog.text
    assert "channel_not_found" in caplog.text  # where they could not be answered, it says so


# ---------------------------------------------------------------------------- Slack: faults


async def test_slack_rate_limit_on_one_channel_does_not_hold_up_another(
        core: ConversationCore, slack_settings: Settings, slack_fake: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = slack_fake
    async with running(core, slack_settings, fake):
        fake.fail_next("chat.postMessage", "ratelimited", retry_after=1)
        slow = await fake.send_app_mention(OTHER, ALICE, "slow lane")
        await fake.wait_for(lambda: "rate-limited" in caplog.text)
        fast = await fake.send_app_mention(CHANNEL, BOB, "fast lane")
        await fake.wait_for(lambda: final(fake, CHANNEL, fast.event["ts"]))
        assert not final(fake, OTHER, slow.event["ts"]), "still waiting out its limit"
        await fake.wait_for(lambda: final(fake, OTHER, slow.event["ts"]))
    assert final(fake, OTHER, slow.event["ts"]) == ["echo: slow lane"]


async def test_slack_server_errors_are_logged_and_other_channels_still_answered(
        core: ConversationCore, slack_settings: Settings, slack_fake: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = slack_fake
    async with running(core, slack_settings, fake) as adapter:
        # Both posts of this answer (the placeholder, then the answer) meet a 500.
        fake.fail_next("chat.postMessage", status=500, times=2)
        lost = await fake.send_app_mention(OTHER, ALICE, "into the void")
        await fake.wait_for(lambda: "were not delivered" in caplog.text)
        await fake.wait_for(lambda: not adapter._tasks)
        ok = await fake.send_app_mention(CHANNEL, BOB, "meanwhile")
        await fake.wait_for(lambda: final(fake, CHANNEL, ok.event["ts"]))
    assert final(fake, OTHER, lost.event["ts"]) == []
    warning = next(r for r in caplog.records if "were not delivered" in r.getMessage())
    assert warning.levelno == logging.WARNING and OTHER in warning.getMessage()
    assert "internal_error" in warning.getMessage()


async def test_slack_missing_channel_access_is_logged_and_others_still_answered(
        core: ConversationCore, slack_settings: Settings, slack_fake: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = slack_fake
    async with running(core, slack_settings, fake) as adapter:
        fake.fail_next("chat.postMessage", "not_in_channel", times=2)
        await fake.send_app_mention(OTHER, ALICE, "where am I?")
        await fake.wait_for(lambda: "were not delivered" in caplog.text)
        await fake.wait_for(lambda: not adapter._tasks)
        ok = await fake.send_app_mention(CHANNEL, BOB, "here I am")
        await fake.wait_for(lambda: final(fake, CHANNEL, ok.event["ts"]))
    assert "chat.postMessage failed: not_in_channel" in caplog.text
    assert any("not_in_channel" in r.getMessage() and "not delivered" in r.getMessage()
               for r in caplog.records)


async def test_slack_event_bursts_after_a_dropped_socket_are_all_answered(
        core: ConversationCore, slack_settings: Settings, slack_fake: FakeSlack) -> None:
    fake = slack_fake
    async with running(core, slack_settings, fake, ping_interval=0.2):
        assert await fake.drop_connections("abort") == 1
        await fake.wait_for_connection(2, timeout=10.0)
        # (Different askers: one asker's newer question would make the older one stale.)
        senders = [(CHANNEL, ALICE), (CHANNEL, BOB), (OTHER, ALICE)]
        asked = [await fake.send_app_mention(where, who, f"question {i}")
                 for i, (where, who) in enumerate(senders)]
        for i, (delivery, (where, _)) in enumerate(zip(asked, senders, strict=True)):
            await fake.wait_for(lambda d=delivery, w=where: final(fake, w, d.event["ts"]))
            assert final(fake, where, delivery.event["ts"]) == [f"echo: question {i}"]


async def test_slack_signed_requests_with_a_stale_timestamp_are_refused(
        core: ConversationCore, settings: Settings, slack_fake: FakeSlack) -> None:
    http = with_settings(settings, slack_bot_token="xoxb-test",
                         slack_signing_secret=DEFAULT_SIGNING_SECRET, port=0)
    async with running(core, http, slack_fake) as adapter:
        url = f"http://127.0.0.1:{adapter.bound_port}/slack/events"
        replay = await post_signed(url, DEFAULT_SIGNING_SECRET, json.dumps(
            slack_fake.event_payload({"type": "app_mention", "user": ALICE, "channel": CHANNEL,
                                      "ts": "3.000001", "text": f"<@{BOT}> replayed"})),
            "application/json", timestamp=1_000_000_000)
    assert replay.status == 401
    assert slack_fake.calls_to("chat.postMessage") == []
