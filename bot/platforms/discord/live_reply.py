"""Discord out: one answer's messages, posted on the first text and edited as it grows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import discord

from bot.platforms.base import EditThrottle, split_text
from bot.platforms.discord.controls_view import view_ids
from bot.platforms.discord.text import MESSAGE_LIMIT, neutralize_broadcasts

log = logging.getLogger(__name__)

Post = Callable[[int, str], Awaitable[discord.Message]]
"""Posts part `index` of an answer and returns the message, so it can be edited later; part 0
carries the reply's `view` (its buttons)."""


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
        self.view: discord.ui.View | None = None
        """The buttons of the first message (the answer's controls); `post` sends them with
        part 0, and a change is applied with the next update."""
        self._shown_view: tuple[str, ...] = ()
        self._answer = ""  # the answer text shown so far (not a status line)
        self.failed = False

    def adopt(self, message: discord.Message, text: str, view: discord.ui.View | None) -> None:
        """Take over an answer already posted (its first message, showing `text` and `view`),
        to write a new version into it (Regenerate, Continue)."""
        self.messages[:], self._shown[:] = [message], [text]
        self._shown_view = view_ids(view)

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
                    buttons = view_ids(self.view) if index == 0 else ()
                    if index == 0 and buttons != self._shown_view:
                        await self.messages[0].edit(content=part, view=self.view,
                                                    allowed_mentions=self._mentions)
                        self._shown[0], self._shown_view = part, buttons
                    elif part != self._shown[index]:
                        await self.messages[index].edit(content=part,
                                                        allowed_mentions=self._mentions)
                        self._shown[index] = part
                    continue
                self.messages.append(await self._post(index, part))
                self._shown.append(part)
                if index == 0:
                    self._shown_view = view_ids(self.view)
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


def queue_status(live: LiveReply) -> Callable[[int], Awaitable[None]]:
    """The core's `on_queued` hook: a waiting request shows its place in the queue."""

    async def queued(ahead: int) -> None:
        await live.status(f"Queued: {ahead} ahead of you…")

    return queued


async def bounded(work: Awaitable[None], timeout: float = 5.0) -> None:
    """Run a last message edit on the way out of a cancelled task, bounded in time."""
    try:
        await asyncio.wait_for(work, timeout)
    except (TimeoutError, discord.HTTPException) as exc:
        log.warning("could not mark an interrupted answer: %s", type(exc).__name__)


def describe(channel: object) -> str:
    """A channel for log lines: its name and id, never message content."""
    name = getattr(channel, "name", None)
    ident = getattr(channel, "id", "?")
    return f"#{name} ({ident})" if name else f"channel {ident}"
