"""Keep a reasoning model's thinking out of the answer.

Servers report reasoning either in separate fields (``reasoning_content``, ``reasoning``:
those never reach this filter's output) or inline as ``<think>...</think>`` in the content.
`ThinkFilter` removes inline blocks as the text streams in, even when a tag is split across
chunks, and says whether the model is thinking right now so the reply can show a status.
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"


class ThinkFilter:
    """Streams content in, answer text out; ``thinking`` is true inside a block."""

    def __init__(self) -> None:
        self.thinking = False
        self._pending = ""  # a possible partial tag held back from the last piece

    def feed(self, piece: str) -> str:
        """The visible part of `piece` (may be '' while a tag or a thought is incomplete)."""
        text = self._pending + piece
        self._pending = ""
        out: list[str] = []
        while text:
            tag = CLOSE if self.thinking else OPEN
            index = text.find(tag)
            if index >= 0:
                if not self.thinking:
                    out.append(text[:index])
                text = text[index + len(tag):]
                self.thinking = not self.thinking
                continue
            keep = _partial_suffix(text, tag)
            if not self.thinking:
                out.append(text[:len(text) - keep])
            self._pending = text[len(text) - keep:] if keep else ""
            break
        return "".join(out)

    def flush(self) -> str:
        """The end of the stream: a held-back partial tag outside a block was just text."""
        pending, self._pending = self._pending, ""
        return "" if self.thinking else pending


def strip_reasoning(text: str) -> str:
    """The answer without any thinking: closed blocks, an unclosed tail, and everything up
    to a lone ``</think>`` (templates that open the block inside the prompt)."""
    if CLOSE in text and OPEN not in text.split(CLOSE, 1)[0]:
        text = text.split(CLOSE, 1)[1]
    blocks = ThinkFilter()
    return blocks.feed(text) + blocks.flush()


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
