"""Load weights, converting a GGUF file once and keeping the result as safetensors.

Converting the bundled GGUF takes about 15 s on a small CPU; the converted folder loads in
under 2 s. The cache folder is keyed by the GGUF file's path, size and modification time, and
written to a temporary folder first, so a crash mid-write never leaves a half cache behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import __version__ as transformers_version
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from bot.engines.local.kernel_choice import cache_name
from bot.engines.local.model_source import ModelSource
from bot.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)
_COMPLETE = ".complete"


def cache_folder(source: ModelSource, cache_dir: str | Path) -> Path:
    """Where the converted copy of a GGUF file lives."""
    path = Path(source.location)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers_version}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{path.stem}-{digest}"


def converted_folder(source: ModelSource, cache_dir: str | Path) -> Path | None:
    """The complete converted copy of a GGUF file, or None before the first start."""
    folder = cache_folder(source, cache_dir) if source.kind == "gguf" else None
    return folder if folder is not None and (folder / _COMPLETE).is_file() else None


def kernel_cache_file(source: ModelSource, cache_dir: str | Path) -> Path:
    """Where the linear kernel choice for `source` is cached (`kernel_choice`): next to
    the converted model, or for a folder or hub model in `cache_dir`."""
    if source.kind == "gguf":
        return cache_folder(source, cache_dir) / "kernels.json"
    return Path(cache_dir) / cache_name(source.location)


def load_pretrained(source: ModelSource, *, dtype: torch.dtype,
                    cache_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from a GGUF file (via the cache), a folder or the hub.

    Raises:
        ModelLoadError: with a message a user can act on.
    """
    try:
        if source.kind == "gguf":
            folder = converted_folder(source, cache_dir)
            if folder is None:
                folder = cache_folder(source, cache_dir)
                _convert_gguf(source, folder)
            else:
                log.info("Loading %s from the converted cache %s", source.display_name, folder)
            return _load_folder(str(folder), dtype)
        log.info("Loading %s", source.display_name)
        return _load_folder(source.location, dtype)
    except ModelLoadError:
        raise
    except OSError as exc:
        hint = ""
        if source.kind == "hub":
            hint = (" (is the model id right, and can this machine reach the Hugging Face hub? "
                    "Offline, set MODEL to a local folder or .gguf file)")
        raise ModelLoadError(f"could not load {source.display_name}{hint}: {exc}") from exc
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load {source.display_name}: {exc}") from exc


def _load_folder(location: str, dtype: torch.dtype,
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import (  # the model registry and modeling code: ~85 MiB, when needed
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    return model, tokenizer


def _convert_gguf(source: ModelSource, folder: Path) -> None:
    """Dequantize the GGUF file into a safetensors folder (the slow first start)."""
    gguf = Path(source.location)
    print(f"First start: converting {gguf.name} to safetensors (about 15-30 s, once; "
          f"later starts load the cache in {folder.parent}).", file=sys.stderr, flush=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained while it still carries the GGUF
    # quantization marker; the weights are already dequantized, so clearing it is safe.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a module attribute
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / _COMPLETE).write_text(f"converted from {gguf}\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    print(f"Converted in {time.monotonic() - started:.1f} s; cached at {folder}.",
          file=sys.stderr, flush=True)
