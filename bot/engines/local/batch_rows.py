"""What both batch implementations share: a sequence's row, its streamed text, the end-of-text
ids, and which cached prompt a new request can continue.

`HFDecodeBatch` (transformers' model, left-padded cache) and `StaticDecodeBatch` (the own
Llama step, a slot per row) differ in how they compute; what a row holds, when it is finished,
what text it streams and what the prompt cache gives it must not differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from bot.engines.contract import GenerationRequest, StepOutput
from bot.engines.local.kv_cache import KV
from bot.engines.local.prompt_cache import CachedPrompt, PromptCache, common_prefix
from bot.engines.local.sampling import DEFAULT_TOP_K

MIN_REUSE = 16
"""Cached tokens worth reusing: fewer are cheaper to recompute with the other new prompts."""


@dataclass(slots=True)
class Row:
    seq_id: int
    request: GenerationRequest
    fed: list[int]
    """Token ids whose keys and values are in the cache, in order."""
    generated: list[int]
    """Reply ids so far; the last one is fed to the model on the next step."""
    own_cache: list[KV] | None = None
    """The row's own keys and values until it is merged into the batch (`HFDecodeBatch`)."""
    sent: str = ""
    """Text already streamed."""
    slot: int = -1
    """Its slot in a static cache (`StaticDecodeBatch`)."""


@dataclass(frozen=True, slots=True)
class Endings:
    """End-of-text ids, top-k and the padding id, from the generation config."""

    eos: frozenset[int]
    top_k: int
    pad_id: int

    @classmethod
    def of(cls, generation_config: Any, tokenizer: PreTrainedTokenizerBase) -> Endings:
        eos = generation_config.eos_token_id if generation_config is not None else None
        if eos is None:
            eos = tokenizer.eos_token_id
        ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        top_k = getattr(generation_config, "top_k", None)
        pad = tokenizer.pad_token_id
        return cls(ids, DEFAULT_TOP_K if top_k is None else int(top_k),
                   int(pad if pad is not None else next(iter(sorted(ids)), 0)))


def output(row: Row, tokenizer: PreTrainedTokenizerBase, endings: Endings) -> StepOutput:
    """The row's newest text, and whether its newest token ended it."""
    last = row.generated[-1]
    finished = last in endings.eos or len(row.generated) >= row.request.sampling.max_new_tokens
    return StepOutput(new_text(row, tokenizer, finished), finished)


def new_text(row: Row, tokenizer: PreTrainedTokenizerBase, finished: bool) -> str:
    """The text the newest token completes; held back while it ends mid-character."""
    text = str(tokenizer.decode(row.generated, skip_special_tokens=True,
                                clean_up_tokenization_spaces=False))
    if (text.endswith("\ufffd") and not finished) or not text.startswith(row.sent):
        return ""
    piece, row.sent = text[len(row.sent):], text
    return piece


def reusable(cache: PromptCache | None, key: str | None,
             ids: list[int]) -> tuple[int, CachedPrompt | None]:
    """How many leading prompt tokens the prompt cache holds, and in which entry.

    The conversation's own entry is taken (a new one replaces it when this generation ends);
    any other entry sharing a longer prefix, such as the system prompt, is read.
    """
    if cache is None:
        return 0, None
    own = cache.take(key) if key is not None else None
    entry, shared = (own, common_prefix(own.tokens, ids)) if own is not None else (None, 0)
    other, other_shared = cache.longest_match(ids, at_least=MIN_REUSE)
    if other_shared > shared:
        entry, shared = other, other_shared
    reuse = min(shared, len(ids) - 1)  # the last prompt token is computed for its logits
    if entry is None or reuse < MIN_REUSE:
        return 0, None
    return reuse, entry
