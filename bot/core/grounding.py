"""Whether an answer is backed by the knowledge-base passages it was given.

A small model asked something the passages do not answer invents a confident fact and the
bot used to add "Sources:" naming the passages anyway. The check here is deliberately
simple and engine-independent: the words the answer adds to the question (names, numbers,
nouns) must mostly appear in the passages. Answers that are not backed get "I don't know"
and who to ask instead; sources are only the files whose passages the answer draws on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MIN_SUPPORT = 0.6
"""Share of the answer's new words that must appear in the passages (docs/quality.md)."""
ESCALATION_QUERY = "escalation"
"""Searched for when the passages do not answer: a section titled "Escalation" in the
knowledge base says who to ask."""

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_STOPWORDS = frozenset("""a an and are as at be been but by can could do does did for from had has
have how i if in into is it its me my no not of on or our so than that the their them then there
these they this to was we were what when where which who why will with would yes you your
please thanks thank sorry hello hi also about just only any all some more very much""".split())


@dataclass(frozen=True, slots=True)
class Evidence:
    """A passage the answer was checked against: its file and text."""

    path: str
    text: str


def words(text: str) -> set[str]:
    """The meaningful words of `text`, lower-cased and crudely singular; each Chinese or
    Japanese character counts as a word of its own (those scripts have no spaces)."""
    found: set[str] = set()
    for match in _WORD.finditer(text.lower()):
        word = match.group()
        if _CJK.search(word):
            found.update(ch for ch in word if _CJK.match(ch))
            continue
        if word in _STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        found.add(_singular(word))
    return found


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def support(answer: str, question: str, passages: Iterable[Evidence]) -> float:
    """Share of the words the answer adds to the question that the passages contain.

    An answer that adds nothing (it only restates the question) has no support, and neither
    has one with a number that is not in the passages (the facts that matter most).
    """
    new = words(answer) - words(question)
    if not new:
        return 0.0
    known: set[str] = set()
    for passage in passages:
        known |= words(passage.text)
    if any(word.isdigit() and word not in known for word in new):
        return 0.0  # a number the passages do not hold is made up, however fluent the rest
    return len(new & known) / len(new)


def sources_drawn_on(answer: str, question: str, passages: Iterable[Evidence]) -> list[str]:
    """The files, in order, whose passages share at least one of the answer's new words."""
    new = words(answer) - words(question)
    found: list[str] = []
    for passage in passages:
        if new & words(passage.text) and passage.path not in found:
            found.append(passage.path)
    return found
