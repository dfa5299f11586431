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
until the answer replaces it; a message deleted before its turn is not answered. In a thread
the answer streams with Slack's own streaming after an "is thinking..." status
(`native_stream`, falling back to edits), and every answer ends with its controls (Stop,
Regenerate, Continue, feedback; `controls`, pressed through `presses`).

Every human message the bot can see is passed to the core, which answers it or keeps it as
context. A thread is read from Slack the first time the bot takes part in it. Slack API
failures (rate limits, ``not_in_channel``, ``msg_too_long``) are logged and worked around; they
never stop the adapter. Malformed events and request bodies are logged and ignored. The
translation of events into `IncomingMessage` is pure (`to_incoming`, `command_to_incoming`,
`shortcut_to_incoming` in `events`) so it is unit-tested alone. This module is the wiring
and the lifecycle (connect, serve, drain, disconnect); `listeners` takes bolt's payloads in,
`answer_flow` shows one answer, `delivery` sends and `reader` reads.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.documents.intake import Intake
from bot.errors import ConfigError
from bot.platforms.slack.answer_flow import READING, STOPPED, THINKING, AnswerFlow
from bot.platforms.slack.connection import connect_socket_mode, identify, serve_http
from bot.platforms.slack.controls import Capabilities
from bot.platforms.slack.delivery import SlackDelivery, Target
from bot.platforms.slack.input_guards import SocketModeHandler
from bot.platforms.slack.listeners import SHORTCUT_CALLBACK_ID, SlackListeners
from bot.platforms.slack.presses import SlackPresses
from bot.platforms.slack.reader import BotIdentity, SlackReader
from bot.platforms.slack.threads import ThreadContext
from bot.types import Reply

__all__ = ["READING", "SHORTCUT_CALLBACK_ID", "STOPPED", "THINKING", "SlackAdapter"]

log = logging.getLogger(__name__)


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
        self.threads = ThreadContext(core, self.reader, settings)
        self.caps = Capabilities()
        """What the workspace takes: native streaming, assistant status, feedback buttons."""
        self.flow = AnswerFlow(core, self.client, self.delivery, self.reader,
                               edit_interval=edit_interval, clock=clock, caps=self.caps,
                               intake=intake)
        presses = SlackPresses(core, self.client, self.delivery, self.reader, self.caps,
                               edit_interval=edit_interval, clock=clock)
        self.listeners = SlackListeners(
            core=core, settings=settings, identity=self.identity, reader=self.reader,
            delivery=self.delivery, threads=self.threads, flow=self.flow, presses=presses,
            spawn=self._spawn)
        self.listeners.register(self.app)

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

    # ------------------------------------------------------------------ tasks

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

    # ------------------------------------------------------------------ sending

    async def send(self, reply: Reply) -> None:
        """Post `reply` in its channel: in its thread, or under the message it answers."""
        channel = reply.key.channel_id
        thread = reply.key.thread_id
        if thread is None and reply.reply_to and not channel.startswith("D") \
                and re.fullmatch(r"\d+\.\d+", reply.reply_to):
            thread = reply.reply_to
        await self.delivery.deliver(Target(channel, thread), reply.text, kind="answer")
