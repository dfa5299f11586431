"""The Slack adapter: slack-bolt in Socket Mode (or HTTP mode) in front of the conversation core.

What a Slack user sees:

* An @mention is answered in a thread under the message (or in the thread it was made in): a
  placeholder appears at once and is edited as the model writes (at most once per
  `edit_interval`), then holds the full answer; long answers continue in further messages.
  The context is the thread's history, or the channel's for a top-level mention. A mention
  that only says "summarize" summarises the thread (or the channel) instead.
* Direct messages are answered without a mention; so are replies in threads the bot takes
  part in, when the core wants that (its per-channel ``thread_replies`` setting).
* ``/ask``, ``/summarize``, ``/reset``, ``/help``, ``/bot-status`` (Slack reserves ``/status``)
  and the core's other commands are acknowledged at once (Slack allows 3 s), then answered:
  ask/summarize in the channel, the others privately. The "Summarize thread" message shortcut
  summarises the thread of the message it is used on.

A request that has to wait for the model shows "Queued: N ahead of you…" in its placeholder
until the answer replaces it; a message deleted before its turn is not answered.

Every human message the bot can see is passed to the core, which answers it or keeps it as
context. A thread is read from Slack the first time the bot takes part in it. Slack API
failures (rate limits, ``not_in_channel``, ``msg_too_long``) are logged and worked around; they
never stop the adapter. Malformed events and request bodies are logged and ignored. The
translation of events into `IncomingMessage` is pure (`to_incoming`, `command_to_incoming`,
`shortcut_to_incoming`) so it is unit-tested alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError, web
from aiohttp.typedefs import Handler
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.adapters.base import EditThrottle, split_text
from bot.adapters.slack_format import (
    PART_CHARS,
    escape,
    markdown_to_mrkdwn,
    mentioned_user_ids,
    neutralize_broadcasts,
    slack_to_text,
    strip_mention,
)
from bot.commands import COMMANDS, MAX_SUMMARY_MESSAGES, TranscriptFetcher, parse_count
from bot.config import Settings
from bot.core import APOLOGY, ConversationCore, clean_text
from bot.errors import ConfigError, UserError
from bot.types import ChannelKey, IncomingMessage, Reply, Turn

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
SHORTCUT_CALLBACK_ID = "summarize_thread"
SLASH_COMMANDS: dict[str, str] = {
    "/ask": "ask", "/summarize": "summarize", "/reset": "reset", "/help": "help",
    "/bot-status": "status", "/persona": "persona", "/settings": "settings",
    "/reindex": "reindex", "/forget": "forget"}
"""The slash commands in the app manifest, and the core command each runs. Slack reserves
``/status`` (its own "set your status"), so the bot's is ``/bot-status``; the core's other
commands also work as ``/name`` when added to the manifest, or as "@bot /name" anywhere."""
PUBLIC_COMMANDS = frozenset({"ask", "summarize"})
OPEN_COMMANDS = frozenset({"ask", "summarize", "help", "status"})
"""Commands nobody needs to be an admin for: the others get `is_admin` checked with Slack."""
THINKING = "_Thinking…_"
QUEUED = "_Queued: {ahead} ahead of you…_"
READING = "_Reading the conversation…_"
STOPPED = "_(stopped: the bot is restarting; please ask again in a moment)_"
METADATA_EVENT_TYPE = "llm_chat_bot"
"""Bot messages carry ``{"kind": status|question|answer|summary}`` so transcripts can skip some."""
MIN_PART_CHARS = 500
MAX_THREAD_READ = 1_000
USER_CACHE_SECONDS = 600.0
MAX_RETRY_AFTER = 30.0
NO_ACCESS_ERRORS = frozenset({"not_in_channel", "channel_not_found", "is_archived",
                              "missing_scope", "restricted_action", "access_denied",
                              "team_access_not_granted"})
BAD_TOKEN_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                              "token_expired", "not_allowed_token_type"})
_MESSAGE_SUBTYPES = frozenset({None, "thread_broadcast", "file_share", "me_message"})
_SUMMARIZE = re.compile(
    r"^(?:(?:please|pls|can you|could you)\s+)?summari[sz]e"
    r"(?:\s+(?:this|that|it|here|the))?(?:\s+(?:thread|channel|conversation|chat|discussion))?"
    r"(?:\s+(?:the\s+)?(?:last\s+)?(\d+)(?:\s+messages?)?)?(?:,?\s+(?:please|pls))?\s*[.!?]*$",
    re.IGNORECASE)


# ---------------------------------------------------------------------- pure translation


def thread_of(event: Mapping[str, Any]) -> str | None:
    """The thread a message is a reply in, or None for a top-level message."""
    thread_ts = event.get("thread_ts")
    if not isinstance(thread_ts, str) or not thread_ts or thread_ts == event.get("ts"):
        return None
    return thread_ts


def mentions_bot(text: str, bot_user_id: str) -> bool:
    return bool(bot_user_id) and re.search(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>",
                                           text) is not None


def to_incoming(event: Mapping[str, Any], bot_user_id: str, *,
                names: Mapping[str, str] | None = None) -> IncomingMessage | None:
    """An ``app_mention`` or ``message`` event as the core's message, or None to ignore it.

    Ignored: bots (this one included), edits/joins/other subtypes, channel messages that
    mention the bot (their ``app_mention`` event is the one answered), and events without a
    user, channel and ts as strings (malformed; Slack always sends them). DMs and mentions are
    addressed; other human messages are context.

    Args:
        names: display names by user ID, for the author and users mentioned in the text.
    """
    names = names or {}
    kind = event.get("type")
    user = event.get("user")
    channel = event.get("channel")
    ts = event.get("ts")
    if kind not in ("app_mention", "message") or not all(
            isinstance(value, str) and value for value in (user, channel, ts)):
        return None
    subtype = event.get("subtype")
    if user == bot_user_id or event.get("bot_id") or not (
            subtype is None or (isinstance(subtype, str) and subtype in _MESSAGE_SUBTYPES)):
        return None
    raw_text = event.get("text")
    raw_text = raw_text if isinstance(raw_text, str) else ""
    is_direct = event.get("channel_type") == "im" or str(channel).startswith("D")
    if kind == "message" and not is_direct and mentions_bot(raw_text, bot_user_id):
        return None
    addressed = kind == "app_mention" or is_direct
    thread = thread_of(event)
    text = slack_to_text(strip_mention(raw_text, bot_user_id), names).strip()
    command, args = None, ""
    summarize = _SUMMARIZE.match(text) if addressed else None
    if summarize:
        command = "summarize"
        args = summarize.group(1) or ("" if thread is None else str(MAX_SUMMARY_MESSAGES))
    return IncomingMessage(
        key=ChannelKey("slack", str(channel), thread), message_id=str(ts), author_id=str(user),
        author_name=names.get(str(user)) or str(user), text=text, addressed=addressed,
        command=command, args=args, is_direct=is_direct,
        in_bot_thread=thread is not None and event.get("parent_user_id") == bot_user_id,
        raw=dict(event))


def command_to_incoming(body: Mapping[str, Any], *,
                        names: Mapping[str, str] | None = None) -> IncomingMessage:
    """A slash command payload as an addressed message with ``command`` set."""
    names = names or {}
    slash = str(body.get("command", "")).lower()
    name = SLASH_COMMANDS.get(slash, slash.lstrip("/"))
    channel = str(body.get("channel_id", ""))
    user = str(body.get("user_id", ""))
    args = slack_to_text(str(body.get("text") or ""), names).strip()
    return IncomingMessage(
        key=ChannelKey("slack", channel), message_id=f"command:{body.get('trigger_id', '')}",
        author_id=user, author_name=names.get(user) or str(body.get("user_name") or user),
        text=f"/{name} {args}".strip(), addressed=True, command=name, args=args,
        is_direct=channel.startswith("D"), raw=dict(body))


def shortcut_to_incoming(body: Mapping[str, Any], *,
                         names: Mapping[str, str] | None = None) -> IncomingMessage:
    """The "Summarize thread" shortcut as a summarize command for the message's thread."""
    names = names or {}
    message = _mapping(body.get("message"))
    channel = str(_mapping(body.get("channel")).get("id", ""))
    user_info = _mapping(body.get("user"))
    user = str(user_info.get("id", ""))
    root = str(message.get("thread_ts") or body.get("message_ts") or message.get("ts") or "")
    return IncomingMessage(
        key=ChannelKey("slack", channel, root or None),
        message_id=f"shortcut:{body.get('trigger_id', '')}", author_id=user,
        author_name=names.get(user) or str(user_info.get("name") or user),
        text="/summarize", addressed=True, command="summarize",
        args=str(MAX_SUMMARY_MESSAGES), is_direct=channel.startswith("D"), raw=dict(body))


