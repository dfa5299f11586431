"""The discord.py client: gateway events go to the adapter, unreadable ones are skipped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import discord
from discord import app_commands

from bot.platforms.discord.text import safe_mentions

log = logging.getLogger(__name__)


class GatewayEvents(Protocol):
    """What the client hands events to (the adapter)."""

    async def sync_commands(self) -> None: ...

    def on_ready(self) -> None: ...

    async def on_message(self, message: discord.Message) -> None: ...

    def message_deleted(self, message_id: int) -> None: ...


class _Wiring:
    """What both clients do: hand events to the adapter, skip unreadable ones."""

    adapter: GatewayEvents
    tree: app_commands.CommandTree[Any]

    def _wire(self, client: discord.Client, adapter: GatewayEvents) -> None:
        self.adapter = adapter
        # Installable by a server and by a user (then usable in any server, group DM or
        # DM the user is in, where the bot itself may not be a member).
        self.tree = app_commands.CommandTree(
            client, allowed_installs=app_commands.AppInstallationType(guild=True, user=True),
            allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=True,
                                                            private_channel=True))
        parsers = client._connection.parsers  # the same dict the gateway reads events through
        for event, parse in list(parsers.items()):
            parsers[event] = tolerant(event, parse)

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


def _intents() -> discord.Intents:
    # A text-only bot: discord.py's "voice will NOT be supported" warnings are just noise.
    for flag in ("warn_nacl", "warn_dave"):
        setattr(discord.VoiceClient, flag, False)
    intents = discord.Intents.default()
    intents.message_content = True
    return intents


class GatewayClient(_Wiring, discord.Client):
    """discord.Client wired to the adapter: events go to it, the command tree lives here."""

    def __init__(self, adapter: GatewayEvents) -> None:
        super().__init__(intents=_intents(), allowed_mentions=safe_mentions())
        self._wire(self, adapter)


class ShardedGatewayClient(_Wiring, discord.AutoShardedClient):
    """The same, running the shards `shard_ids` of `shard_count` in this process.

    Discord sends a guild's events to shard ``(guild_id >> 22) % shard_count`` and every DM
    to shard 0; discord.py routes each shard's events to the same handlers.
    """

    def __init__(self, adapter: GatewayEvents, *, shard_count: int,
                 shard_ids: Sequence[int]) -> None:
        super().__init__(intents=_intents(), allowed_mentions=safe_mentions(),
                         shard_count=shard_count, shard_ids=list(shard_ids))
        self._wire(self, adapter)


def make_client(adapter: GatewayEvents, *, shard_count: int | None,
                shard_ids: Sequence[int] | None) -> GatewayClient | ShardedGatewayClient:
    """A sharded client when DISCORD_SHARD_COUNT is set, else the plain one (as before)."""
    if shard_count is None:
        return GatewayClient(adapter)
    return ShardedGatewayClient(adapter, shard_count=shard_count,
                                shard_ids=shard_ids if shard_ids is not None
                                else range(shard_count))


def tolerant(event: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
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
