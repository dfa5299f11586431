"""Request bodies checked against Discord's published OpenAPI description.

Why: a fake that accepts any JSON would let the bot send components, interaction callbacks or
command registrations that the real Discord rejects with 400. `tests/data/
discord_openapi_requests.json` holds the request-body schemas of the routes the fake checks,
cut from discord/discord-api-spec (see its ``source``), and `check` validates a body against
them with `jsonschema` (OpenAPI 3.1 schemas are JSON Schema 2020-12).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC = Path(__file__).resolve().parent.parent / "data" / "discord_openapi_requests.json"


@functools.cache
def _spec() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SPEC.read_text(encoding="utf-8"))
    return loaded


SNOWFLAKE = {"anyOf": [{"type": "string", "pattern": "^(0|[1-9][0-9]*)$"},
                       {"type": "integer", "minimum": 0}]}
"""Discord reads a snowflake written as a JSON number as well as a string (discord.py sends
numbers in ``message_reference`` and ``allowed_mentions``); the description only says string."""


@functools.cache
def _validator(route: str) -> Draft202012Validator | None:
    spec = _spec()
    schema = spec["routes"].get(route)
    if schema is None:
        return None
    components = {"schemas": {**spec["components"]["schemas"], "SnowflakeType": SNOWFLAKE}}
    return Draft202012Validator({**schema, "components": components})


def checked_routes() -> list[str]:
    """``"METHOD /route/{template}"`` keys, as the fake records routes."""
    return sorted(_spec()["routes"])


def check(method: str, route: str | None, body: Any) -> list[str]:
    """What is wrong with `body` for ``method route`` by Discord's schema ([] when valid, or
    when the route is not one the fake checks)."""
    if route is None or body is None:
        return []
    validator = _validator(f"{method.upper()} {route}")
    if validator is None:
        return []
    problems = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(part) for part in error.absolute_path) or "(body)"
        problems.append(f"{where}: {error.message[:300]}")
    return problems
