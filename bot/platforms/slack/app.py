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
`shortcut_to_incoming` in `events`) so it is unit-tested alone. This module is the wiring:
bolt's listeners, the connection, and the flow of one answer; `delivery` sends, `reader` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.core.commands import COMMANDS, MAX_SUMMARY_MESSAGES, parse_count
from bot.core.conversation import APOLOGY, ConversationCore
from bot.documents.intake import Intake
from bot.errors import ConfigError, UserError
from bot.platforms.slack.connection import connect_socket_mode, identify, serve_http
from bot.platforms.slack.delivery import (
    NO_ACCESS_ERRORS,
    LiveAnswer,
    SlackDelivery,
    Target,
    safe,
)
from bot.platforms.slack.events import (
    PUBLIC_COMMANDS,
    SLASH_COMMANDS,
    as_mapping,
    command_of,
    command_to_incoming,
    shortcut_to_incoming,
    thread_of,
    to_incoming,
    ts_order,
)
from bot.platforms.slack.files import shared_for
from bot.platforms.slack.format import markdown_to_mrkdwn, mentioned_user_ids
from bot.platforms.slack.input_guards import SocketModeHandler
from bot.platforms.slack.reader import BotIdentity, SlackReader
from bot.platforms.slack.threads import ThreadContext
from bot.types import ChannelKey, IncomingMessage, Reply

log = logging.getLogger(__name__)

