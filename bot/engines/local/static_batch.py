"""Continuous batching on the own Llama step (`llama_step`): a slot per row in a static cache.

Keys and values live in one cache per batch, ``[layers, slots, kv_heads, columns, head_dim]``.
A row joining takes a free slot (the cache grows to the next of `SLOT_COUNTS` when none is
free), gets its conversation's cached prompt copied into it (`prompt_cache`, as in
`HFDecodeBatch`) and its new prompt tokens computed in chunks; each step then decodes one
token for every slot at once, idle slots masked, and stores the new keys and values at each
row's own column. A row leaving hands its keys and values to the prompt cache; when at most a
quarter of the slots are in use the cache shrinks. Columns grow in steps of `COLUMN_STEP` as
the longest row grows, so attention never runs over much more than what the rows hold.

The decode step for a number of slots is the compiled one when `steps` has it (built in the
background by `step_compiler`), else the same function run eagerly: the greedy text is the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from bot.engines.contract import GenerationRequest, StepOutput
from bot.engines.local.batch import BatchStats
from bot.engines.local.batch_rows import Endings, Row, output, reusable
from bot.engines.local.cpu_linear import release_freed_memory
from bot.engines.local.llama_step import DecodeStep, empty_cache, forward
from bot.engines.local.llama_weights import Weights
from bot.engines.local.prompt_cache import CachedPrompt, PromptCache
from bot.engines.local.sampling import next_tokens

if TYPE_CHECKING:
    from bot.engines.local.rendering import PromptRenderer

log = logging.getLogger(__name__)

SLOT_COUNTS = (1, 2, 4, 8, 16, 32, 64)
"""Batch sizes a cache (and a compiled step) is made for; rows above 64 take multiples."""
COLUMN_STEP = 64
"""Cache columns grow in steps of this many tokens."""
PREFILL_CHUNK = 512
"""Prompt tokens computed in one pass at most (bounds the attention scores' memory)."""

StepFunction = Callable[..., Sequence[torch.Tensor]]


class StepSource(Protocol):
    """Compiled decode steps by number of slots (`step_compiler.CompiledSteps`)."""

    def get(self, slots: int) -> StepFunction | None: ...

    def poll(self) -> None: ...


def slot_count(rows: int) -> int:
    """The smallest of `SLOT_COUNTS` holding `rows` (multiples of 64 beyond)."""
    for count in SLOT_COUNTS:
        if rows <= count:
            return count
    return -(-rows // SLOT_COUNTS[-1]) * SLOT_COUNTS[-1]


class StaticDecodeBatch:
    """A `bot.engines.contract.DecodeBatch` over the own Llama step, on the worker thread."""

    def __init__(self, weights: Weights, tokenizer: PreTrainedTokenizerBase,
                 renderer: PromptRenderer, prompt_cache: PromptCache | None, *,
                 endings: Endings, stats: BatchStats | None = None,
                 steps: StepSource | None = None) -> None:
        self.weights = weights
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.prompt_cache = prompt_cache
        self.stats = stats if stats is not None else BatchStats()
        self._endings = endings
        self._steps = steps
        self._eager = DecodeStep(weights.shape, weights.kind)
        self._slots: list[Row | None] = []
        self._keys, self._values = empty_cache(weights.shape, 0, 0)

    def __len__(self) -> int:
        return sum(row is not None for row in self._slots)

    def cost(self, request: GenerationRequest) -> int:
        return len(self.renderer.encode(request.prompt)) + request.sampling.max_new_tokens

    # -- joining -----------------------------------------------------------------------

    @torch.inference_mode()
    def admit(self, entries: Sequence[tuple[int, GenerationRequest]],
              ready: Callable[[int, StepOutput], None]) -> None:
        rows = []
        for seq_id, request in entries:
            ids = self.renderer.encode(request.prompt)
            if not ids:
                raise ValueError("the prompt renders to no tokens")
            rows.append((Row(seq_id, request, fed=[], generated=[]), ids))
        rows.sort(key=lambda pair: len(pair[1]))  # quick ones first
        if rows:  # room for all at once: growing 1, 2, 4, 8 slots copies the cache each
            # time, the old and new copies held together (8 short prompts: 50 MiB more)
            self._make_room(len(self) + len(rows), len(rows[-1][1]) + 1)
        for row, ids in rows:
            self._prefill(row, ids)
            ready(row.seq_id, output(row, self.tokenizer, self._endings))

    def _prefill(self, row: Row, ids: list[int]) -> None:
        """Take a slot, copy the cached prefix into it, compute the rest of the prompt."""
        reuse, entry = reusable(self.prompt_cache, row.request.cache_key, ids)
        self._make_room(len(self) + 1, len(ids) + 1)
        row.slot = self._slots.index(None)
        self._slots[row.slot] = row
        try:
            if entry is not None:
                for index, (keys, values) in enumerate(entry.layers):
                    self._keys[index, row.slot, :, :reuse] = keys[0, :, :reuse]
                    self._values[index, row.slot, :, :reuse] = values[0, :, :reuse]
            logits = None
            for start in range(reuse, len(ids), PREFILL_CHUNK):
                chunk = ids[start:start + PREFILL_CHUNK]
                # Only the columns the row holds: attending to the empty rest of the cache
                # too made a 700-token prompt take 2.0 s instead of 1.7, 3,100 tokens 25 s
                # instead of 15.
                logits, new_keys, new_values = forward(
                    self.weights.shape, self.weights.kind, self.weights.flat,
                    torch.tensor([chunk]), torch.tensor([start]),
                    self._keys[:, row.slot:row.slot + 1, :, :start],
                    self._values[:, row.slot:row.slot + 1, :, :start])
                self._keys[:, row.slot, :, start:start + len(chunk)] = new_keys[:, 0]
                self._values[:, row.slot, :, start:start + len(chunk)] = new_values[:, 0]
            assert logits is not None
            row.fed = list(ids)
            row.generated = next_tokens(logits, [row.request.sampling],
                                        top_k=self._endings.top_k, seen=lambda _: row.fed)
        except BaseException:
            self._slots[row.slot] = None
            raise
        self.stats.reused_tokens += reuse
        self.stats.computed_tokens += len(ids) - reuse
        self.stats.last_reused = reuse

    # -- decoding ----------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> dict[int, StepOutput]:
        active = [row for row in self._slots if row is not None]
        if not active:
            return {}
        self._make_room(len(active), max(len(row.fed) for row in active) + 1)
        count = len(self._slots)
        tokens = torch.zeros(count, dtype=torch.long)
        lengths = torch.zeros(count, dtype=torch.long)
        for row in active:
            tokens[row.slot] = row.generated[-1]
            lengths[row.slot] = len(row.fed)
        run = self._step_for(count)
        logits, new_keys, new_values = run(tokens, lengths, self._keys, self._values,
                                           self.weights.flat)
        slots = torch.tensor([row.slot for row in active])
        columns = lengths[slots]
        self._keys[:, slots, :, columns] = new_keys[:, slots].transpose(0, 1)
        self._values[:, slots, :, columns] = new_values[:, slots].transpose(0, 1)
        chosen = next_tokens(logits[slots], [row.request.sampling for row in active],
                             top_k=self._endings.top_k,
                             seen=lambda i: [*active[i].fed, active[i].generated[-1]])
        outputs = {}
        for row, token in zip(active, chosen, strict=True):
            row.fed.append(row.generated[-1])
            row.generated.append(token)
            outputs[row.seq_id] = output(row, self.tokenizer, self._endings)
        return outputs

    def _step_for(self, count: int) -> StepFunction:
        if self._steps is not None:
            self._steps.poll()
            compiled = self._steps.get(count)
            if compiled is not None:
                return compiled
        return self._eager

    # -- leaving -----------------------------------------------------------------------

    @torch.inference_mode()
    def finish(self, seq_id: int) -> str:
        index = next(i for i, row in enumerate(self._slots)
                     if row is not None and row.seq_id == seq_id)
        row = self._slots[index]
        assert row is not None
        self._slots[index] = None
        self._store(row)
        active = len(self)
        if active == 0:
            self.clear()
        elif slot_count(active) * 4 <= len(self._slots):
            self._resize(slot_count(active), self._keys.shape[3])
        text = str(self.tokenizer.decode(row.generated, skip_special_tokens=True))
        return self.renderer.clean_reply(text)

    def reply_tokens(self, seq_id: int) -> list[int]:
        """The token ids a sequence has generated so far (until `finish`)."""
        return list(next(r for r in self._slots if r is not None and r.seq_id == seq_id)
                    .generated)

    def clear(self) -> None:
        """Drop every row and the cache; glibc would keep the freed cache (100 MiB and more
        after 8 rows) for reuse, so it is handed back to the system while the bot is idle."""
        self._slots = []
        self._keys, self._values = empty_cache(self.weights.shape, 0, 0)
        release_freed_memory()

    def _store(self, row: Row) -> None:
        key = row.request.cache_key
        if key is None or self.prompt_cache is None or not row.fed:
            return
        length = len(row.fed)
        layers = tuple((self._keys[i, row.slot:row.slot + 1, :, :length].clone(),
                        self._values[i, row.slot:row.slot + 1, :, :length].clone())
                       for i in range(self.weights.shape.layers))
        self.prompt_cache.put(key, CachedPrompt(tuple(row.fed), layers))

    # -- the cache's size --------------------------------------------------------------

    def _make_room(self, rows: int, columns: int) -> None:
        """Grow the cache to hold `rows` rows and `columns` columns."""
        slots = max(len(self._slots), slot_count(rows))
        have = self._keys.shape[3]
        if columns > have:
            have = -(-columns // COLUMN_STEP) * COLUMN_STEP + COLUMN_STEP
        if slots != len(self._slots) or have != self._keys.shape[3]:
            self._resize(slots, have)

    def _resize(self, slots: int, columns: int) -> None:
        """New cache buffers; rows keep their order and move to the first slots if fewer."""
        keys, values = empty_cache(self.weights.shape, slots, columns)
        rows = [row for row in self._slots if row is not None]
        moved: list[Row | None] = [None] * slots
        keep = min(columns, self._keys.shape[3])
        if slots >= len(self._slots):
            moved[:len(self._slots)] = self._slots
        else:
            moved[:len(rows)] = rows
        for new_slot, entry in enumerate(moved):
            if entry is not None:
                keys[:, new_slot, :, :keep] = self._keys[:, entry.slot, :, :keep]
                values[:, new_slot, :, :keep] = self._values[:, entry.slot, :, :keep]
                entry.slot = new_slot
        self._slots, self._keys, self._values = moved, keys, values
