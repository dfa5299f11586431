"""A Slack message's files and links as the core's `Shared` value.

Files are downloaded from their ``url_private_download`` with the bot token (the app needs
the ``files:read`` scope); the token is only ever sent to Slack's own hosts (or to the API
host the client was given, a fake Slack in tests). Links in the text go through the guarded
fetcher. A mention in a thread that shares nothing itself reads the thread's first message's
files and links ("@bot summarise this" under a PDF someone posted).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from bot.documents.intake import DownloadError, Intake, SharedFile, TooLarge, find_links
from bot.platforms.slack.format import slack_to_text
from bot.types import IncomingMessage, Shared

log = logging.getLogger(__name__)


class SlackFileError(DownloadError):
    """Slack would not hand over a file."""


def _token_host_ok(url: str, client: AsyncWebClient) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    api_host = (urlsplit(client.base_url).hostname or "").lower()
    return host == "slack.com" or host.endswith(".slack.com") or host == api_host


def files_of(event: Mapping[str, Any], client: AsyncWebClient) -> list[SharedFile]:
    """The files of a message event, each with a download authorised by the bot token."""
    found: list[SharedFile] = []
    for item in event.get("files") or []:
        if not isinstance(item, Mapping):
            continue
        name = str(item.get("name") or item.get("title") or item.get("id") or "file")
        url = item.get("url_private_download") or item.get("url_private")
        size = item.get("size")
        found.append(SharedFile(name, size if isinstance(size, int) else None,
                                _downloader(str(url or ""), name, str(item.get("mimetype")
                                                                      or ""), client)))
    return found


def _downloader(url: str, name: str, mimetype: str, client: AsyncWebClient) -> Any:
    async def download(max_bytes: int) -> bytes:
        if not url or not _token_host_ok(url, client):
            raise SlackFileError("Slack gave no download link for it")
        headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(url, headers=headers) as response:
            if response.status != 200:
                raise SlackFileError(f"Slack answered {response.status}")
            if response.content_type == "text/html" and "html" not in mimetype:
                # Slack's sign-in page: the token lacks files:read, or is not sent
                raise SlackFileError("Slack sent its sign-in page instead (the app needs the "
                                     "files:read scope)")
            data = b""
            async for chunk in response.content.iter_chunked(65536):
                data += chunk
                if len(data) > max_bytes:
                    raise TooLarge(name)
            return data

    return download


async def _thread_root(client: AsyncWebClient, channel: str, thread: str) -> Mapping[str, Any]:
    try:
        answer = await client.conversations_replies(channel=channel, ts=thread, limit=1)
    except Exception as exc:  # no access, rate limited: the mention is answered without it
        log.info("could not read the thread root %s in %s: %s", thread, channel, exc)
        return {}
    messages = answer.get("messages") or []
    return messages[0] if messages and isinstance(messages[0], Mapping) else {}


async def shared_from_message(message: Mapping[str, Any], client: AsyncWebClient,
                              intake: Intake) -> Shared:
    """What one Slack message (an event, or a shortcut's ``message``) shares: its files and
    the links in its text. The hook for message shortcuts, too."""
    return await intake.message(files_of(message, client),
                                slack_to_text(str(message.get("text") or ""), {}))


async def shared_for(msg: IncomingMessage, client: AsyncWebClient, intake: Intake) -> Shared:
    """What `msg` shares (its event is `msg.raw`: files, and links in its text or the
    message's), or its thread root's when it has nothing."""
    event = msg.raw if isinstance(msg.raw, Mapping) else {}
    files = files_of(event, client)
    text = msg.text or slack_to_text(str(event.get("text") or ""), {})
    if files or find_links(text) or not msg.key.thread_id or not msg.addressed:
        return await intake.message(files, text)
    root = await _thread_root(client, msg.key.channel_id, msg.key.thread_id)
    return await shared_from_message(root, client, intake)
