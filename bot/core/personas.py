"""Personas: named presets of system prompt, sampling and reply budget, one TOML file each.

The presets shipped in `bot/core/presets/` can be overridden or extended by files in
`PERSONAS_DIR`; a file there with the same name replaces the shipped one.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bot.errors import ConfigError

T = TypeVar("T")
SHIPPED_DIR = Path(__file__).with_name("presets")
DEFAULT_PERSONA = "assistant"


@dataclass(frozen=True, slots=True)
class Persona:
    """How the bot behaves in a channel; a field left as None takes the global setting
    (`SYSTEM_PROMPT`, `MAX_NEW_TOKENS`, `TEMPERATURE`, `TOP_P`, `REPETITION_PENALTY`)."""

    name: str
    description: str
    system_prompt: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    use_knowledge: bool = False
    unknown_reply: str | None = None
    """With `use_knowledge`: what to say when the passages do not back the model's answer
    (the knowledge base's "Escalation" section, if any, is added: who to ask)."""


def load_personas(user_dir: Path | None = None) -> dict[str, Persona]:
    """The shipped personas, overridden and extended by `user_dir` (if it exists).

    Raises:
        ConfigError: a persona file is malformed; the message names the file.
    """
    personas: dict[str, Persona] = {}
    folders = [SHIPPED_DIR] + ([user_dir] if user_dir is not None and user_dir.is_dir() else [])
    for folder in folders:
        for path in sorted(folder.glob("*.toml")):
            persona = _read(path)
            personas[persona.name] = persona
    if DEFAULT_PERSONA not in personas:
        raise ConfigError("PERSONAS_DIR", f"a folder that keeps the {DEFAULT_PERSONA!r} persona")
    return personas


def _read(path: Path) -> Persona:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        persona = Persona(
            name=path.stem.lower(),
            description=str(data.get("description", "")),
            system_prompt=_optional(data, "system_prompt", str),
            max_new_tokens=_optional(data, "max_new_tokens", int),
            temperature=_optional(data, "temperature", float),
            top_p=_optional(data, "top_p", float),
            repetition_penalty=_optional(data, "repetition_penalty", float),
            use_knowledge=bool(data.get("use_knowledge", False)),
            unknown_reply=_optional(data, "unknown_reply", str),
        )
    except (OSError, tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        raise ConfigError("PERSONAS_DIR", f"valid persona files ({path.name}: {exc})") from None
    if not (1 <= (persona.max_new_tokens or 1) <= 8192
            and 0 <= (persona.temperature or 0) <= 5
            and 0 < (persona.top_p or 1) <= 1
            and 1 <= (persona.repetition_penalty or 1) <= 2):
        raise ConfigError("PERSONAS_DIR", f"valid persona files ({path.name}: max_new_tokens "
                          "1-8192, temperature 0-5, top_p in (0, 1], repetition_penalty 1-2)")
    return persona


def _optional(data: dict[str, object], key: str, kind: Callable[[Any], T]) -> T | None:
    value = data.get(key)
    return None if value is None else kind(value)
