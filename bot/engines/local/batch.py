"""Continuous batching for a transformers causal LM: prefill, batched decode steps, leaving.

All rows share one left-padded key/value cache. Joining requests are prefilled in passes of
prompts that continue the same cached prefix (`prompt_cache`: their conversation's, or the
system prompt another conversation left) and have similar lengths, left-padded; each produces
its first token at once and is padded on the left into the batch before the next step. Every
step feeds one token per row with explicit position ids and an attention mask that hides the
padding, so each row computes what it would alone. A row that leaves hands its keys and
values to the prompt cache, and columns left holding only padding are trimmed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from bot.engines.contract import GenerationRequest, StepOutput
from bot.engines.local.batch_rows import Endings, Row, output, reusable
from bot.engines.local.kv_cache import KV, ROOM, growing_cache, layers_of, plain_cache, with_room
from bot.engines.local.prompt_cache import CachedPrompt, PromptCache
from bot.engines.local.sampling import next_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from bot.engines.local.rendering import PromptRenderer

PADDING_SLACK = 1.25
"""Prompts are prefilled together while padding adds at most this share of extra tokens."""
MAX_PREFILL_TOKENS = 4096
"""Padded tokens in one prefill pass at most, to bound its activation memory."""


@dataclass(slots=True)
class BatchStats:
    """Prompt tokens taken from the prompt cache vs computed, for tests and the benchmark."""

    reused_tokens: int = 0
    computed_tokens: int = 0
    last_reused: int = 0


def can_batch(model: PreTrainedModel) -> bool:
    """Batching relies on plain full-attention cache layers (no sliding window, no states)."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class HFDecodeBatch:
    """A `bot.engines.contract.DecodeBatch` over a transformers model, on the worker thread."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 renderer: PromptRenderer, prompt_cache: PromptCache | None,
                 stats: BatchStats | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.prompt_cache = prompt_cache
        self.stats = stats if stats is not None else BatchStats()
        self._endings = Endings.of(model.generation_config, tokenizer)
        self._top_k = self._endings.top_k
        self._device = model.device
        self._pad_id = self._endings.pad_id
        self._rows: list[Row] = []
        self._joining: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._padded = False

    def __len__(self) -> int:
        return len(self._rows) + len(self._joining)

    def cost(self, request: GenerationRequest) -> int:
        return len(self.renderer.encode(request.prompt)) + request.sampling.max_new_tokens

    @torch.inference_mode()
    def admit(self, entries: Sequence[tuple[int, GenerationRequest]],
              ready: Callable[[int, StepOutput], None]) -> None:
        passes: dict[tuple[int, int], tuple[CachedPrompt | None, int, list[Row]]] = {}
        for seq_id, request in entries:
            ids = self.renderer.encode(request.prompt)
            if not ids:
                raise ValueError("the prompt renders to no tokens")
            reuse, entry = self._reusable(request.cache_key, ids)
            row = Row(seq_id, request, fed=ids, generated=[])
            passes.setdefault((id(entry), reuse), (entry, reuse, []))[2].append(row)
        groups = [(entry, reuse, group) for entry, reuse, rows in passes.values()
                  for group in _similar_lengths(rows, reuse)]
        groups.sort(key=lambda g: sum(len(row.fed) - g[1] for row in g[2]))  # quick ones first
        for entry, reuse, rows in groups:
            self._prefill(rows, entry, reuse)
            self._joining.extend(rows)
            for row in rows:
                ready(row.seq_id, self._output(row))

    def _prefill(self, rows: list[Row], entry: CachedPrompt | None, reuse: int) -> None:
        """One forward pass over prompts that continue the same `reuse` cached tokens of
        `entry` (or none), their new tokens left-padded to the longest."""
        count = len(rows)
        length = max(len(row.fed) - reuse for row in rows)
        inputs = torch.full((count, length), self._pad_id, device=self._device)
        new = torch.zeros((count, length), dtype=torch.bool, device=self._device)
        for i, row in enumerate(rows):
            inputs[i, length - len(row.fed) + reuse:] = torch.tensor(row.fed[reuse:])
            new[i, length - len(row.fed) + reuse:] = True
        positions = reuse + (new.long().cumsum(dim=1) - 1).clamp_min(0)
        past = None
        mask = new
        if entry is not None:
            past = [(k[:, :, :reuse].expand(count, -1, -1, -1),
                     v[:, :, :reuse].expand(count, -1, -1, -1)) for k, v in entry.layers]
            mask = torch.cat([new.new_ones((count, reuse)), new], dim=1)
        cache = plain_cache(self.model, past)
        out = self.model(input_ids=inputs, attention_mask=None if new.all() else mask,
                         position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        chosen = next_tokens(out.logits[:, -1, :], [row.request.sampling for row in rows],
                             top_k=self._top_k, seen=lambda i: rows[i].fed)
        layers = layers_of(cache)
        for i, (row, token) in enumerate(zip(rows, chosen, strict=True)):
            start = reuse + length - (len(row.fed) - reuse)  # where its new tokens begin
            if start == reuse:
                row.own_cache = [(k[i:i + 1], v[i:i + 1]) for k, v in layers]
            else:  # skip the padding between the cached part and the new part
                row.own_cache = [(torch.cat([k[i:i + 1, :, :reuse], k[i:i + 1, :, start:]], 2),
                                  torch.cat([v[i:i + 1, :, :reuse], v[i:i + 1, :, start:]], 2))
                                 for k, v in layers]
            row.generated = [token]
            self._count(reuse, len(row.fed) - reuse)

    def _count(self, reused: int, computed: int) -> None:
        self.stats.reused_tokens += reused
        self.stats.computed_tokens += computed
        self.stats.last_reused = reused

    @torch.inference_mode()
    def step(self) -> dict[int, StepOutput]:
        self._merge_joining()
        if not self._rows:
            return {}
        assert self._mask is not None
        rows = self._rows
        inputs = torch.tensor([[row.generated[-1]] for row in rows], device=self._device)
        positions = torch.tensor([[len(row.fed)] for row in rows], device=self._device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        out = self.model(input_ids=inputs, attention_mask=self._mask if self._padded else None,
                         position_ids=positions, cache=self._cache, use_cache=True,
                         logits_to_keep=1)
        chosen = next_tokens(out.logits[:, -1, :], [row.request.sampling for row in rows],
                             top_k=self._top_k,
                             seen=lambda i: [*rows[i].fed, rows[i].generated[-1]])
        outputs = {}
        for row, token in zip(rows, chosen, strict=True):
            row.fed.append(row.generated[-1])
            row.generated.append(token)
            outputs[row.seq_id] = self._output(row)
        return outputs

    @torch.inference_mode()
    def finish(self, seq_id: int) -> str:
        row = self._remove(seq_id)
        text = str(self.tokenizer.decode(row.generated, skip_special_tokens=True))
        return self.renderer.clean_reply(text)

    def reply_tokens(self, seq_id: int) -> list[int]:
        """The token ids a sequence has generated so far (until `finish`)."""
        return list(next(r for r in (*self._rows, *self._joining) if r.seq_id == seq_id).generated)

    def clear(self) -> None:
        self._rows, self._joining = [], []
        self._cache, self._mask = None, None

    # -- prompt cache ----------------------------------------------------------------

    def _reusable(self, key: str | None, ids: list[int]) -> tuple[int, CachedPrompt | None]:
        return reusable(self.prompt_cache, key, ids)

    def _store(self, row: Row, layers: list[KV]) -> None:
        key = row.request.cache_key
        if key is None or self.prompt_cache is None:
            return
        kept = tuple((k.clone(), v.clone()) for k, v in layers)
        self.prompt_cache.put(key, CachedPrompt(tuple(row.fed), kept))

    # -- rows joining and leaving ----------------------------------------------------

    def _merge_joining(self) -> None:
        """Pad the joining rows and the batch on the left to one length, and stack them."""
        if not self._joining:
            return
        joining, self._joining = self._joining, []
        old_rows = len(self._rows)
        old_len = 0 if self._mask is None else self._mask.shape[1]
        length = max(old_len, *(len(row.fed) for row in joining))
        rows = old_rows + len(joining)
        mask = torch.zeros((rows, length), dtype=torch.bool, device=self._device)
        if self._mask is not None:
            mask[:old_rows, length - old_len:] = self._mask
        for i, row in enumerate(joining):
            mask[old_rows + i, length - len(row.fed):] = True
        old_layers = layers_of(self._cache) if self._cache is not None else []
        buffers: list[KV] = []
        for index in range(len(joining[0].own_cache or [])):
            pair = []
            for part in (0, 1):
                sample = (joining[0].own_cache or [])[index][part]
                heads, dim = sample.shape[1], sample.shape[3]
                # Padding must be zeros, not garbage: masked columns still meet a 0 weight.
                buffer = sample.new_zeros((rows, heads, length + ROOM, dim))
                if old_layers:
                    buffer[:old_rows, :, length - old_len:length] = old_layers[index][part]
                for i, row in enumerate(joining):
                    own = (row.own_cache or [])[index][part]
                    buffer[old_rows + i, :, length - own.shape[2]:length] = own[0]
                pair.append(buffer)
            buffers.append((pair[0], pair[1]))
        for row in joining:
            row.own_cache = None
        self._rows.extend(joining)
        self._cache = growing_cache(self.model, buffers, length)
        self._set_mask(mask)

    def _remove(self, seq_id: int) -> Row:
        """Take a row out, giving its keys and values to the prompt cache."""
        for i, row in enumerate(self._joining):
            if row.seq_id == seq_id:
                del self._joining[i]
                self._store(row, row.own_cache or [])
                return row
        index = next(i for i, row in enumerate(self._rows) if row.seq_id == seq_id)
        row = self._rows.pop(index)
        assert self._cache is not None and self._mask is not None
        length = self._mask.shape[1]
        start = length - len(row.fed)
        old_layers = layers_of(self._cache)
        self._store(row, [(k[index:index + 1, :, start:], v[index:index + 1, :, start:])
                          for k, v in old_layers])
        if not self._rows:
            self._cache, self._mask = None, None
            return row
        keep = torch.tensor([i for i in range(len(self._rows) + 1) if i != index],
                            device=self._device)
        mask = self._mask[keep]
        first = int(mask.any(dim=0).nonzero()[0, 0])  # columns before it are all padding
        self._cache = growing_cache(self.model, [
            (with_room(k[keep, :, first:]), with_room(v[keep, :, first:]))
            for k, v in old_layers], length - first)
        self._set_mask(mask[:, first:])
        return row

    def _set_mask(self, mask: torch.Tensor) -> None:
        self._mask = mask
        self._padded = not bool(mask.all())

    # -- text ------------------------------------------------------------------------

    def _output(self, row: Row) -> StepOutput:
        return output(row, self.tokenizer, self._endings)


def _similar_lengths(rows: list[Row], reuse: int) -> list[list[Row]]:
    """Groups of prompts, shortest first, whose new tokens (after the `reuse` cached ones)
    pad to the longest in their group cheaply."""
    groups: list[list[Row]] = []
    current: list[Row] = []
    real = 0
    for row in sorted(rows, key=lambda r: len(r.fed)):
        size = len(row.fed) - reuse
        padded = (len(current) + 1) * size
        if current and (padded > PADDING_SLACK * (real + size) or padded > MAX_PREFILL_TOKENS):
            groups.append(current)
            current, real = [], 0
        current.append(row)
        real += size
    if current:
        groups.append(current)
    return groups
