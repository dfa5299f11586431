"""The records of answers and their feedback that cross the storage interface (issue #18).

An answer is named by its conversation and the platform message it replies to (the
question), so a control keyed by that message finds it again after a restart. Votes are
stored with a copy of the question and answer they rate: the export stays complete after
history is cut to its bound, and a regenerated answer is a new revision with votes of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AnswerMeta:
    """Who asked, and what produced the answer (what `python -m bot.feedback export` shows).

    Attributes:
        finish: why the answer ended: ``done``, ``budget`` (cut at the reply budget, so it
            can be continued), ``stopped`` (someone pressed Stop), ``timeout``, ``shutdown``,
            ``error``.
    """

    asker_id: str
    persona: str
    model: str
    engine: str
    finish: str = "done"


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """An answer as stored: its text, its question (None once that was deleted), its meta."""

    text: str
    question: str | None
    question_author: str | None
    meta: AnswerMeta
    revision: int
    created_at: float


@dataclass(frozen=True, slots=True)
class Vote:
    """What storing a vote found: the answer (or not), and the voter's previous vote."""

    found: bool
    previous: int | None = None
    """+1 or -1 when this person had voted on this revision before, else None."""


@dataclass(frozen=True, slots=True)
class FeedbackCounts:
    """Votes on the answers of one channel (all its threads)."""

    up: int = 0
    down: int = 0


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One vote with what it rated, for the export."""

    platform: str
    channel_id: str
    thread_id: str | None
    question_id: str
    revision: int
    value: int
    question: str
    answer: str
    persona: str
    model: str
    engine: str
    created_at: float
