"""What can go wrong talking to an inference server, sorted by what the bot does about it.

The engine turns these into the bot's own errors (`bot.errors`): unreachable -> a short
"try again shortly" reply, busy -> the usual busy reply, context too long -> one retry with a
shorter history, a broken stream -> the partial answer plus a note.
"""

from __future__ import annotations


class RemoteError(Exception):
    """Base class of the remote engine's transport errors."""


class Unreachable(RemoteError):
    """No connection to the server (refused, DNS, connect timeout, reset before a reply)."""


class HTTPStatusError(RemoteError):
    """The server answered with an error status; `message` is its own explanation."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"HTTP {status}: {message}")


class ServerBusy(HTTPStatusError):
    """429 or 503: the server is overloaded or still loading; try again later."""


class ContextTooLong(HTTPStatusError):
    """400: the prompt (plus reply budget) does not fit the served model's context."""


class StreamBroken(RemoteError):
    """The connection ended before the stream finished (server killed, proxy timeout)."""


class StreamErrorEvent(RemoteError):
    """The server reported an error inside the stream, after answering 200."""