def _mapping(value: object) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one (for fields a payload got wrong)."""
    return value if isinstance(value, Mapping) else {}


def ts_order(ts: str) -> tuple[int, int]:
    """Sort key for Slack timestamps (``"1700000000.000100"``) without float rounding."""
    seconds, _, fraction = ts.partition(".")
    try:
        return int(seconds), int((fraction + "000000")[:6])
    except ValueError:
        return 0, 0


def _metadata(kind: str) -> dict[str, Any]:
    return {"event_type": METADATA_EVENT_TYPE, "event_payload": {"kind": kind}}


def _kind_of(message: Mapping[str, Any]) -> str | None:
    metadata = message.get("metadata") or {}
    if not isinstance(metadata, Mapping) or metadata.get("event_type") != METADATA_EVENT_TYPE:
        return None
    payload = metadata.get("event_payload") or {}
    kind = payload.get("kind") if isinstance(payload, Mapping) else None
    return str(kind) if kind else None


def command_of(msg: IncomingMessage) -> str | None:
    """The command `msg` runs, native or typed as ``/name``, or None for a chat message."""
    if msg.command:
        return msg.command.lower()
    first = msg.text.split(None, 1)[0].lower() if msg.text.strip() else ""
    return first[1:] if first.startswith("/") and len(first) > 1 else None


# ---------------------------------------------------------------------- unreadable input


def _unreadable_event(body: object) -> bool:
    """An Events API body that is not an object, or whose ``event`` is not one."""
    if not isinstance(body, Mapping):
        return True
    return "event" in body and not isinstance(body["event"], Mapping)


class _SocketModeHandler(AsyncSocketModeHandler):
    """Acknowledges and logs an events envelope bolt could not read, instead of handing it on.

    Why: bolt would log a traceback and leave the envelope unacknowledged, so Slack would
    send the same garbage again. (slack_sdk already logs and skips frames that are not JSON
    objects.)
    """

    async def handle(  # type: ignore[override]  # bolt narrows it the same way
            self, client: SocketModeClient, req: SocketModeRequest) -> None:
        if req.type == "events_api" and _unreadable_event(req.payload):
            log.warning("Slack: ignored an events envelope that could not be read")
            await client.send_socket_mode_response(SocketModeResponse(req.envelope_id))
            return
        await super().handle(client, req)


@web.middleware
async def _reject_unreadable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP mode: answer 400 (with one log line) to a body bolt cannot read.

    Why: bolt parses the body before checking its signature and answers 500 with a
    traceback on anything but a JSON object or a form, so anyone could fill the log.
    Nothing is done with such a request either way.
    """
    try:
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.text())
            except ValueError:
                body = None
            if _unreadable_event(body):
                raise ValueError("the body is not an event object")
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            log.warning("Slack: ignored a request to %s over the size limit", request.path)
        raise
    except Exception as exc:
        log.warning("Slack: ignored a request to %s that could not be read (%s)",
                    request.path, type(exc).__name__)
        return web.Response(status=400, text="bad request")


