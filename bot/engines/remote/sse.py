"""Server-sent events, as OpenAI-compatible servers stream them, parsed line by line.

Kept apart from the HTTP client so the parsing rules (comments as keep-alives, multi-line
``data:``, the ``[DONE]`` sentinel) are tested without a socket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"


class StreamFormatError(ValueError):
    """An event's data was not the JSON object the API promises."""


@dataclass(slots=True)
class SSEParser:
    """Feed raw lines (bytes, newline included or not); collect complete events' data.

    Comment lines (``: ping``) are keep-alives and produce nothing; an event ends at a blank
    line, and its ``data:`` lines are joined with newlines, as the SSE specification says.
    """

    _data: list[str] = field(default_factory=list)

    def feed(self, raw: bytes) -> str | None:
        """One line in; the data of the event it completes, if any."""
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            return self._flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        return None

    def close(self) -> str | None:
        """The stream ended: a last event without its blank line still counts."""
        return self._flush()

    def _flush(self) -> str | None:
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


def decode_chunk(data: str) -> dict[str, Any]:
    """The JSON object of one ``data:`` payload.

    Raises:
        StreamFormatError: the payload is not a JSON object.
    """
    try:
        chunk = json.loads(data)
    except ValueError:
        raise StreamFormatError(f"not JSON: {data[:200]!r}") from None
    if not isinstance(chunk, dict):
        raise StreamFormatError(f"not a JSON object: {data[:200]!r}")
    return chunk


@dataclass(frozen=True, slots=True)
class Delta:
    """What one chunk adds: answer text, reasoning text, and why it finished (if it did)."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None


def chunk_delta(chunk: dict[str, Any]) -> Delta:
    """The first choice's delta of a ``chat.completion.chunk`` (usage-only chunks count)."""
    usage = chunk.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return Delta(completion_tokens=tokens if isinstance(tokens, int) else None)
    choice = choices[0]
    delta = choice.get("delta") or {}
    content = delta.get("content") or ""
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    return Delta(content=content if isinstance(content, str) else "",
                 reasoning=reasoning if isinstance(reasoning, str) else "",
                 finish_reason=choice.get("finish_reason"),
                 completion_tokens=tokens if isinstance(tokens, int) else None)
