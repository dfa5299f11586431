"""A Discord message's attachments and links as the core's `Shared` value.

Attachments are downloaded with discord.py's own client from Discord's CDN (the platform's
URL, not a user's link, so not through the link guard); links in the text go through the
guarded fetcher. A message without either, replying to one that has them, shares the
replied-to message's ("@bot summarise this" as a reply to a PDF).
"""

from __future__ import annotations

import discord

from bot.documents.intake import Intake, SharedFile, TooLarge, find_links
from bot.types import Shared


def files_of(message: discord.Message) -> list[SharedFile]:
    """The message's attachments, each with a download that stops at the byte cap."""

    def download_of(attachment: discord.Attachment) -> SharedFile:
        async def download(max_bytes: int) -> bytes:
            data = await attachment.read()
            if len(data) > max_bytes:
                raise TooLarge(attachment.filename)
            return data

        return SharedFile(attachment.filename, attachment.size, download)

    return [download_of(attachment) for attachment in message.attachments]


def replied_to(message: discord.Message) -> discord.Message | None:
    reference = message.reference
    resolved = reference.resolved if reference is not None else None
    return resolved if isinstance(resolved, discord.Message) else None


async def shared_from_message(message: discord.Message, intake: Intake) -> Shared:
    """What `message` shares, or what the message it replies to shares when it has nothing
    of its own (the hook for message commands, too: pass the target message)."""
    source = message
    if not message.attachments and not find_links(message.content):
        source = replied_to(message) or message
    return await intake.message(files_of(source), source.content)
