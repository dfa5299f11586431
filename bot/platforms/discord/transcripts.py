"""Reading a channel's messages back from Discord, for summaries (/summarize, a mention that
says "summarize", the "Summarize from here" message command)."""

from __future__ import annotations

import logging

import discord

from bot.core.commands import TranscriptFetcher
from bot.errors import UserError
from bot.platforms.discord.live_reply import describe
from bot.platforms.discord.text import message_to_turn
from bot.types import Turn

log = logging.getLogger(__name__)

HISTORY_SLACK = 5
"""Extra messages read, for placeholders and notices that get skipped."""
NOT_A_MEMBER = ("I can't read this channel's messages: I'm not a member of this server (I "
                "was added to your account, not to the server). Ask about one message with "
                "right-click → Apps → Ask about this, or invite me to the server.")


def history_fetcher(channel: object, bot_id: int, *, after: discord.Message | None = None,
                    member: bool = True) -> TranscriptFetcher | None:
    """Reads the last messages of `channel` (or those from `after` on, `after` included).

    Args:
        member: whether the bot is in the channel's server; where it is not (an app a user
            installed), Discord refuses the history and the user is told why.
    """
    if not isinstance(channel, discord.abc.Messageable):
        return None
    messageable = channel

    async def fetch(count: int) -> list[Turn]:
        try:
            if after is not None:
                newer = [m async for m in messageable.history(
                    limit=count + HISTORY_SLACK, after=after, oldest_first=True)]
                messages = [*reversed(newer), after]
            else:
                messages = [m async for m in messageable.history(limit=count + HISTORY_SLACK)]
        except discord.Forbidden:
            if not member:
                raise UserError(NOT_A_MEMBER) from None
            raise UserError("I can't read the history here: I need the Read Message "
                            "History permission in this channel.") from None
        except discord.HTTPException as exc:
            log.warning("reading history in %s failed: %s", describe(channel), exc)
            raise UserError("Discord would not give me this channel's history right now; "
                            "please try again.") from None
        turns = [t for m in reversed(messages) if (t := message_to_turn(m, bot_id))]
        return turns[-count:] if after is None else turns[:count]

    return fetch
