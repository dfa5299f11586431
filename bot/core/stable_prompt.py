"""A stable prompt beginning per conversation, so prefix caches keep reusing it.

Dropping the oldest turn on every new one would change the prompt right after the system
prompt each turn, and no prefix cache (the inference server's or our own) could reuse the
conversation. So each conversation's prompt starts at the turn the last one began with while
it fits; when history must be cut, it is cut `PREFIX_HEADROOM` deeper, so the new beginning
also holds for the next few turns.
"""

from __future__ import annotations

from collections import OrderedDict

from bot.core.prompting import build_chat_prompt, window_from
from bot.engines.contract import TokenCounter
from bot.types import ChannelKey, Prompt, Turn

PREFIX_HEADROOM = 4
"""When history must be cut, cut to 1/4 of the budget below the limit, so the next turns fit
behind the same beginning."""
MAX_REMEMBERED = 10_000
"""Conversations whose beginning is remembered (least recently used forgotten first)."""


class StablePrompts:
    """Remembers where each conversation's prompt began, and builds prompts from there."""

    def __init__(self) -> None:
        self._starts: OrderedDict[ChannelKey, Turn] = OrderedDict()

    def window(self, key: ChannelKey, turns: list[Turn]) -> list[Turn]:
        """`turns` from where `key`'s last prompt began (all of them if that turn is gone)."""
        return window_from(turns, self._starts.get(key))

    def build(self, counter: TokenCounter, window: list[Turn], *, system: str,
              message: Turn, context_tokens: int, reply_tokens: int,
              reference: str) -> tuple[Prompt, Turn | None]:
        """The prompt over `window` and the turn it now begins with. Runs off the event loop
        (exact token counts)."""
        kept: list[Turn] = []

        def build(reply: int) -> Prompt:
            return build_chat_prompt(counter, system=system, history=window, message=message,
                                     context_tokens=context_tokens, reply_tokens=reply,
                                     reference=reference, kept_out=kept)

        prompt = build(reply_tokens)
        if len(kept) < len(window):  # cut: cut deeper, so the next turns keep this start
            headroom = (context_tokens - reply_tokens) // PREFIX_HEADROOM
            prompt = build(reply_tokens + headroom)
        return prompt, (kept[0] if kept else None)

    def remember(self, key: ChannelKey, start: Turn | None) -> None:
        if start is None:
            self._starts.pop(key, None)
            return
        self._starts[key] = start
        self._starts.move_to_end(key)
        while len(self._starts) > MAX_REMEMBERED:
            self._starts.popitem(last=False)
