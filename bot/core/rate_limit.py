"""A per-user sliding-window rate limit, so one person cannot monopolise the model."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable


class RateLimiter:
    """Allows each key at most `per_minute` requests in any 60-second window.

    Args:
        per_minute: the limit; 0 turns limiting off.
        max_keys: keys remembered at most; the least recently seen are forgotten, so a
            flood of distinct senders cannot grow memory without bound.
    """

    WINDOW = 60.0

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._max_keys = max_keys
        self._hits: dict[Hashable, deque[float]] = {}

    def retry_after(self, key: Hashable) -> float:
        """Seconds until `key` may send again (0 when allowed now, and then counted)."""
        if self.per_minute <= 0:
            return 0.0
        now = self._clock()
        hits = self._hits.pop(key, None) or deque()
        while hits and now - hits[0] >= self.WINDOW:
            hits.popleft()
        self._hits[key] = hits  # re-inserted: dict order is least recently seen first
        if len(hits) >= self.per_minute:
            return hits[0] + self.WINDOW - now
        hits.append(now)
        if len(self._hits) > self._max_keys:
            del self._hits[next(iter(self._hits))]
        return 0.0
