"""Discord in through buttons: a press on an answer's control, acknowledged at once and
carried out by the core (`bot.core.controls`).

Every press is deferred first (an update of the message, within Discord's 3 seconds); what
the core says back is a private note to the presser (a refusal, an explanation, a vote's
receipt), or the answer's new text, which replaces the message through the interaction, so
it works where the bot may not post (an app a user installed).
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot.core.controls import GONE
from bot.core.conversation import ConversationCore
from bot.platforms.base import EditThrottle
from bot.platforms.discord.controls_view import controls_of, controls_view
from bot.platforms.discord.live_reply import LiveReply, describe
from bot.platforms.discord.slash_commands import Interaction
from bot.platforms.discord.text import channel_key, safe_mentions
from bot.types import Control, Press, Reply

log = logging.getLogger(__name__)

WORKING = {"regenerate": "_Writing a new answer…_", "continue": None}
"""Shown while the new text has not started (None: the answer so far stays)."""


def quoted_question(content: str) -> tuple[str, str]:
    """An answer's message split into the question quoted above it (a slash command's or a
    message command's, see `text.quote_prompt`) and the answer; the quote stays on top."""
    first, newline, rest = content.partition("\n")
    if first.startswith("> ") and newline:
        return first + newline, rest
    return "", content


class OriginalMessage:
    """The message a button is on, edited through the interaction (its webhook)."""

    def __init__(self, interaction: Interaction) -> None:
        self._interaction = interaction

    async def edit(self, **changes: Any) -> None:
        await self._interaction.edit_original_response(**changes)

    async def delete(self) -> None:
        await self._interaction.delete_original_response()


class PressHandler:
    """Turns button presses into `Press` for the core and shows what comes back."""

    def __init__(self, core: ConversationCore, *, edit_interval: float) -> None:
        self.core = core
        self.edit_interval = edit_interval

    async def on_press(self, interaction: Interaction, control: Control, answer_to: str) -> None:
        try:
            await interaction.response.defer()  # an update of the message; within 3 s
        except discord.HTTPException as exc:
            log.warning("could not acknowledge a %s press in time (%s)", control, exc)
            return
        channel = interaction.channel
        message = interaction.message
        if channel is None or message is None:
            await self._note(interaction, "I can't tell which answer that was.")
            return
        press = Press(channel_key(channel), answer_to, control, str(interaction.user.id),
                      interaction.user.display_name,
                      is_admin=interaction.guild_id is not None
                      and interaction.permissions.manage_messages,
                      is_direct=interaction.context.dm_channel)
        live, before = None, None
        quote, shown = quoted_question(message.content)
        if control in ("regenerate", "continue"):
            live = LiveReply(self._follow_up(interaction), allowed_mentions=safe_mentions(),
                             throttle=EditThrottle(self.edit_interval), where=describe(channel),
                             prefix=quote)
            before = controls_view(controls_of(message.components), answer_to)
            live.adopt(OriginalMessage(interaction), message.content, before)  # type: ignore[arg-type]
            live.view = controls_view(("stop",), answer_to)
            working = WORKING[control]
            await live.progress(working or shown)
        result = await self.core.controls.press(
            press, on_progress=live.progress if live is not None else None)
        if isinstance(result, Reply) and live is not None:
            live.view = controls_view(result.controls, answer_to)
            await live.finish(result.text)
            return
        if live is not None:  # refused or failed: the answer as it was (no buttons if gone)
            live.view = None if result == GONE else before
            await live.finish(shown)
        if isinstance(result, str):
            await self._note(interaction, result)

    @staticmethod
    def _follow_up(interaction: Interaction) -> Any:
        async def post(index: int, text: str) -> discord.Message:
            return await interaction.followup.send(text, wait=True,
                                                   allowed_mentions=safe_mentions())
        return post

    @staticmethod
    async def _note(interaction: Interaction, text: str) -> None:
        """A note only the presser sees."""
        try:
            await interaction.followup.send(text, ephemeral=True,
                                            allowed_mentions=safe_mentions())
        except discord.HTTPException as exc:
            log.warning("could not answer a press: %s", exc)
