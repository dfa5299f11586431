"""Tidying what the model wrote before anyone sees it.

Small models leak the prompt's shape into their replies: they open with a speaker label
(``"Alice:"``), go on to write the next person's line, echo a reference passage's header, or
loop. What is left after tidying may be nothing at all; the core then retries or falls back,
and never posts an empty or name-only reply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bot.core.prompting import cut_at_speaker
from bot.core.repetition import trim_loop

NO_ANSWER = "Sorry, I couldn't come up with an answer to that. Could you rephrase it?"
_REFERENCE_ECHO = re.compile(r"\n\s*\[[^\]\n]{1,200} — ")


def strip_leading_labels(text: str, names: Iterable[str]) -> str:
    """`text` without speaker labels (``"Alice:"``, ``"Assistant :"``) at its very start.

    A label there is the model formatting its own reply like the transcript it was shown;
    the words after it are still the reply. Labels later in the text are another matter
    (`cut_at_speaker`).
    """
    known = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
    if not known:
        return text
    label = re.compile(r"\s*(?:" + "|".join(re.escape(n) for n in known) + r")\s*[:：]\s*",
                       re.IGNORECASE)
    while True:
        match = label.match(text)
        if match is None or match.end() == 0:
            return text
        text = text[match.end():]


def tidy_reply(text: str, *, speakers: Iterable[str], bot_name: str) -> str:
    """The reply as it should be shown: labels off, cut before another speaker's line or an
    echoed reference header, a trailing loop trimmed, and stripped ('' if nothing is left)."""
    people = set(speakers)
    text = strip_leading_labels(text, people | {bot_name})
    text = cut_at_speaker(text, people | {bot_name})
    echo = _REFERENCE_ECHO.search(text)
    if echo is not None:
        text = text[:echo.start()]
    return trim_loop(text).strip()
