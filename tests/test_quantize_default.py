"""`MODEL_QUANTIZE=auto`: int4 for a 4-bit GGUF file (the bundled Q4_1 one), else off.

The file type is read from the GGUF header alone (the `gguf` package's reader takes 15 s on
the bundled file, parsing every tokenizer entry first)."""

from __future__ import annotations

import struct
from pathlib import Path

from bot.engines.local.backend import quantize_mode
from bot.engines.local.model_source import ModelSource, bundled_model, gguf_file_type


def write_gguf(path: Path, file_type: int) -> Path:
    """A GGUF header: a string array first (as a tokenizer's), then general.file_type."""
    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    body = (string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + string("a")
            + string("bc") + string("general.file_type") + struct.pack("<II", 4, file_type))
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + body)
    return path


def test_auto_takes_int4_for_a_four_bit_gguf_only(tmp_path: Path,
                                                  tiny_model_dir: Path) -> None:
    q4 = write_gguf(tmp_path / "q4_1.gguf", 3)
    q8 = write_gguf(tmp_path / "q8_0.gguf", 7)
    assert gguf_file_type(q4) == 3
    assert quantize_mode("auto", ModelSource("gguf", str(q4), "q4")) == "int4"
    assert quantize_mode("auto", ModelSource("gguf", str(q8), "q8")) == "off"
    assert quantize_mode("auto", ModelSource("folder", str(tiny_model_dir), "t")) == "off"
    assert quantize_mode("bf16", ModelSource("gguf", str(q4), "q4")) == "bf16"
    assert quantize_mode("auto", bundled_model()) == "int4"  # the bundled file is Q4_1
