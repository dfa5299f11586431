"""The in-process transformers backend: loads the model and generates on the worker thread.

Importing this module imports torch, so only the worker thread's factory (and tests) do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bot.engines.local.openmp  # noqa: F401 - sets OpenMP's spin-wait before torch loads it

# isort: split
import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from bot.engines.contract import GenerationRequest, ModelInfo
from bot.engines.local.batch import BatchStats, HFDecodeBatch, can_batch
from bot.engines.local.cpu_linear import convert_linears, describe, release_freed_memory
from bot.engines.local.kernel_choice import KernelChoice
from bot.engines.local.model_cache import converted_folder, kernel_cache_file, load_pretrained
from bot.engines.local.model_source import ModelSource, is_four_bit
from bot.engines.local.prompt_cache import PromptCache
from bot.engines.local.rendering import HFTokenCounter, PromptRenderer
from bot.engines.local.step_backend import StepBackend, step_backend, stored_step_backend

log = logging.getLogger(__name__)

class _PieceStreamer(TextStreamer):
    """Forwards decoded text to the worker's `emit` instead of printing it."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, emit: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._emit = emit

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._emit(text)


class _StopWhen(StoppingCriteria):
    """Stops generation between tokens when the worker says so (cancel, timeout, shutdown)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self._should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                 **kwargs: Any) -> torch.BoolTensor:
        stop = self._should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool,  # type: ignore[return-value]
                          device=input_ids.device)


class HFBackend:
    """A transformers causal LM, on CUDA when available, else on the CPU.

    The worker batches it continuously through `open_batch()`; `generate()` is the plain
    one-request `model.generate` path, kept as the reference the batch must match.

    Args:
        prompt_cache_mb: memory for per-conversation prompt caches (0 turns them off).
        quantize: on a CPU in fp32, the lowest precision a linear layer may get
            (`MODEL_QUANTIZE`: ``off``, ``bf16``, ``int8``; see `cpu_linear`); None leaves
            the model's `nn.Linear` layers as they are.
        kernel_cache: the JSON file that caches which kernel is fastest per weight shape on
            this machine (None: timed at every start).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 name: str, bot_name: str, context_tokens: int,
                 prompt_cache_mb: float = 256, quantize: str | None = "off",
                 kernel_cache: Path | None = None) -> None:
        model.eval()  # type: ignore[no-untyped-call]
        self.conversion = None
        if quantize is not None:
            self.conversion = convert_linears(model, quantize, KernelChoice(kernel_cache))
            if self.conversion.layers:
                log.info("linear layers for MODEL_QUANTIZE=%s: %s", quantize,
                         describe(self.conversion))
        self.model = model
        self.tokenizer = tokenizer
        self.renderer = PromptRenderer(tokenizer, bot_name)
        limit = getattr(model.config, "max_position_embeddings", None) or context_tokens
        self.info = ModelInfo(name=name, device=str(model.device),
                              dtype=str(model.dtype).removeprefix("torch."),
                              context_tokens=min(context_tokens, int(limit)))
        self._pad_id = tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = tokenizer.eos_token_id
        budget = int(prompt_cache_mb * 2**20)
        self.prompt_cache = PromptCache(budget) if budget > 0 else None
        self.batch_stats = BatchStats()

    def token_counter(self) -> HFTokenCounter:
        return HFTokenCounter(self.renderer)

    def open_batch(self) -> HFDecodeBatch | None:
        """A continuous batch sharing this backend's prompt cache; None if the model's cache
        layout (sliding windows, recurrent state) does not allow left-padded batching."""
        if not can_batch(self.model):
            log.info("this model's cache cannot be batched; serving one request at a time")
            return None
        return HFDecodeBatch(self.model, self.tokenizer, self.renderer, self.prompt_cache,
                             self.batch_stats)

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        ids = self.renderer.encode(request.prompt)
        input_ids = torch.tensor([ids], device=self.model.device)
        sampling = request.sampling
        options: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens,
                                   "pad_token_id": self._pad_id}
        if sampling.temperature > 0:
            options.update(do_sample=True, temperature=sampling.temperature,
                           top_p=sampling.top_p)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.repetition_penalty != 1:
            options["repetition_penalty"] = sampling.repetition_penalty
        with torch.inference_mode():
            output = self.model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=_PieceStreamer(self.tokenizer, emit),
                stopping_criteria=StoppingCriteriaList([_StopWhen(should_stop)]),
                **options,
            )
        new_tokens = output[0][len(ids):]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return self.renderer.clean_reply(str(text))

    def close(self) -> None:
        if self.prompt_cache is not None:
            self.prompt_cache.clear()
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


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
    return HFBackend(model, tokenizer, name=source.display_name, bot_name=bot_name,
                     context_tokens=context_tokens, prompt_cache_mb=prompt_cache_mb,
                     quantize=mode, kernel_cache=kernels)
