"""Threads the bot takes part in: remembered, and read from Slack the first time.

A thread the bot is first mentioned in is backfilled into history, so its earlier messages
are context; replies in a thread it takes part in reach the core unmentioned.
"""

from __future__ import annotations

from bot.config import Settings
from bot.core.conversation import ConversationCore, clean_text
from bot.errors import UserError
from bot.platforms.slack.events import ts_order
from bot.platforms.slack.reader import SlackReader
from bot.types import ChannelKey, Turn


class ThreadContext:
    """Which threads have history, and filling in the ones that do not yet.

    Args:
        core: whose history holds the threads' turns.
        reader: reads a thread from Slack.
        settings: how many messages to keep and how long each may be.
    """

    def __init__(self, core: ConversationCore, reader: SlackReader, settings: Settings) -> None:
        self._core = core
        self._reader = reader
        self._settings = settings
        self._threads: set[ChannelKey] = set()  # threads read from Slack, or with history

    async def backfill(self, key: ChannelKey, *, before: str) -> None:
        """Read a thread the bot is first mentioned in, so its earlier messages are context."""
        if key in self._threads:
            return
        self._remember(key)
        if await self._core.history.recent(key, 1):
            return
        try:
            messages = await self._reader.read(key, self._settings.history_max_messages,
                                               exclude={before}, skip_kinds={"status"})
        except UserError:
            return
        messages = [m for m in messages if ts_order(str(m.get("ts"))) < ts_order(before)]
        limit = self._settings.max_input_chars
        for message, turn in zip(messages, await self._reader.turns(messages), strict=True):
            text = clean_text(turn.text)[:limit]
            if text:
                await self._core.history.add(key, Turn(turn.role, turn.author, text),
                                            message_id=str(message.get("ts")))

    async def known(self, key: ChannelKey) -> bool:
        """Whether the bot takes part in this thread (it has history for it)."""
        if key in self._threads:
            return True
        if await self._core.history.recent(key, 1):
            self._remember(key)
            return True
        return False

    def _remember(self, key: ChannelKey) -> None:
        if len(self._threads) > 20_000:
            self._threads.clear()
        self._threads.add(key)
