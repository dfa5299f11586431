"""Discord's message commands (right-click a message → Apps), declared on the command tree:
**Summarize from here**, **Ask about this** (a modal asks for the question), **Explain** and
**Summarize this** (the message's files and links). Discord allows five message commands per
app; these are four."""

from __future__ import annotations

from typing import Any, Protocol

import discord
from discord import app_commands

from bot.platforms.discord.slash_commands import Interaction

ASK_MODAL_TIMEOUT = 900.0
"""Seconds an open "Ask about this" form waits for its question (then it is forgotten)."""


class MessageCommandTarget(Protocol):
    """Runs the message commands (the adapter's `CommandRunner`)."""

    async def summarize_from_here(self, interaction: Interaction,
                                  message: discord.Message) -> None: ...

    async def explain(self, interaction: Interaction, message: discord.Message) -> None: ...

    async def summarize_this(self, interaction: Interaction,
                             message: discord.Message) -> None: ...

    async def ask_about(self, interaction: Interaction, message: discord.Message,
                        question: str) -> None: ...


class AskModal(discord.ui.Modal, title="Ask about this message"):
    """The form of "Ask about this": one question about the message it was opened on."""

    question: discord.ui.TextInput[AskModal] = discord.ui.TextInput(
        label="Your question", custom_id="question", style=discord.TextStyle.paragraph,
        max_length=1000,
        placeholder="What would you like to know about this message?")

    def __init__(self, target: MessageCommandTarget, message: discord.Message) -> None:
        super().__init__(timeout=ASK_MODAL_TIMEOUT)
        self._target = target
        self._message = message

    async def on_submit(self, interaction: Interaction, /) -> None:
        await self._target.ask_about(interaction, self._message, self.question.value)


def register_message_commands(tree: app_commands.CommandTree[Any],
                              target: MessageCommandTarget) -> None:
    """Declare the message commands on `tree`."""

    async def summarize_from_here(interaction: Interaction, message: discord.Message) -> None:
        await target.summarize_from_here(interaction, message)

    async def ask_about_this(interaction: Interaction, message: discord.Message) -> None:
        # Opening the form is the answer to the interaction: at once, within 3 seconds.
        await interaction.response.send_modal(AskModal(target, message))

    async def explain(interaction: Interaction, message: discord.Message) -> None:
        await target.explain(interaction, message)

    async def summarize_this(interaction: Interaction, message: discord.Message) -> None:
        await target.summarize_this(interaction, message)

    for name, callback in (("Summarize from here", summarize_from_here),
                           ("Ask about this", ask_about_this), ("Explain", explain),
                           ("Summarize this", summarize_this)):
        tree.add_command(app_commands.ContextMenu(name=name, callback=callback))
