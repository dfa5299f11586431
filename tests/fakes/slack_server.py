"""An in-process fake Slack that the *real* slack-bolt / slack_sdk clients talk to.

Why: the Slack adapter must be exercised end to end (Socket Mode envelopes, acks, Web API
calls, response_url replies, HTTP request signing) without a network or a real workspace,
while still running the exact client code that production runs. Mocking slack_sdk would
hide the quirks that matter (how acks are sent, how reconnects happen, which body encoding
each method uses), so this module serves the wire protocol instead:

* ``http://127.0.0.1:PORT/api/<method>``: the Web API (form, query string or JSON bodies).
* ``ws://127.0.0.1:PORT/link/?ticket=...``: Socket Mode (hello, envelopes, acks, drops).
* ``http://127.0.0.1:PORT/response/<id>``: ``response_url`` targets for bolt's ``respond()``.

Everything is recorded with ``time.monotonic()`` timestamps so tests can assert on latency
("acked within 3 s"). See ``tests/test_fake_slack.py`` for usage.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

from aiohttp import ClientSession, ClientTimeout, WSCloseCode, WSMsgType, web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

__all__ = [
    "MAX_MESSAGE_CHARS",
    "DEFAULT_SIGNING_SECRET",
    "DEFAULT_USER",
    "Ack",
    "Delivery",
    "FakeSlack",
    "RecordedCall",
    "SignedResponse",
    "SlackApiFailure",
    "SocketConnection",
    "build_app",
    "close_socket_mode",
    "connect_socket_mode",
    "make_socket_mode_handler",
    "post_signed",
    "running_socket_mode",
    "send_signed_event",
    "send_signed_interactive",
    "send_signed_slash_command",
    "serve_bolt_http",
    "sign_slack_request",
    "socket_mode",
]

MAX_MESSAGE_CHARS = 40_000
"""chat.postMessage / chat.update reject longer ``text`` with ``msg_too_long`` (as Slack does)."""

DEFAULT_SIGNING_SECRET = "fake-signing-secret"
DEFAULT_USER = "U0HUMAN01"

T = TypeVar("T")
Transport = Literal["socket", "http"]


class SlackApiFailure(Exception):
    """Raised inside a fake Web API method to answer ``{"ok": false, "error": ...}``."""

    def __init__(
        self, error: str, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.headers = dict(headers or {})


@dataclass
class RecordedCall:
    """One HTTP request the fake received (Web API method or ``response_url`` POST)."""

    method: str
    """Web API method name (``"chat.postMessage"``) or ``"response_url"``."""
    params: dict[str, Any]
    """Query string + form/JSON body merged; ``token`` removed (see ``token``)."""
    token: str | None
    """Bearer token from the Authorization header (or the ``token`` parameter)."""
    http_method: str
    content_type: str
    path: str
    at: float
    """``time.monotonic()`` when the request arrived (before any configured delay)."""
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the fake answered ``ok: true``."""
        return bool(self.response.get("ok"))


@dataclass
class Ack:
    """A Socket Mode acknowledgement (``{"envelope_id": ..., "payload": ...}``) from the client."""

    envelope_id: str
    payload: dict[str, Any] | None
    at: float
    connection_id: int


@dataclass
class Delivery:
    """One envelope/request the fake pushed to the app, and how/when it was acknowledged."""

    envelope_id: str
    type: str
    """``events_api``, ``slash_commands`` or ``interactive`` (Socket Mode envelope types)."""
    payload: dict[str, Any]
    transport: Transport
    sent_at: float
    acked_at: float | None = None
    ack_payload: dict[str, Any] | None = None
    """Socket Mode ack ``payload`` or the parsed HTTP response body (None when empty)."""
    http_status: int | None = None
    http_body: str | None = None
    connection_id: int | None = None

    @property
    def acked(self) -> bool:
        """True once a Socket Mode ack arrived, or the HTTP request got a 200."""
        if self.transport == "http":
            return self.http_status == 200
        return self.acked_at is not None

    @property
    def ack_latency(self) -> float | None:
        """Seconds between sending and the ack (None until acked)."""
        return None if self.acked_at is None else self.acked_at - self.sent_at

    @property
    def event(self) -> dict[str, Any]:
        """The inner ``event`` of an events_api delivery."""
        event: dict[str, Any] = self.payload["event"]
        return event

    @property
    def response_url(self) -> str | None:
        """The ``response_url`` given to slash commands / shortcuts."""
        url = self.payload.get("response_url")
        return url if isinstance(url, str) else None


@dataclass
class SocketConnection:
    """One Socket Mode websocket connection accepted by the fake."""

    id: int
    ticket: str
    opened_at: float
    ws: web.WebSocketResponse = field(repr=False)
    request: web.Request = field(repr=False)
    hello_sent_at: float | None = None
    closed_at: float | None = None
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        """True while the websocket is usable."""
        return self.closed_at is None and not self.ws.closed


@dataclass
class _Failure:
    error: str
    status: int
    retry_after: int | None


def _ts_key(ts: str) -> tuple[int, int]:
    """Sort key for Slack ``"1700000000.000100"`` timestamps without float rounding."""
    sec, _, frac = ts.partition(".")
    return int(sec), int((frac + "000000")[:6])


def _maybe_json(value: Any) -> Any:
    """Form-encoded bodies carry blocks/attachments as JSON strings; decode them."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def _as_int(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise SlackApiFailure("invalid_arguments") from exc


def _required(params: Mapping[str, Any], name: str, error: str) -> str:
    value = params.get(name)
    if value in (None, ""):
        raise SlackApiFailure(error)
    return str(value)


def _encode_cursor(offset: int) -> str:
    return base64.b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: Any) -> int:
    if cursor in (None, ""):
        return 0
    try:
        kind, _, num = base64.b64decode(str(cursor)).decode().partition(":")
        if kind != "offset":
            raise ValueError(kind)
        return int(num)
    except ValueError as exc:
        raise SlackApiFailure("invalid_cursor") from exc


def _paginate(
    items: list[dict[str, Any]], params: Mapping[str, Any], default_limit: int
) -> dict[str, Any]:
    """Offset-based cursor pagination in Slack's ``response_metadata.next_cursor`` shape."""
    limit = max(1, min(_as_int(params, "limit", default_limit), 999))
    start = _decode_cursor(params.get("cursor"))
    page = items[start : start + limit]
    has_more = start + limit < len(items)
    return {
        "messages": copy.deepcopy(page),
        "has_more": has_more,
        "response_metadata": {"next_cursor": _encode_cursor(start + limit) if has_more else ""},
    }


