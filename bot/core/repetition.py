"""Noticing a reply that has started to loop, so it can be stopped and trimmed.

Small models under greedy or low-temperature decoding often fall into a loop: one sentence
or paragraph again and again until the reply budget runs out. A repetition penalty in
sampling makes that rarer; this check catches what is left, on any engine, by looking only
at the text: when the end of the reply is the same block of characters three times in a row
(twice for a paragraph), or when a sentence or line comes back a third time, the reply is cut
before the repeat. It works on characters, not words, so it needs no word boundaries
(Chinese and Japanese have none).
"""

from __future__ import annotations

import re

MIN_COPIES = 3
"""A block must appear this many times in a row to count as a loop."""
NUMBERED_BLOCK_CHARS = 24
"""Blocks at least this long are compared with their digits made equal."""
LONG_BLOCK_CHARS = 160
"""A block this long (a paragraph) is a loop already when it comes twice in a row."""
MIN_LOOP_CHARS = 60
"""...and the copies together must be this long, so "ha ha ha" or a table rule is no loop."""
MIN_LETTERS = 3
"""...and the block must hold words: counting "1, 2, 3, ..." or a list of dates is no loop."""
MAX_PERIOD_CHARS = 800
"""Longest block looked for (a paragraph); longer loops are left to the reply budget."""
MIN_SENTENCE_CHARS = 20
_SENTENCE = re.compile(r"[^\n.!?。！？]+[.!?。！？]*")
_CODE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_DIGITS = str.maketrans("123456789", "000000000")
"""Digits count as equal (the text keeps its length, so a cut is still a cut in it): a
numbered list that repeats its items under new numbers is a loop too."""
_SENTENCE_END = frozenset("。！？")
"""Where Chinese and Japanese text, which has no spaces, may be cut."""


def loop_start(text: str) -> int | None:
    """Where the repeats of a loop at the end of `text` begin, or None if it does not loop.

    ``text[:loop_start(text)]`` keeps everything up to the end of the block's first copy.
    The text may stop part-way through a copy (streamed text is checked as it grows, and a
    reply budget runs out mid-sentence); of all the blocks that loop, the earliest cut wins.
    In blocks of a line or more, digits are not told apart, so list items repeated under new
    numbers loop too; short ones ("w1 w2 w3", "Step 1, Step 2") must repeat exactly.
    """
    numbered = text.translate(_DIGITS)  # "8. Walk daily." repeats "9. Walk daily."
    n = len(text)
    best: int | None = None
    wordless: list[int] = []  # blocks without words: their multiples are no loop either
    for period in range(1, min(MAX_PERIOD_CHARS, n // 2) + 1):
        copies = 2 if period >= LONG_BLOCK_CHARS else MIN_COPIES
        if copies * period > n or any(period % w == 0 for w in wordless):
            continue
        view = numbered if period >= NUMBERED_BLOCK_CHARS else text
        span = (copies - 1) * period
        if view[n - span:] != view[n - span - period:n - period]:
            continue  # the last copies do not repeat with this period
        cut = n - _periodic_tail(view, period)  # where the first copy ends
        block = view[cut - period:cut]
        if view is numbered and block in (block + block)[1:-1]:
            continue  # itself a shorter block again and again ("w00 w00 "): not a line
        if sum(ch.isalpha() for ch in block) < MIN_LETTERS:
            wordless.append(period)
            continue
        if n - cut + period < max(MIN_LOOP_CHARS, copies * period):
            continue
        if best is None or cut < best:
            best = cut
    again = _third_time(text)
    if again is not None and (best is None or again < best):
        best = again
    return best


def _third_time(text: str) -> int | None:
    """Where a sentence or line of 20+ characters starts for the third time, or None: a
    small model also loops by coming back to the same line with others in between."""
    seen: dict[str, int] = {}
    if "```" in text:  # code repeats lines on purpose: blank it out, keeping the offsets
        text = _CODE.sub(lambda m: " " * len(m.group()), text)
    for match in _SENTENCE.finditer(text):
        key = match.group().strip().rstrip(".,;:!?。，、！？").lower()
        if len(key) < MIN_SENTENCE_CHARS:
            continue
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == MIN_COPIES and match.end() < len(text):  # the third one is complete
            return match.start()
    return None


def _periodic_tail(text: str, period: int) -> int:
    """The longest `run` with ``text[n-run:] == text[n-run-period:n-period]`` (binary
    search: if a suffix repeats, so does every shorter one)."""
    n = len(text)
    low, high = 0, n - period
    while low < high:
        mid = (low + high + 1) // 2
        if text[n - mid:] == text[n - mid - period:n - period]:
            low = mid
        else:
            high = mid - 1
    return low


def trim_loop(text: str) -> str:
    """`text` with a loop at its end cut after the first copy of its block; the cut moves on
    to the end of the word or sentence it falls in, so the first copy ends whole."""
    cut = loop_start(text)
    if cut is None:
        return text
    limit = min(len(text), cut + MAX_PERIOD_CHARS)
    while (cut < limit and not text[cut].isspace() and not text[cut - 1].isspace()
           and text[cut - 1] not in _SENTENCE_END):
        cut += 1
    return text[:cut].rstrip()
