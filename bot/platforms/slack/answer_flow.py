"""The flow of one Slack answer: a placeholder at once, edits while the model writes, the
full answer at the end (or a short apology, or a note that the bot is restarting)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable

from slack_sdk.web.async_client import AsyncWebClient

from bot.core.conversation import APOLOGY, ConversationCore
from bot.platforms.slack.delivery import NO_ACCESS_ERRORS, LiveAnswer, SlackDelivery, Target
from bot.platforms.slack.events import command_of
from bot.platforms.slack.reader import SlackReader
from bot.types import IncomingMessage

log = logging.getLogger(__name__)

THINKING = "_Thinking…_"
READING = "_Reading the conversation…_"
STOPPED = "_(stopped: the bot is restarting; please ask again in a moment)_"


class AnswerFlow:
    """Shows one message's answer in Slack, from placeholder to the final text.

    Args:
        edit_interval: minimum seconds between edits of a streaming answer.
    """

    def __init__(self, core: ConversationCore, client: AsyncWebClient, delivery: SlackDelivery,
                 reader: SlackReader, *, edit_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.client = client
        self.delivery = delivery
        self.reader = reader
        self.edit_interval = edit_interval
        self._clock = clock

    async def answer(self, msg: IncomingMessage, target: Target, *, eager: bool = True) -> None:
        """Placeholder now, edits while the model writes, the full answer at the end.

        Args:
            eager: post the placeholder before the core decides; otherwise the first text
                the model writes is posted (for messages the core may only record).
        """
        summary = command_of(msg) == "summarize"
        msg = await self.reader.with_admin(msg)
        if eager and not target.no_access:
            status = READING if summary else THINKING
            posted = await self.delivery.post(target, status, kind="status")
            if posted.ok:
                target.placeholder = str(posted.data.get("ts"))
            elif posted.error in NO_ACCESS_ERRORS and target.respond is not None:
                target.no_access = True
        live = LiveAnswer(self.delivery, target, interval=self.edit_interval, clock=self._clock,
                          started=eager)

        exclude = {msg.message_id, *([target.placeholder] if target.placeholder else [])}
        try:
            reply = await self.core.handle(
                msg, on_progress=live.progress,
                fetch_transcript=self.reader.fetcher(msg.key, exclude), on_queued=live.queued)
            if reply is None:  # recorded as context (or the channel is switched off)
                if target.placeholder is not None:
                    await self.delivery.api("chat.delete", functools.partial(
                        self.client.chat_delete, channel=target.channel,
                        ts=target.placeholder), retries=0)
                return
            text = reply.text
        except asyncio.CancelledError:  # shutting down: don't leave "Thinking…" behind
            if target.placeholder is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.delivery.deliver(target, STOPPED, kind="answer"), 2.0)
            raise
        except Exception:  # the core should not raise; if it does, the user still hears back
            log.exception("error while answering in %s", msg.key)
            if not (msg.addressed or live.started):
                return
            text = APOLOGY
        await self.delivery.deliver(target, text, kind="summary" if summary else "answer")
