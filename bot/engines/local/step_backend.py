"""The in-process engine on the own Llama step: a CPU backend without transformers' forward.

For a Llama model on the CPU in ``int4`` mode (the default for a Q4 GGUF file) the backend
keeps only the step's weights (`llama_weights`; the transformers model is dropped once they
are gathered), batches with `StaticDecodeBatch`, and uses compiled decode steps as they
become ready (`step_compiler`); until then, and for batch sizes not compiled, the same step
runs eagerly. Its `ModelInfo.detail` says which steps are compiled (shown by /status).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerBase

from bot.engines.contract import GenerationRequest, ModelInfo
from bot.engines.local import llama_weights, stored_weights
from bot.engines.local.batch import BatchStats
from bot.engines.local.batch_rows import Endings
from bot.engines.local.linear_kernels import available
from bot.engines.local.llama_step import empty_cache, forward
from bot.engines.local.llama_weights import LlamaShape, Weights
from bot.engines.local.prompt_cache import PromptCache
from bot.engines.local.rendering import HFTokenCounter, PromptRenderer
from bot.engines.local.saved_folder import config_of, generation_config_of, tokenizer_of
from bot.engines.local.static_batch import StaticDecodeBatch, slot_count
from bot.engines.local.step_compiler import START_DELAY, CompiledSteps, folder_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel  # its modeling code: a warm start never needs it

log = logging.getLogger(__name__)

COMPILED_SLOTS = (1, 2, 4, 8, 16)
"""Batch sizes compiled steps are built for, in this order (up to `MAX_BATCH_SIZE`'s
default; larger batches decode eagerly)."""


class StepBackend:
    """`Backend` and `BatchingBackend` over `Weights`, on the worker thread."""

    def __init__(self, weights: Weights, tokenizer: PreTrainedTokenizerBase,
                 generation_config: Any, *, name: str, bot_name: str, context_tokens: int,
                 prompt_cache_mb: float = 256, steps: CompiledSteps | None = None) -> None:
        self.weights = weights
        self.tokenizer = tokenizer
        self.renderer = PromptRenderer(tokenizer, bot_name)
        self.endings = Endings.of(generation_config, tokenizer)
        self.steps = steps
        detail = steps.describe if steps is not None else (lambda: "eager decode steps")
        self.info = ModelInfo(name=name, device="cpu", dtype=f"{weights.kind} weights",
                              context_tokens=context_tokens, detail=detail)
        budget = int(prompt_cache_mb * 2**20)
        self.prompt_cache = PromptCache(budget) if budget > 0 else None
        self.batch_stats = BatchStats()

    def token_counter(self) -> HFTokenCounter:
        return HFTokenCounter(self.renderer)

    def open_batch(self) -> StaticDecodeBatch:
        return StaticDecodeBatch(self.weights, self.tokenizer, self.renderer,
                                 self.prompt_cache, endings=self.endings,
                                 stats=self.batch_stats, steps=self.steps)

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        """One request alone, through a batch of its own (the worker batches instead)."""
        batch = self.open_batch()
        done = False

        def first(_: int, output: Any) -> None:
            nonlocal done
            emit(output.piece) if output.piece else None
            done = output.finished

        batch.admit([(0, request)], first)
        while not done and not should_stop():
            output = batch.step()[0]
            if output.piece:
                emit(output.piece)
            done = output.finished
        return batch.finish(0)

    @torch.inference_mode()
    def log_likelihood(self, ids: list[int], chunk: int = 512) -> float:
        """Mean log-probability per predicted token of `ids` (the quality guard's measure,
        `quality.mean_log_likelihood` for a transformers model)."""
        keys, values = empty_cache(self.weights.shape, 1, len(ids))
        total, count = 0.0, 0
        for start in range(0, len(ids) - 1, chunk):
            piece = ids[start:start + chunk]
            logits, new_keys, new_values = forward(
                self.weights.shape, self.weights.kind, self.weights.flat, torch.tensor([piece]),
                torch.tensor([start]), keys, values, all_logits=True)
            keys[:, 0, :, start:start + len(piece)] = new_keys[:, 0]
            values[:, 0, :, start:start + len(piece)] = new_values[:, 0]
            targets = torch.tensor(ids[start + 1:start + 1 + len(piece)])
            picked = torch.log_softmax(logits[0, :len(targets)], dim=-1).gather(
                1, targets[:, None])
            total += float(picked.sum())
            count += len(targets)
        return total / count

    def close(self) -> None:
        if self.prompt_cache is not None:
            self.prompt_cache.clear()
        if self.steps is not None:
            self.steps.close()


def step_backend(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, kind: str,
                 name: str, bot_name: str, context_tokens: int, prompt_cache_mb: float,
                 steps_root: Path | None, compile_delay: float | None = START_DELAY,
                 compiled_slots: Sequence[int] = COMPILED_SLOTS,
                 store_weights: bool = False) -> StepBackend | None:
    """A `StepBackend` for `model`, or None (logged) when the own step cannot run it; the
    caller then keeps transformers' forward. `steps_root`: where compiled steps (and, with
    `store_weights`, the step's weights for `stored_step_backend`) are cached (None: never
    compiled)."""
    shape = _runnable_shape(model.config, kind)
    if shape is None:
        return None
    weights = llama_weights.from_model(model, kind)
    if store_weights and steps_root is not None:
        stored_weights.save(weights, stored_weights.path_for(steps_root, shape, kind))
    return _serve(weights, tokenizer, model.config, model.generation_config, name=name,
                  bot_name=bot_name, context_tokens=context_tokens,
                  prompt_cache_mb=prompt_cache_mb, steps_root=steps_root,
                  compile_delay=compile_delay, compiled_slots=compiled_slots)


def stored_step_backend(location: str, *, kind: str, name: str, bot_name: str,
                        context_tokens: int, prompt_cache_mb: float, steps_root: Path,
                        compile_delay: float | None = START_DELAY,
                        compiled_slots: Sequence[int] = COMPILED_SLOTS) -> StepBackend | None:
    """The warm start: a `StepBackend` from the weights an earlier `step_backend` stored
    under `steps_root` for the model in `location` (a folder), without loading the model
    itself; None when there are none."""
    config = config_of(location)
    if llama_weights.unsupported(config) is not None:  # then nothing was stored
        return None
    path = stored_weights.path_for(steps_root, llama_weights.shape_of(config), kind)
    shape = _runnable_shape(config, kind) if path.is_file() else None
    if shape is None:
        return None
    weights = stored_weights.load(path, shape, kind)
    if weights is None:
        return None
    log.info("the step's weights loaded from %s", path)
    return _serve(weights, tokenizer_of(location), config,
                  generation_config_of(location, config),
                  name=name, bot_name=bot_name, context_tokens=context_tokens,
                  prompt_cache_mb=prompt_cache_mb, steps_root=steps_root,
                  compile_delay=compile_delay, compiled_slots=compiled_slots)


def _runnable_shape(config: Any, kind: str) -> LlamaShape | None:
    """The model's shape when the own step can run it in `kind` here, else None (logged)."""
    reason = llama_weights.unsupported(config)
    shape = llama_weights.shape_of(config) if reason is None else None
    if shape is not None and kind == "int4" and not llama_weights.fits_int4(shape):
        reason = "matrix shapes torch's int4 kernel does not take"
    elif kind == "int4" and not (available("int4") and available("int8w")):
        reason = "torch's int4 and int8 weight kernels do not both compute correctly here"
    if reason is not None or shape is None:
        log.info("the own decode step does not run this model (%s); using transformers'",
                 reason)
        return None
    return shape


def _serve(weights: Weights, tokenizer: PreTrainedTokenizerBase, config: Any,
           generation_config: Any, *, name: str, bot_name: str, context_tokens: int,
           prompt_cache_mb: float, steps_root: Path | None, compile_delay: float | None,
           compiled_slots: Sequence[int]) -> StepBackend:
    limit = getattr(config, "max_position_embeddings", None) or context_tokens
    steps = None
    if steps_root is not None:
        steps = CompiledSteps(folder_for(steps_root, weights.shape, weights.kind),
                              weights.shape, weights.kind,
                              [slot_count(c) for c in compiled_slots], delay=compile_delay)
    log.info("own decode step, %s weights (%.0f MiB)", weights.kind, weights.nbytes / 2**20)
    return StepBackend(weights, tokenizer, generation_config, name=name,
                       bot_name=bot_name, context_tokens=min(context_tokens, int(limit)),
                       prompt_cache_mb=prompt_cache_mb, steps=steps)
