"""Slack's own streaming for an answer (``chat.startStream`` / ``appendStream`` /
``stopStream``), its "is thinking..." status (``assistant.threads.setStatus``), and the way
back to edits when Slack says no.

An answer in a thread (a mention's thread, an assistant DM thread) first shows the status
while the model thinks, then streams into one message, and ends with its controls under it.
Where the workspace or method refuses (an older plan, a missing scope, a method the app may
not call), the answer is posted and edited with ``chat.update`` as before, and the adapter
remembers not to try again; a stream that expires mid-answer (``message_not_in_streaming_state``)
goes on with ``chat.update`` of the same message.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from slack_sdk.web.async_client import AsyncWebClient

from bot.platforms.base import EditThrottle
from bot.platforms.slack.controls import Capabilities, control_blocks, feedback_rejected
from bot.platforms.slack.delivery import Result, SlackDelivery, Target
from bot.platforms.slack.format import neutralize_broadcasts
from bot.types import ChannelKey, Control

log = logging.getLogger(__name__)

THINKING_STATUS = "is thinking..."
EXPIRED = frozenset({"message_not_in_streaming_state", "streaming_state_conflict",
                     "message_not_found"})
"""The stream's message is no longer streaming: go on with chat.update."""
REFUSED_FOR_GOOD = frozenset({"unknown_method", "missing_scope", "not_allowed_token_type",
                              "method_deprecated", "feature_not_enabled", "not_allowed",
                              "team_not_allowed", "access_denied"})
"""The workspace or app cannot use the method at all: stop trying it."""
APPEND_CHARS = 12_000
"""Slack's limit on one ``markdown_text``."""


def safe_markdown(text: str) -> str:
    """Model text for a Markdown stream: no special mention can notify anyone."""
    return neutralize_broadcasts(text.replace("<!", "<\u2060!").replace("<@", "<\u2060@"))


class NativeStream:
    """One answer streamed natively into a thread.

    Args:
        recipient_user, recipient_team: who asked (Slack wants them for channel streams).
    """

    def __init__(self, client: AsyncWebClient, delivery: SlackDelivery, target: Target,
                 caps: Capabilities, *, recipient_user: str, recipient_team: str | None,
                 interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        assert target.thread_ts is not None
        self.client = client
        self.delivery = delivery
        self.target = target
        self.caps = caps
        self.recipient_user = recipient_user
        self.recipient_team = recipient_team
        self._throttle = EditThrottle(interval, clock)
        self.ts: str | None = None
        """The streamed message, once started."""
        self.sent = ""
        self.broken = False
        """Slack refused or expired the stream: the caller goes on with chat.update."""

    async def thinking(self) -> bool:
        """Show "is thinking..." in the thread; whether Slack took it."""
        return await self._status(THINKING_STATUS)

    async def clear_status(self) -> None:
        await self._status("")

    async def _status(self, status: str) -> bool:
        if not self.caps.status:
            return False
        result = await self.delivery.api("assistant.threads.setStatus", functools.partial(
            self.client.assistant_threads_setStatus, channel_id=self.target.channel,
            thread_ts=self.target.thread_ts or "", status=status), retries=0)
        if result.error in REFUSED_FOR_GOOD:
            self.caps.status = False
            log.info("Slack: no assistant status in this workspace (%s); placeholders instead",
                     result.error)
        return result.ok

    async def progress(self, so_far: str) -> None:
        """The core's `on_progress`: start the stream, then append what is new."""
        if self.broken or not self.caps.streaming:
            return
        if self.ts is None:
            self._throttle.ready()
            await self.clear_status()
            await self._start(so_far)
        elif self._throttle.ready():
            await self._append(so_far)

    async def _start(self, text: str) -> None:
        shown = safe_markdown(text)[:APPEND_CHARS]
        result = await self.delivery.api("chat.startStream", functools.partial(
            self.client.chat_startStream, channel=self.target.channel,
            thread_ts=self.target.thread_ts or "", markdown_text=shown,
            recipient_user_id=self.recipient_user, recipient_team_id=self.recipient_team),
            retries=0)
        if not result.ok:
            self._refused(result)
            return
        self.ts, self.sent = str(result.data.get("ts")), text[:len(shown)]

    async def _append(self, text: str) -> None:
        if not text.startswith(self.sent):  # tidying changed what was shown: edits from here
            self.broken = True
            return
        new = text[len(self.sent):]
        if not new:
            return
        result = await self.delivery.api("chat.appendStream", functools.partial(
            self.client.chat_appendStream, channel=self.target.channel, ts=self.ts or "",
            markdown_text=safe_markdown(new)[:APPEND_CHARS]), retries=0)
        if result.ok:
            self.sent = text
        else:
            self._refused(result)

    async def finish(self, text: str, controls: tuple[Control, ...], key: ChannelKey,
                     answer_to: str) -> bool:
        """End the stream with the rest of `text` and the answer's controls under it;
        False when the caller must deliver `text` with chat.update (into `ts`, if set)."""
        if self.ts is None or self.broken or not text.startswith(self.sent):
            return False
        rest = safe_markdown(text[len(self.sent):])
        if len(rest) > APPEND_CHARS:
            return False
        for _ in range(2):
            blocks = control_blocks(controls, key, answer_to,
                                    native_feedback=self.caps.native_feedback)
            result = await self.delivery.api("chat.stopStream", functools.partial(
                self.client.chat_stopStream, channel=self.target.channel, ts=self.ts,
                markdown_text=rest or None, blocks=blocks or None), retries=0)
            if result.ok:
                return True
            if feedback_rejected(result.error) and self.caps.native_feedback:
                self.caps.native_feedback = False  # plain 👍 👎 buttons from now on
                continue
            self._refused(result)
            return False
        return False

    def _refused(self, result: Result) -> None:
        self.broken = True
        if result.error in REFUSED_FOR_GOOD:
            self.caps.streaming = False
            log.info("Slack: no native streaming in this workspace (%s); editing messages "
                     "instead", result.error)
        elif result.error in EXPIRED:
            log.info("Slack: the stream expired mid-answer; going on with chat.update")
