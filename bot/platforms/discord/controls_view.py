"""Discord's rendering of the core's controls: buttons on the answer's first message.

Each button's custom id names the control and the message the answer replies to
(``ctl:regenerate:1234``), and `ControlButton` is a `discord.ui.DynamicItem` registered on
the client, so a press is understood from the custom id alone, also after a restart. The
answer's conversation is the channel or thread the press comes from. Feedback is two small
grey buttons, 👍 and 👎, after Regenerate and Continue.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

import discord

from bot.types import Control

log = logging.getLogger(__name__)

TEMPLATE = r"ctl:(?P<control>stop|regenerate|continue|up|down):(?P<answer_to>[0-9]{1,20})"
LOOKS: dict[Control, tuple[str | None, discord.ButtonStyle, str]] = {
    "stop": ("Stop", discord.ButtonStyle.danger, "⏹️"),
    "regenerate": ("Regenerate", discord.ButtonStyle.secondary, "🔄"),
    "continue": ("Continue", discord.ButtonStyle.primary, "➡️"),
    "up": (None, discord.ButtonStyle.secondary, "👍"),
    "down": (None, discord.ButtonStyle.secondary, "👎"),
}
_CUSTOM_ID = re.compile(TEMPLATE)


class PressTarget(Protocol):
    """Who handles presses: the adapter (reached through the client, since discord.py builds
    the buttons from their custom ids)."""

    async def on_press(self, interaction: discord.Interaction[Any], control: Control,
                       answer_to: str, /) -> None: ...


class ControlButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=TEMPLATE):
    """One control of one answer; persistent (its custom id says everything)."""

    def __init__(self, control: Control, answer_to: str) -> None:
        label, style, emoji = LOOKS[control]
        super().__init__(discord.ui.Button(label=label, style=style, emoji=emoji,
                                           custom_id=f"ctl:{control}:{answer_to}"))
        self.control: Control = control
        self.answer_to = answer_to

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any],  # type: ignore[override]
                             item: discord.ui.Button[Any], match: re.Match[str], /,
                             ) -> ControlButton:
        return cls(cast(Control, match["control"]), match["answer_to"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        target = getattr(interaction.client, "adapter", None)
        if target is None:
            log.warning("a control was pressed on a client without an adapter")
            return
        await cast(PressTarget, target).on_press(interaction, self.control, self.answer_to)


def controls_view(controls: Sequence[Control], answer_to: str) -> discord.ui.View | None:
    """The buttons for `controls` of the answer to `answer_to` (None: no buttons)."""
    if not controls or not answer_to.isdigit():
        return None
    view = discord.ui.View(timeout=None)
    for control in controls:
        view.add_item(ControlButton(control, answer_to))
    return view


def view_ids(view: discord.ui.View | None) -> tuple[str, ...]:
    """The custom ids a view shows, to tell whether a message's buttons must change."""
    if view is None:
        return ()
    return tuple(str(getattr(item, "custom_id", "")) for item in view.children)


def controls_of(components: Iterable[Any]) -> list[Control]:
    """The controls a message shows, read back from its components."""
    found: list[Control] = []
    for row in components:
        for item in getattr(row, "children", [row]):
            match = _CUSTOM_ID.fullmatch(str(getattr(item, "custom_id", "") or ""))
            if match:
                found.append(cast(Control, match["control"]))
    return found
