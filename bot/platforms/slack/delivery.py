"""Slack out: posting, editing and splitting answers through the Web API, with retries.

Every call goes through `SlackDelivery.api`, which waits out rate limits and turns Slack's
errors into a `Result` instead of an exception, so a failed edit never loses an answer: it
is posted anew, split again, or sent through the command's response URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError
from slack_bolt.async_app import AsyncRespond
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.platforms.base import EditThrottle, split_text
from bot.platforms.slack.controls import AnswerControls
from bot.platforms.slack.events import message_metadata
from bot.platforms.slack.format import PART_CHARS, escape, markdown_to_mrkdwn, neutralize_broadcasts

log = logging.getLogger(__name__)

MIN_PART_CHARS = 500
MAX_RETRY_AFTER = 30.0
NO_ACCESS_ERRORS = frozenset({"not_in_channel", "channel_not_found", "is_archived",
                              "missing_scope", "restricted_action", "access_denied",
                              "team_access_not_granted"})

QUEUED = "_Queued: {ahead} ahead of you…_"


@dataclass(frozen=True, slots=True)
class Result:
    """A Web API call's outcome: the response data, or the Slack error code."""

    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    retry_after: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class Target:
    """Where one answer goes, and how far its delivery got."""

    channel: str
    thread_ts: str | None
    respond: AsyncRespond | None = None
    ephemeral: bool = False
    placeholder: str | None = None
    no_access: bool = False


