"""Discord in through interactions: slash commands and message commands, each deferred at
once ("thinking...", within Discord's 3 seconds) and answered with follow-ups.

Where the app was installed by a user rather than the server (`integration_types`), the bot
is no member: it cannot read the channel, and it answers only through the interaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

import discord

from bot.config import Settings
from bot.core.answering import SHUTDOWN_MARK
from bot.core.commands import MAX_SUMMARY_MESSAGES
from bot.core.conversation import APOLOGY, ConversationCore
from bot.core.message_commands import EXPLAIN, NOTHING_TO_SUMMARISE, about_message
from bot.documents.intake import Intake, find_links
from bot.errors import UserError
from bot.platforms.base import EditThrottle
from bot.platforms.discord.attachments import shared_from_message
from bot.platforms.discord.controls_view import controls_view
from bot.platforms.discord.live_reply import LiveReply, bounded, describe, queue_status
from bot.platforms.discord.slash_commands import Interaction
from bot.platforms.discord.text import (
    channel_allowed,
    interaction_to_incoming,
    message_text,
    quote_prompt,
    safe_mentions,
)
from bot.platforms.discord.transcripts import history_fetcher
from bot.types import IncomingMessage, Reply

log = logging.getLogger(__name__)

PRIVATE_COMMANDS = frozenset({"help", "status"})
"""Answered only to the person who asked (ephemeral); the others are shown to the channel."""
NOT_HERE = "I'm not enabled in this channel."
RESTARTING = "I'm restarting right now; please try again in a moment."


class RunnerHost(Protocol):
    """What running an interaction needs of the adapter."""

    core: ConversationCore
    settings: Settings
    edit_interval: float
    intake: Intake | None

    @property
    def client(self) -> discord.Client: ...

    @property
    def stopping(self) -> bool: ...

    async def track(self, work: Coroutine[Any, Any, None]) -> None: ...


def is_member(interaction: Interaction) -> bool:
    """Whether the bot is in the interaction's server (a DM counts): a user-installed app
    used in someone's server is not, and cannot read or post there on its own."""
    return interaction.guild_id is None or interaction.is_guild_integration()


class CommandRunner:
    """Runs the core's commands for slash commands and message commands."""

    def __init__(self, host: RunnerHost) -> None:
        self.host = host

    async def run_command(self, interaction: Interaction, command: str, args: str = "", *,
                          shown: str | None = None,
                          fetch_after: discord.Message | None = None,
                          about: discord.Message | None = None) -> None:
        """Defer at once (Discord's 3-second deadline), run the command, follow up.

        Args:
            shown: the question as quoted above an answer (default: `args`).
            fetch_after: summaries read the channel from this message on.
            about: a message whose files and links the question shares (read after the
                deferral: downloading them may take longer than Discord waits).
        """
        channel = interaction.channel
        is_direct = interaction.guild_id is None
        if self.host.stopping:
            await self.refuse(interaction, RESTARTING)
            return
        if channel is None or not channel_allowed(channel, self.host.settings.allowed_channels,
                                                  is_direct=is_direct):
            await self.refuse(interaction, NOT_HERE)
            return
        incoming = interaction_to_incoming(interaction, channel, command, args)
        async with self.host.core.claimed(incoming.key, incoming.message_id,
                                          f"discord:interaction:{interaction.id}") as mine:
            if mine:  # else another instance on this shard answers it
                await self._run_claimed(interaction, incoming, command,
                                        args if shown is None else shown, fetch_after, about)

    async def _run_claimed(self, interaction: Interaction, incoming: IncomingMessage,
                           command: str, shown: str,
                           fetch_after: discord.Message | None,
                           about: discord.Message | None) -> None:
        channel = interaction.channel
        private = command in PRIVATE_COMMANDS
        try:
            await interaction.response.defer(thinking=True, ephemeral=private)
        except discord.HTTPException as exc:
            log.warning("could not acknowledge /%s in time (%s)", command, exc)
            return
        mentions = safe_mentions(interaction.user.id)

        async def post(index: int, text: str) -> discord.Message:
            # The first follow-up after a deferral replaces the "thinking..." message.
            if index == 0 and live.view is not None:
                return await interaction.followup.send(text, wait=True, ephemeral=private,
                                                       allowed_mentions=mentions,
                                                       view=live.view)
            return await interaction.followup.send(text, wait=True, ephemeral=private,
                                                   allowed_mentions=mentions)

        live = LiveReply(post, allowed_mentions=mentions,
                         throttle=EditThrottle(self.host.edit_interval), where=describe(channel),
                         prefix=quote_prompt(shown) if command == "ask" else "")
        if command == "ask":
            live.view = controls_view(("stop",), incoming.message_id)
        bot_id = self.host.client.user.id if self.host.client.user else 0
        try:
            if about is not None and self.host.intake is not None:
                incoming = dataclasses.replace(
                    incoming, shared=await shared_from_message(about, self.host.intake))
            reply = await self.host.core.handle(
                incoming, on_progress=live.progress, on_queued=queue_status(live),
                fetch_transcript=history_fetcher(channel, bot_id, after=fetch_after,
                                                 member=is_member(interaction)))
        except asyncio.CancelledError:  # the deferred "thinking..." must not be left behind
            live.view = None
            await bounded(live.interrupt(SHUTDOWN_MARK, RESTARTING))
            raise
        except Exception:
            log.exception("error while running /%s in %s", command, describe(channel))
            reply = Reply(incoming.key, APOLOGY)
        live.view = controls_view(reply.controls, incoming.message_id) if reply else None
        await live.finish(reply.text if reply is not None else "Done.")

    async def refuse(self, interaction: Interaction, text: str) -> None:
        """Answer at once, privately, when the command will not run."""
        try:
            await interaction.response.send_message(text, ephemeral=True,
                                                    allowed_mentions=safe_mentions())
        except discord.HTTPException as exc:
            log.warning("could not answer an interaction: %s", exc)

    # ------------------------------------------------------------------ message commands

    async def summarize_from_here(self, interaction: Interaction,
                                  message: discord.Message) -> None:
        """The channel or thread from `message` to now, summarised."""
        await self.host.track(self.run_command(
            interaction, "summarize", str(MAX_SUMMARY_MESSAGES), fetch_after=message))

    async def explain(self, interaction: Interaction, message: discord.Message) -> None:
        await self.ask_about(interaction, message, EXPLAIN)

    async def summarize_this(self, interaction: Interaction, message: discord.Message) -> None:
        """The files and links of `message`, summarised (a request with no question)."""
        if self.host.intake is None or not (message.attachments
                                            or find_links(message.content)):
            await self.refuse(interaction, NOTHING_TO_SUMMARISE)
            return
        await self.host.track(self.run_command(interaction, "ask", "", shown="Summarize this",
                                               about=message))

    async def ask_about(self, interaction: Interaction, message: discord.Message,
                        question: str) -> None:
        """Answer `question` about `message`: its text quoted, its files and links shared
        with the question (read by the documents part, when the adapter has an intake)."""
        bot_id = self.host.client.user.id if self.host.client.user else 0
        files = ([a.filename for a in message.attachments] if self.host.intake is not None
                 else [])
        try:
            text = about_message(message.author.display_name, message_text(message, bot_id),
                                 question, limit=self.host.settings.max_input_chars,
                                 attached=files)
        except UserError as exc:
            await self.refuse(interaction, str(exc))
            return
        await self.host.track(self.run_command(interaction, "ask", text, shown=question,
                                               about=message))
