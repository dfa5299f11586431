"""Which requests are waiting or generating, and which went stale before their turn.

A message deleted while it waits, or overtaken by a newer message from the same author in
the same conversation, is dropped instead of answered: the user has moved on. A request
someone stopped (the Stop control) is cancelled and remembered as stopped, so its answer is
kept as far as it got instead of being dropped. A long document's summary is several
generations (`HandleGroup`); Stop stops them all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from bot.engines.handles import GenerationHandle
from bot.types import ChannelKey, IncomingMessage

MAX_DELETED = 10_000
"""Deleted message ids remembered (oldest forgotten first); askers likewise."""

Pending = tuple[ChannelKey, str]
"""A request, by the conversation and the platform message it answers."""


class Stale(Exception):
    """A request that went stale before generation started; it gets no reply."""


class Stopped(Exception):
    """Someone stopped the generations of a `HandleGroup`; `text` is what was shown so far."""

    def __init__(self, text: str = "") -> None:
        super().__init__("stopped")
        self.text = text


class HandleGroup:
    """The generations answering one request together (a long document's summary, part by
    part and some at once): stopping the group stops each of them and any yet to come."""

    def __init__(self) -> None:
        self._handles: list[GenerationHandle] = []
        self.cancelled = False

    def add(self, handle: GenerationHandle) -> None:
        self._handles.append(handle)
        if self.cancelled:
            handle.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        for handle in self._handles:
            handle.cancel()


class InFlight:
    """The generation handle of each request in progress, and what makes one stale."""

    def __init__(self) -> None:
        self._latest: dict[tuple[ChannelKey, str], str] = {}
        self._deleted: OrderedDict[Pending, None] = OrderedDict()
        self._handles: dict[Pending, GenerationHandle] = {}
        self._groups: dict[Pending, HandleGroup] = {}
        self._askers: OrderedDict[Pending, str] = OrderedDict()
        self._stopped: set[Pending] = set()

    def arrived(self, msg: IncomingMessage) -> None:
        """`msg` is now its author's latest request in its conversation."""
        self._latest[(msg.key, msg.author_id)] = msg.message_id
        self.asked(msg.key, msg.message_id, msg.author_id)

    def asked(self, key: ChannelKey, message_id: str, author_id: str) -> None:
        """Who is waiting for the answer to `message_id` (who may stop it)."""
        self._askers[(key, message_id)] = author_id
        while len(self._askers) > MAX_DELETED:
            self._askers.popitem(last=False)

    def asker(self, pending: Pending) -> str | None:
        return self._askers.get(pending)

    def stop(self, pending: Pending) -> bool:
        """Stop the request's generation, keeping what it wrote; False if none is running."""
        running: GenerationHandle | HandleGroup | None = self._handles.get(pending)
        if running is None:
            running = self._groups.get(pending)
        if running is None or running.cancelled:
            return False
        self._stopped.add(pending)
        running.cancel()  # the worker stops between tokens; a server sees the stream closed
        return True

    def stopped(self, pending: Pending) -> bool:
        return pending in self._stopped

    def answered(self, msg: IncomingMessage) -> None:
        author = (msg.key, msg.author_id)
        if self._latest.get(author) == msg.message_id:
            del self._latest[author]

    def is_latest(self, key: ChannelKey, author_id: str, message_id: str) -> bool:
        return self._latest.get((key, author_id)) == message_id

    def check(self, msg: IncomingMessage) -> None:
        """Raise `Stale` if the message was deleted or its author has sent a newer one."""
        if (msg.key, msg.message_id) in self._deleted:
            raise Stale(f"message {msg.message_id} was deleted before generation started")
        latest = self._latest.get((msg.key, msg.author_id))
        if latest is not None and latest != msg.message_id:
            raise Stale(f"{msg.author_id} sent a newer message in {msg.key}")

    def deleted(self, key: ChannelKey, message_id: str) -> None:
        """The message was deleted: a request for it that has not started is cancelled."""
        self._deleted[(key, message_id)] = None
        while len(self._deleted) > MAX_DELETED:
            self._deleted.popitem(last=False)
        handle = self._handles.get((key, message_id))
        if handle is not None and not handle.started:
            handle.cancel()  # still queued: the worker skips it (once started, it is answered)

    def __contains__(self, pending: Pending) -> bool:
        return pending in self._handles or pending in self._groups

    def get(self, pending: Pending) -> GenerationHandle | None:
        return self._handles.get(pending)

    def __getitem__(self, pending: Pending) -> GenerationHandle:
        return self._handles[pending]

    def __setitem__(self, pending: Pending, handle: GenerationHandle) -> None:
        self._handles[pending] = handle

    def done(self, pending: Pending) -> None:
        self._handles.pop(pending, None)
        self._stopped.discard(pending)
        self._askers.pop(pending, None)

    @contextmanager
    def grouped(self, pending: Pending, asker: str) -> Iterator[HandleGroup]:
        """Register the generations made for `pending` inside the block, so Stop reaches
        them all (the asker, or an admin, may stop them)."""
        self.asked(*pending, asker)
        group = self._groups[pending] = HandleGroup()
        try:
            yield group
        finally:
            del self._groups[pending]
            self.done(pending)
