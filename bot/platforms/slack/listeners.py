"""Slack in: bolt's listeners for events, slash commands and the message shortcut.

Each listener acknowledges within Slack's 3 s (bolt acks events when the listener returns;
commands and shortcuts call ``ack()`` first) and hands the work to a task of the adapter's,
so a slow model never delays an acknowledgement.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond

from bot.config import Settings
from bot.core.commands import COMMANDS, MAX_SUMMARY_MESSAGES, parse_count
from bot.core.conversation import ConversationCore
from bot.errors import UserError
from bot.platforms.slack.answer_flow import AnswerFlow
from bot.platforms.slack.controls import ACTION_ID
from bot.platforms.slack.delivery import NO_ACCESS_ERRORS, SlackDelivery, Target, safe
from bot.platforms.slack.events import (
    PUBLIC_COMMANDS,
    SLASH_COMMANDS,
    as_mapping,
    command_to_incoming,
    shortcut_to_incoming,
    thread_of,
    to_incoming,
    ts_order,
)
from bot.platforms.slack.format import markdown_to_mrkdwn, mentioned_user_ids
from bot.platforms.slack.message_shortcuts import MessageShortcuts
from bot.platforms.slack.presses import SlackPresses
from bot.platforms.slack.reader import BotIdentity, SlackReader
from bot.platforms.slack.threads import ThreadContext
from bot.types import ChannelKey, IncomingMessage

log = logging.getLogger(__name__)

SHORTCUT_CALLBACK_ID = "summarize_thread"
SUGGESTED_PROMPTS = (
    {"title": "Ask me anything", "message": "What can you help me with?"},
    {"title": "Draft a message", "message": "Help me write a short, friendly update for my team."},
    {"title": "Explain simply", "message": "Explain what a context window is, in simple words."},
)
KNOWLEDGE_PROMPT = {"title": "Ask the knowledge base",
                    "message": "What do our documents say about this? (ask your question)"}
Spawn = Callable[[Coroutine[Any, Any, None]], None]
"""Runs work as one of the adapter's tasks (which `stop()` waits for)."""


class SlackListeners:
    """Registers bolt's listeners and turns each payload into work for the core."""

    def __init__(self, *, core: ConversationCore, settings: Settings, identity: BotIdentity,
                 reader: SlackReader, delivery: SlackDelivery, threads: ThreadContext,
                 flow: AnswerFlow, presses: SlackPresses, spawn: Spawn) -> None:
        self.core = core
        self.settings = settings
        self.identity = identity
        self.reader = reader
        self.delivery = delivery
        self.threads = threads
        self.flow = flow
        self.presses = presses
        self._spawn = spawn
        self._pending: dict[tuple[str, str], ChannelKey] = {}  # (channel, ts) being answered
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def register(self, app: AsyncApp) -> None:
        app.event("app_mention")(self._on_event)
        app.event("message")(self._on_event)
        app.event("assistant_thread_started")(self._on_assistant_thread)
        app.event(re.compile(r".*"))(self._on_other_event)  # after the ones above
        for slash in sorted({*SLASH_COMMANDS, *(f"/{name}" for name in COMMANDS)}):
            app.command(slash)(self._on_command)
        app.shortcut(SHORTCUT_CALLBACK_ID)(self._on_shortcut)
        app.action(ACTION_ID)(self._on_action)
        MessageShortcuts(settings=self.settings, reader=self.reader, delivery=self.delivery,
                         flow=self.flow, allowed=self.allowed,
                         spawn=self._spawn).register(app)

    def allowed(self, channel: str, is_direct: bool) -> bool:
        allowed = self.settings.allowed_channels
        return not allowed or is_direct or channel in allowed

    # ------------------------------------------------------------------ listeners

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
        if not self.allowed(channel, channel.startswith("D")):
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

    async def _on_action(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any],
                         respond: AsyncRespond) -> None:
        """A control of an answer: acknowledged at once (Slack allows 3 s), then carried out."""
        await ack()
        self._spawn(self.presses.handle(body, action, respond))

    async def _on_assistant_thread(self, event: dict[str, Any]) -> None:
        """Someone opened the bot's assistant view: offer prompts that fit this bot."""
        self._spawn(self._suggest(as_mapping(event.get("assistant_thread"))))

    async def _suggest(self, thread: Mapping[str, Any]) -> None:
        channel, ts = thread.get("channel_id"), thread.get("thread_ts")
        if not (isinstance(channel, str) and isinstance(ts, str)):
            return
        prompts = [*SUGGESTED_PROMPTS]
        if self.core.knowledge is not None:
            prompts.append(KNOWLEDGE_PROMPT)
        await self.delivery.api("assistant.threads.setSuggestedPrompts", functools.partial(
            self.delivery.client.assistant_threads_setSuggestedPrompts, channel_id=channel,
            thread_ts=ts, title="Try one of these, or ask anything:", prompts=prompts),
            retries=0)

    # ------------------------------------------------------------------ handling

    async def _handle_event(self, event: dict[str, Any]) -> None:
        msg = to_incoming(event, self.identity.user_id)
        if msg is None or not self.allowed(msg.key.channel_id, msg.is_direct):
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
            await self.flow.answer(msg, Target(msg.key.channel_id, reply_thread),
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
        await self.flow.answer(msg, target)

    async def _handle_shortcut(self, shortcut: dict[str, Any], respond: AsyncRespond) -> None:
        user = str(as_mapping(shortcut.get("user")).get("id", ""))
        msg = shortcut_to_incoming(shortcut, names=await self.reader.names([user]))
        if not self.allowed(msg.key.channel_id, msg.is_direct):
            target = Target(msg.key.channel_id, None, respond, ephemeral=True)
            await self.delivery.respond(target, ["I'm not enabled in this channel."])
            return
        await self.flow.answer(msg, Target(msg.key.channel_id, msg.key.thread_id, respond,
                                           ephemeral=True))

    def _already_seen(self, channel: str, ts: str) -> bool:
        """Slack redelivers events it thinks were missed; answer each message once."""
        key = (channel, ts)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > 2_000:
            self._seen.popitem(last=False)
        return False