# ---------------------------------------------------------------------- adapter state


@dataclass(frozen=True, slots=True)
class _Result:
    """A Web API call's outcome: the response data, or the Slack error code."""

    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    retry_after: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class _Target:
    """Where one answer goes, and how far its delivery got."""

    channel: str
    thread_ts: str | None
    respond: AsyncRespond | None = None
    ephemeral: bool = False
    placeholder: str | None = None
    no_access: bool = False


@dataclass(frozen=True, slots=True)
class _User:
    name: str
    is_admin: bool
    fetched_at: float


class SlackAdapter:
    """Serves one Slack workspace for the core, over Socket Mode or HTTP.

    Args:
        core: answers messages.
        settings: Slack tokens, `port`, `allowed_channels`, `bot_name`.
        client: the Web API client; tests point one at a fake Slack. Defaults to one built
            from ``SLACK_BOT_TOKEN``.
        host: the interface HTTP mode listens on.
        edit_interval: minimum seconds between edits of a streaming answer.
        drain_timeout: seconds `stop()` lets answers in progress finish before cancelling them.
        ping_interval: Socket Mode keep-alive interval; a dead connection is noticed within it.
    """

    platform = "slack"

    def __init__(self, core: ConversationCore, settings: Settings, *,
                 client: AsyncWebClient | None = None, host: str = "0.0.0.0",
                 edit_interval: float = 1.0, drain_timeout: float = 5.0,
                 ping_interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.settings = settings
        self.host = host
        self.edit_interval = edit_interval
        self.drain_timeout = drain_timeout
        self.ping_interval = ping_interval
        self._clock = clock
        app_token = settings.slack_app_token
        if app_token and not app_token.startswith("xapp-"):
            raise ConfigError("SLACK_APP_TOKEN", "an app-level token starting with xapp-")
        if not app_token and not settings.slack_signing_secret:
            raise ConfigError("SLACK_SIGNING_SECRET", "the app's signing secret for HTTP mode "
                              "(or set SLACK_APP_TOKEN to use Socket Mode)")
        self.socket_mode = bool(app_token)
        common: dict[str, Any] = {
            "name": "llm-chat-bot", "signing_secret": settings.slack_signing_secret or "",
            "request_verification_enabled": not self.socket_mode}
        if client is not None:
            self.app = AsyncApp(client=client, **common)
        elif settings.slack_bot_token:
            self.app = AsyncApp(token=settings.slack_bot_token, **common)
        else:
            raise ConfigError("SLACK_BOT_TOKEN", "the bot token (xoxb-...)")
        self.client: AsyncWebClient = self.app.client
        self.bot_user_id = ""
        self.bot_id = ""
        self.bound_port: int | None = None
        self.ready = asyncio.Event()
        """Set once connected (Socket Mode) or listening (HTTP mode)."""
        self._stop_requested = asyncio.Event()
        self._closed = asyncio.Event()
        self._started = False
        self._shut_down = False
        self._handler: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[tuple[str, str], ChannelKey] = {}  # (channel, ts) being answered
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._threads: set[ChannelKey] = set()  # threads read from Slack, or with history
        self._bot_threads: set[tuple[str, str]] = set()  # (channel, thread_ts) it posted in
        self._users: dict[str, _User] = {}
        self._register()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect (Socket Mode) or listen on `settings.port` (HTTP), then serve until `stop()`.

        Raises:
            ConfigError: Slack rejected the bot or app token.
        """
        if self._started:
            raise RuntimeError("the Slack adapter was already started")
        self._started = True
        try:
            # A stop() while still connecting (Slack unreachable) must not wait for it.
            connecting = asyncio.create_task(self._connect())
            stopping = asyncio.create_task(self._stop_requested.wait())
            try:
                await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (connecting, stopping):
                    task.cancel()
                await asyncio.gather(connecting, stopping, return_exceptions=True)
            if connecting.cancelled():
                log.info("Slack: stopped before the connection was made")
                return
            connecting.result()  # raises what connecting raised
            self.ready.set()
            await self._stop_requested.wait()
        finally:
            await self._shutdown()

    @property
    def connected(self) -> bool:
        """Socket Mode connected (False while slack_sdk reconnects), or HTTP mode listening."""
        if not self.ready.is_set() or self._shut_down:
            return False
        socket = self._handler.client if self._handler is not None else None
        return socket is None or not (socket.closed or getattr(socket, "stale", False))

    async def stop(self) -> None:
        """Stop taking events, let answers in progress finish (briefly), and disconnect."""
        self._stop_requested.set()
        if self._started:
            await self._closed.wait()

    async def _connect(self) -> None:
        await self._identify()
        if self.socket_mode:
            await self._connect_socket_mode()
        else:
            await self._listen_http()

    async def _identify(self) -> None:
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            if error in BAD_TOKEN_ERRORS:
                raise ConfigError("SLACK_BOT_TOKEN",
                                  f"a valid bot token (Slack answered {error})") from None
            raise
        self.bot_user_id = str(auth.get("user_id") or "")
        self.bot_id = str(auth.get("bot_id") or "")
        log.info("Slack: connected to %s as %s (%s)", auth.get("team"), auth.get("user"),
                 self.bot_user_id)

    async def _connect_socket_mode(self) -> None:
        assert self.settings.slack_app_token
        handler = _SocketModeHandler(self.app, app_token=self.settings.slack_app_token,
                                     ping_interval=self.ping_interval)
        self._handler = handler
        try:
            # Fetch the first URL ourselves: slack_sdk's connect() retries a bad token forever.
            handler.client.wss_uri = await handler.client.issue_new_wss_url()
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            if error in BAD_TOKEN_ERRORS:
                raise ConfigError("SLACK_APP_TOKEN", "a valid app-level token with the "
                                  f"connections:write scope (Slack answered {error})") from None
            raise
        await handler.connect_async()  # type: ignore[no-untyped-call]
        log.info("Slack: Socket Mode connected")

    async def _listen_http(self) -> None:
        web_app = self.app.web_app(path=EVENTS_PATH, port=self.settings.port)
        web_app.middlewares.append(_reject_unreadable)
        runner = web.AppRunner(web_app, shutdown_timeout=2.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, self.settings.port)
        await site.start()
        self.bound_port = int(runner.addresses[0][1])
        log.info("Slack: HTTP mode listening on %s:%d%s", self.host, self.bound_port,
                 EVENTS_PATH)

    async def _shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        try:
            if self._handler is not None:
                client = self._handler.client
                await self._handler.close_async()  # type: ignore[no-untyped-call]
                # close() cancels these without awaiting them; let them finish cleanly.
                leftovers = [t for t in (client.message_processor,
                                         client.current_session_monitor,
                                         client.message_receiver)
                             if isinstance(t, asyncio.Future)]
                if leftovers:
                    await asyncio.wait(leftovers, timeout=2.0)
            if self._runner is not None:
                await self._runner.cleanup()
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout)
                for task in pending:
                    task.cancel()
                if pending:
                    log.warning("Slack: cancelled %d answer(s) still in progress at shutdown",
                                len(pending))
                    await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._closed.set()

    # ------------------------------------------------------------------ bolt listeners

    def _register(self) -> None:
        self.app.event("app_mention")(self._on_event)
        self.app.event("message")(self._on_event)
        self.app.event(re.compile(r".*"))(self._on_other_event)  # after the two above
        for slash in sorted({*SLASH_COMMANDS, *(f"/{name}" for name in COMMANDS)}):
            self.app.command(slash)(self._on_command)
        self.app.shortcut(SHORTCUT_CALLBACK_ID)(self._on_shortcut)

    async def _on_event(self, event: dict[str, Any], context: AsyncBoltContext) -> None:
        """Events are acked by bolt as soon as this returns; the work runs in our own task."""
        if not self.bot_user_id and context.bot_user_id:
            self.bot_user_id = context.bot_user_id
        if event.get("subtype") == "message_deleted":
            self._message_deleted(event)
            return
        self._spawn(self._handle_event(event))

    async def _on_other_event(self, event: dict[str, Any]) -> None:
        """Acknowledge an event type the bot does not use, so Slack does not resend it."""
        log.debug("Slack: ignored a %r event", event.get("type"))

    def _message_deleted(self, event: Mapping[str, Any]) -> None:
        """A message was deleted: if its answer has not started, the core drops it.

        The key is the one the message was handled under, or (if the deletion arrives
        first, which Slack does not rule out) the one it will be handled under.
        """
        channel, ts = event.get("channel"), event.get("deleted_ts")
        if not (isinstance(channel, str) and isinstance(ts, str)):
            return
        key = self._pending.get((channel, ts))
        if key is None:
            previous = event.get("previous_message")
            thread = thread_of(previous) if isinstance(previous, Mapping) else None
            key = ChannelKey("slack", channel, thread)
        self.core.message_deleted(key, ts)

    async def _on_command(self, ack: AsyncAck, command: dict[str, Any],
                          respond: AsyncRespond) -> None:
        """Acknowledge within Slack's 3 s (with an error right away if the input is bad)."""
        slash = str(command.get("command", "")).lower()
        name = SLASH_COMMANDS.get(slash, slash.lstrip("/"))
        channel = str(command.get("channel_id", ""))
        text = str(command.get("text") or "").strip()
        if not self._allowed(channel, channel.startswith("D")):
            await ack(text="I'm not enabled in this channel.")
            return
        if name == "ask" and not text:
            await ack(text="Usage: /ask <question>")
            return
        if name == "summarize":
            try:
                parse_count(text, default=self.settings.summary_default_messages,
                            limit=MAX_SUMMARY_MESSAGES)
            except UserError as exc:
                await ack(text=str(exc))
                return
        await ack()
        self._spawn(self._handle_command(command, respond))

    async def _on_shortcut(self, ack: AsyncAck, shortcut: dict[str, Any],
                           respond: AsyncRespond) -> None:
        await ack()
        self._spawn(self._handle_shortcut(shortcut, respond))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._stop_requested.is_set():
            work.close()
            return
        task = asyncio.create_task(self._guard(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            log.exception("unexpected error in the Slack adapter")

    # ------------------------------------------------------------------ handling

    async def _handle_event(self, event: dict[str, Any]) -> None:
        msg = to_incoming(event, self.bot_user_id)
        if msg is None or not self._allowed(msg.key.channel_id, msg.is_direct):
            return
        if self._already_seen(msg.key.channel_id, msg.message_id):
            return
        thread = msg.key.thread_id
        in_bot_thread = msg.in_bot_thread or (
            thread is not None and (msg.key.channel_id, thread) in self._bot_threads)
        if not (msg.addressed or thread is None or in_bot_thread
                or await self._thread_known(msg.key)):
            return  # a thread the bot is not part of: it is read in full if it gets mentioned
        ids = [msg.author_id, *mentioned_user_ids(str(event.get("text") or ""))]
        msg = to_incoming(event, self.bot_user_id, names=await self._names(ids))
        if msg is None:
            return
        msg = dataclasses.replace(msg, in_bot_thread=in_bot_thread)
        if thread is not None:
            await self._backfill(msg.key, before=msg.message_id)
        top_level_mention = msg.addressed and not msg.is_direct
        reply_thread = thread or (msg.message_id if top_level_mention else None)
        # Unaddressed messages are mostly just context: a message appears only if the core
        # starts answering (a reply in a thread the bot takes part in).
        pending = (msg.key.channel_id, msg.message_id)
        self._pending[pending] = msg.key
        try:
            await self._answer(msg, _Target(msg.key.channel_id, reply_thread),
                               eager=msg.addressed)
        finally:
            self._pending.pop(pending, None)

    async def _handle_command(self, command: dict[str, Any], respond: AsyncRespond) -> None:
        ids = [str(command.get("user_id", "")),
               *mentioned_user_ids(str(command.get("text") or ""))]
        msg = command_to_incoming(command, names=await self._names(ids))
        if msg.command not in PUBLIC_COMMANDS:
            msg = await self._with_admin(msg)
            reply = await self.core.handle(msg)
            if reply is not None:
                await self._respond(_Target(msg.key.channel_id, None, respond, ephemeral=True),
                                    [markdown_to_mrkdwn(reply.text)])
            return
        # Without access to the channel, a summary can only be an error: show it privately.
        target = _Target(msg.key.channel_id, None, respond, ephemeral=msg.command != "ask")
        if msg.command == "ask":
            # The question goes in the channel, the answer in a thread under it.
            header = f"*{_safe(msg.author_name)}* asked: {_safe(msg.args)}"
            posted = await self._post(target, header, kind="question")
            if posted.ok:
                target.thread_ts = str(posted.data.get("ts"))
            elif posted.error in NO_ACCESS_ERRORS:
                target.no_access = True
        await self._answer(msg, target)

    async def _handle_shortcut(self, shortcut: dict[str, Any], respond: AsyncRespond) -> None:
        user = str(_mapping(shortcut.get("user")).get("id", ""))
        msg = shortcut_to_incoming(shortcut, names=await self._names([user]))
        if not self._allowed(msg.key.channel_id, msg.is_direct):
            await self._respond(_Target(msg.key.channel_id, None, respond, ephemeral=True),
                                ["I'm not enabled in this channel."])
            return
        await self._answer(msg, _Target(msg.key.channel_id, msg.key.thread_id, respond,
                                        ephemeral=True))

    async def _answer(self, msg: IncomingMessage, target: _Target, *, eager: bool = True) -> None:
        """Placeholder now, edits while the model writes, the full answer at the end.

        Args:
            eager: post the placeholder before the core decides; otherwise the first text
                the model writes is posted (for messages the core may only record).
        """
        summary = command_of(msg) == "summarize"
        msg = await self._with_admin(msg)
        if eager and not target.no_access:
            posted = await self._post(target, READING if summary else THINKING, kind="status")
            if posted.ok:
                target.placeholder = str(posted.data.get("ts"))
            elif posted.error in NO_ACCESS_ERRORS and target.respond is not None:
                target.no_access = True
        throttle = EditThrottle(self.edit_interval, self._clock)
        paused_until = 0.0
        started = eager

        async def progress(so_far: str) -> None:
            nonlocal paused_until, started
            if not started:  # the core is answering an unaddressed message after all
                started = True
                throttle.ready()
                posted = await self._post(target, _preview(so_far), kind="status")
                target.placeholder = str(posted.data.get("ts")) if posted.ok else None
                return
            if target.placeholder is None or self._clock() < paused_until:
                return
            if not throttle.ready():
                return
            result = await self._api(
                "chat.update", functools.partial(
                    self.client.chat_update, channel=target.channel, ts=target.placeholder,
                    text=_preview(so_far), metadata=_metadata("status")), retries=0)
            if result.error == "ratelimited":
                paused_until = self._clock() + max(result.retry_after, 1.0)

        async def queued(ahead: int) -> None:
            if target.placeholder is not None:  # the streaming edits replace it
                await self._api("chat.update", functools.partial(
                    self.client.chat_update, channel=target.channel, ts=target.placeholder,
                    text=QUEUED.format(ahead=ahead), metadata=_metadata("status")), retries=0)

        exclude = {msg.message_id, *([target.placeholder] if target.placeholder else [])}
        try:
            reply = await self.core.handle(
                msg, on_progress=progress, fetch_transcript=self._fetcher(msg.key, exclude),
                on_queued=queued)
            if reply is None:  # recorded as context (or the channel is switched off)
                if target.placeholder is not None:
                    await self._api("chat.delete", functools.partial(
                        self.client.chat_delete, channel=target.channel,
                        ts=target.placeholder), retries=0)
                return
            text = reply.text
        except asyncio.CancelledError:  # shutting down: don't leave "Thinking…" behind
            if target.placeholder is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._deliver(target, STOPPED, kind="answer"), 2.0)
            raise
        except Exception:  # the core should not raise; if it does, the user still hears back
            log.exception("error while answering in %s", msg.key)
            if not (msg.addressed or started):
                return
            text = APOLOGY
        await self._deliver(target, text, kind="summary" if summary else "answer")

    # ------------------------------------------------------------------ sending

    async def send(self, reply: Reply) -> None:
        """Post `reply` in its channel: in its thread, or under the message it answers."""
        channel = reply.key.channel_id
        thread = reply.key.thread_id
        if thread is None and reply.reply_to and not channel.startswith("D") \
                and re.fullmatch(r"\d+\.\d+", reply.reply_to):
            thread = reply.reply_to
        await self._deliver(_Target(channel, thread), reply.text, kind="answer")

    async def _deliver(self, target: _Target, text: str, *, kind: str) -> None:
        """Put `text` in the placeholder (or a new message), continuing in more messages.

        Each part is converted to mrkdwn on its own. A part Slack finds too long
        (``msg_too_long``) is split again; a placeholder that cannot be edited is replaced
        by a new message; without access to the channel, the response URL is used.
        """
        queue = [part for part in split_text(text, PART_CHARS)
                 if markdown_to_mrkdwn(part).strip()] or ["(no answer)"]
        fallback: list[str] = []
        while queue:
            part = queue.pop(0)
            mrkdwn = markdown_to_mrkdwn(part)
            if target.no_access:
                fallback.append(mrkdwn)
                continue
            if target.placeholder is not None:
                result = await self._api("chat.update", functools.partial(
                    self.client.chat_update, channel=target.channel, ts=target.placeholder,
                    text=mrkdwn, metadata=_metadata(kind)))
                if result.ok:
                    target.placeholder = None
                    continue
                if result.error == "msg_too_long" and len(part) > MIN_PART_CHARS:
                    queue[:0] = split_text(part, max(MIN_PART_CHARS, len(part) // 2))
                    continue
                log.info("Slack: posting the answer anew since the placeholder could not be "
                         "edited (%s)", result.error)
                await self._api("chat.delete", functools.partial(
                    self.client.chat_delete, channel=target.channel, ts=target.placeholder),
                    retries=0)
                target.placeholder = None
            result = await self._post(target, mrkdwn, kind=kind)
            if result.error == "msg_too_long" and len(part) > MIN_PART_CHARS:
                queue[:0] = split_text(part, max(MIN_PART_CHARS, len(part) // 2))
            elif result.error in NO_ACCESS_ERRORS and target.respond is not None:
                target.no_access = True
                fallback.append(mrkdwn)
            elif not result.ok:
                log.warning("Slack: %d characters of the answer in %s were not delivered (%s)",
                            len(part), target.channel, result.error)
        if fallback:
            await self._respond(target, fallback)

    async def _post(self, target: _Target, mrkdwn: str, *, kind: str) -> _Result:
        result = await self._api("chat.postMessage", functools.partial(
            self.client.chat_postMessage, channel=target.channel, thread_ts=target.thread_ts,
            text=mrkdwn, metadata=_metadata(kind), unfurl_links=False, unfurl_media=False))
        if result.ok and target.thread_ts:
            if len(self._bot_threads) > 20_000:
                self._bot_threads.clear()
            self._bot_threads.add((target.channel, target.thread_ts))
        return result

    async def _respond(self, target: _Target, parts: list[str]) -> None:
        """Answer through the command's response URL (works where the bot is not a member)."""
        if target.respond is None:
            log.warning("Slack: could not deliver an answer in %s", target.channel)
            return
        response_type = "ephemeral" if target.ephemeral else "in_channel"
        for part in parts:
            try:
                response = await target.respond(text=part, response_type=response_type)
            except (ClientError, TimeoutError, SlackClientError, ValueError) as exc:
                log.warning("Slack: response_url failed in %s: %s", target.channel,
                            type(exc).__name__)
                return
            if response.status_code != 200:
                log.warning("Slack: response_url answered %s in %s", response.status_code,
                            target.channel)
                return

    async def _api(self, method: str, call: Callable[[], Awaitable[AsyncSlackResponse]], *,
                   retries: int = 2) -> _Result:
        """Call the Web API; log and return Slack errors, waiting out rate limits."""
        attempt = 0
        while True:
            try:
                response = await call()
                return _Result(dict(response.data) if isinstance(response.data, dict) else {})
            except SlackApiError as exc:
                error = str(exc.response.get("error") or f"http_{exc.response.status_code}")
                if error == "ratelimited" and attempt < retries:
                    delay = _retry_after(exc)
                    log.warning("Slack: %s rate-limited; retrying in %.0f s", method, delay)
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                log.warning("Slack: %s failed: %s", method, error)
                return _Result(error=error, retry_after=_retry_after(exc))
            except (SlackClientError, ClientError, TimeoutError) as exc:
                log.warning("Slack: %s failed: %s", method, type(exc).__name__)
                return _Result(error="connection_error")

    # ------------------------------------------------------------------ reading Slack

    def _fetcher(self, key: ChannelKey, exclude: set[str]) -> TranscriptFetcher:
        """`/summarize`'s history: the thread's replies or the channel's latest messages."""

        async def fetch(count: int) -> list[Turn]:
            messages = await self._read(key, count, exclude=exclude,
                                        skip_kinds={"status", "summary"})
            return await self._turns(messages)

        return fetch

    async def _read(self, key: ChannelKey, count: int, *, exclude: Iterable[str] = (),
                    skip_kinds: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The last `count` readable messages of a channel or thread, oldest first.

        Raises:
            UserError: the bot cannot read there, or Slack failed.
        """
        excluded, skipped = set(exclude), set(skip_kinds)

        def usable(message: Mapping[str, Any]) -> bool:
            return (str(message.get("ts")) not in excluded
                    and message.get("subtype") in _MESSAGE_SUBTYPES | {"bot_message"}
                    and bool(str(message.get("text") or "").strip())
                    and _kind_of(message) not in skipped)

        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            if key.thread_id is None:
                call = functools.partial(
                    self.client.conversations_history, channel=key.channel_id,
                    limit=min(200, max(count * 2, 20)), cursor=cursor, include_all_metadata=True)
                result = await self._api("conversations.history", call)
            else:
                call = functools.partial(
                    self.client.conversations_replies, channel=key.channel_id, ts=key.thread_id,
                    limit=200, cursor=cursor, include_all_metadata=True)
                result = await self._api("conversations.replies", call)
            if not result.ok:
                raise _read_error(result.error)
            found += [m for m in result.data.get("messages") or [] if usable(m)]
            cursor = (result.data.get("response_metadata") or {}).get("next_cursor") or None
            enough = len(found) >= (count if key.thread_id is None else MAX_THREAD_READ)
            if not cursor or enough:
                break
        if key.thread_id is None:
            return list(reversed(found[:count]))  # history comes newest first
        return found[-count:]

    async def _turns(self, messages: list[dict[str, Any]]) -> list[Turn]:
        """Messages as transcript turns, with every user name resolved."""
        ids: list[str] = []
        for m in messages:
            if m.get("user") and not m.get("bot_id"):
                ids.append(str(m["user"]))
            ids += mentioned_user_ids(str(m.get("text") or ""))
        names = await self._names(ids)
        if self.bot_user_id:
            names[self.bot_user_id] = self.settings.bot_name
        turns = []
        for m in messages:
            text = slack_to_text(str(m.get("text") or ""), names)
            if self._is_own(m):
                turns.append(Turn("assistant", self.settings.bot_name, text))
            else:
                author = (names.get(str(m.get("user")), "") if not m.get("bot_id") else "") or \
                    str((m.get("bot_profile") or {}).get("name") or m.get("username")
                        or m.get("user") or "bot")
                turns.append(Turn("user", author, text))
        return turns

    async def _backfill(self, key: ChannelKey, *, before: str) -> None:
        """Read a thread the bot is first mentioned in, so its earlier messages are context."""
        if key in self._threads:
            return
        self._remember_thread(key)
        if await self.core.history.recent(key, 1):
            return
        try:
            messages = await self._read(key, self.settings.history_max_messages,
                                        exclude={before}, skip_kinds={"status"})
        except UserError:
            return
        messages = [m for m in messages if ts_order(str(m.get("ts"))) < ts_order(before)]
        limit = self.settings.max_input_chars
        for message, turn in zip(messages, await self._turns(messages), strict=True):
            text = clean_text(turn.text)[:limit]
            if text:
                await self.core.history.add(key, Turn(turn.role, turn.author, text),
                                            message_id=str(message.get("ts")))

    async def _thread_known(self, key: ChannelKey) -> bool:
        """Whether the bot takes part in this thread (it has history for it)."""
        if key in self._threads:
            return True
        if await self.core.history.recent(key, 1):
            self._remember_thread(key)
            return True
        return False

    def _remember_thread(self, key: ChannelKey) -> None:
        if len(self._threads) > 20_000:
            self._threads.clear()
        self._threads.add(key)

    async def _names(self, user_ids: Iterable[str]) -> dict[str, str]:
        unique = [u for u in dict.fromkeys(user_ids) if u]
        users = await asyncio.gather(*(self._user(u) for u in unique))
        return {u: info.name for u, info in zip(unique, users, strict=True)}

    async def _user(self, user_id: str) -> _User:
        """users.info, cached for a few minutes (names and admin flags rarely change)."""
        cached = self._users.get(user_id)
        now = self._clock()
        if cached is not None and now - cached.fetched_at < USER_CACHE_SECONDS:
            return cached
        result = await self._api("users.info",
                                 functools.partial(self.client.users_info, user=user_id),
                                 retries=0)
        if result.ok:
            user = result.data.get("user") or {}
            profile = user.get("profile") or {}
            name = str(profile.get("display_name") or profile.get("real_name")
                       or user.get("real_name") or user.get("name") or user_id)
            is_admin = bool(user.get("is_admin") or user.get("is_owner")
                            or user.get("is_primary_owner"))
            info = _User(name, is_admin, now)
        else:
            info = _User(cached.name if cached else user_id, False, now)
        if len(self._users) > 5_000:
            self._users.clear()
        self._users[user_id] = info
        return info

    async def _with_admin(self, msg: IncomingMessage) -> IncomingMessage:
        """Fill `is_admin` from Slack for admin commands: workspace admins/owners, or the
        channel's creator (Slack has no per-channel "manage" permission for bots to read)."""
        command = command_of(msg)
        if not msg.addressed or msg.is_direct or command is None or command in OPEN_COMMANDS:
            return msg
        if (await self._user(msg.author_id)).is_admin:
            return dataclasses.replace(msg, is_admin=True)
        result = await self._api("conversations.info", functools.partial(
            self.client.conversations_info, channel=msg.key.channel_id), retries=0)
        creator = (result.data.get("channel") or {}).get("creator") if result.ok else None
        return dataclasses.replace(msg, is_admin=creator == msg.author_id)

    def _allowed(self, channel: str, is_direct: bool) -> bool:
        allowed = self.settings.allowed_channels
        return not allowed or is_direct or channel in allowed

    def _already_seen(self, channel: str, ts: str) -> bool:
        """Slack redelivers events it thinks were missed; answer each message once."""
        key = (channel, ts)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > 2_000:
            self._seen.popitem(last=False)
        return False

    def _is_own(self, message: Mapping[str, Any]) -> bool:
        return bool((self.bot_user_id and message.get("user") == self.bot_user_id)
                    or (self.bot_id and message.get("bot_id") == self.bot_id))


def _preview(so_far: str) -> str:
    """The streaming answer's first message, marked as unfinished."""
    parts = split_text(so_far, PART_CHARS) or [""]
    return markdown_to_mrkdwn(parts[0]) + (" …" if len(parts) == 1 else "\n…")


def _safe(text: str) -> str:
    """User text echoed by the bot: literal, and unable to notify anyone."""
    return neutralize_broadcasts(escape(text))


def _retry_after(exc: SlackApiError) -> float:
    headers = exc.response.headers or {}
    raw = headers.get("Retry-After") or headers.get("retry-after") or "1"
    with contextlib.suppress(ValueError):
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER)
    return 1.0


def _read_error(error: str | None) -> UserError:
    if error in NO_ACCESS_ERRORS:
        return UserError("I can't read the messages here. Invite me to the channel "
                         "(/invite) and try again.")
    return UserError("I couldn't read this conversation from Slack just now; "
                     "please try again in a moment.")
