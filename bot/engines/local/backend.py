"""Loads the in-process engine for a model: the own Llama step where it runs the model (a
warm start reads its stored weights), else transformers' forward (`hf_backend`).

Importing this module imports torch, so only the worker thread's factory (and tests) do.
A warm start never imports transformers' modeling code.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import bot.engines.local.openmp  # noqa: F401 - sets OpenMP's spin-wait before torch loads it

# isort: split
import torch

from bot.engines.local.cpu_linear import release_freed_memory
from bot.engines.local.model_cache import converted_folder, kernel_cache_file, load_pretrained
from bot.engines.local.model_source import ModelSource, is_four_bit
from bot.engines.local.step_backend import StepBackend, step_backend, stored_step_backend

if TYPE_CHECKING:
    from bot.engines.local.hf_backend import HFBackend

log = logging.getLogger(__name__)


def pick_device(setting: str) -> str:
    """``auto`` means CUDA when a GPU is visible, else the CPU."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        log.warning("DEVICE=cuda but no CUDA GPU is visible; using the CPU")
        return "cpu"
    return setting


def pick_dtype(setting: str, device: str) -> torch.dtype:
    """``auto`` is fp32 on the CPU (fastest without bf16 instructions), bf16/fp16 on a GPU."""
    if setting != "auto":
        return {"float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}[setting]
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantize_mode(setting: str, source: ModelSource) -> str:
    """`MODEL_QUANTIZE`: ``auto`` is ``int4`` for a 4-bit GGUF file, whose weights int4
    holds as they are (`int4`), else ``off``."""
    if setting != "auto":
        return setting
    return "int4" if is_four_bit(source) else "off"


def load_backend(source: ModelSource, *, device: str, dtype: str, cache_dir: str,
                 bot_name: str, context_tokens: int, prompt_cache_mb: float = 256,
                 quantize: str = "auto") -> HFBackend | StepBackend:
    """Load the model and tokenizer for `source` and wrap them in a backend: the own Llama
    step for ``int4`` on the CPU where it runs the model, else transformers'."""
    chosen_device = pick_device(device)
    chosen_dtype = pick_dtype(dtype, chosen_device)
    mode = quantize_mode(quantize, source)
    on_cpu = chosen_device == "cpu" and chosen_dtype == torch.float32
    if mode != "off" and not on_cpu:
        log.info("MODEL_QUANTIZE=%s applies to fp32 on the CPU only; ignored", mode)
    kernels = kernel_cache_file(source, cache_dir)
    own_step = on_cpu and mode == "int4"
    # For a GGUF file, whose converted folder is keyed by the file, a later start reads
    # the step's weights as the first stored them and never builds the fp32 model.
    converted = converted_folder(source, cache_dir)
    if own_step and converted is not None:
        stored = stored_step_backend(str(converted), kind="int4", name=source.display_name,
                                     bot_name=bot_name, context_tokens=context_tokens,
                                     prompt_cache_mb=prompt_cache_mb, steps_root=kernels.parent)
        if stored is not None:
            return stored
    model, tokenizer = load_pretrained(source, dtype=chosen_dtype, cache_dir=cache_dir)
    model.to(chosen_device)  # type: ignore[arg-type]
    if own_step:
        own = step_backend(model, tokenizer, kind="int4", name=source.display_name,
                           bot_name=bot_name, context_tokens=context_tokens,
                           prompt_cache_mb=prompt_cache_mb, steps_root=kernels.parent,
                           store_weights=source.kind == "gguf")
        if own is not None:
            del model  # the step holds its own (int4) copy of every weight
            release_freed_memory()
            return own
    from bot.engines.local.hf_backend import HFBackend

    return HFBackend(model, tokenizer, name=source.display_name, bot_name=bot_name,
                     context_tokens=context_tokens, prompt_cache_mb=prompt_cache_mb,
                     quantize=mode, kernel_cache=kernels)
