"""Splitting long answers for platforms with a message length limit."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.platforms.base import EditThrottle, split_text

FENCE_LINE = re.compile(r"^```[\w+-]*$", re.MULTILINE)


def rejoin(parts: list[str]) -> str:
    """Undo the fences that split_text adds at cuts."""
    text = ""
    for i, part in enumerate(parts):
        if i > 0 and text.endswith("```") and part.startswith("```"):
            text = text.removesuffix("\n```")
            part = part.split("\n", 1)[1] if "\n" in part else ""
        text += part
    return text


def test_short_text_is_one_part() -> None:
    assert split_text("hello", 2000) == ["hello"]
    assert split_text("", 2000) == []


def test_prefers_paragraph_then_sentence_boundaries() -> None:
    text = "First paragraph. " * 10 + "\n\n" + "Second one. " * 10
    parts = split_text(text, 200)
    assert parts[0].endswith("\n\n")
    assert all(len(p) <= 200 for p in parts)
    assert "".join(parts) == text


def test_code_blocks_are_closed_and_reopened() -> None:
    code = "\n".join(f"print({i})" for i in range(100))
    text = f"Here:\n```python\n{code}\n```\nDone."
    parts = split_text(text, 300)
    assert len(parts) > 2
    for part in parts:
        assert len(part) <= 300
        assert len(FENCE_LINE.findall(part)) % 2 == 0, part
    assert parts[1].startswith("```python\n")
    assert rejoin(parts) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .\n`")) | st.characters(), max_size=3000),
       st.integers(min_value=32, max_value=500))
def test_parts_fit_and_lose_nothing(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(0 < len(p) <= limit for p in parts)
    if "```" not in text:
        assert "".join(parts) == text


def test_throttle_allows_one_edit_per_interval() -> None:
    now = [0.0]
    throttle = EditThrottle(1.0, clock=lambda: now[0])
    assert throttle.ready()
    now[0] = 0.5
    assert not throttle.ready()
    now[0] = 1.01
    assert throttle.ready()
