"""Per-conversation prompt (KV) cache: a follow-up recomputes only its new tokens.

Each entry holds the token ids a conversation's last generation fed to the model and the keys
and values computed for them. A new prompt reuses an entry up to the longest common prefix of
token ids, so an edited, trimmed or reset history simply matches less: keys and values of a
token depend only on the tokens before it, and nothing past the first difference is reused.
Other conversations' entries are read too (never changed): they share at least the system
prompt. Entries are evicted least recently used first to keep the total within a byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class CachedPrompt:
    """The keys and values of `tokens`, one (keys, values) pair per layer.

    Each tensor is shaped ``[1, kv_heads, len(tokens), head_dim]``.
    """

    tokens: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PromptCache:
    """Least-recently-used entries by conversation key, within `max_bytes` in total.

    Not thread-safe: only the worker thread uses it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedPrompt] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes held by all entries."""
        return self._bytes

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def take(self, key: str) -> CachedPrompt | None:
        """Remove and return `key`'s entry: the generation that uses it stores a new one."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
        return entry

    def longest_match(self, tokens: Sequence[int],
                      at_least: int = 1) -> tuple[CachedPrompt | None, int]:
        """The entry sharing the longest prefix with `tokens` (if at least `at_least`
        tokens), and that prefix's length.

        The entry stays in the cache, marked as recently used; its tensors must not be
        written to.
        """
        best_key, best = None, 0
        for key, entry in self._entries.items():
            shared = common_prefix(entry.tokens, tokens)
            if shared > best:
                best_key, best = key, shared
        if best_key is None or best < at_least:
            return None, 0
        self._entries.move_to_end(best_key)
        return self._entries[best_key], best

    def put(self, key: str, entry: CachedPrompt) -> None:
        """Store `entry` as `key`'s newest, evicting the least recently used to fit.

        An entry larger than the whole budget is not kept.
        """
        self.take(key)
        size = entry.nbytes
        if size > self.max_bytes:
            return
        while self._entries and self._bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.evictions += 1
        self._entries[key] = entry
        self._bytes += size

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
