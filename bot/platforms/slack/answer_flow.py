"""The flow of one Slack answer: "is thinking..." at once (the assistant status, or a
placeholder message), then the answer streamed (Slack's native streaming in a thread, else
edits of one message), the full answer at the end with its controls under it (or a short
apology, or a note that the bot is restarting). While it is written, the asker can stop it:
a Stop button on the message, or, under a native stream (which takes no buttons until it
ends), on a note only the asker sees."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from slack_sdk.web.async_client import AsyncWebClient

from bot.core.conversation import APOLOGY, ConversationCore
from bot.documents.intake import Intake
from bot.platforms.slack.controls import AnswerControls, Capabilities, control_blocks
from bot.platforms.slack.delivery import NO_ACCESS_ERRORS, LiveAnswer, SlackDelivery, Target
from bot.platforms.slack.events import as_mapping, command_of
from bot.platforms.slack.files import shared_for
from bot.platforms.slack.native_stream import NativeStream
from bot.platforms.slack.reader import SlackReader
from bot.types import IncomingMessage

log = logging.getLogger(__name__)

THINKING = "_Thinking…_"
READING = "_Reading the conversation…_"
STOPPED = "_(stopped: the bot is restarting; please ask again in a moment)_"
WRITING = "Writing my answer… (only you see this)"


class AnswerFlow:
    """Shows one message's answer in Slack, from placeholder to the final text.

    Args:
        edit_interval: minimum seconds between edits of a streaming answer.
        intake: reads the files and links a message shares (None: they are not read).
    """

    def __init__(self, core: ConversationCore, client: AsyncWebClient, delivery: SlackDelivery,
                 reader: SlackReader, *, edit_interval: float,
                 clock: Callable[[], float] = time.monotonic,
                 caps: Capabilities | None = None, intake: Intake | None = None) -> None:
        self.caps = caps or Capabilities()
        self.intake = intake
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
        chat = command_of(msg) in (None, "ask")
        native = None
        if (eager and chat and target.thread_ts and self.caps.streaming
                and not (target.ephemeral or target.no_access)):
            native = NativeStream(self.client, self.delivery, target, self.caps,
                                  recipient_user=msg.author_id, recipient_team=team_of(msg.raw),
                                  interval=self.edit_interval, clock=self._clock)
        thinking = native is not None and await native.thinking()
        stop = AnswerControls(msg.key, msg.message_id, ("stop",), self.caps) if chat else None
        if eager and not target.no_access and not thinking:
            status = READING if summary else THINKING
            posted = await self.delivery.post(target, status, kind="status",
                                              blocks=stop.blocks(status) if stop else None)
            if posted.ok:
                target.placeholder = str(posted.data.get("ts"))
            elif posted.error in NO_ACCESS_ERRORS and target.respond is not None:
                target.no_access = True
        live = LiveAnswer(self.delivery, target, interval=self.edit_interval, clock=self._clock,
                          started=eager and not thinking)
        live.controls = stop
        progress = live.progress if native is None else self._streaming(msg, target, native,
                                                                         live)
        exclude = {msg.message_id, *([target.placeholder] if target.placeholder else [])}
        try:
            if self.intake is not None and chat and (msg.addressed or msg.in_bot_thread):
                msg = dataclasses.replace(msg, shared=await shared_for(msg, self.client,
                                                                       self.intake))
            reply = await self.core.handle(
                msg, on_progress=progress,
                fetch_transcript=self.reader.fetcher(msg.key, exclude), on_queued=live.queued)
            if reply is None:  # recorded as context (or the channel is switched off)
                if target.placeholder is not None:
                    await self.delivery.api("chat.delete", functools.partial(
                        self.client.chat_delete, channel=target.channel,
                        ts=target.placeholder), retries=0)
                return
            text, controls = reply.text, reply.controls
        except asyncio.CancelledError:  # shutting down: don't leave "Thinking…" behind
            if native is not None and native.ts is not None:
                target.placeholder = native.ts
            if target.placeholder is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.delivery.deliver(target, STOPPED, kind="answer"), 2.0)
            raise
        except Exception:  # the core should not raise; if it does, the user still hears back
            log.exception("error while answering in %s", msg.key)
            if not (msg.addressed or live.started):
                return
            text, controls = APOLOGY, ()
        if native is not None:
            if await native.finish(text, controls, msg.key, msg.message_id):
                return
            if native.ts is not None:
                target.placeholder = native.ts  # expired or refused: edit what was streamed
            elif thinking:
                await native.clear_status()
        await self.delivery.deliver(
            target, text, kind="summary" if summary else "answer",
            controls=AnswerControls(msg.key, msg.message_id, controls, self.caps)
            if chat else None)

    def _streaming(self, msg: IncomingMessage, target: Target, native: NativeStream,
                   live: LiveAnswer) -> Callable[[str], Awaitable[None]]:
        """The core's `on_progress` for a native stream, falling back to `live` edits."""
        placeholder = target.placeholder

        async def progress(text: str) -> None:
            if not native.broken:
                started = native.ts is not None
                await native.progress(text)
                if native.ts is not None and not started:
                    await self._stream_started(msg, target, placeholder)
                if not native.broken:
                    return
                if native.ts is not None:
                    target.placeholder = native.ts  # the stream expired: edit its message
                    live.started = True
            await live.progress(text)  # (refused at once: `live` posts the first text)

        return progress

    async def _stream_started(self, msg: IncomingMessage, target: Target,
                              placeholder: str | None) -> None:
        """The answer streams in its own message: drop the placeholder, and give the asker
        (alone) a Stop button, since a stream shows none until it ends."""
        if placeholder is not None:
            await self.delivery.api("chat.delete", functools.partial(
                self.client.chat_delete, channel=target.channel, ts=placeholder), retries=0)
            target.placeholder = None
        await self.delivery.api("chat.postEphemeral", functools.partial(
            self.client.chat_postEphemeral, channel=target.channel, user=msg.author_id,
            thread_ts=target.thread_ts, text=WRITING,
            blocks=control_blocks(("stop",), msg.key, msg.message_id)), retries=0)


def team_of(raw: object) -> str | None:
    """The workspace of an event, command or shortcut payload (for a stream's recipient)."""
    body = as_mapping(raw)
    team = body.get("team") or body.get("team_id") or body.get("user_team")
    if isinstance(team, Mapping):
        team = team.get("id")
    return str(team) if team else None
