"""The Discord adapter: discord.py in front of the conversation core.

What a Discord user sees:

* A mention (or a reply to one of the bot's messages) shows "typing", then a reply to that
  message which grows in place as the model writes (edited at most once per `edit_interval`),
  ending with the full text. A DM is answered without a mention. Each channel, thread and DM
  has its own history; every human message the bot can read is recorded as context.
* Slash commands ``/ask``, ``/summarize``, ``/reset``, ``/help``, ``/status`` are deferred at
  once ("thinking..."), so a slow model never misses Discord's 3-second deadline, and then
  answered with follow-ups. ``/summarize`` reads the channel's history from Discord.
* Answers over 2,000 characters continue in further messages, code blocks kept balanced.
* Nothing the bot posts can ping @everyone, @here or a role; only the asker may be pinged.
* A request that has to wait for the model says so ("Queued: 2 ahead of you…") in the
  message that then grows into its answer. A question deleted before its turn is dropped.
* On shutdown, answers get `shutdown_grace` to finish; one still running then ends with a
  note that the bot is restarting (or, if nothing was posted yet, the asker is told so).
* Each answer carries buttons: Stop while it is written, then Regenerate, Continue (when cut
  at the reply budget), 👍 and 👎 (`controls_view`, pressed through `presses`). Message
  commands (Summarize from here, Ask about this, Explain) and slash commands run through
  `command_runner`; a forum post is a thread like any other.

Failures stay local: a missing permission or a refused request is logged and that one answer
is dropped (with a log line saying so); a missing Message Content intent is reported once at
start-up and `start()` returns, so the other platforms keep running. A gateway event
discord.py cannot parse is logged and skipped instead of ending the connection. The
translation of Discord objects is pure and lives in `text`; `live_reply` shows an answer,
`gateway` is the discord.py client, `slash_commands` and `message_commands` declare the
commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Coroutine
from typing import Any

import discord

from bot.config import Settings
from bot.core.answering import SHUTDOWN_MARK
from bot.core.conversation import APOLOGY, ConversationCore
from bot.documents.intake import Intake
from bot.platforms.base import EditThrottle
from bot.platforms.discord.attachments import shared_from_message
from bot.platforms.discord.command_runner import (
    NOT_HERE,
    PRIVATE_COMMANDS,
    RESTARTING,
    CommandRunner,
)
from bot.platforms.discord.controls_view import ControlButton, controls_view
from bot.platforms.discord.gateway import make_client
from bot.platforms.discord.live_reply import LiveReply, bounded, describe, queue_status
from bot.platforms.discord.message_commands import register_message_commands
from bot.platforms.discord.presses import PressHandler
from bot.platforms.discord.slash_commands import Interaction, register_commands, sync_commands
from bot.platforms.discord.text import (
    INVITE_SCOPES,
    REQUIRED_PERMISSIONS,
    channel_allowed,
    is_chat_message,
    safe_mentions,
    to_incoming,
)
from bot.platforms.discord.transcripts import history_fetcher
from bot.types import ChannelKey, Control, IncomingMessage, Reply

__all__ = ["NOT_HERE", "PRIVATE_COMMANDS", "RESTARTING", "DiscordAdapter"]

log = logging.getLogger(__name__)

TYPING_REFRESH = 8.0
"""Seconds between typing triggers; Discord shows one for about 10 s."""
INTENT_HELP = (
    "Discord refused the connection: the bot asks for the Message Content intent, which is not "
    "enabled for this application. Enable it at https://discord.com/developers/applications → "
    "your application → Bot → Privileged Gateway Intents → MESSAGE CONTENT INTENT, save, and "
    "restart the bot. Discord is not running; the other platforms keep going."
)
TOKEN_HELP = (
    "Discord rejected DISCORD_TOKEN. Copy a fresh token from "
    "https://discord.com/developers/applications → your application → Bot → Reset Token, put "
    "it in .env, and restart. Discord is not running; the other platforms keep going."
)


class DiscordAdapter:
    """Serves the core on Discord until `stop()`.

    Args:
        edit_interval: least seconds between edits of a growing answer (Discord rate-limits
            edits; tests pass 0 to see every step).
        shutdown_grace: how long `stop()` lets answers in progress finish before cancelling.
    """

    platform = "discord"

    def __init__(self, core: ConversationCore, settings: Settings, *,
                 edit_interval: float = 1.0, shutdown_grace: float = 10.0,
                 intake: Intake | None = None) -> None:
        self.core = core
        self.intake = intake
        """Reads attachments and links (None: they are not read)."""
        self.settings = settings
        self.edit_interval = edit_interval
        self.shutdown_grace = shutdown_grace
        self.client = make_client(self, shard_count=settings.discord_shard_count,
                                  shard_ids=settings.discord_shard_ids)
        if settings.discord_shard_count is not None:
            core.status_providers.append(self.shard_status_lines)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[int, ChannelKey] = {}  # message id → its key, while answering
        self._stopping = False
        self.runner = CommandRunner(self)
        self.presses = PressHandler(core, edit_interval=edit_interval)
        register_commands(self.client.tree, self._run_tracked,
                          summary_default=settings.summary_default_messages,
                          personas=list(core.personas))
        register_message_commands(self.client.tree, self.runner)
        self.client.add_dynamic_items(ControlButton)  # buttons of answers, also after restarts

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect and serve until `stop()`; returns (logging why) if Discord refuses us."""
        token = self.settings.discord_token
        if not token:
            log.error("DISCORD_TOKEN is not set; Discord is not running")
            return
        try:
            await self.client.start(token)
        except discord.PrivilegedIntentsRequired:
            log.error(INTENT_HELP)
        except discord.LoginFailure:
            log.error(TOKEN_HELP)
        finally:
            if not self.client.is_closed():
                await self.client.close()  # start() can fail with the HTTP session still open

    async def stop(self) -> None:
        """Let answers in progress finish (up to `shutdown_grace`), then disconnect.

        Answers still running then are cancelled; each ends its partial message with a note
        that the bot is restarting (or says so, if nothing was posted yet) before the
        connection closes.
        """
        self._stopping = True
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.shutdown_grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("cancelled %d Discord answer(s) still in progress at shutdown",
                        len(pending))
            await asyncio.wait(pending)
        await self.client.close()

    @property
    def connected(self) -> bool:
        """Logged in with the gateway open (False while discord.py reconnects); sharded:
        every shard of this process connected."""
        if not self.client.is_ready() or self.client.is_closed():
            return False
        if isinstance(self.client, discord.AutoShardedClient):
            shards = self.client.shards
            return bool(shards) and not any(shard.is_closed() for shard in shards.values())
        ws = self.client.ws
        return ws is not None and ws.open

    @property
    def shard_ids(self) -> tuple[int, ...] | None:
        """The shards this process runs (None: unsharded)."""
        return self.settings.discord_shard_ids

    def shard_latencies(self) -> dict[int, float | None]:
        """Each shard's heartbeat latency in seconds (None until it has connected)."""
        if not isinstance(self.client, discord.AutoShardedClient):
            return {}
        measured = dict(self.client.latencies)  # inf or nan before the first heartbeat
        return {shard: (latency if (latency := measured.get(shard)) is not None
                        and math.isfinite(latency) else None) for shard in self.shard_ids or ()}

    def health_details(self) -> dict[str, Any]:
        """For ``/healthz``: the shards this process holds, their latency and connection."""
        if not isinstance(self.client, discord.AutoShardedClient):
            return {}
        shards = self.client.shards
        return {"shard_count": self.settings.discord_shard_count, "shards": {
            str(shard): {"connected": shard in shards and not shards[shard].is_closed(),
                         "latency_ms": None if latency is None else round(latency * 1000, 1)}
            for shard, latency in self.shard_latencies().items()}}

    def shard_status_lines(self) -> list[str]:
        """For ``/status``: "Discord shards here: 0 (42 ms), 1 (40 ms) of 2"."""
        shown = ", ".join(f"{shard} ({'-' if latency is None else round(latency * 1000)} ms)"
                          for shard, latency in self.shard_latencies().items())
        return [f"Discord shards here: {shown} of {self.settings.discord_shard_count}"]

    def on_ready(self) -> None:
        user = self.client.user
        log.info("connected to Discord as %s in %d server(s)", user, len(self.client.guilds))
        if self.shard_ids is not None:
            log.info("Discord shards %s of %d run in this process",
                     ",".join(map(str, self.shard_ids)), self.settings.discord_shard_count)
        if not self.client.guilds and self.client.application_id is not None:
            log.warning("the bot is in no Discord server yet; invite it with %s",
                        self.invite_url())

    def invite_url(self) -> str:
        """The OAuth2 URL that adds this bot to a server with the permissions it needs."""
        return discord.utils.oauth_url(self.client.application_id or 0,
                                       permissions=REQUIRED_PERMISSIONS, scopes=INVITE_SCOPES)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def track(self, work: Coroutine[Any, Any, None]) -> None:
        await self._track(work)

    async def on_press(self, interaction: Interaction, control: Control, answer_to: str,
                       /) -> None:
        """A control of an answer was pressed (`controls_view.ControlButton`)."""
        if self._stopping:
            await self.runner.refuse(interaction, RESTARTING)
            return
        await self._track(self.presses.on_press(interaction, control, answer_to))

    async def _track(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one answer as a task `stop()` can wait for (discord.py does not track them)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await task

    # ------------------------------------------------------------------ messages

    async def on_message(self, message: discord.Message) -> None:
        """Answer a mention or DM; pass any other human message to the core as context."""
        bot_user = self.client.user
        if (self._stopping or bot_user is None or message.author.bot
                or message.author.id == bot_user.id or message.webhook_id is not None
                or not is_chat_message(message)):
            return
        try:
            incoming = to_incoming(message, bot_user)
        except Exception as exc:  # discord.py accepted an odd payload; we cannot read it
            log.warning("ignored a Discord message in %s that could not be read (%s)",
                        describe(message.channel), type(exc).__name__)
            log.debug("the unreadable message", exc_info=True)
            return
        if not channel_allowed(message.channel, self.settings.allowed_channels,
                               is_direct=incoming.is_direct):
            return
        if incoming.addressed and not self._can_send(message.channel):
            log.warning("mentioned in %s but missing the permission to send messages there; "
                        "not answering", describe(message.channel))
            return
        async with self.core.claimed(incoming.key, incoming.message_id,
                                     f"discord:message:{message.id}", order=message.id) as mine:
            if not mine:
                return  # another instance on this shard answers it
            self._pending[message.id] = incoming.key
            try:
                await self._track(self._answer(message, incoming))
            finally:
                self._pending.pop(message.id, None)

    def message_deleted(self, message_id: int) -> None:
        """A message was deleted: if its answer has not started, the core drops it."""
        key = self._pending.get(message_id)
        if key is not None:
            self.core.message_deleted(key, str(message_id))

    async def _answer(self, message: discord.Message, incoming: IncomingMessage) -> None:
        """Hand the message to the core and show its answer, if it gives one.

        Unaddressed messages are usually only recorded, but the core may still answer some
        (a follow-up in a thread it takes part in), so they get a reply path too, without
        the typing indicator.
        """
        channel = message.channel
        typing = (asyncio.get_running_loop().create_task(self._keep_typing(channel))
                  if incoming.addressed else None)
        reference = message.to_reference(fail_if_not_exists=False)
        mentions = safe_mentions(message.author.id)

        async def post(index: int, text: str) -> discord.Message:
            if index == 0 and live.view is not None:
                return await channel.send(text, reference=reference, allowed_mentions=mentions,
                                          view=live.view)
            if index == 0:
                return await channel.send(text, reference=reference, allowed_mentions=mentions)
            return await channel.send(text, allowed_mentions=mentions)

        live = LiveReply(post, allowed_mentions=mentions, throttle=EditThrottle(self.edit_interval),
                         where=describe(channel),
                         on_first_post=typing.cancel if typing is not None else None)
        live.view = controls_view(("stop",), incoming.message_id)
        bot_id = self.client.user.id if self.client.user else 0
        try:
            if self.intake is not None and (incoming.addressed or incoming.in_bot_thread):
                incoming = dataclasses.replace(
                    incoming, shared=await shared_from_message(message, self.intake))
            reply = await self.core.handle(incoming, on_progress=live.progress,
                                           fetch_transcript=history_fetcher(channel, bot_id),
                                           on_queued=queue_status(live))
        except asyncio.CancelledError:  # stop() ran out of patience: say so in the channel
            live.view = None
            if incoming.addressed or live.messages:
                await bounded(live.interrupt(SHUTDOWN_MARK, RESTARTING))
            raise
        except Exception:  # the core should not raise; if it does, the asker still hears back
            log.exception("error while answering in %s", describe(channel))
            reply = Reply(incoming.key, APOLOGY) if incoming.addressed else None
        finally:
            if typing is not None:
                typing.cancel()
                await asyncio.wait({typing})
        if reply is not None:
            live.view = controls_view(reply.controls, incoming.message_id)
            await live.finish(reply.text)
        elif live.messages:
            await live.retract()  # a "Queued" line for a request that was dropped

    async def _keep_typing(self, channel: discord.abc.Messageable) -> None:
        """Show "typing" until cancelled (when the first part of the answer is posted)."""
        try:
            while True:
                await channel.typing()
                await asyncio.sleep(TYPING_REFRESH)
        except discord.HTTPException as exc:
            log.debug("typing indicator failed in %s: %s", describe(channel), exc)

    def _can_send(self, channel: object) -> bool:
        """Whether the cached permissions let the bot post here (DMs always do)."""
        if isinstance(channel, discord.Thread):
            need = "send_messages_in_threads"
        elif isinstance(channel, discord.abc.GuildChannel):
            need = "send_messages"
        else:
            return True
        me = channel.guild.me
        if me is None:
            return True
        try:
            perms = channel.permissions_for(me)
        except discord.ClientException:
            return True  # cannot tell; a refused send is handled anyway
        return perms.view_channel and bool(getattr(perms, need))

    async def send(self, reply: Reply) -> None:
        """Post a reply the core produced outside an event (split, safe mentions)."""
        channel_id = int(reply.key.thread_id or reply.key.channel_id)
        channel: object = self.client.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.client.fetch_channel(channel_id)
            except discord.HTTPException as exc:
                log.warning("cannot send to Discord channel %s: %s", channel_id, exc)
                return
        if not isinstance(channel, discord.abc.Messageable):
            log.warning("Discord channel %s cannot hold messages", channel_id)
            return
        target = channel
        reference = None
        if reply.reply_to and reply.reply_to.isdigit():
            reference = discord.MessageReference(message_id=int(reply.reply_to),
                                                 channel_id=channel_id, fail_if_not_exists=False)
        mentions = safe_mentions()

        async def post(index: int, text: str) -> discord.Message:
            if index == 0 and reference is not None:
                return await target.send(text, reference=reference, allowed_mentions=mentions)
            return await target.send(text, allowed_mentions=mentions)

        live = LiveReply(post, allowed_mentions=mentions, throttle=EditThrottle(0),
                         where=describe(channel))
        await live.finish(reply.text)

    # ------------------------------------------------------------------ slash commands

    async def sync_commands(self) -> None:
        """Register the slash commands with Discord (called once connected); with shards,
        only the process holding shard 0 does, so they are registered once."""
        if self.shard_ids is not None and 0 not in self.shard_ids:
            log.info("not registering slash commands: the process holding shard 0 does")
            return
        await sync_commands(self.client.tree, guild_id=self.settings.discord_guild_id,
                            invite_url=self.invite_url())

    async def _run_tracked(self, interaction: Interaction, command: str, args: str) -> None:
        await self._track(self.run_command(interaction, command, args))

    async def run_command(self, interaction: Interaction, command: str, args: str = "") -> None:
        """Defer at once (Discord's 3-second deadline), run the command, follow up."""
        await self.runner.run_command(interaction, command, args)
