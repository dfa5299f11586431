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

Failures stay local: a missing permission or a refused request is logged and that one answer
is dropped (with a log line saying so); a missing Message Content intent is reported once at
start-up and `start()` returns, so the other platforms keep running. A gateway event
discord.py cannot parse is logged and skipped instead of ending the connection. The
translation of Discord objects is pure and lives in `bot.adapters.discord_text`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import discord
from discord import app_commands

from bot.adapters.base import EditThrottle, split_text
from bot.adapters.discord_text import (
    INVITE_SCOPES,
    MESSAGE_LIMIT,
    REQUIRED_PERMISSIONS,
    channel_allowed,
    interaction_to_incoming,
    is_chat_message,
    message_to_turn,
    neutralize_broadcasts,
    quote_prompt,
    safe_mentions,
    to_incoming,
)
from bot.commands import COMMANDS, MAX_SUMMARY_MESSAGES, TranscriptFetcher
from bot.config import Settings
from bot.core import APOLOGY, SHUTDOWN_MARK, ConversationCore
from bot.errors import UserError
from bot.types import ChannelKey, IncomingMessage, Reply, Turn

log = logging.getLogger(__name__)

Interaction = discord.Interaction[discord.Client]
Post = Callable[[int, str], Awaitable[discord.Message]]
"""Posts part `index` of an answer and returns the message, so it can be edited later."""

SummaryCount = app_commands.Range[int, 1, MAX_SUMMARY_MESSAGES]
PRIVATE_COMMANDS = frozenset({"help", "status"})
"""Answered only to the person who asked (ephemeral); the others are shown to the channel."""
TYPING_REFRESH = 8.0
"""Seconds between typing triggers; Discord shows one for about 10 s."""
HISTORY_SLACK = 5
"""Extra messages read for /summarize, for placeholders and notices that get skipped."""
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
NOT_HERE = "I'm not enabled in this channel."
RESTARTING = "I'm restarting right now; please try again in a moment."


class LiveReply:
    """The messages showing one answer: posted on the first text, edited as it grows.

    The text is split at Discord's limit; each part is one message, edited only when its
    text changed. Failures are logged and never raised, because they happen inside the
    core's progress callback: a Forbidden/NotFound ends this reply (no permission, or the
    message was deleted), other HTTP errors are retried on the next update. An answer that
    cannot be shown in the end is logged as lost, never dropped silently.
    """

    def __init__(self, post: Post, *, allowed_mentions: discord.AllowedMentions,
                 throttle: EditThrottle, where: str, prefix: str = "",
                 on_first_post: Callable[[], object] | None = None) -> None:
        self._post = post
        self._mentions = allowed_mentions
        self._throttle = throttle
        self._where = where
        self._prefix = prefix
        self._on_first_post = on_first_post
        self.messages: list[discord.Message] = []
        self._shown: list[str] = []
        self._answer = ""  # the answer text shown so far (not a status line)
        self.failed = False

    async def progress(self, text: str) -> None:
        """Show the answer so far, unless the last update was too recent."""
        if not self.failed and self._throttle.ready():
            if await self._show(text):
                self._answer = text

    async def status(self, text: str) -> None:
        """Show a status line ("Queued: 2 ahead of you…") until the answer replaces it."""
        if not self.failed and not self._answer:
            await self._show(text)

    async def finish(self, text: str) -> None:
        """Show the complete answer (a final edit only where the text changed)."""
        if self.failed or not await self._show(text):
            log.warning("the answer in %s was not delivered (%d characters lost)",
                        self._where, len(text))
            return
        self._answer = text

    async def interrupt(self, mark: str, notice: str) -> None:
        """The answer will not be finished: end the partial one with `mark`, or say `notice`."""
        await self.finish(self._answer + mark if self._answer else notice)

    async def retract(self) -> None:
        """Delete what was posted (a status line for a request that was dropped)."""
        for message in self.messages:
            try:
                await message.delete()
            except discord.HTTPException as exc:
                log.debug("could not delete a status message in %s: %s", self._where, exc)
        self.messages.clear()
        self._shown.clear()

    async def _show(self, text: str) -> bool:
        """Bring the posted messages up to `text`; whether Discord took it all."""
        parts = split_text(neutralize_broadcasts(self._prefix + text), MESSAGE_LIMIT)
        try:
            for index, part in enumerate(parts):
                if index < len(self.messages):
                    if part != self._shown[index]:
                        await self.messages[index].edit(content=part,
                                                        allowed_mentions=self._mentions)
                        self._shown[index] = part
                    continue
                self.messages.append(await self._post(index, part))
                self._shown.append(part)
                if index == 0 and self._on_first_post is not None:
                    self._on_first_post()
            while len(self.messages) > len(parts):  # the text got shorter: drop stale parts
                stale = self.messages.pop()
                self._shown.pop()
                await stale.delete()
        except (discord.Forbidden, discord.NotFound) as exc:
            self.failed = True
            log.warning("cannot post the answer in %s (HTTP %s, code %s: %s); check the bot's "
                        "View Channel and Send Messages permissions there",
                        self._where, exc.status, exc.code, exc.text)
            return False
        except discord.HTTPException as exc:
            log.warning("Discord refused a message in %s (HTTP %s, code %s: %s)",
                        self._where, exc.status, exc.code, exc.text)
            return False
        return True


