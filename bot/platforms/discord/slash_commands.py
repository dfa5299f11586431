"""Discord's slash commands: declared on the command tree, and registered with Discord."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import discord
from discord import app_commands

from bot.core.commands import COMMANDS, MAX_SUMMARY_MESSAGES

log = logging.getLogger(__name__)

Interaction = discord.Interaction[discord.Client]
RunCommand = Callable[[Interaction, str, str], Awaitable[None]]
"""Runs core command `name` with `args` for an interaction (the adapter's `run_command`)."""
SummaryCount = app_commands.Range[int, 1, MAX_SUMMARY_MESSAGES]


def register_commands(tree: app_commands.CommandTree[Any], run: RunCommand, *,
                      summary_default: int, personas: Sequence[str]) -> None:
    """Declare the slash commands on `tree`; each runs the core command of the same name."""
    def describe(name: str) -> str:
        text = COMMANDS[name].help
        return (text[:1].upper() + text[1:])[:100]

    default = summary_default

    @tree.command(name="ask", description=describe("ask"))
    @app_commands.describe(prompt="Your question or request")
    async def ask(interaction: Interaction, prompt: str) -> None:
        await run(interaction, "ask", prompt)

    @tree.command(name="summarize", description=describe("summarize"))
    @app_commands.describe(
        messages=f"How many recent messages to read (1-{MAX_SUMMARY_MESSAGES}, "
                 f"default {default})")
    async def summarize(interaction: Interaction,
                        messages: SummaryCount | None = None) -> None:
        args = "" if messages is None else str(messages)
        await run(interaction, "summarize", args)

    @tree.command(name="reset", description=describe("reset"))
    async def reset(interaction: Interaction) -> None:
        await run(interaction, "reset", "")

    @tree.command(name="help", description=describe("help"))
    async def help_(interaction: Interaction) -> None:
        await run(interaction, "help", "")

    @tree.command(name="status", description=describe("status"))
    async def status(interaction: Interaction) -> None:
        await run(interaction, "status", "")

    persona_choices = [app_commands.Choice(name=name, value=name)
                       for name in list(personas)[:25]]

    @tree.command(name="persona", description=describe("persona"))
    @app_commands.describe(name="The persona to use here (leave empty to list them)")
    @app_commands.choices(name=persona_choices)
    async def persona(interaction: Interaction,
                      name: app_commands.Choice[str] | None = None) -> None:
        args = "" if name is None else name.value
        await run(interaction, "persona", args)

    @tree.command(name="model", description=describe("model"))
    @app_commands.describe(name="The served model to use here, or 'default' (leave empty to "
                                "list them)")
    async def model(interaction: Interaction, name: str = "") -> None:
        await run(interaction, "model", name)

    @tree.command(name="settings", description=describe("settings"))
    @app_commands.describe(setting="What to change (leave empty to show the settings)",
                           value="on/off, or the system prompt text (or 'clear')")
    @app_commands.choices(setting=[app_commands.Choice(name=n, value=n)
                                   for n in ("threads", "enabled", "prompt")])
    async def settings(interaction: Interaction,
                       setting: app_commands.Choice[str] | None = None,
                       value: str = "") -> None:
        args = "" if setting is None else f"{setting.value} {value}".strip()
        await run(interaction, "settings", args)

    @tree.command(name="forget", description=describe("forget"))
    async def forget(interaction: Interaction) -> None:
        await run(interaction, "forget", "")

    @tree.command(name="reindex", description=describe("reindex"))
    async def reindex(interaction: Interaction) -> None:
        await run(interaction, "reindex", "")

async def sync_commands(tree: app_commands.CommandTree[Any], *, guild_id: str | None,
                        invite_url: str) -> None:
    """Register the slash commands: in DISCORD_GUILD_ID at once, else globally (slower)."""
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
                    "applications.commands scope: %s", exc.text, invite_url)
    except discord.HTTPException as exc:
        log.warning("could not register slash commands: %s", exc)
