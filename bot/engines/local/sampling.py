"""Choosing each row's next token from its logits, the way `model.generate` would.

Greedy rows take the argmax; sampled rows apply temperature, then top-k (the model's
generation config, 50 by default, as in transformers), then top-p, and draw from what is left.
A row with a repetition penalty first has the scores of tokens it already holds scaled down
(divided when positive, multiplied when negative), as transformers' `repetition_penalty`
does; rows without one are untouched, so their greedy text stays that of `model.generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bot.engines.contract import SamplingParams

DEFAULT_TOP_K = 50


def next_tokens(logits: torch.Tensor, params: Sequence[SamplingParams], *,
                top_k: int = DEFAULT_TOP_K,
                seen: Callable[[int], Sequence[int]] | None = None) -> list[int]:
    """One token id per row of `logits` (``[rows, vocab]``), each by its own `params`.

    `seen(row)` gives the token ids a row's repetition penalty applies to (its sequence so
    far, prompt included, as in transformers); it is called only for rows with a penalty.
    """
    penalised = [row for row, sampling in enumerate(params) if sampling.repetition_penalty != 1]
    if penalised and seen is not None:
        logits = logits.clone()
        for row in penalised:
            penalise(logits[row], seen(row), params[row].repetition_penalty)
    chosen: list[int] = logits.argmax(dim=-1).tolist()
    for row, sampling in enumerate(params):
        if sampling.temperature > 0:
            chosen[row] = _draw(logits[row], sampling, top_k)
    return chosen


def penalise(scores: torch.Tensor, ids: Sequence[int], penalty: float) -> None:
    """Scale down, in place, the scores (``[vocab]``) of the tokens in `ids`."""
    if not ids:
        return
    index = torch.tensor(sorted(set(ids)), device=scores.device)
    picked = scores[index]
    scores[index] = torch.where(picked < 0, picked * penalty, picked / penalty)


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