class _Client(discord.Client):
    """discord.Client wired to the adapter: events go to it, the command tree lives here."""

    def __init__(self, adapter: DiscordAdapter) -> None:
        # A text-only bot: discord.py's "voice will NOT be supported" warnings are just noise.
        for flag in ("warn_nacl", "warn_dave"):
            setattr(discord.VoiceClient, flag, False)
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, allowed_mentions=safe_mentions())
        self.adapter = adapter
        self.tree: app_commands.CommandTree[_Client] = app_commands.CommandTree(self)
        parsers = self._connection.parsers  # the same dict the gateway reads events through
        for event, parse in list(parsers.items()):
            parsers[event] = _tolerant(event, parse)

    async def setup_hook(self) -> None:
        await self.adapter.sync_commands()

    async def on_ready(self) -> None:
        self.adapter.on_ready()

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.adapter.message_deleted(payload.message_id)

    async def on_raw_bulk_message_delete(
            self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:
            self.adapter.message_deleted(message_id)


def _tolerant(event: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
    """A gateway event parser that logs and skips an event it cannot read.

    Why: discord.py parses events inside its connection loop, where any exception but a
    network error ends `Client.start()`: one malformed event (a missing field, a wrong type)
    would take the bot off Discord for good.
    """

    def parse_or_skip(data: Any) -> None:
        try:
            parse(data)
        except Exception as exc:
            log.warning("ignored a Discord %s event that could not be read (%s)", event,
                        type(exc).__name__)
            log.debug("the unreadable %s event", event, exc_info=True)

    return parse_or_skip


class DiscordAdapter:
    """Serves the core on Discord until `stop()`.

    Args:
        edit_interval: least seconds between edits of a growing answer (Discord rate-limits
            edits; tests pass 0 to see every step).
        shutdown_grace: how long `stop()` lets answers in progress finish before cancelling.
    """

    platform = "discord"

    def __init__(self, core: ConversationCore, settings: Settings, *,
                 edit_interval: float = 1.0, shutdown_grace: float = 10.0) -> None:
        self.core = core
        self.settings = settings
        self.edit_interval = edit_interval
        self.shutdown_grace = shutdown_grace
        self.client = _Client(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[int, ChannelKey] = {}  # message id → its key, while answering
        self._stopping = False
        self._register_commands(self.client.tree)

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
        """Logged in with the gateway open (False while discord.py reconnects)."""
        ws = self.client.ws
        return (self.client.is_ready() and not self.client.is_closed()
                and ws is not None and ws.open)

    def on_ready(self) -> None:
        user = self.client.user
        log.info("connected to Discord as %s in %d server(s)", user, len(self.client.guilds))
        if not self.client.guilds and self.client.application_id is not None:
            log.warning("the bot is in no Discord server yet; invite it with %s",
                        self.invite_url())

    def invite_url(self) -> str:
        """The OAuth2 URL that adds this bot to a server with the permissions it needs."""
        return discord.utils.oauth_url(self.client.application_id or 0,
                                       permissions=REQUIRED_PERMISSIONS, scopes=INVITE_SCOPES)

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
                        _describe(message.channel), type(exc).__name__)
            log.debug("the unreadable message", exc_info=True)
            return
        if not channel_allowed(message.channel, self.settings.allowed_channels,
                               is_direct=incoming.is_direct):
            return
        if incoming.addressed and not self._can_send(message.channel):
            log.warning("mentioned in %s but missing the permission to send messages there; "
                        "not answering", _describe(message.channel))
            return
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
            if index == 0:
                return await channel.send(text, reference=reference, allowed_mentions=mentions)
            return await channel.send(text, allowed_mentions=mentions)

        live = LiveReply(post, allowed_mentions=mentions, throttle=EditThrottle(self.edit_interval),
                         where=_describe(channel),
                         on_first_post=typing.cancel if typing is not None else None)
        try:
            reply = await self.core.handle(incoming, on_progress=live.progress,
                                           fetch_transcript=self._fetcher(channel),
                                           on_queued=_queue_status(live))
        except asyncio.CancelledError:  # stop() ran out of patience: say so in the channel
            if incoming.addressed or live.messages:
                await _bounded(live.interrupt(SHUTDOWN_MARK, RESTARTING))
            raise
        except Exception:  # the core should not raise; if it does, the asker still hears back
            log.exception("error while answering in %s", _describe(channel))
            reply = Reply(incoming.key, APOLOGY) if incoming.addressed else None
        finally:
            if typing is not None:
                typing.cancel()
                await asyncio.wait({typing})
        if reply is not None:
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
            log.debug("typing indicator failed in %s: %s", _describe(channel), exc)

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

    def _fetcher(self, channel: object) -> TranscriptFetcher | None:
        """Reads the last messages of `channel` from Discord, for /summarize."""
        if not isinstance(channel, discord.abc.Messageable):
            return None
        messageable = channel
        bot_id = self.client.user.id if self.client.user else 0

        async def fetch(count: int) -> list[Turn]:
            try:
                messages = [m async for m in messageable.history(limit=count + HISTORY_SLACK)]
            except discord.Forbidden:
                raise UserError("I can't read the history here: I need the Read Message "
                                "History permission in this channel.") from None
            except discord.HTTPException as exc:
                log.warning("reading history in %s failed: %s", _describe(channel), exc)
                raise UserError("Discord would not give me this channel's history right now; "
                                "please try again.") from None
            turns = [t for m in reversed(messages) if (t := message_to_turn(m, bot_id))]
            return turns[-count:]

        return fetch

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
                         where=_describe(channel))
        await live.finish(reply.text)

    # ------------------------------------------------------------------ slash commands

    def _register_commands(self, tree: app_commands.CommandTree[_Client]) -> None:
        def describe(name: str) -> str:
            text = COMMANDS[name].help
            return (text[:1].upper() + text[1:])[:100]

        default = self.settings.summary_default_messages

        @tree.command(name="ask", description=describe("ask"))
        @app_commands.describe(prompt="Your question or request")
        async def ask(interaction: Interaction, prompt: str) -> None:
            await self._track(self.run_command(interaction, "ask", prompt))

        @tree.command(name="summarize", description=describe("summarize"))
        @app_commands.describe(
            messages=f"How many recent messages to read (1-{MAX_SUMMARY_MESSAGES}, "
                     f"default {default})")
        async def summarize(interaction: Interaction,
                            messages: SummaryCount | None = None) -> None:
            args = "" if messages is None else str(messages)
            await self._track(self.run_command(interaction, "summarize", args))

        @tree.command(name="reset", description=describe("reset"))
        async def reset(interaction: Interaction) -> None:
            await self._track(self.run_command(interaction, "reset"))

        @tree.command(name="help", description=describe("help"))
        async def help_(interaction: Interaction) -> None:
            await self._track(self.run_command(interaction, "help"))

        @tree.command(name="status", description=describe("status"))
        async def status(interaction: Interaction) -> None:
            await self._track(self.run_command(interaction, "status"))

        persona_choices = [app_commands.Choice(name=name, value=name)
                           for name in list(self.core.personas)[:25]]

        @tree.command(name="persona", description=describe("persona"))
        @app_commands.describe(name="The persona to use here (leave empty to list them)")
        @app_commands.choices(name=persona_choices)
        async def persona(interaction: Interaction,
                          name: app_commands.Choice[str] | None = None) -> None:
            args = "" if name is None else name.value
            await self._track(self.run_command(interaction, "persona", args))

        @tree.command(name="settings", description=describe("settings"))
        @app_commands.describe(setting="What to change (leave empty to show the settings)",
                               value="on/off, or the system prompt text (or 'clear')")
        @app_commands.choices(setting=[app_commands.Choice(name=n, value=n)
                                       for n in ("threads", "enabled", "prompt")])
        async def settings(interaction: Interaction,
                           setting: app_commands.Choice[str] | None = None,
                           value: str = "") -> None:
            args = "" if setting is None else f"{setting.value} {value}".strip()
            await self._track(self.run_command(interaction, "settings", args))

        @tree.command(name="forget", description=describe("forget"))
        async def forget(interaction: Interaction) -> None:
            await self._track(self.run_command(interaction, "forget"))

        @tree.command(name="reindex", description=describe("reindex"))
        async def reindex(interaction: Interaction) -> None:
            await self._track(self.run_command(interaction, "reindex"))

    async def sync_commands(self) -> None:
        """Register the slash commands: in DISCORD_GUILD_ID at once, else globally (slower)."""
        tree = self.client.tree
        guild_id = self.settings.discord_guild_id
        try:
            if guild_id:
                guild = discord.Object(id=int(guild_id))
                tree.copy_global_to(guild=guild)
                synced = await tree.sync(guild=guild)
                log.info("registered %d slash commands in server %s", len(synced), guild_id)
            else:
                synced = await tree.sync()
                log.info("registered %d slash commands globally (Discord may take a while "
                         "to show them; set DISCORD_GUILD_ID for instant updates)", len(synced))
        except discord.Forbidden as exc:
            log.warning("could not register slash commands (%s); invite the bot with the "
                        "applications.commands scope: %s", exc.text, self.invite_url())
        except discord.HTTPException as exc:
            log.warning("could not register slash commands: %s", exc)

    async def run_command(self, interaction: Interaction, command: str, args: str = "") -> None:
        """Defer at once (Discord's 3-second deadline), run the command, follow up."""
        channel = interaction.channel
        is_direct = interaction.guild_id is None
        if self._stopping:
            await self._refuse(interaction, RESTARTING)
            return
        if channel is None or not channel_allowed(channel, self.settings.allowed_channels,
                                                  is_direct=is_direct):
            await self._refuse(interaction, NOT_HERE)
            return
        private = command in PRIVATE_COMMANDS
        try:
            await interaction.response.defer(thinking=True, ephemeral=private)
        except discord.HTTPException as exc:
            log.warning("could not acknowledge /%s in time (%s)", command, exc)
            return
        incoming = interaction_to_incoming(interaction, channel, command, args)
        mentions = safe_mentions(interaction.user.id)

        async def post(index: int, text: str) -> discord.Message:
            # The first follow-up after a deferral replaces the "thinking..." message.
            return await interaction.followup.send(text, wait=True, ephemeral=private,
                                                   allowed_mentions=mentions)

        live = LiveReply(post, allowed_mentions=mentions,
                         throttle=EditThrottle(self.edit_interval), where=_describe(channel),
                         prefix=quote_prompt(args) if command == "ask" else "")
        try:
            reply = await self.core.handle(incoming, on_progress=live.progress,
                                           fetch_transcript=self._fetcher(channel),
                                           on_queued=_queue_status(live))
        except asyncio.CancelledError:  # the deferred "thinking..." must not be left behind
            await _bounded(live.interrupt(SHUTDOWN_MARK, RESTARTING))
            raise
        except Exception:
            log.exception("error while running /%s in %s", command, _describe(channel))
            reply = Reply(incoming.key, APOLOGY)
        await live.finish(reply.text if reply is not None else "Done.")

    async def _refuse(self, interaction: Interaction, text: str) -> None:
        """Answer at once, privately, when the command will not run."""
        try:
            await interaction.response.send_message(text, ephemeral=True,
                                                    allowed_mentions=safe_mentions())
        except discord.HTTPException as exc:
            log.warning("could not answer an interaction: %s", exc)


def _queue_status(live: LiveReply) -> Callable[[int], Awaitable[None]]:
    """The core's `on_queued` hook: a waiting request shows its place in the queue."""

    async def queued(ahead: int) -> None:
        await live.status(f"Queued: {ahead} ahead of you…")

    return queued


async def _bounded(work: Awaitable[None], timeout: float = 5.0) -> None:
    """Run a last message edit on the way out of a cancelled task, bounded in time."""
    try:
        await asyncio.wait_for(work, timeout)
    except (TimeoutError, discord.HTTPException) as exc:
        log.warning("could not mark an interrupted answer: %s", type(exc).__name__)


def _describe(channel: object) -> str:
    """A channel for log lines: its name and id, never message content."""
    name = getattr(channel, "name", None)
    ident = getattr(channel, "id", "?")
    return f"#{name} ({ident})" if name else f"channel {ident}"
