"""Leveled logs on stderr, as text or JSON lines, each carrying the request id.

The request id (see `bot.ops.request_context`) ties an incoming message to its generation and
its reply across modules; JSON lines suit log shippers. Configured secrets (platform tokens,
the signing secret) are blanked out of every line, whoever logged it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import TextIO

from bot.ops.request_context import RequestIdFilter

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
REDACTED = "[redacted]"
_QUIET = ("httpx", "urllib3", "filelock", "aiohttp.access", "discord.gateway", "discord.client")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_text:  # already formatted (and redacted, see SecretRedactor)
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


class SecretRedactor(logging.Filter):
    """Replaces each configured secret with ``[redacted]`` in a record, before it is written.

    Why: libraries log what they send and receive at DEBUG (URLs, payloads, response
    headers), and an exception may quote a request; a token that reaches a log file or a log
    shipper is a leaked token. Add it to every handler: a filter on a logger does not see the
    records of the loggers below it. The record is rewritten in place (message formatted,
    traceback and stack formatted), so handlers after this one get the redacted text too.
    """

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def build_handler(stream: TextIO, fmt: str = "text",
                  secrets: Iterable[str | None] = ()) -> logging.Handler:
    """A handler writing `fmt` lines with request ids, and `secrets` redacted."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(SecretRedactor(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: str, fmt: str = "text",
                      secrets: Iterable[str | None] = ()) -> None:
    """Send logs to stderr in `fmt` ("text" or "json"), with request ids and no secrets.

    Args:
        secrets: values that must never be written (tokens, signing secret); None and
            empty values are skipped.
    """
    handler = build_handler(sys.stderr, fmt, secrets)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
