"""Smoke tests: the real slack-bolt AsyncApp / slack_sdk clients against ``FakeSlack``.

Why: later Slack adapter tests trust this fake; these prove it speaks the protocol the
real clients expect (Socket Mode hello/envelopes/acks/reconnects, Web API bodies and
errors, response_url, and HTTP request signing).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from slack_bolt.async_app import AsyncAck, AsyncRespond, AsyncSay
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack_server import (
    DEFAULT_SIGNING_SECRET,
    MAX_MESSAGE_CHARS,
    FakeSlack,
    build_app,
    make_socket_mode_handler,
    running_socket_mode,
    send_signed_event,
    serve_bolt_http,
    socket_mode,
)

CHANNEL = "C0GENERAL"
USER = "U0ALICE01"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        server.add_channel(CHANNEL, name="general")
        yield server


@pytest.fixture
async def client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token="xoxb-test", base_url=fake.api_url)


async def test_socket_mode_hello_app_mention_say_in_thread_and_ack(fake: FakeSlack) -> None:
    app = build_app(fake)
    seen: list[dict[str, Any]] = []

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: AsyncSay) -> None:
        seen.append(event)
        await say(text=f"echo: {event['text']}", thread_ts=event.get("thread_ts") or event["ts"])

    handler = make_socket_mode_handler(app, fake)
    client_messages: list[dict[str, Any]] = []

    async def listen(
        _client: AsyncBaseSocketModeClient, message: dict[str, Any], _raw: str | None
    ) -> None:
        client_messages.append(message)

    handler.client.message_listeners.append(listen)
    async with running_socket_mode(handler, fake):
        await fake.wait_for(lambda: any(m.get("type") == "hello" for m in client_messages))
        assert fake.connections[0].hello_sent_at is not None

        delivery = await fake.send_app_mention(CHANNEL, USER, "hello there")
        await fake.wait_for_ack(delivery, timeout=3.0)
        assert delivery.ack_latency is not None and delivery.ack_latency < 3.0
        assert fake.ack_for(delivery) is not None

        posted = await fake.wait_for(lambda: fake.posted(CHANNEL, thread_ts=delivery.event["ts"]))

    assert seen[0]["user"] == USER
    assert seen[0]["text"] == f"<@{fake.bot_user_id}> hello there"
    assert posted[0]["text"] == f"echo: <@{fake.bot_user_id}> hello there"
    assert posted[0]["user"] == fake.bot_user_id
    post_call = fake.calls_to("chat.postMessage")[0]
    assert post_call.token == "xoxb-test"
    assert post_call.params["thread_ts"] == delivery.event["ts"]
    assert post_call.content_type == "application/json"
    assert fake.calls_to("apps.connections.open")[0].token == "xapp-test"
    assert fake.calls_to("auth.test"), "bolt authorizes lazily via auth.test"
    # The reply landed in the thread of the stored mention.
    thread = fake.messages(CHANNEL, thread_ts=delivery.event["ts"])
    assert [m["user"] for m in thread] == [USER, fake.bot_user_id]
    assert thread[0]["reply_count"] == 1


async def test_web_api_update_delete_ephemeral_info_reactions(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    posted = await client.chat_postMessage(channel=CHANNEL, text="draft")
    ts = posted["ts"]
    updated = await client.chat_update(channel=CHANNEL, ts=ts, text="final")
    assert updated["message"]["text"] == "final"
    assert [m["text"] for m in fake.updated(CHANNEL, ts)] == ["final"]
    assert fake.posted(CHANNEL)[0]["text"] == "draft", "posted() keeps the as-posted snapshot"
    assert fake.get_message(CHANNEL, ts)["text"] == "final"  # type: ignore[index]

    # Form-encoded bodies (slack_sdk uses them for some methods / api_call(data=...)).
    form = await client.api_call("chat.postMessage", data={"channel": CHANNEL, "text": "form"})
    assert form["message"]["text"] == "form"
    assert fake.calls[-1].content_type == "application/x-www-form-urlencoded"

    await client.reactions_add(channel=CHANNEL, timestamp=ts, name="eyes")
    with pytest.raises(SlackApiError) as err:
        await client.reactions_add(channel=CHANNEL, timestamp=ts, name="eyes")
    assert err.value.response["error"] == "already_reacted"
    assert fake.get_message(CHANNEL, ts)["reactions"][0]["name"] == "eyes"  # type: ignore[index]

    eph = await client.chat_postEphemeral(channel=CHANNEL, user=USER, text="only you")
    assert eph["message_ts"] and fake.ephemerals[0]["user"] == USER

    info = await client.conversations_info(channel=CHANNEL)
    assert info["channel"]["name"] == "general"
    fake.add_user(USER, "alice", real_name="Alice A")
    user = await client.users_info(user=USER)
    assert user["user"]["real_name"] == "Alice A"

    await client.chat_delete(channel=CHANNEL, ts=ts)
    assert fake.get_message(CHANNEL, ts) is None
    assert all(c.at > 0 for c in fake.calls)


async def test_slash_command_acked_then_respond_and_say(fake: FakeSlack) -> None:
    app = build_app(fake)

    @app.command("/ask")
    async def on_ask(
        ack: AsyncAck, respond: AsyncRespond, say: AsyncSay, command: dict[str, Any]
    ) -> None:
        await ack("thinking...")
        await respond(f"answer to {command['text']}")
        await respond(text="public answer", response_type="in_channel")
        await say("said in channel")

    async with socket_mode(app, fake):
        delivery = await fake.send_slash_command("/ask", "why?", CHANNEL, USER)
        await fake.wait_for_ack(delivery, timeout=3.0)
        assert delivery.ack_payload == {"text": "thinking..."}
        await fake.wait_for(lambda: len(fake.responses(CHANNEL)) == 2 and fake.posted(CHANNEL))

    assert delivery.ack_latency is not None and delivery.ack_latency < 3.0
    response = fake.responses(CHANNEL)[0]
    assert response["body"]["text"] == "answer to why?"
    assert response["user"] == USER
    assert fake.posted(CHANNEL)[0]["text"] == "said in channel"
    # in_channel responses become channel messages; ephemeral ones do not. bolt's respond()
    # omits response_type by default (Slack treats that as ephemeral).
    types = [r["body"].get("response_type") for r in fake.responses(CHANNEL)]
    assert types == [None, "in_channel"]
    stored = [m["text"] for m in fake.messages(CHANNEL)]
    assert stored == ["public answer", "said in channel"]


async def test_message_shortcut_reaches_handler(fake: FakeSlack) -> None:
    app = build_app(fake)
    parent = fake.seed_message(CHANNEL, "long discussion", user=USER)
    reply = fake.seed_message(CHANNEL, "more", user=USER, thread_ts=parent["ts"])
    got: list[dict[str, Any]] = []

    @app.shortcut("summarize_thread")
    async def on_shortcut(ack: AsyncAck, shortcut: dict[str, Any], say: AsyncSay) -> None:
        await ack()
        got.append(shortcut)
        await say(text="summary", thread_ts=shortcut["message"].get("thread_ts"))

    async with socket_mode(app, fake):
        delivery = await fake.send_message_shortcut(
            "summarize_thread", CHANNEL, reply["ts"], parent["ts"], USER
        )
        await fake.wait_for_ack(delivery)
        await fake.wait_for(lambda: fake.posted(CHANNEL, thread_ts=parent["ts"]))

    assert got[0]["type"] == "message_action"
    assert got[0]["message_ts"] == reply["ts"]
    assert got[0]["message"]["text"] == "more"


async def test_history_and_replies_with_pagination(fake: FakeSlack, client: AsyncWebClient) -> None:
    seeded = [fake.seed_message(CHANNEL, f"m{i}", user=USER) for i in range(5)]
    root = seeded[1]["ts"]
    for i in range(3):
        fake.seed_message(CHANNEL, f"r{i}", user=USER, thread_ts=root)

    texts: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await client.conversations_history(channel=CHANNEL, limit=2, cursor=cursor)
        pages += 1
        texts += [m["text"] for m in page["messages"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            assert page["has_more"] is False
            break
    assert pages == 3
    assert texts == ["m4", "m3", "m2", "m1", "m0"], "newest first, thread replies excluded"

    # slack_sdk's own async pagination follows next_cursor too.
    first = await client.conversations_replies(channel=CHANNEL, ts=root, limit=2)
    assert first["messages"][0]["reply_count"] == 3
    # NB: iterating an AsyncSlackResponse replaces its data page by page (in place).
    thread_texts = [m["text"] async for page in first for m in page["messages"]]
    assert thread_texts == ["m1", "r0", "r1", "r2"]

    with pytest.raises(SlackApiError) as err:
        await client.conversations_replies(channel=CHANNEL, ts="1.000001")
    assert err.value.response["error"] == "thread_not_found"


async def test_msg_too_long_and_injected_failures(fake: FakeSlack, client: AsyncWebClient) -> None:
    ok = await client.chat_postMessage(channel=CHANNEL, text="x" * MAX_MESSAGE_CHARS)
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel=CHANNEL, text="x" * (MAX_MESSAGE_CHARS + 1))
    assert err.value.response["error"] == "msg_too_long"
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel=CHANNEL, ts=ok["ts"], text="y" * (MAX_MESSAGE_CHARS + 1))
    assert err.value.response["error"] == "msg_too_long"

    fake.fail_next("chat.postMessage", "not_in_channel")
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel=CHANNEL, text="hi")
    assert err.value.response["error"] == "not_in_channel"

    fake.fail_next("chat.postMessage", "ratelimited")
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel=CHANNEL, text="hi")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "1"

    fake.fail_next("chat.postMessage", status=500)
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel=CHANNEL, text="hi")
    assert err.value.response.status_code == 500

    assert (await client.chat_postMessage(channel=CHANNEL, text="hi"))["ok"]
    assert [c.status for c in fake.calls_to("chat.postMessage")] == [200, 200, 200, 429, 500, 200]
    assert len(fake.posted(CHANNEL)) == 2


async def test_unhandled_envelope_is_not_acked(fake: FakeSlack) -> None:
    """bolt answers 404 to unhandled requests, and Socket Mode only acks 200s."""
    app = build_app(fake)
    async with socket_mode(app, fake):
        delivery = await fake.send_message("D0DM00001", USER, "nobody listens")
        with pytest.raises(TimeoutError):
            await fake.wait_for_ack(delivery, timeout=0.3)


@pytest.mark.parametrize("how", ["close", "disconnect", "abort"])
async def test_dropped_socket_reconnects_and_events_flow(
    fake: FakeSlack, how: Literal["close", "disconnect", "abort"]
) -> None:
    app = build_app(fake)
    texts: list[str] = []

    @app.event("message")
    async def on_message(event: dict[str, Any], say: AsyncSay) -> None:
        texts.append(event["text"])
        await say(f"got {event['text']}")

    # A short ping interval makes slack_sdk notice an aborted TCP connection quickly.
    async with socket_mode(app, fake, ping_interval=0.2):
        first = await fake.send_message("D0DM00001", USER, "before")
        await fake.wait_for_ack(first)
        assert await fake.drop_connections(how) == 1
        await fake.wait_for_connection(2, timeout=5.0)
        second = await fake.send_message("D0DM00001", USER, "after")
        await fake.wait_for_ack(second)
        await fake.wait_for(lambda: len(fake.posted("D0DM00001")) == 2)

    assert texts == ["before", "after"]
    assert second.connection_id == 2
    assert len(fake.calls_to("apps.connections.open")) == 2


async def test_http_mode_signed_requests_and_bad_signature(fake: FakeSlack) -> None:
    app = build_app(fake, signing_secret=DEFAULT_SIGNING_SECRET)
    mentions: list[str] = []

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: AsyncSay) -> None:
        mentions.append(event["text"])
        await say(text="http reply", thread_ts=event["ts"])

    @app.command("/ask")
    async def on_ask(ack: AsyncAck) -> None:
        await ack("ack over http")

    @app.shortcut("summarize_thread")
    async def on_shortcut(ack: AsyncAck) -> None:
        await ack()

    async with serve_bolt_http(app) as url:
        fake.use_http(url, DEFAULT_SIGNING_SECRET)
        delivery = await fake.send_app_mention(CHANNEL, USER, "over http")
        assert delivery.http_status == 200 and delivery.acked
        await fake.wait_for(lambda: fake.posted(CHANNEL, thread_ts=delivery.event["ts"]))

        command = await fake.send_slash_command("/ask", "q", CHANNEL, USER)
        assert command.http_status == 200
        assert command.ack_payload == {"text": "ack over http"}

        msg = fake.seed_message(CHANNEL, "target", user=USER)
        shortcut = await fake.send_message_shortcut("summarize_thread", CHANNEL, msg["ts"])
        assert shortcut.http_status == 200

        bad = await send_signed_event(
            url,
            DEFAULT_SIGNING_SECRET,
            fake.event_payload(
                {
                    "type": "app_mention",
                    "user": USER,
                    "text": "evil",
                    "ts": fake.new_ts(),
                    "channel": CHANNEL,
                }
            ),
            bad_signature=True,
        )
        stale = await send_signed_event(
            url,
            DEFAULT_SIGNING_SECRET,
            fake.event_payload({"type": "app_mention"}),
            timestamp=1,
        )
        await asyncio.sleep(0.05)

    assert bad.status == 401
    assert stale.status == 401
    assert mentions == [f"<@{fake.bot_user_id}> over http"]
