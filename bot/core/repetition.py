"""Noticing a reply that has started to loop, so it can be stopped and trimmed.

Small models under greedy or low-temperature decoding often fall into a loop: one sentence
or paragraph again and again until the reply budget runs out. A repetition penalty in
sampling makes that rarer; this check catches what is left, on any engine, by looking only
at the text: when the end of the reply is the same block of characters three times in a row,
the reply is cut after the first copy. It works on characters, not words, so it needs no
word boundaries (Chinese and Japanese have none).
"""

from __future__ import annotations

MIN_COPIES = 3
"""A block must appear this many times in a row to count as a loop."""
MIN_LOOP_CHARS = 60
"""...and the copies together must be this long, so "ha ha ha" or a table rule is no loop."""
MAX_PERIOD_CHARS = 800
"""Longest block looked for (a paragraph); longer loops are left to the reply budget."""
_SENTENCE_END = frozenset("。！？")
"""Where Chinese and Japanese text, which has no spaces, may be cut."""


def loop_start(text: str) -> int | None:
    """Where the repeats of a loop at the end of `text` begin, or None if it does not loop.

    ``text[:loop_start(text)]`` keeps everything up to and including the first copy of the
    block. Only an exact repeat that ends at the end of `text` counts; streamed text is
    checked as it grows, so the moment the third copy is complete it is found.
    """
    found = _loop(text)
    return None if found is None else found[0]


def _loop(text: str) -> tuple[int, int] | None:
    """(where the second copy starts, the block's length) of a loop ending `text`."""
    n = len(text)
    for period in range(1, min(MAX_PERIOD_CHARS, n // MIN_COPIES) + 1):
        unit = text[n - period:]
        if not text.endswith(unit, 0, n - period):
            continue
        copies = 2
        while (copies + 1) * period <= n and text.startswith(
                unit, n - (copies + 1) * period):
            copies += 1
        if copies >= MIN_COPIES and copies * period >= MIN_LOOP_CHARS and unit.strip():
            return n - (copies - 1) * period, period
    return None


def trim_loop(text: str) -> str:
    """`text` with a loop at its end cut after the first copy, also when the text stops
    part-way through a copy (the reply budget ran out mid-sentence).

    Every way of lining the copies up is tried and the earliest cut kept; the cut then moves
    on to the end of the word or sentence it falls in, so the first copy ends whole.
    """
    best: tuple[int, int] | None = None
    for end in range(len(text), max(0, len(text) - MAX_PERIOD_CHARS) - 1, -1):
        found = _loop(text[:end])
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    if best is None:
        return text
    cut, period = best
    limit = min(len(text), cut + period)
    while (cut < limit and not text[cut].isspace() and not text[cut - 1].isspace()
           and text[cut - 1] not in _SENTENCE_END):
        cut += 1
    return text[:cut].rstrip()
