"""Exceptions of the bot.

::

    BotError
    ├── ConfigError        a setting is wrong; start-up stops with one line naming it
    ├── UserError          shown to the user verbatim (bad arguments, message too long)
    │   ├── BusyError      the model queue is full; try again in a moment
    │   ├── RateLimited    this user sent too many requests; try again in N seconds
    │   ├── UnavailableError  the model server does not answer; try again shortly
    │   └── StoreUnavailable  the shared database cannot be reached; try again in a moment
    ├── ModelLoadError     the model could not be loaded; start-up stops
    └── GenerationError    the model failed on one request; the user gets a short apology

Anything else that escapes a handler is a bug: it is logged with its traceback at the adapter
boundary and answered with a short apology.
"""

from __future__ import annotations


class BotError(Exception):
    """Base class of every error the bot raises on purpose."""


class ConfigError(BotError):
    """A setting is missing or malformed."""

    def __init__(self, variable: str, expected: str, got: str | None = None) -> None:
        self.variable = variable
        self.expected = expected
        self.got = got
        shown = "" if got is None else f" (got {got!r})"
        super().__init__(f"{variable}: expected {expected}{shown}")


class UserError(BotError):
    """An error whose message is meant for the user, shown as is."""


class BusyError(UserError):
    """The generation queue is full."""

    def __init__(self, message: str = "I'm busy with other requests right now; "
                 "please try again in a moment.") -> None:
        super().__init__(message)


class RateLimited(UserError):
    """The user is over the per-user rate limit."""


class UnavailableError(UserError):
    """The remote model server cannot be reached; the engine keeps reconnecting."""

    def __init__(self, message: str = "The model server is unreachable right now; "
                 "please try again shortly.") -> None:
        super().__init__(message)


class ModelLoadError(BotError):
    """The model could not be loaded."""


class GenerationError(BotError):
    """The model failed while generating one reply."""


class StoreUnavailable(UserError):
    """The history database (PostgreSQL) cannot be reached right now; nothing was stored."""

    def __init__(self, message: str = "I can't reach my database right now, so I can't "
                 "answer; please try again in a moment.") -> None:
        super().__init__(message)
