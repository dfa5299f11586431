"""The rated answers as JSON lines, one vote per line, so an operator can read what went wrong
(and `bot.eval` can grow sets from it).

Each line holds what the vote rated (question, answer), the vote (``up`` or ``down``), what
produced the answer (persona, model, engine), where (platform, channel, thread), the
answer's revision (a regenerated answer is a new one) and when the vote was cast. Who voted
is left out: the review needs the answers, not the people.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from bot.storage.answer_records import FeedbackRecord


def as_json(record: FeedbackRecord) -> dict[str, Any]:
    return {
        "time": datetime.fromtimestamp(record.created_at, UTC).isoformat(timespec="seconds"),
        "vote": "up" if record.value > 0 else "down",
        "question": record.question,
        "answer": record.answer,
        "persona": record.persona,
        "model": record.model,
        "engine": record.engine,
        "platform": record.platform,
        "channel": record.channel_id,
        "thread": record.thread_id,
        "revision": record.revision,
    }


def write_lines(records: Iterable[FeedbackRecord], out: TextIO) -> int:
    """Write one JSON object per line; returns how many."""
    count = 0
    for record in records:
        out.write(json.dumps(as_json(record), ensure_ascii=False) + "\n")
        count += 1
    return count
