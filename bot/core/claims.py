"""Claimed platform events and the order of a conversation's turns across instances.

Several instances may receive the same event (Slack behind a load balancer, its retries, two
Discord processes on one shard); only the one whose claim comes first answers. A claimed
message also carries its platform order (a Discord snowflake, a Slack ts as microseconds), so
a conversation's turns take the channel lock in the order they were sent, not in the order
their platform calls happened to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from bot.errors import StoreUnavailable
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey

log = logging.getLogger(__name__)

ORDER_WAIT = 30.0
"""Longest a turn waits for an earlier claimed message of its conversation."""


class Claims:
    """The events this process has claimed and not yet finished, with their order."""

    def __init__(self, store: HistoryStore, *, order_wait: float = ORDER_WAIT) -> None:
        self.store = store
        self.order_wait = order_wait
        self._orders: dict[tuple[ChannelKey, str], int] = {}
        self._order_changed = asyncio.Condition()

    def order_of(self, key: ChannelKey, message_id: str) -> int | None:
        """The platform order of a claimed message, or None when it was not claimed so."""
        return self._orders.get((key, message_id))

    @contextlib.asynccontextmanager
    async def claimed(self, key: ChannelKey, message_id: str, event_id: str, *,
                      order: int | None = None) -> AsyncIterator[bool]:
        """Claim a platform event before answering it; yields whether this process won.

        If the store cannot be reached the event is answered anyway (with the store's short
        error, most likely).
        """
        try:
            won = await self.store.claim_event(event_id, key=key, order=order)
        except StoreUnavailable:
            log.warning("could not claim %s: the store is unavailable", event_id)
            won = True
        if not won:
            log.info("%s was claimed by another instance (or already answered)", event_id)
            yield False
            return
        if order is not None:
            self._orders[(key, message_id)] = order
        try:
            yield True
        finally:
            if self._orders.pop((key, message_id), None) is not None:
                async with self._order_changed:
                    self._order_changed.notify_all()
            with contextlib.suppress(StoreUnavailable):
                await self.store.finish_event(event_id)

    async def after_earlier(self, key: ChannelKey, order: int | None) -> None:
        """Wait (bounded) until this process has no earlier claimed message of `key` still
        being handled (the store's lock does the same across instances)."""
        if order is None:
            return

        def none_earlier() -> bool:
            return not any(k == key and o < order for (k, _), o in self._orders.items())

        async with self._order_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._order_changed.wait_for(none_earlier),
                                       self.order_wait)
