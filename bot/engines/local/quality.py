"""The quality guard for faster kernels: log-likelihood of a fixed text, and repetition.

Speed that costs quality is no gain: int8 in every layer of the bundled model made greedy
replies repeat one line. Two measures catch that, in the tests and in the benchmark:

* the mean log-likelihood per token the model gives a fixed text (higher is better; compared
  with plain fp32 as a relative change), computed in chunks with a key/value cache so long
  texts need no (tokens x vocabulary) logits at once;
* the share of repeated 4-grams in a greedy reply, which is near 0 for a normal reply and
  near 1 for a degenerate loop.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

CHUNK_TOKENS = 512
REPEAT_N = 4
DEGENERATE_SHARE = 0.5
"""Replies with more repeated 4-grams than this are degenerate (normal replies measured
0.00-0.05 on the bundled model, the broken all-int8 one 0.9)."""


@torch.inference_mode()
def mean_log_likelihood(model: PreTrainedModel, ids: list[int],
                        chunk: int = CHUNK_TOKENS) -> float:
    """Mean natural-log probability per predicted token of `ids` (all but the first)."""
    if len(ids) < 2:
        raise ValueError("need at least two tokens")
    cache = DynamicCache(config=model.config)
    total = 0.0
    count = 0
    for start in range(0, len(ids) - 1, chunk):
        piece = ids[start:start + chunk]
        targets = torch.tensor(ids[start + 1:start + 1 + len(piece)])
        out = model(input_ids=torch.tensor([piece]), cache=cache, use_cache=True)
        logits = out.logits[0, :len(targets)].float()
        picked = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])
        total += float(picked.sum())
        count += len(targets)
    return total / count


def relative_change(value: float, reference: float) -> float:
    """How much worse `value` is than `reference` (log-likelihoods are negative): 0.01 means
    1% lower likelihood per token in log terms."""
    return (reference - value) / abs(reference)


def repeated_share(tokens: list[int], n: int = REPEAT_N) -> float:
    """Share of the `n`-grams of `tokens` that occurred earlier in them."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def is_degenerate(tokens: list[int]) -> bool:
    return repeated_share(tokens) > DEGENERATE_SHARE
