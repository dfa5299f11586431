"""Choosing each row's next token from its logits, the way `model.generate` would.

Greedy rows take the argmax; sampled rows apply temperature, then top-k (the model's
generation config, 50 by default, as in transformers), then top-p, and draw from what is left.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bot.engines.contract import SamplingParams

DEFAULT_TOP_K = 50


def next_tokens(logits: torch.Tensor, params: Sequence[SamplingParams], *,
                top_k: int = DEFAULT_TOP_K) -> list[int]:
    """One token id per row of `logits` (``[rows, vocab]``), each by its own `params`."""
    chosen: list[int] = logits.argmax(dim=-1).tolist()
    for row, sampling in enumerate(params):
        if sampling.temperature > 0:
            chosen[row] = _draw(logits[row], sampling, top_k)
    return chosen


def _draw(scores: torch.Tensor, sampling: SamplingParams, top_k: int) -> int:
    scores = scores.float() / sampling.temperature
    if 0 < top_k < scores.shape[-1]:
        values, ids = torch.topk(scores, top_k)
    else:
        values, ids = torch.sort(scores, descending=True)
    probs = torch.softmax(values, dim=-1)
    if sampling.top_p < 1.0:
        mass_before = torch.cumsum(probs, dim=-1) - probs
        # The most likely token has no mass before it, so at least one always stays.
        probs = probs.masked_fill(mass_before >= sampling.top_p, 0.0)
    pick = torch.multinomial(probs, 1)
    return int(ids[pick].item())
