"""The own step's weights on disk, so that later starts never build the fp32 model.

Without this, every start loads the converted fp32 copy of the model (four times the size
of its int4 weights), gathers and quantizes it for the own step (`llama_weights`), and
drops it: most of a warm start's time and all of its memory peak. The first start stores
the step's tensors as they came out (`save`); later starts read them back (`load`) with the
model's config and tokenizer.

The file sits in the compiled steps' folder (`step_compiler.folder_for`), whose name hashes
the model's shapes, the weight kind, torch's instruction set (the packed int4 layout differs
between AVX2 and AVX-512) and the code that made the tensors, so a stale or foreign file is
never found. It is written to a temporary name first: a crash never leaves half a file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bot.engines.local.llama_weights import HEAD, PER_LAYER, LlamaShape, Weights
from bot.engines.local.step_compiler import folder_for

log = logging.getLogger(__name__)

FILE_NAME = "weights.safetensors"


def path_for(steps_root: Path, shape: LlamaShape, kind: str) -> Path:
    return folder_for(steps_root, shape, kind) / FILE_NAME


def save(weights: Weights, path: Path) -> None:
    """Store `weights` at `path`; a failure is logged, never raised (the start goes on)."""
    tensors = {f"{index:04d}": tensor.contiguous() for index, tensor in enumerate(weights.flat)}
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(partial),
                  metadata={"shape": weights.shape.to_json(), "kind": weights.kind})
        os.replace(partial, path)
    except OSError:
        log.warning("could not store the step's weights at %s; every start will quantize "
                    "the model again", path, exc_info=True)
        partial.unlink(missing_ok=True)
        return
    log.info("stored the step's weights (%.0f MiB) at %s for later starts",
             weights.nbytes / 2**20, path)


def load(path: Path, shape: LlamaShape, kind: str) -> Weights | None:
    """The weights stored at `path`, or None (a damaged file is logged and removed)."""
    try:
        with safe_open(str(path), framework="pt") as stored:
            metadata = stored.metadata() or {}
            flat = [stored.get_tensor(name) for name in sorted(stored.keys())]
    except (OSError, SafetensorError):
        log.warning("could not read the stored weights %s; quantizing the model again", path,
                    exc_info=True)
        path.unlink(missing_ok=True)
        return None
    expected = 4 + HEAD[kind] + shape.layers * PER_LAYER[kind]
    if (metadata.get("shape") != shape.to_json() or metadata.get("kind") != kind
            or len(flat) != expected):
        log.warning("the stored weights %s are not for this model; quantizing it again", path)
        path.unlink(missing_ok=True)
        return None
    return Weights(shape, kind, flat)
