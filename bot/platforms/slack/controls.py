"""Slack's rendering of the core's controls, and presses translated back (block actions).

An answer's message carries its controls as blocks under its text: a ``section`` per 3,000
characters of text, an ``actions`` block (Stop while it is written; then Regenerate, and
Continue when it was cut at its budget), and the feedback: Slack's own ``feedback_buttons``
(thumbs up and down in a ``context_actions`` block) where the workspace takes them, else two
plain buttons. Each control's value names the answer: the conversation's thread and the
message the answer replies to, so a press works after a restart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from bot.platforms.base import split_text
from bot.platforms.slack.events import as_mapping
from bot.types import ChannelKey, Control, Press

ACTION_ID = re.compile(r"^ctl_(stop|regenerate|continue|feedback|up|down)$")
"""The action ids of the controls (what the adapter listens for)."""
SECTION_CHARS = 3_000
"""Slack's limit on a section block's text."""
LABELS: dict[Control, str] = {"stop": "⏹ Stop", "regenerate": "🔄 Regenerate",
                              "continue": "➡️ Continue", "up": "👍", "down": "👎"}


@dataclass(slots=True)
class Capabilities:
    """What this workspace has shown it takes (each switched off at its first refusal)."""

    streaming: bool = True
    status: bool = True
    native_feedback: bool = True


@dataclass(slots=True)
class AnswerControls:
    """The controls one answer's message shows now (they change as it is written)."""

    key: ChannelKey
    answer_to: str
    controls: tuple[Control, ...]
    caps: Capabilities = field(default_factory=Capabilities)

    def blocks(self, mrkdwn: str) -> list[dict[str, Any]] | None:
        if not self.controls:
            return None
        return answer_blocks(mrkdwn, self.controls, self.key, self.answer_to,
                             native_feedback=self.caps.native_feedback)

    def refused(self, error: str | None) -> bool:
        """Slack refused the blocks for their feedback buttons: plain buttons from now on
        (True: try again)."""
        if feedback_rejected(error) and self.caps.native_feedback:
            self.caps.native_feedback = False
            return True
        return False


def ref_value(control: Control, key: ChannelKey, answer_to: str) -> str:
    """A control's value: which answer it acts on (Slack gives it back with the press)."""
    return json.dumps({"c": control, "t": key.thread_id, "q": answer_to}, separators=(",", ":"))


def answer_blocks(mrkdwn: str, controls: Sequence[Control], key: ChannelKey, answer_to: str, *,
                  native_feedback: bool = True) -> list[dict[str, Any]]:
    """The blocks of an answer's message: its text, then its controls."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": part}}
        for part in split_text(mrkdwn, SECTION_CHARS) if part.strip()]
    return blocks + control_blocks(controls, key, answer_to, native_feedback=native_feedback)


def control_blocks(controls: Sequence[Control], key: ChannelKey, answer_to: str, *,
                   native_feedback: bool = True) -> list[dict[str, Any]]:
    """The controls alone (what `chat.stopStream` puts under a streamed answer)."""
    buttons = [_button(c, key, answer_to) for c in controls if c not in ("up", "down")]
    votes = [c for c in controls if c in ("up", "down")]
    blocks: list[dict[str, Any]] = []
    if votes and not native_feedback:
        buttons += [_button(c, key, answer_to) for c in votes]
    if buttons:
        blocks.append({"type": "actions", "block_id": f"ctl_{answer_to}"[:255],
                       "elements": buttons})
    if votes and native_feedback:
        blocks.append({"type": "context_actions", "elements": [{
            "type": "feedback_buttons", "action_id": "ctl_feedback",
            "positive_button": {"text": {"type": "plain_text", "text": "Good answer"},
                                "accessibility_label": "Rate this answer as good",
                                "value": ref_value("up", key, answer_to)},
            "negative_button": {"text": {"type": "plain_text", "text": "Bad answer"},
                                "accessibility_label": "Rate this answer as bad",
                                "value": ref_value("down", key, answer_to)}}]})
    return blocks


def _button(control: Control, key: ChannelKey, answer_to: str) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "action_id": f"ctl_{control}",
                              "text": {"type": "plain_text", "text": LABELS[control],
                                       "emoji": True},
                              "value": ref_value(control, key, answer_to)}
    if control == "stop":
        button["style"] = "danger"
    return button


def to_press(body: Mapping[str, Any], action: Mapping[str, Any], *, is_admin: bool = False,
             user_name: str | None = None) -> Press | None:
    """A ``block_actions`` press as the core's `Press` (None for a value we did not write)."""
    try:
        ref = json.loads(str(action.get("value") or ""))
    except ValueError:
        return None
    control = ref.get("c") if isinstance(ref, dict) else None
    channel = str(as_mapping(body.get("channel")).get("id") or
                  as_mapping(as_mapping(body.get("container"))).get("channel_id") or "")
    user = as_mapping(body.get("user"))
    if control not in ("stop", "regenerate", "continue", "up", "down") or not channel:
        return None
    thread = ref.get("t")
    return Press(ChannelKey("slack", channel, str(thread) if thread else None),
                 str(ref.get("q") or ""), cast(Control, control), str(user.get("id", "")),
                 user_name or str(user.get("name") or user.get("id", "")),
                 is_admin=is_admin, is_direct=channel.startswith("D"))


def feedback_rejected(error: str | None) -> bool:
    """Slack refused the blocks: the workspace does not take the feedback buttons block."""
    return error in ("invalid_blocks", "invalid_blocks_format")
