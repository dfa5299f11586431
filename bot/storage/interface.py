"""The storage interface the core uses, and the plain records that cross it.

The core never knows which store it has: `bot.storage.sqlite` is the default, and
`bot.storage.postgres` (several instances on one PostgreSQL) implements the same
`HistoryStore` protocol; `tests/test_store_contract.py` runs the same tests against both.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from bot.storage.answer_records import (
    AnswerMeta,
    FeedbackCounts,
    FeedbackRecord,
    StoredAnswer,
    Vote,
)
from bot.types import ChannelKey, Document, Section, Turn


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """How the bot behaves in one channel; its threads inherit it.

    Attributes:
        persona: a persona name, or None for the default.
        system_prompt: a custom system prompt that replaces the persona's, or None.
        thread_replies: answer every message in threads the bot is part of, unmentioned.
        enabled: answer in this channel at all (admin commands always work).
        model: a served model chosen with /model (remote engines), or None for the default.
    """

    persona: str | None = None
    system_prompt: str | None = None
    thread_replies: bool = True
    enabled: bool = True
    model: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryStats:
    """Totals for `/status`."""

    channels: int
    turns: int


MAX_DOCUMENTS = 20
"""Documents kept per conversation; older ones are deleted as new ones arrive."""


def sections_to_json(document: Document) -> str:
    """A document's sections as stored (a JSON list of ``[label, text]``)."""
    return json.dumps([[s.label, s.text] for s in document.sections], ensure_ascii=False)


def document_from_row(name: str, source: str, kind: str, sections: str, note: str) -> Document:
    return Document(name=name, source="link" if source == "link" else "file", kind=kind,
                    sections=tuple(Section(str(label), str(text))
                                   for label, text in json.loads(sections)), note=note)


class HistoryStore(Protocol):
    """What the core needs from a store; `SQLiteHistoryStore` is the default implementation.

    Every method is a coroutine: an implementation does its I/O off the event loop.
    """

    async def open(self) -> HistoryStore: ...

    async def close(self) -> None: ...

    async def add(self, key: ChannelKey, turn: Turn, *, message_id: str | None = None) -> None:
        """Append one turn; it is durable once this returns."""
        ...

    async def recent(self, key: ChannelKey, limit: int | None = None) -> list[Turn]:
        """The channel's latest turns, oldest first."""
        ...

    async def reset(self, key: ChannelKey) -> int:
        """Forget this conversation (channel or thread); returns the turns deleted."""
        ...

    async def stats(self) -> HistoryStats: ...

    async def forget_channel(self, key: ChannelKey) -> int:
        """Erase the channel, its threads and its settings for good."""
        ...

    async def delete_message(self, key: ChannelKey, message_id: str) -> int: ...

    async def prune(self, older_than_days: float) -> int:
        """Retention: delete turns older than this; returns how many."""
        ...

    async def count(self, key: ChannelKey) -> int: ...

    async def has_assistant_turn(self, key: ChannelKey) -> bool: ...

    async def channel_settings(self, key: ChannelKey) -> ChannelSettings: ...

    # -- shared documents (issue #17): erased with the conversation ----------------------

    async def add_document(self, key: ChannelKey, document: Document, *,
                           message_id: str | None = None) -> None:
        """Keep a shared document's text with the conversation (the newest
        `MAX_DOCUMENTS`); `reset`, `forget_channel`, `delete_message` of its message and
        `prune` erase it like a turn."""
        ...

    async def documents(self, key: ChannelKey, limit: int = 3, *,
                        message_id: str | None = None) -> list[Document]:
        """The conversation's latest `limit` documents (only those shared with the message
        `message_id`, when given), oldest first."""
        ...

    async def save_channel_settings(self, key: ChannelKey, settings: ChannelSettings) -> None: ...

    # -- state several instances share (issue #12) ------------------------------------

    async def claim_event(self, event_id: str, *, key: ChannelKey | None = None,
                          order: int | None = None) -> bool:
        """Claim a platform event (a message, a Slack retry, a slash command) for answering.

        True for the first claim of `event_id` only, in this process or any other on the same
        store, so an event delivered to several instances (or redelivered) is answered once.
        `key` and `order` (the platform's ordering of messages in a conversation, e.g. a
        Discord snowflake) let `channel_lock` keep a conversation's turns in order.
        """
        ...

    async def finish_event(self, event_id: str) -> None:
        """The claimed event has been answered or dropped; later turns need not wait for it."""
        ...

    def channel_lock(self, key: ChannelKey, *,
                     order: int | None = None) -> AbstractAsyncContextManager[None]:
        """Hold the conversation for one turn across instances (the core also holds its own
        in-process lock). With `order`, wait (bounded) for earlier claimed messages of the
        conversation that another live instance is still handling."""
        ...

    async def rate_hit(self, key: str, *, limit: int, now: float,
                       window: float = 60.0) -> float:
        """Count one request of `key` unless it made `limit` in the last `window` seconds
        (`now` is wall-clock seconds); returns 0 when counted, else seconds until allowed."""
        ...

    # -- answers and their feedback (issue #18) ----------------------------------------

    async def add_answer(self, key: ChannelKey, turn: Turn, *, question_id: str,
                         meta: AnswerMeta) -> None:
        """Append the bot's `turn` answering message `question_id`, with its meta: the
        answer the controls act on. Durable once this returns, like `add`."""
        ...

    async def answer(self, key: ChannelKey, question_id: str) -> StoredAnswer | None:
        """The stored answer to `question_id`, or None once it is gone (erased, or cut from
        history by its bound or retention)."""
        ...

    async def turns_before(self, key: ChannelKey, question_id: str,
                           limit: int | None = None) -> list[Turn] | None:
        """The conversation before the question `question_id`, oldest first (at most `limit`
        turns); None when that question is no longer stored."""
        ...

    async def revise_answer(self, key: ChannelKey, question_id: str, text: str, *,
                            meta: AnswerMeta, new_revision: bool) -> int | None:
        """Replace the answer's text and meta in place (its place in history is kept).

        `new_revision` makes it a new answer (Regenerate) whose votes start afresh; a
        continued answer keeps its revision. Returns the revision, or None when it is gone.
        """
        ...

    async def vote(self, key: ChannelKey, question_id: str, voter_id: str, value: int, *,
                   now: float) -> Vote:
        """Store `voter_id`'s vote (+1 or -1) on the answer's current revision, with a copy
        of the question and answer; a second vote of the same person replaces the first."""
        ...

    async def feedback_counts(self, key: ChannelKey) -> FeedbackCounts:
        """Votes on the answers of `key`'s channel and its threads."""
        ...

    async def feedback_since(self, since: float) -> list[FeedbackRecord]:
        """Votes cast since `since` (wall-clock seconds), oldest first."""
        ...