SHORTCUT_CALLBACK_ID = "summarize_thread"
THINKING = "_Thinking…_"
READING = "_Reading the conversation…_"
STOPPED = "_(stopped: the bot is restarting; please ask again in a moment)_"


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
                 clock: Callable[[], float] = time.monotonic,
                 intake: Intake | None = None) -> None:
        self.core = core
        self.intake = intake  # reads files and links (None: they are not read)
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
        self.identity = BotIdentity()
        self.delivery = SlackDelivery(self.client)
        self.reader = SlackReader(self.client, self.delivery, settings, self.identity, clock=clock)
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
        self.threads = ThreadContext(core, self.reader, settings)
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
        self.identity.user_id, self.identity.bot_id = await identify(self.client)
        if self.socket_mode:
            assert self.settings.slack_app_token
            self._handler = SocketModeHandler(self.app, app_token=self.settings.slack_app_token,
                                              ping_interval=self.ping_interval)
            await connect_socket_mode(self._handler)
        else:
            self._runner = await serve_http(self.app, self.host, self.settings.port)
            self.bound_port = int(self._runner.addresses[0][1])

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
        if not self.identity.user_id and context.bot_user_id:
            self.identity.user_id = context.bot_user_id
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
        msg = to_incoming(event, self.identity.user_id)
        if msg is None or not self._allowed(msg.key.channel_id, msg.is_direct):
            return
        if self._already_seen(msg.key.channel_id, msg.message_id):
            return
        # Claimed first, in the store every instance shares: a retry, the app_mention twin
        # of a message event, or the same event sent to another instance is answered once.
        seconds, micros = ts_order(msg.message_id)
        async with self.core.claimed(msg.key, msg.message_id,
                                     f"slack:{msg.key.channel_id}:{msg.message_id}",
                                     order=seconds * 1_000_000 + micros) as mine:
            if mine:
                await self._handle_claimed(event, msg)

    async def _handle_claimed(self, event: dict[str, Any], msg: IncomingMessage) -> None:
        thread = msg.key.thread_id
        in_bot_thread = msg.in_bot_thread or (
            thread is not None and (msg.key.channel_id, thread) in self.delivery.bot_threads)
        if not (msg.addressed or thread is None or in_bot_thread
                or await self.threads.known(msg.key)):
            return  # a thread the bot is not part of: it is read in full if it gets mentioned
        ids = [msg.author_id, *mentioned_user_ids(str(event.get("text") or ""))]
        named = to_incoming(event, self.identity.user_id, names=await self.reader.names(ids))
        if named is None:
            return
        msg = dataclasses.replace(named, in_bot_thread=in_bot_thread)
        if thread is not None:
            await self.threads.backfill(msg.key, before=msg.message_id)
        top_level_mention = msg.addressed and not msg.is_direct
        reply_thread = thread or (msg.message_id if top_level_mention else None)
        # Unaddressed messages are mostly just context: a message appears only if the core
        # starts answering (a reply in a thread the bot takes part in).
        pending = (msg.key.channel_id, msg.message_id)
        self._pending[pending] = msg.key
        try:
            await self._answer(msg, Target(msg.key.channel_id, reply_thread),
                               eager=msg.addressed)
        finally:
            self._pending.pop(pending, None)

    async def _handle_command(self, command: dict[str, Any], respond: AsyncRespond) -> None:
        ids = [str(command.get("user_id", "")),
               *mentioned_user_ids(str(command.get("text") or ""))]
        msg = command_to_incoming(command, names=await self.reader.names(ids))
        trigger = str(command.get("trigger_id") or "")
        if not trigger:
            await self._run_command(msg, respond)
            return
        async with self.core.claimed(msg.key, msg.message_id,
                                     f"slack:command:{trigger}") as mine:
            if mine:
                await self._run_command(msg, respond)

    async def _run_command(self, msg: IncomingMessage, respond: AsyncRespond) -> None:
        if msg.command not in PUBLIC_COMMANDS:
            msg = await self.reader.with_admin(msg)
            reply = await self.core.handle(msg)
            if reply is not None:
                target = Target(msg.key.channel_id, None, respond, ephemeral=True)
                await self.delivery.respond(target, [markdown_to_mrkdwn(reply.text)])
            return
        # Without access to the channel, a summary can only be an error: show it privately.
        target = Target(msg.key.channel_id, None, respond, ephemeral=msg.command != "ask")
        if msg.command == "ask":
            # The question goes in the channel, the answer in a thread under it.
            header = f"*{safe(msg.author_name)}* asked: {safe(msg.args)}"
            posted = await self.delivery.post(target, header, kind="question")
            if posted.ok:
                target.thread_ts = str(posted.data.get("ts"))
            elif posted.error in NO_ACCESS_ERRORS:
                target.no_access = True
        await self._answer(msg, target)

    async def _handle_shortcut(self, shortcut: dict[str, Any], respond: AsyncRespond) -> None:
        user = str(as_mapping(shortcut.get("user")).get("id", ""))
        msg = shortcut_to_incoming(shortcut, names=await self.reader.names([user]))
        if not self._allowed(msg.key.channel_id, msg.is_direct):
            target = Target(msg.key.channel_id, None, respond, ephemeral=True)
            await self.delivery.respond(target, ["I'm not enabled in this channel."])
            return
        await self._answer(msg, Target(msg.key.channel_id, msg.key.thread_id, respond,
                                        ephemeral=True))

    async def _answer(self, msg: IncomingMessage, target: Target, *, eager: bool = True) -> None:
        """Placeholder now, edits while the model writes, the full answer at the end.

        Args:
            eager: post the placeholder before the core decides; otherwise the first text
                the model writes is posted (for messages the core may only record).
        """
        summary = command_of(msg) == "summarize"
        msg = await self.reader.with_admin(msg)
        if eager and not target.no_access:
            status = READING if summary else THINKING
            posted = await self.delivery.post(target, status, kind="status")
            if posted.ok:
                target.placeholder = str(posted.data.get("ts"))
            elif posted.error in NO_ACCESS_ERRORS and target.respond is not None:
                target.no_access = True
        live = LiveAnswer(self.delivery, target, interval=self.edit_interval, clock=self._clock,
                          started=eager)

        exclude = {msg.message_id, *([target.placeholder] if target.placeholder else [])}
        try:
            if self.intake is not None and command_of(msg) in (None, "ask") and (
                    msg.addressed or msg.in_bot_thread):
                msg = dataclasses.replace(msg, shared=await shared_for(msg, self.client,
                                                                       self.intake))
            reply = await self.core.handle(
                msg, on_progress=live.progress,
                fetch_transcript=self.reader.fetcher(msg.key, exclude), on_queued=live.queued)
            if reply is None:  # recorded as context (or the channel is switched off)
                if target.placeholder is not None:
                    await self.delivery.api("chat.delete", functools.partial(
                        self.client.chat_delete, channel=target.channel,
                        ts=target.placeholder), retries=0)
                return
            text = reply.text
        except asyncio.CancelledError:  # shutting down: don't leave "Thinking…" behind
            if target.placeholder is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.delivery.deliver(target, STOPPED, kind="answer"), 2.0)
            raise
        except Exception:  # the core should not raise; if it does, the user still hears back
            log.exception("error while answering in %s", msg.key)
            if not (msg.addressed or live.started):
                return
            text = APOLOGY
        await self.delivery.deliver(target, text, kind="summary" if summary else "answer")

    # ------------------------------------------------------------------ sending

    async def send(self, reply: Reply) -> None:
        """Post `reply` in its channel: in its thread, or under the message it answers."""
        channel = reply.key.channel_id
        thread = reply.key.thread_id
        if thread is None and reply.reply_to and not channel.startswith("D") \
                and re.fullmatch(r"\d+\.\d+", reply.reply_to):
            thread = reply.reply_to
        await self.delivery.deliver(Target(channel, thread), reply.text, kind="answer")

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