ApiMethod = Callable[[dict[str, Any], "str | None"], dict[str, Any]]


class FakeSlack:
    """A fake Slack workspace served on 127.0.0.1 (Web API + Socket Mode + response_url).

    Why: lets tests run the real bolt ``AsyncApp`` and slack_sdk clients unchanged. Use as
    ``async with FakeSlack() as fake:`` (or ``await fake.start()`` / ``await fake.close()``),
    point clients at ``fake.api_url`` and drive the app with the ``send_*`` methods.
    """

    def __init__(
        self,
        *,
        team_id: str = "T0FAKE001",
        team_domain: str = "fake-team",
        bot_user_id: str = "U0FAKEBOT",
        bot_id: str = "B0FAKEBOT",
        app_id: str = "A0FAKEAPP",
        bot_name: str = "fakebot",
        host: str = "127.0.0.1",
        auto_create_channels: bool = True,
        default_page_limit: int = 100,
    ) -> None:
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.bot_name = bot_name
        self.host = host
        self.auto_create_channels = auto_create_channels
        self.default_page_limit = default_page_limit

        self.calls: list[RecordedCall] = []
        self.acks: list[Ack] = []
        self.deliveries: list[Delivery] = []
        self.connections: list[SocketConnection] = []
        self.ephemerals: list[dict[str, Any]] = []
        self.response_posts: list[dict[str, Any]] = []
        self.channels: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}

        self._messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._deliveries_by_id: dict[str, Delivery] = {}
        self._response_urls: dict[str, dict[str, Any]] = {}
        self._tickets: set[str] = set()
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._delays: dict[str, float] = {}
        self._last_us = 0
        self._ids = itertools.count(1)
        self._http_target: tuple[str, str] | None = None
        self._http_also: list[str] = []
        self._http_retries = 0
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._methods: dict[str, ApiMethod] = {
            "api.test": self._api_test,
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "conversations.info": self._conversations_info,
            "users.info": self._users_info,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
        }
        self.users[bot_user_id] = self._user_record(bot_user_id, bot_name, is_bot=True)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeSlack:
        """Bind a free port on ``host`` and start serving."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_get("/link/", self._handle_socket)
        app.router.add_post("/response/{rid}", self._handle_response_url)
        add_file_routes(self, app)
        runner = web.AppRunner(app, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        """Close open websockets (so shutdown does not wait on them) and stop the server."""
        for conn in self.connections:
            if conn.open:
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSlack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeSlack is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """Pass as ``AsyncWebClient(base_url=...)``; slack_sdk appends the method name."""
        return f"{self.base_url}/api/"

    @property
    def socket_url(self) -> str:
        return f"ws://{self.host}:{self.port}/link/"

    # ------------------------------------------------------------------ configuration

    def fail_next(
        self,
        method: str,
        error: str | None = None,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail.

        ``error="ratelimited"`` defaults to HTTP 429 with ``Retry-After: 1``;
        ``status=500`` (no error) answers ``internal_error`` with HTTP 500. ``method`` may
        also be ``"response_url"``.
        """
        if error is None:
            error = "internal_error" if (status or 200) >= 500 else "fatal_error"
        if status is None:
            status = 429 if error == "ratelimited" else 200
        if status == 429 and retry_after is None:
            retry_after = 1
        for _ in range(times):
            self._failures[method].append(_Failure(error, status, retry_after))

    def set_delay(self, method: str, seconds: float) -> None:
        """Delay answers of ``method`` (e.g. to prove the app acks before slow replies)."""
        self._delays[method] = seconds

    def register_method(self, method: str, handler: ApiMethod) -> None:
        """Add/replace a Web API method: ``handler(params, token) -> response dict``.

        Raise ``SlackApiFailure`` in the handler to answer an error.
        """
        self._methods[method] = handler

    def add_channel(
        self,
        channel: str,
        *,
        name: str | None = None,
        is_im: bool | None = None,
        is_private: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        """Create (or update) a channel; ``D...`` ids are DMs unless ``is_im`` says otherwise."""
        im = channel.startswith("D") if is_im is None else is_im
        info: dict[str, Any] = {
            "id": channel,
            "name": name or ("" if im else channel.lower()),
            "is_channel": not im and not is_private,
            "is_group": is_private,
            "is_im": im,
            "is_mpim": False,
            "is_private": is_private or im,
            "is_member": True,
            "is_archived": False,
            "created": int(time.time()),
            "context_team_id": self.team_id,
        }
        if im:
            info["user"] = extra.pop("user", DEFAULT_USER)
        info.update(extra)
        self.channels[channel] = info
        return info

    def add_user(
        self,
        user: str,
        name: str | None = None,
        *,
        real_name: str | None = None,
        is_bot: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        """Register a user for users.info (unknown users get a generated record)."""
        record = self._user_record(user, name, real_name=real_name, is_bot=is_bot)
        record.update(extra)
        self.users[user] = record
        return record

    def seed_message(
        self,
        channel: str,
        text: str,
        *,
        user: str | None = DEFAULT_USER,
        ts: str | None = None,
        thread_ts: str | None = None,
        bot_id: str | None = None,
        subtype: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Put a message into the channel history (returns the stored dict)."""
        self._ensure_channel(channel, create=True)
        msg: dict[str, Any] = {"type": "message", "text": text, "ts": ts or self.new_ts()}
        if user is not None:
            msg["user"] = user
        if bot_id is not None:
            msg["bot_id"] = bot_id
        if subtype is not None:
            msg["subtype"] = subtype
        if thread_ts is not None:
            msg["thread_ts"] = thread_ts
        msg.update(extra)
        return self._store_message(channel, msg)

    def new_ts(self) -> str:
        """A unique, increasing Slack timestamp close to now (microsecond steps)."""
        us = max(time.time_ns() // 1000, self._last_us + 1)
        self._last_us = us
        return f"{us // 1_000_000}.{us % 1_000_000:06d}"

    def use_http(
        self,
        url: str,
        signing_secret: str = DEFAULT_SIGNING_SECRET,
        *,
        also: list[str] | None = None,
        retries: int = 0,
    ) -> None:
        """Deliver ``send_*`` payloads as signed HTTP POSTs to a bolt app at ``url``.

        ``also``: further instances that get the very same request at the same time (what a
        misbehaving load balancer, or a retry landing elsewhere, amounts to). ``retries``:
        each event is then sent again that many times to every target, with Slack's
        ``X-Slack-Retry-Num`` / ``X-Slack-Retry-Reason`` headers and the same ``event_id``.
        """
        self._http_target = (url, signing_secret)
        self._http_also = list(also or [])
        self._http_retries = retries

    def use_socket_mode(self) -> None:
        """Deliver ``send_*`` payloads over the Socket Mode websocket (the default)."""
        self._http_target = None

    # ------------------------------------------------------------------ accessors

    def calls_to(self, method: str) -> list[RecordedCall]:
        """Recorded calls of one method, oldest first."""
        return [c for c in self.calls if c.method == method]

    def posted(
        self, channel: str | None = None, thread_ts: str | None = None
    ) -> list[dict[str, Any]]:
        """Snapshots of messages the app posted via chat.postMessage (successful calls only).

        ``thread_ts`` filters replies in that thread. Each snapshot also has ``channel``.
        """
        out = []
        for call in self.calls_to("chat.postMessage"):
            if not call.ok:
                continue
            msg = dict(call.response["message"], channel=call.response["channel"])
            if channel is not None and msg["channel"] != channel:
                continue
            if thread_ts is not None and msg.get("thread_ts") != thread_ts:
                continue
            out.append(msg)
        return out

    def updated(self, channel: str | None = None, ts: str | None = None) -> list[dict[str, Any]]:
        """Snapshots of messages after each successful chat.update, oldest first."""
        out = []
        for call in self.calls_to("chat.update"):
            if not call.ok:
                continue
            msg = dict(call.response["message"], channel=call.response["channel"])
            if channel is not None and msg["channel"] != channel:
                continue
            if ts is not None and msg["ts"] != ts:
                continue
            out.append(msg)
        return out

    def messages(self, channel: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """Current stored messages (seeded, user and bot), oldest first; or one thread."""
        msgs = self._messages.get(channel, [])
        if thread_ts is None:
            return copy.deepcopy(msgs)
        return copy.deepcopy(self._thread(channel, thread_ts))

    def get_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The current stored message with ``ts`` (a copy), if any."""
        found = self._find(channel, ts)
        return copy.deepcopy(found) if found is not None else None

    def responses(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Bodies POSTed to generated response_urls (bolt ``respond()``), with context keys."""
        return [r for r in self.response_posts if channel is None or r["channel"] == channel]

    def ack_for(self, delivery: Delivery | str) -> Ack | None:
        """The first Socket Mode ack for a delivery (or envelope id)."""
        eid = delivery if isinstance(delivery, str) else delivery.envelope_id
        return next((a for a in self.acks if a.envelope_id == eid), None)

    @property
    def open_connections(self) -> list[SocketConnection]:
        return [c for c in self.connections if c.open]

    async def wait_for(
        self, predicate: Callable[[], T], timeout: float = 5.0, *, message: str | None = None
    ) -> T:
        """Poll ``predicate`` until it returns something truthy; return that value.

        Raises ``TimeoutError`` (with ``message``) when ``timeout`` seconds pass first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if loop.time() >= deadline:
                raise TimeoutError(message or f"condition not met within {timeout} s")
            await asyncio.sleep(0.005)

    async def wait_for_ack(self, delivery: Delivery, timeout: float = 3.0) -> Delivery:
        """Wait until ``delivery`` is acknowledged (Socket Mode) and return it."""
        await self.wait_for(
            lambda: delivery.acked_at is not None,
            timeout,
            message=f"envelope {delivery.envelope_id} ({delivery.type}) not acked in {timeout} s",
        )
        return delivery

    async def wait_for_connection(self, count: int = 1, timeout: float = 5.0) -> SocketConnection:
        """Wait until ``count`` connections have been opened and got hello; return the latest."""
        await self.wait_for(
            lambda: (
                len(self.connections) >= count
                and self.connections[count - 1].hello_sent_at is not None
                and self.connections[-1].open
            ),
            timeout,
            message=f"socket mode connection #{count} not established in {timeout} s",
        )
        return self.connections[-1]

    # ------------------------------------------------------------------ payload builders

    def event_payload(self, event: dict[str, Any]) -> dict[str, Any]:
        """Wrap an event in the ``event_callback`` body Slack sends (HTTP body / envelope)."""
        return {
            "token": "fake-verification-token",
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(self._ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-fake-{uuid.uuid4().hex[:12]}",
        }

    def slash_command_payload(
        self, command: str, text: str, channel: str, user: str = DEFAULT_USER
    ) -> dict[str, str]:
        """A slash command body (all string values, as in the form-encoded HTTP body)."""
        self._ensure_channel(channel, create=True)
        response_url = self._new_response_url(channel=channel, user=user)
        return {
            "token": "fake-verification-token",
            "team_id": self.team_id,
            "team_domain": self.team_domain,
            "channel_id": channel,
            "channel_name": self.channels[channel].get("name") or "directmessage",
            "user_id": user,
            "user_name": self._user_record(user)["name"],
            "command": command if command.startswith("/") else f"/{command}",
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": f"{next(self._ids)}.{uuid.uuid4().hex[:10]}",
        }

    def message_shortcut_payload(
        self,
        callback_id: str,
        channel: str,
        message_ts: str,
        thread_ts: str | None = None,
        user: str = DEFAULT_USER,
    ) -> dict[str, Any]:
        """A ``message_action`` interactive payload for a message shortcut."""
        self._ensure_channel(channel, create=True)
        stored = self._find(channel, message_ts)
        message = (
            copy.deepcopy(stored)
            if stored is not None
            else {
                "type": "message",
                "user": user,
                "text": "",
                "ts": message_ts,
            }
        )
        if thread_ts is not None:
            message["thread_ts"] = thread_ts
        response_url = self._new_response_url(
            channel=channel, user=user, message_ts=message_ts, thread_ts=thread_ts
        )
        return {
            "type": "message_action",
            "token": "fake-verification-token",
            "action_ts": self.new_ts(),
            "team": {"id": self.team_id, "domain": self.team_domain},
            "user": {
                "id": user,
                "username": self._user_record(user)["name"],
                "name": self._user_record(user)["name"],
                "team_id": self.team_id,
            },
            "channel": {"id": channel, "name": self.channels[channel].get("name", "")},
            "is_enterprise_install": False,
            "enterprise": None,
            "callback_id": callback_id,
            "trigger_id": f"{next(self._ids)}.{uuid.uuid4().hex[:10]}",
            "response_url": response_url,
            "message_ts": message_ts,
            "message": message,
        }

    # ------------------------------------------------------------------ drivers

    async def push_envelope(
        self,
        type_: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool = False,
        timeout: float = 5.0,
    ) -> Delivery:
        """Send one envelope to the newest open Socket Mode connection (or HTTP target).

        Waits up to ``timeout`` for a connection, so it also works right after a drop.
        Returns immediately after sending; use ``wait_for_ack`` for the ack.
        """
        envelope_id = str(uuid.uuid4())
        if self._http_target is not None:
            return await self._deliver_http(envelope_id, type_, payload)
        found = await self.wait_for(
            lambda: self.open_connections[-1] if self.open_connections else None,
            timeout,
            message="no open Socket Mode connection to push to",
        )
        assert found is not None  # wait_for only returns truthy values
        conn: SocketConnection = found
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "type": type_,
            "accepts_response_payload": accepts_response_payload,
            "payload": payload,
        }
        if type_ == "events_api":
            envelope["retry_attempt"] = 0
            envelope["retry_reason"] = ""
        delivery = Delivery(
            envelope_id=envelope_id,
            type=type_,
            payload=payload,
            transport="socket",
            sent_at=time.monotonic(),
            connection_id=conn.id,
        )
        self.deliveries.append(delivery)
        self._deliveries_by_id[envelope_id] = delivery
        await conn.ws.send_str(json.dumps(envelope))
        return delivery

    async def push_event(self, event: dict[str, Any], *, timeout: float = 5.0) -> Delivery:
        """Deliver any Events API ``event`` (wrapped in an event_callback)."""
        return await self.push_envelope("events_api", self.event_payload(event), timeout=timeout)

    async def send_app_mention(
        self,
        channel: str,
        user: str,
        text: str,
        ts: str | None = None,
        thread_ts: str | None = None,
        *,
        timeout: float = 5.0,
    ) -> Delivery:
        """A user @-mentions the bot. ``<@BOT>`` is prepended if ``text`` lacks it.

        The mention is stored as a channel message too (it is one, in real Slack).
        """
        self._ensure_channel(channel, create=True)
        mention = f"<@{self.bot_user_id}>"
        if mention not in text:
            text = f"{mention} {text}"
        ts = ts or self.new_ts()
        self._store_user_message(channel, user, text, ts, thread_ts)
        event: dict[str, Any] = {
            "type": "app_mention",
            "user": user,
            "text": text,
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
            "team": self.team_id,
            "client_msg_id": str(uuid.uuid4()),
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        return await self.push_event(event, timeout=timeout)

    async def send_message(
        self,
        channel: str,
        user: str | None,
        text: str,
        channel_type: str = "im",
        thread_ts: str | None = None,
        bot_id: str | None = None,
        subtype: str | None = None,
        *,
        ts: str | None = None,
        timeout: float = 5.0,
        **extra: Any,
    ) -> Delivery:
        """A ``message`` event (DM by default). ``bot_id``/``subtype`` model bot/system posts.

        Plain, ``bot_message``, ``thread_broadcast`` and ``file_share`` messages are stored.
        """
        self._ensure_channel(channel, create=True, is_im=channel_type == "im")
        ts = ts or self.new_ts()
        event: dict[str, Any] = {
            "type": "message",
            "text": text,
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
            "channel_type": channel_type,
            "team": self.team_id,
        }
        if user is not None:
            event["user"] = user
        if subtype is None and user is not None and bot_id is None:
            event["client_msg_id"] = str(uuid.uuid4())
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        if bot_id is not None:
            event["bot_id"] = bot_id
        if subtype is not None:
            event["subtype"] = subtype
        event.update(extra)
        if subtype in (None, "bot_message", "thread_broadcast", "file_share", "me_message"):
            stored = {k: v for k, v in event.items() if k not in ("channel", "event_ts")}
            if self._find(channel, ts) is None:
                self._store_message(channel, copy.deepcopy(stored))
        return await self.push_event(event, timeout=timeout)

    async def delete_user_message(
        self, channel: str, ts: str, *, timeout: float = 5.0
    ) -> Delivery:
        """A user deletes their message: it leaves the store and a ``message_deleted`` event
        (with ``deleted_ts`` and ``previous_message``, as Slack sends it) is delivered."""
        stored = self._find(channel, ts)
        previous = copy.deepcopy(stored) if stored is not None else {"type": "message", "ts": ts}
        if stored is not None:
            self._messages[channel].remove(stored)
            if stored.get("thread_ts") and stored["thread_ts"] != ts:
                self._refresh_thread_meta(channel, stored["thread_ts"])
        event_ts = self.new_ts()
        event: dict[str, Any] = {
            "type": "message",
            "subtype": "message_deleted",
            "hidden": True,
            "channel": channel,
            "channel_type": "im" if self.channels.get(channel, {}).get("is_im") else "channel",
            "ts": event_ts,
            "event_ts": event_ts,
            "deleted_ts": ts,
            "previous_message": previous,
        }
        return await self.push_event(event, timeout=timeout)

    async def send_slash_command(
        self,
        command: str,
        text: str,
        channel: str,
        user: str = DEFAULT_USER,
        *,
        timeout: float = 5.0,
    ) -> Delivery:
        """A user runs ``/command text`` in ``channel``; the payload has a fake response_url."""
        payload = self.slash_command_payload(command, text, channel, user)
        return await self.push_envelope(
            "slash_commands", payload, accepts_response_payload=True, timeout=timeout
        )

    async def send_message_shortcut(
        self,
        callback_id: str,
        channel: str,
        message_ts: str,
        thread_ts: str | None = None,
        user: str = DEFAULT_USER,
        *,
        timeout: float = 5.0,
    ) -> Delivery:
        """A user runs the message shortcut ``callback_id`` on the message at ``message_ts``."""
        payload = self.message_shortcut_payload(callback_id, channel, message_ts, thread_ts, user)
        return await self.push_envelope("interactive", payload, timeout=timeout)

    async def drop_connections(self, how: Literal["close", "disconnect", "abort"] = "close") -> int:
        """Break the open Socket Mode connection(s) to test reconnects; returns how many.

        * ``close``: websocket close frame (code 1001); slack_sdk reconnects at once.
        * ``disconnect``: Slack's ``{"type": "disconnect"}`` message; client reconnects and
          closes the old socket itself.
        * ``abort``: kill the TCP transport without a close frame; slack_sdk notices only on
          its next monitor tick (``ping_interval`` seconds).
        """
        conns = self.open_connections
        for conn in conns:
            if how == "close":
                await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"fake drop")
            elif how == "disconnect":
                await conn.ws.send_str(
                    json.dumps(
                        {
                            "type": "disconnect",
                            "reason": "refresh_requested",
                            "debug_info": {"host": "fake-slack"},
                        }
                    )
                )
            else:
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()
                conn.closed_at = time.monotonic()
        return len(conns)

    # ------------------------------------------------------------------ internals: store

    def _user_record(
        self,
        user: str,
        name: str | None = None,
        *,
        real_name: str | None = None,
        is_bot: bool = False,
    ) -> dict[str, Any]:
        if user in self.users and name is None and real_name is None:
            return self.users[user]
        name = name or f"user_{user.lower()}"
        real_name = real_name or name.replace("_", " ").title()
        return {
            "id": user,
            "team_id": self.team_id,
            "name": name,
            "real_name": real_name,
            "deleted": False,
            "is_bot": is_bot,
            "is_app_user": False,
            "tz": "UTC",
            "tz_offset": 0,
            "profile": {"display_name": name, "real_name": real_name, "team": self.team_id},
        }

    def _ensure_channel(self, channel: str, *, create: bool, is_im: bool | None = None) -> None:
        if channel in self.channels:
            return
        if not (create or self.auto_create_channels):
            raise SlackApiFailure("channel_not_found")
        self.add_channel(channel, is_im=is_im)

    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self._messages.get(channel, []) if m.get("ts") == ts), None)

    def _root_ts(self, channel: str, ts: str) -> str:
        msg = self._find(channel, ts)
        if msg is not None and msg.get("thread_ts"):
            return str(msg["thread_ts"])
        return ts

    def _thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        root = self._root_ts(channel, thread_ts)
        return [
            m
            for m in self._messages.get(channel, [])
            if m.get("ts") == root or m.get("thread_ts") == root
        ]

    def _store_message(self, channel: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Insert in ts order and keep thread metadata (reply_count etc.) on the parent."""
        msgs = self._messages[channel]
        key = _ts_key(msg["ts"])
        index = next((i for i, m in enumerate(msgs) if _ts_key(m["ts"]) > key), len(msgs))
        thread_ts = msg.get("thread_ts")
        if thread_ts and thread_ts != msg["ts"]:
            root = self._root_ts(channel, thread_ts)
            msg["thread_ts"] = root
            parent = self._find(channel, root)
            if parent is not None:
                msg.setdefault("parent_user_id", parent.get("user"))
        msgs.insert(index, msg)
        if thread_ts and thread_ts != msg["ts"]:
            self._refresh_thread_meta(channel, msg["thread_ts"])
        return msg

    def _refresh_thread_meta(self, channel: str, root: str) -> None:
        parent = self._find(channel, root)
        if parent is None:
            return
        replies = [
            m for m in self._messages[channel] if m.get("thread_ts") == root and m is not parent
        ]
        if not replies:
            for key in ("reply_count", "reply_users", "reply_users_count", "latest_reply"):
                parent.pop(key, None)
            return
        users = list(dict.fromkeys(m.get("user") or m.get("bot_id") for m in replies))
        parent.update(
            thread_ts=root,
            reply_count=len(replies),
            reply_users=users,
            reply_users_count=len(users),
            latest_reply=replies[-1]["ts"],
        )

    def _store_user_message(
        self, channel: str, user: str, text: str, ts: str, thread_ts: str | None
    ) -> None:
        if self._find(channel, ts) is not None:
            return
        msg: dict[str, Any] = {
            "type": "message",
            "user": user,
            "text": text,
            "ts": ts,
            "team": self.team_id,
            "client_msg_id": str(uuid.uuid4()),
        }
        if thread_ts is not None:
            msg["thread_ts"] = thread_ts
        self._store_message(channel, msg)

    def _bot_message(self, text: str, ts: str, params: Mapping[str, Any]) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "text": text,
            "ts": ts,
            "bot_profile": {"id": self.bot_id, "app_id": self.app_id, "name": self.bot_name},
        }
        for key in ("blocks", "attachments", "metadata"):
            if params.get(key) not in (None, ""):
                msg[key] = _maybe_json(params[key])
        if params.get("thread_ts"):
            msg["thread_ts"] = str(params["thread_ts"])
        return msg

    def _new_response_url(self, **context: Any) -> str:
        rid = uuid.uuid4().hex
        self._response_urls[rid] = context
        return f"{self.base_url}/response/{rid}"

    # ------------------------------------------------------------------ internals: HTTP

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], str | None]:
        params: dict[str, Any] = dict(request.query)
        if request.body_exists:
            if request.content_type == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
            elif request.content_type in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            ):
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
        token: str | None = None
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ").strip()
        if "token" in params:
            token = str(params.pop("token"))
        return params, token

    def _record(
        self,
        request: web.Request,
        method: str,
        params: dict[str, Any],
        token: str | None,
        at: float,
    ) -> RecordedCall:
        call = RecordedCall(
            method=method,
            params=params,
            token=token,
            http_method=request.method,
            content_type=request.content_type if request.body_exists else "",
            path=request.path,
            at=at,
        )
        self.calls.append(call)
        return call

    def _take_failure(self, method: str) -> _Failure | None:
        queue = self._failures.get(method)
        return queue.popleft() if queue else None

    async def _handle_api(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        method = request.match_info["method"]
        params, token = await self._read_params(request)
        call = self._record(request, method, params, token, at)
        if method in self._delays:
            await asyncio.sleep(self._delays[method])
        headers: dict[str, str] = {}
        failure = self._take_failure(method)
        if failure is not None:
            status, body = failure.status, {"ok": False, "error": failure.error}
            if failure.retry_after is not None:
                headers["Retry-After"] = str(failure.retry_after)
        elif method not in self._methods:
            status, body = 200, {"ok": False, "error": "unknown_method"}
        elif not token:
            status, body = 200, {"ok": False, "error": "not_authed"}
        else:
            try:
                status, body = 200, self._methods[method](params, token)
            except SlackApiFailure as exc:
                status, body = exc.status, {"ok": False, "error": exc.error}
                headers.update(exc.headers)
        call.status, call.response = status, copy.deepcopy(body)
        return web.json_response(body, status=status, headers=headers)

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        rid = request.match_info["rid"]
        params, token = await self._read_params(request)
        call = self._record(request, "response_url", params, token, at)
        if "response_url" in self._delays:
            await asyncio.sleep(self._delays["response_url"])
        failure = self._take_failure("response_url")
        context = self._response_urls.get(rid)
        if failure is not None or context is None:
            call.status = failure.status if failure is not None else 404
            error = failure.error if failure is not None else "no_service"
            call.response = {"ok": False, "error": error}
            return web.Response(status=call.status, text=error)
        post = {"id": rid, "at": at, "body": copy.deepcopy(params), **context}
        self.response_posts.append(post)
        channel = context.get("channel")
        if channel:
            self._apply_response(channel, context, params)
        call.response = {"ok": True}
        return web.Response(text="ok", content_type="text/plain")

    def _apply_response(
        self, channel: str, context: Mapping[str, Any], body: Mapping[str, Any]
    ) -> None:
        """Reflect in_channel / replace_original / delete_original responses in the store."""
        original = context.get("message_ts")
        if _as_bool(body.get("delete_original")) and original:
            msg = self._find(channel, original)
            if msg is not None:
                self._messages[channel].remove(msg)
        elif _as_bool(body.get("replace_original")) and original:
            msg = self._find(channel, original)
            if msg is not None and "text" in body:
                msg["text"] = body["text"]
        elif body.get("response_type") == "in_channel":
            msg = self._bot_message(str(body.get("text", "")), self.new_ts(), body)
            self._store_message(channel, msg)

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid_ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = SocketConnection(
            id=len(self.connections) + 1,
            ticket=ticket,
            opened_at=time.monotonic(),
            ws=ws,
            request=request,
        )
        self.connections.append(conn)
        try:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "hello",
                        "num_connections": len(self.open_connections),
                        "debug_info": {
                            "host": "fake-slack",
                            "build_number": 1,
                            "approximate_connection_time": 18060,
                        },
                        "connection_info": {"app_id": self.app_id},
                    }
                )
            )
            conn.hello_sent_at = time.monotonic()
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_socket_text(conn, msg.data)
        finally:
            if conn.closed_at is None:
                conn.closed_at = time.monotonic()
        return ws

    def _on_socket_text(self, conn: SocketConnection, data: str) -> None:
        at = time.monotonic()
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            message = {"raw": data}
        conn.received.append(message)
        envelope_id = message.get("envelope_id") if isinstance(message, dict) else None
        if not envelope_id:
            return
        self.acks.append(Ack(envelope_id, message.get("payload"), at, conn.id))
        delivery = self._deliveries_by_id.get(envelope_id)
        if delivery is not None and delivery.acked_at is None:
            delivery.acked_at = at
            delivery.ack_payload = message.get("payload")

    async def _deliver_http(
        self, envelope_id: str, type_: str, payload: dict[str, Any]
    ) -> Delivery:
        assert self._http_target is not None
        url, secret = self._http_target
        delivery = Delivery(
            envelope_id=envelope_id,
            type=type_,
            payload=payload,
            transport="http",
            sent_at=time.monotonic(),
        )
        self.deliveries.append(delivery)
        self._deliveries_by_id[envelope_id] = delivery
        send: Callable[..., Awaitable[SignedResponse]] = send_signed_interactive
        if type_ == "events_api":
            send = send_signed_event
        elif type_ == "slash_commands":
            send = send_signed_slash_command
        responses = await asyncio.gather(
            *(send(target, secret, payload) for target in [url, *self._http_also]))
        resp = responses[0]
        if type_ == "events_api":
            for attempt in range(1, self._http_retries + 1):
                headers = {"X-Slack-Retry-Num": str(attempt),
                           "X-Slack-Retry-Reason": "http_timeout"}
                await asyncio.gather(*(send(target, secret, payload, extra_headers=headers)
                                       for target in [url, *self._http_also]))
        delivery.acked_at = time.monotonic()
        delivery.http_status = resp.status
        delivery.http_body = resp.body
        delivery.ack_payload = resp.json_body()
        return delivery

    # ------------------------------------------------------------------ Web API methods

    def _api_test(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        return {"ok": True, "args": params}

    def _auth_test(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_domain.replace("-", " ").title(),
            "team_id": self.team_id,
            "is_enterprise_install": False,
        }
        if token and token.startswith("xoxb-"):
            body.update(user=self.bot_name, user_id=self.bot_user_id, bot_id=self.bot_id)
        else:
            body.update(user="app", user_id=self.bot_user_id, app_id=self.app_id)
        return body

    def _apps_connections_open(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        if not (token or "").startswith("xapp-"):
            raise SlackApiFailure("not_allowed_token_type")
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"ok": True, "url": f"{self.socket_url}?ticket={ticket}&app_id={self.app_id}"}

    def _check_text(self, params: Mapping[str, Any], *, required: bool) -> str | None:
        text = params.get("text")
        if text is not None and len(str(text)) > MAX_MESSAGE_CHARS:
            raise SlackApiFailure("msg_too_long")
        if required and not text and not params.get("blocks") and not params.get("attachments"):
            raise SlackApiFailure("no_text")
        return None if text is None else str(text)

    def _channel(self, params: Mapping[str, Any]) -> str:
        channel = _required(params, "channel", "channel_not_found")
        self._ensure_channel(channel, create=False)
        return channel

    def _chat_post_message(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._channel(params)
        text = self._check_text(params, required=True)
        msg = self._bot_message(text or "", self.new_ts(), params)
        self._store_message(channel, msg)
        return {"ok": True, "channel": channel, "ts": msg["ts"], "message": copy.deepcopy(msg)}

    def _chat_update(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._channel(params)
        ts = _required(params, "ts", "message_not_found")
        text = self._check_text(params, required=False)
        msg = self._find(channel, ts)
        if msg is None:
            raise SlackApiFailure("message_not_found")
        if msg.get("user") != self.bot_user_id and msg.get("bot_id") != self.bot_id:
            raise SlackApiFailure("cant_update_message")
        if text is not None:
            msg["text"] = text
        for key in ("blocks", "attachments", "metadata"):
            if key in params:
                msg[key] = _maybe_json(params[key])
        msg["edited"] = {"user": self.bot_user_id, "ts": self.new_ts()}
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": msg["text"],
            "message": copy.deepcopy(msg),
        }

    def _chat_delete(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._channel(params)
        ts = _required(params, "ts", "message_not_found")
        msg = self._find(channel, ts)
        if msg is None:
            raise SlackApiFailure("message_not_found")
        if msg.get("user") != self.bot_user_id and msg.get("bot_id") != self.bot_id:
            raise SlackApiFailure("cant_delete_message")
        self._messages[channel].remove(msg)
        if msg.get("thread_ts") and msg["thread_ts"] != ts:
            self._refresh_thread_meta(channel, msg["thread_ts"])
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_post_ephemeral(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._channel(params)
        user = _required(params, "user", "user_not_in_channel")
        text = self._check_text(params, required=True)
        ts = self.new_ts()
        self.ephemerals.append(
            {
                "channel": channel,
                "user": user,
                "text": text or "",
                "message_ts": ts,
                "thread_ts": params.get("thread_ts"),
                "params": copy.deepcopy(params),
            }
        )
        return {"ok": True, "message_ts": ts}

    def _conversations_history(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._channel(params)
        inclusive = _as_bool(params.get("inclusive", False))
        oldest, latest = params.get("oldest"), params.get("latest")
        top = []
        for m in self._messages.get(channel, []):
            if m.get("thread_ts") not in (None, m["ts"]) and m.get("subtype") != "thread_broadcast":
                continue
            key = _ts_key(m["ts"])
            if oldest and (
                key < _ts_key(str(oldest)) or (key == _ts_key(str(oldest)) and not inclusive)
            ):
                continue
            if latest and (
                key > _ts_key(str(latest)) or (key == _ts_key(str(latest)) and not inclusive)
            ):
                continue
            top.append(m)
        top.reverse()  # newest first, like Slack
        body = {"ok": True, "pin_count": 0, "channel_actions_ts": None, "channel_actions_count": 0}
        body.update(_paginate(top, params, self.default_page_limit))
        return body

    def _conversations_replies(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._channel(params)
        ts = _required(params, "ts", "thread_not_found")
        thread = self._thread(channel, ts)
        if not thread:
            raise SlackApiFailure("thread_not_found")
        body: dict[str, Any] = {"ok": True}
        body.update(_paginate(thread, params, self.default_page_limit))
        return body

    def _conversations_info(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._channel(params)
        return {"ok": True, "channel": copy.deepcopy(self.channels[channel])}

    def _users_info(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        user = _required(params, "user", "user_not_found")
        return {"ok": True, "user": copy.deepcopy(self._user_record(user))}

    def _reaction_target(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        channel = self._channel(params)
        ts = _required(params, "timestamp", "no_item_specified")
        name = _required(params, "name", "invalid_name").strip(":")
        msg = self._find(channel, ts)
        if msg is None:
            raise SlackApiFailure("message_not_found")
        return msg, name

    def _reactions_add(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        msg, name = self._reaction_target(params)
        reactions = msg.setdefault("reactions", [])
        entry = next((r for r in reactions if r["name"] == name), None)
        if entry is None:
            entry = {"name": name, "users": [], "count": 0}
            reactions.append(entry)
        if self.bot_user_id in entry["users"]:
            raise SlackApiFailure("already_reacted")
        entry["users"].append(self.bot_user_id)
        entry["count"] = len(entry["users"])
        return {"ok": True}

    def _reactions_remove(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        msg, name = self._reaction_target(params)
        reactions = msg.get("reactions", [])
        entry = next((r for r in reactions if r["name"] == name), None)
        if entry is None or self.bot_user_id not in entry["users"]:
            raise SlackApiFailure("no_reaction")
        entry["users"].remove(self.bot_user_id)
        entry["count"] = len(entry["users"])
        if not entry["users"]:
            reactions.remove(entry)
        return {"ok": True}


# ---------------------------------------------------------------------- HTTP mode helpers


@dataclass
class SignedResponse:
    """What the bolt app answered to a signed HTTP request."""

    status: int
    body: str
    headers: dict[str, str]
    elapsed: float

    def json_body(self) -> dict[str, Any] | None:
        """The body as JSON (``{"text": body}`` for plain text, None when empty)."""
        if not self.body:
            return None
        try:
            parsed = json.loads(self.body)
        except json.JSONDecodeError:
            return {"text": self.body}
        return parsed if isinstance(parsed, dict) else {"value": parsed}


def sign_slack_request(signing_secret: str, timestamp: str | int, body: str | bytes) -> str:
    """Slack v0 signature: ``v0=`` + HMAC-SHA256(secret, ``v0:{timestamp}:{body}``)."""
    raw = body.encode() if isinstance(body, str) else body
    base = f"v0:{timestamp}:".encode() + raw
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


async def post_signed(
    url: str,
    signing_secret: str,
    body: str,
    content_type: str,
    *,
    bad_signature: bool = False,
    timestamp: int | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> SignedResponse:
    """POST ``body`` to a bolt HTTP endpoint with Slack's signature headers.

    ``bad_signature=True`` signs with a wrong secret (bolt must answer 401); pass an old
    ``timestamp`` (> 5 minutes) to test replay protection.
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    secret = signing_secret + "-wrong" if bad_signature else signing_secret
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sign_slack_request(secret, ts, body),
        **(extra_headers or {}),
    }
    start = time.monotonic()
    async with (
        ClientSession(timeout=ClientTimeout(total=10)) as session,
        session.post(url, data=body.encode(), headers=headers) as resp,
    ):
        text = await resp.text()
        return SignedResponse(resp.status, text, dict(resp.headers), time.monotonic() - start)


async def send_signed_event(
    url: str, signing_secret: str, payload: Mapping[str, Any], **kwargs: Any
) -> SignedResponse:
    """Events API request: JSON body (an ``event_callback``, see ``FakeSlack.event_payload``)."""
    return await post_signed(url, signing_secret, json.dumps(payload), "application/json", **kwargs)


async def send_signed_slash_command(
    url: str, signing_secret: str, form: Mapping[str, Any], **kwargs: Any
) -> SignedResponse:
    """Slash command request: form-encoded body (see ``FakeSlack.slash_command_payload``)."""
    body = urlencode({k: str(v) for k, v in form.items()})
    return await post_signed(
        url, signing_secret, body, "application/x-www-form-urlencoded", **kwargs
    )


async def send_signed_interactive(
    url: str, signing_secret: str, payload: Mapping[str, Any], **kwargs: Any
) -> SignedResponse:
    """Interactive request: form body ``payload=<json>`` (shortcuts, block actions...)."""
    body = urlencode({"payload": json.dumps(payload)})
    return await post_signed(
        url, signing_secret, body, "application/x-www-form-urlencoded", **kwargs
    )


@contextlib.asynccontextmanager
async def serve_bolt_http(app: AsyncApp, *, path: str = "/slack/events") -> AsyncIterator[str]:
    """Serve a bolt ``AsyncApp`` over HTTP on 127.0.0.1:<free port>; yields the events URL.

    Uses bolt's own aiohttp app (``AsyncApp.web_app``), i.e. the production code path.
    """
    runner = web.AppRunner(app.web_app(path=path), shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------- bolt wiring


def build_app(
    fake: FakeSlack,
    *,
    token: str = "xoxb-test",
    signing_secret: str = DEFAULT_SIGNING_SECRET,
    request_verification_enabled: bool = True,
    name: str = "fake-slack-test-app",
    **kwargs: Any,
) -> AsyncApp:
    """An ``AsyncApp`` whose Web API client talks to ``fake``.

    ``name`` is passed because AsyncApp otherwise calls ``inspect.stack()`` (slow under
    pytest). AsyncApp has no ``token_verification_enabled`` (sync ``App`` only): auth.test
    runs lazily on the first incoming request instead. Request verification is skipped by
    bolt for Socket Mode, so the default (on) is right for both modes.
    """
    client = AsyncWebClient(token=token, base_url=fake.api_url)
    return AsyncApp(
        client=client,
        signing_secret=signing_secret,
        request_verification_enabled=request_verification_enabled,
        name=name,
        **kwargs,
    )


def make_socket_mode_handler(
    app: AsyncApp,
    fake: FakeSlack,
    *,
    app_token: str = "xapp-test",
    ping_interval: float = 10.0,
) -> AsyncSocketModeHandler:
    """A not-yet-connected ``AsyncSocketModeHandler`` whose apps.connections.open hits ``fake``.

    Must be called inside a running event loop (slack_sdk's SocketModeClient creates an
    aiohttp session and a task in its constructor). The handler would default to
    ``app.client``; an explicit web client makes it work for apps built without the fake.
    """
    return AsyncSocketModeHandler(
        app,
        app_token=app_token,
        web_client=AsyncWebClient(base_url=fake.api_url),
        ping_interval=ping_interval,
    )


async def connect_socket_mode(
    handler: AsyncSocketModeHandler, fake: FakeSlack, *, timeout: float = 5.0
) -> SocketConnection:
    """Connect and wait until the fake accepted the socket and sent ``hello``."""
    count = len(fake.connections) + 1
    await asyncio.wait_for(handler.connect_async(), timeout)  # type: ignore[no-untyped-call]
    return await fake.wait_for_connection(count, timeout)


async def close_socket_mode(handler: AsyncSocketModeHandler) -> None:
    """Close the handler and let slack_sdk's cancelled background tasks finish.

    ``SocketModeClient.close()`` cancels its tasks without awaiting them; awaiting here
    keeps pytest free of "Task was destroyed but it is pending" noise.
    """
    client = handler.client
    await handler.close_async()  # type: ignore[no-untyped-call]
    tasks = [
        t
        for t in (client.message_processor, client.current_session_monitor, client.message_receiver)
        if isinstance(t, asyncio.Future) and t is not asyncio.current_task()
    ]
    if tasks:
        await asyncio.wait(tasks, timeout=2.0)


@contextlib.asynccontextmanager
async def running_socket_mode(
    handler: AsyncSocketModeHandler, fake: FakeSlack, *, timeout: float = 5.0
) -> AsyncIterator[AsyncSocketModeHandler]:
    """Connect ``handler`` for the duration of the block, then close it."""
    try:
        await connect_socket_mode(handler, fake, timeout=timeout)
        yield handler
    finally:
        await close_socket_mode(handler)


@contextlib.asynccontextmanager
async def socket_mode(
    app: AsyncApp,
    fake: FakeSlack,
    *,
    app_token: str = "xapp-test",
    ping_interval: float = 10.0,
    timeout: float = 5.0,
) -> AsyncIterator[AsyncSocketModeHandler]:
    """Run ``app`` in Socket Mode against ``fake`` for the duration of the block."""
    handler = make_socket_mode_handler(app, fake, app_token=app_token, ping_interval=ping_interval)
    async with running_socket_mode(handler, fake, timeout=timeout) as running:
        yield running


# ---------------------------------------------------------------------- files (issue #17)
# Self-contained: files people share, behind ``url_private_download``, which (as in Slack)
# needs the bot token; without it Slack answers with its HTML sign-in page.


@dataclass
class FakeFile:
    """A file in the fake workspace and who downloaded it with which token."""

    id: str
    name: str
    data: bytes
    mimetype: str
    downloads: list[str | None] = field(default_factory=list)


def add_file_routes(fake: FakeSlack, app: web.Application) -> None:
    fake.files = {}
    fake.file_token = None

    async def serve(request: web.Request) -> web.StreamResponse:
        return await _serve_file(fake, request)

    app.router.add_get("/files-pri/{file_id}/{name}", serve)


def add_file(fake: FakeSlack, name: str, data: bytes, *, mimetype: str = "application/pdf"
             ) -> dict[str, Any]:
    """Store a file; returns its object as Slack puts it in a message's ``files``."""
    file_id = f"F{len(fake.files) + 1:08d}"
    fake.files[file_id] = FakeFile(file_id, name, data, mimetype)
    url = f"{fake.base_url}/files-pri/{file_id}/{name}"
    return {"id": file_id, "name": name, "title": name, "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1], "size": len(data), "url_private": url,
            "url_private_download": f"{url}?download=1", "mode": "hosted"}


async def send_mention_with_files(fake: FakeSlack, channel: str, user: str, text: str,
                                  files: list[dict[str, Any]], *,
                                  thread_ts: str | None = None) -> Delivery:
    """An ``app_mention`` whose message shares `files` (stored, with them, as Slack does)."""
    fake._ensure_channel(channel, create=True)
    mention = f"<@{fake.bot_user_id}>"
    text = text if mention in text else f"{mention} {text}"
    ts = fake.new_ts()
    fake._store_user_message(channel, user, text, ts, thread_ts)
    stored = fake._find(channel, ts)
    if stored is not None:
        stored["files"] = files
    event: dict[str, Any] = {"type": "app_mention", "user": user, "text": text, "ts": ts,
                             "channel": channel, "event_ts": ts, "team": fake.team_id,
                             "files": files, "client_msg_id": str(uuid.uuid4())}
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return await fake.push_event(event)


async def _serve_file(fake: FakeSlack, request: web.Request) -> web.StreamResponse:
    file = fake.files.get(request.match_info["file_id"])
    auth = request.headers.get("Authorization")
    token = auth.removeprefix("Bearer ").strip() if auth and auth.startswith("Bearer ") else None
    if file is None:
        return web.Response(status=404, text="file_not_found")
    file.downloads.append(token)
    if not token or (fake.file_token is not None and token != fake.file_token):
        return web.Response(text="<html><body>Sign in to Slack</body></html>",
                            content_type="text/html")
    return web.Response(body=file.data, content_type=file.mimetype)
