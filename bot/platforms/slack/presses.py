"""Slack in through block actions: a press on an answer's control, acknowledged by the
listener at once and carried out here by the core (`bot.core.controls`).

What the core says back is a note for the presser alone (sent through the action's
response URL as an ephemeral message), or the answer's new text, which replaces the
message: written with ``chat.update`` as it grows, with a Stop button under it meanwhile.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from slack_bolt.async_app import AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.controls import GONE, NOT_RUNNING
from bot.core.conversation import ConversationCore
from bot.platforms.slack.controls import AnswerControls, Capabilities, to_press
from bot.platforms.slack.delivery import LiveAnswer, SlackDelivery, Target
from bot.platforms.slack.events import as_mapping, message_metadata
from bot.platforms.slack.reader import SlackReader
from bot.types import Press, Reply

log = logging.getLogger(__name__)

WORKING = {"regenerate": "_Writing a new answer…_"}


class SlackPresses:
    """Turns block actions into `Press` for the core and shows what comes back."""

    def __init__(self, core: ConversationCore, client: AsyncWebClient, delivery: SlackDelivery,
                 reader: SlackReader, caps: Capabilities, *, edit_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.client = client
        self.delivery = delivery
        self.reader = reader
        self.caps = caps
        self.edit_interval = edit_interval
        self._clock = clock

    async def handle(self, body: Mapping[str, Any], action: Mapping[str, Any],
                     respond: AsyncRespond | None) -> None:
        if action.get("type") == "feedback_buttons":  # Slack gives the pressed one's value
            action = {**action, "value": as_mapping(action).get("value")}
        user = str(as_mapping(body.get("user")).get("id", ""))
        names = await self.reader.names([user])
        press = to_press(body, action, user_name=names.get(user))
        if press is None:
            log.warning("Slack: ignored a press with a value the bot did not write")
            return
        if press.control in ("stop", "regenerate", "continue") and not press.is_direct:
            press = Press(press.key, press.answer_to, press.control, press.user_id,
                          press.user_name, is_admin=await self.reader.may_manage(
                              press.user_id, press.key.channel_id))
        container = as_mapping(body.get("container"))
        message = as_mapping(body.get("message"))
        ts = str(container.get("message_ts") or message.get("ts") or "")
        result: Reply | str | None
        if press.control in ("regenerate", "continue") and ts and not container.get(
                "is_ephemeral"):
            result = await self._rewrite(press, ts, message)
        else:
            result = await self.core.controls.press(press)
        if isinstance(result, str):
            await self._note(respond, result, drop=result == NOT_RUNNING
                             and bool(container.get("is_ephemeral")))

    async def _rewrite(self, press: Press, ts: str,
                       message: Mapping[str, Any]) -> Reply | str | None:
        """Regenerate or Continue into the answer's own message."""
        thread = str(message.get("thread_ts") or "") or None
        target = Target(press.key.channel_id, thread, placeholder=ts)
        live = LiveAnswer(self.delivery, target, interval=self.edit_interval, clock=self._clock)
        live.controls = AnswerControls(press.key, press.answer_to, ("stop",), self.caps)
        shown = str(message.get("text") or "")
        await live.progress(WORKING.get(press.control) or shown)
        result = await self.core.controls.press(press, on_progress=live.progress)
        if isinstance(result, Reply):
            target.placeholder = ts
            await self.delivery.deliver(target, result.text, kind="answer", controls=AnswerControls(
                press.key, press.answer_to, result.controls, self.caps))
            return result
        # Refused or failed: the answer as it was (its buttons gone if the answer is).
        kept = [b for b in message.get("blocks") or []
                if result != GONE or as_mapping(b).get("type") == "section"]
        await self.delivery.api("chat.update", functools.partial(
            self.client.chat_update, channel=press.key.channel_id, ts=ts, text=shown,
            blocks=kept, metadata=message_metadata("answer")), retries=0)
        return result

    async def _note(self, respond: AsyncRespond | None, text: str, *, drop: bool) -> None:
        """Tell the presser alone; a stale ephemeral Stop button is removed instead."""
        if respond is None:
            return
        try:
            if drop:
                await respond(delete_original=True)
            else:
                await respond(text=text, response_type="ephemeral", replace_original=False)
        except Exception as exc:  # the note is a courtesy: never fail the press over it
            log.warning("Slack: could not answer a press (%s)", type(exc).__name__)
