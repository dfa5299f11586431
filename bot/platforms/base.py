"""What every adapter shares: the `Adapter` protocol, message splitting and edit throttling."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Protocol

from bot.types import Reply

_BOUNDARIES = ("\n\n", "\n", ". ", "! ", "? ", "。", "！", "？", "，", "、", " ")
"""Where a part may end, best first: Chinese and Japanese text has no spaces, so its
sentence ends (。！？) and commas (，、) count too."""
_FENCE = re.compile(r"^\s*(```+)([\w+-]*)", re.MULTILINE)
_CLOSE = "\n```"


class Adapter(Protocol):
    """A chat platform, as `__main__` drives it."""

    platform: str

    async def start(self) -> None:
        """Connect and serve until `stop()` or the connection ends for good."""
        ...

    async def stop(self) -> None: ...

    async def send(self, reply: Reply) -> None: ...

    @property
    def connected(self) -> bool:
        """Whether it can take messages now; `/healthz` reports it (see `bot.ops`)."""
        ...


def split_text(text: str, limit: int) -> list[str]:
    """Split `text` into parts of at most `limit` characters, at natural boundaries.

    Prefers a paragraph break, then a line break, then a sentence end (also 。！？), then a
    Chinese or Japanese comma (，、), then a space. A code
    block that spans a cut is closed at the end of one part and reopened (with its language)
    at the start of the next, so each part renders on its own. Apart from those added fences,
    joining the parts gives back `text` exactly.
    """
    if limit < 32:
        raise ValueError("limit must be at least 32 characters")
    parts: list[str] = []
    rest = text
    reopen = ""  # the fence line that reopens a code block cut at the previous part's end
    while rest:
        room = limit - len(reopen)
        if len(rest) <= room:
            parts.append(reopen + rest)
            break
        cut = _cut_point(rest, room - len(_CLOSE))  # leave room for a closing fence
        chunk = reopen + rest[:cut]
        fence = _open_fence(chunk)
        if fence:
            chunk += _CLOSE
        parts.append(chunk)
        rest = rest[cut:]
        reopen = _reopen_line(fence, limit)
    return parts


def _reopen_line(fence: str, limit: int) -> str:
    """The line that reopens a cut code block, or '' when none was open.

    Why the cap: a fence's "language" can be any run of word characters, and reopening a
    huge one at the start of every part would leave no room for text (once, no room at all:
    the loop never advanced). A long fence is reopened as a plain one.
    """
    if not fence:
        return ""
    if len(fence) + 1 > limit // 4:
        fence = "```"
    return fence + "\n"


def _cut_point(text: str, room: int) -> int:
    """Index to cut `text` at, within `room` characters, at the best boundary found."""
    window = text[:room]
    floor = room // 2
    for pattern in _BOUNDARIES:
        index = window.rfind(pattern)
        if index >= floor:
            return index + len(pattern)
    cut = room
    while cut > floor and text[cut - 1] == "`":
        cut -= 1  # never cut through a run of backticks: it may be a fence
    return cut


def _open_fence(chunk: str) -> str:
    """The opening fence (with language) of a code block left open in `chunk`, or ''."""
    opening = ""
    for match in _FENCE.finditer(chunk):
        opening = "" if opening else match.group(1) + match.group(2)
    return opening


class EditThrottle:
    """Lets a streaming reply be edited at most once per `interval` seconds."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.interval = interval
        self._clock = clock
        self._last = float("-inf")

    def ready(self) -> bool:
        """True (and the clock restarts) when enough time passed since the last edit."""
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False
