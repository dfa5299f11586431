"""transformers' own forward as a backend: for models the own Llama step does not run.

`HFBackend` serves a transformers causal LM (on CUDA when there is one), batched
continuously through `HFDecodeBatch`. Importing it imports transformers' modeling code
(about 85 MiB), so `backend.load_backend` imports it only when a model needs it.
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
from bot.engines.local.cpu_linear import convert_linears, describe
from bot.engines.local.kernel_choice import KernelChoice
from bot.engines.local.prompt_cache import PromptCache
from bot.engines.local.rendering import HFTokenCounter, PromptRenderer

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