class SlackDelivery:
    """Sends through one Web API client; remembers the threads it posted in.

    Args:
        client: the Web API client.
    """

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self.bot_threads: set[tuple[str, str]] = set()
        """(channel, thread_ts) the bot posted in: replies there are answered unmentioned."""

    async def deliver(self, target: Target, text: str, *, kind: str,
                      controls: AnswerControls | None = None) -> None:
        """Put `text` in the placeholder (or a new message), continuing in more messages.

        Each part is converted to mrkdwn on its own. A part Slack finds too long
        (``msg_too_long``) is split again; a placeholder that cannot be edited is replaced
        by a new message; without access to the channel, the response URL is used. The first
        message carries the answer's `controls` as blocks under its text.
        """
        queue = [part for part in split_text(text, PART_CHARS)
                 if markdown_to_mrkdwn(part).strip()] or ["(no answer)"]
        fallback: list[str] = []
        first = True
        while queue:
            part = queue.pop(0)
            mrkdwn = markdown_to_mrkdwn(part)
            blocks = controls.blocks(mrkdwn) if controls is not None and first else None
            if target.no_access:
                fallback.append(mrkdwn)
                continue
            if target.placeholder is not None:
                result = await self.api("chat.update", functools.partial(
                    self.client.chat_update, channel=target.channel, ts=target.placeholder,
                    text=mrkdwn, blocks=None if controls is None else blocks or [],
                    metadata=message_metadata(kind)))
                if result.ok:
                    target.placeholder, first = None, False
                    continue
                if controls is not None and blocks and controls.refused(result.error):
                    queue.insert(0, part)
                    continue
                if result.error == "msg_too_long" and len(part) > MIN_PART_CHARS:
                    queue[:0] = split_text(part, max(MIN_PART_CHARS, len(part) // 2))
                    continue
                log.info("Slack: posting the answer anew since the placeholder could not be "
                         "edited (%s)", result.error)
                await self.api("chat.delete", functools.partial(
                    self.client.chat_delete, channel=target.channel, ts=target.placeholder),
                    retries=0)
                target.placeholder = None
            result = await self.post(target, mrkdwn, kind=kind, blocks=blocks)
            if blocks and controls is not None and controls.refused(result.error):
                queue.insert(0, part)
                continue
            first = first and not result.ok
            if result.error == "msg_too_long" and len(part) > MIN_PART_CHARS:
                queue[:0] = split_text(part, max(MIN_PART_CHARS, len(part) // 2))
            elif result.error in NO_ACCESS_ERRORS and target.respond is not None:
                target.no_access = True
                fallback.append(mrkdwn)
            elif not result.ok:
                log.warning("Slack: %d characters of the answer in %s were not delivered (%s)",
                            len(part), target.channel, result.error)
        if fallback:
            await self.respond(target, fallback)

    async def post(self, target: Target, mrkdwn: str, *, kind: str,
                   blocks: list[dict[str, Any]] | None = None) -> Result:
        result = await self.api("chat.postMessage", functools.partial(
            self.client.chat_postMessage, channel=target.channel, thread_ts=target.thread_ts,
            text=mrkdwn, blocks=blocks, metadata=message_metadata(kind), unfurl_links=False,
            unfurl_media=False))
        if result.ok and target.thread_ts:
            if len(self.bot_threads) > 20_000:
                self.bot_threads.clear()
            self.bot_threads.add((target.channel, target.thread_ts))
        return result

    async def respond(self, target: Target, parts: list[str]) -> None:
        """Answer through the command's response URL (works where the bot is not a member)."""
        if target.respond is None:
            log.warning("Slack: could not deliver an answer in %s", target.channel)
            return
        response_type = "ephemeral" if target.ephemeral else "in_channel"
        for part in parts:
            try:
                response = await target.respond(text=part, response_type=response_type)
            except (ClientError, TimeoutError, SlackClientError, ValueError) as exc:
                log.warning("Slack: response_url failed in %s: %s", target.channel,
                            type(exc).__name__)
                return
            if response.status_code != 200:
                log.warning("Slack: response_url answered %s in %s", response.status_code,
                            target.channel)
                return

    async def api(self, method: str, call: Callable[[], Awaitable[AsyncSlackResponse]], *,
                   retries: int = 2) -> Result:
        """Call the Web API; log and return Slack errors, waiting out rate limits."""
        attempt = 0
        while True:
            try:
                response = await call()
                return Result(dict(response.data) if isinstance(response.data, dict) else {})
            except SlackApiError as exc:
                error = str(exc.response.get("error") or f"http_{exc.response.status_code}")
                if error == "ratelimited" and attempt < retries:
                    delay = retry_after(exc)
                    log.warning("Slack: %s rate-limited; retrying in %.0f s", method, delay)
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                log.warning("Slack: %s failed: %s", method, error)
                return Result(error=error, retry_after=retry_after(exc))
            except (SlackClientError, ClientError, TimeoutError) as exc:
                log.warning("Slack: %s failed: %s", method, type(exc).__name__)
                return Result(error="connection_error")



class LiveAnswer:
    """One streaming answer's placeholder, edited as the model writes.

    Edits are throttled to one per `interval` and pause while Slack rate-limits them. An
    answer that was not `started` (an unaddressed message the core may only record) posts
    its placeholder with the first text instead.
    """

    def __init__(self, delivery: SlackDelivery, target: Target, *, interval: float,
                 clock: Callable[[], float] = time.monotonic, started: bool = True) -> None:
        self.started = started
        self._delivery = delivery
        self._target = target
        self._throttle = EditThrottle(interval, clock)
        self._clock = clock
        self._paused_until = 0.0
        self.controls: AnswerControls | None = None
        """The controls shown under the text while it is written (Stop)."""

    async def progress(self, so_far: str) -> None:
        """The core's `on_progress`: show the text so far."""
        target = self._target
        if not self.started:  # the core is answering an unaddressed message after all
            self.started = True
            self._throttle.ready()
            shown = preview(so_far)
            blocks = self.controls.blocks(shown) if self.controls is not None else None
            posted = await self._delivery.post(target, shown, kind="status", blocks=blocks)
            target.placeholder = str(posted.data.get("ts")) if posted.ok else None
            return
        if target.placeholder is None or self._clock() < self._paused_until:
            return
        if not self._throttle.ready():
            return
        result = await self._edit(target.placeholder, preview(so_far))
        if result.error == "ratelimited":
            self._paused_until = self._clock() + max(result.retry_after, 1.0)

    async def queued(self, ahead: int) -> None:
        """The core's `on_queued`: show the request's place in the queue."""
        if self._target.placeholder is not None:  # the streaming edits replace it
            await self._edit(self._target.placeholder, QUEUED.format(ahead=ahead))

    async def _edit(self, ts: str, mrkdwn: str) -> Result:
        blocks = self.controls.blocks(mrkdwn) if self.controls is not None else None
        return await self._delivery.api("chat.update", functools.partial(
            self._delivery.client.chat_update, channel=self._target.channel, ts=ts,
            text=mrkdwn, blocks=None if self.controls is None else blocks or [],
            metadata=message_metadata("status")), retries=0)


def preview(so_far: str) -> str:
    """The streaming answer's first message, marked as unfinished."""
    parts = split_text(so_far, PART_CHARS) or [""]
    return markdown_to_mrkdwn(parts[0]) + (" …" if len(parts) == 1 else "\n…")


def safe(text: str) -> str:
    """User text echoed by the bot: literal, and unable to notify anyone."""
    return neutralize_broadcasts(escape(text))


def retry_after(exc: SlackApiError) -> float:
    headers = exc.response.headers or {}
    raw = headers.get("Retry-After") or headers.get("retry-after") or "1"
    with contextlib.suppress(ValueError):
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER)
    return 1.0
