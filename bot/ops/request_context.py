"""Per-request context carried through awaits: a request id for logs, and the outcome.

Context variables follow the task that handles a message, so every log line written while
handling it (core, worker submission, adapter) can carry the same request id without
passing it through every call.
"""

from __future__ import annotations

import itertools
import logging
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")
outcome: ContextVar[str] = ContextVar("outcome", default="answered")
_ids = itertools.count(1)


def new_request_id(platform: str) -> str:
    """A short id, unique in this process, that ties a message to its generation and reply."""
    value = f"{platform[:2]}-{next(_ids):06d}"
    request_id.set(value)
    outcome.set("answered")
    return value


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True
