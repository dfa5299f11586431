"""The Llama forward pass in plain torch: prompts (prefill) and the decode step.

Written for speed on a CPU, where per-operator overhead decides: fused projections, int4
weights with bf16 only as the matmul's input, and the residual stream, attention and key/value
cache in fp32 (bf16 attention is 4-7x slower than fp32 on AVX2). The same function runs
eagerly, and, traced with one new token per row, is what `step_compiler` compiles.

Keys and values live in a static cache per batch, ``[layers, rows, kv_heads, columns,
head_dim]``, each row in its own slot from column 0 (no padding between rows). A call never
writes to the cache: it attends to the first `lengths[row]` columns of it plus the tokens it
is given, and returns those tokens' keys and values for the caller to store. So the compiled
step has no side effects, and one graph serves any cache length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bot.engines.local import int4
from bot.engines.local.llama_weights import HEAD, PER_LAYER, LlamaShape

MASKED = -1e30
"""Added to the scores of cache columns a row does not have (finite: no NaN anywhere)."""


@dataclass(frozen=True, slots=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: Sequence[torch.Tensor]
    o: Sequence[torch.Tensor]
    post_norm: torch.Tensor
    gate_up: Sequence[torch.Tensor]
    down: Sequence[torch.Tensor]


def _layers(kind: str, flat: Sequence[torch.Tensor], count: int) -> list[_Layer]:
    start = 4 + HEAD[kind]
    size = PER_LAYER[kind]
    m = (size - 2) // 4  # tensors per matrix: 1 (fp32) or 2 (int4)
    layers = []
    for index in range(count):
        t = flat[start + index * size: start + (index + 1) * size]
        layers.append(_Layer(t[0], t[1:1 + m], t[1 + m:1 + 2 * m], t[1 + 2 * m],
                             t[2 + 2 * m:2 + 3 * m], t[2 + 3 * m:2 + 4 * m]))
    return layers


def _linear(rows: torch.Tensor, matrix: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(matrix) == 1:
        return F.linear(rows, matrix[0])
    if matrix[0].dtype == torch.int8:  # int8 rows and their bf16 scales
        out: torch.Tensor = torch.ops.aten._weight_int8pack_mm(rows.to(torch.bfloat16),
                                                               matrix[0], matrix[1])
    else:  # int4: packed values and bf16 scales and zeros
        out = int4.MATMUL(rows.to(torch.bfloat16), matrix[0], int4.GROUP, matrix[1])
    return out.float()


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def forward(shape: LlamaShape, kind: str, flat: Sequence[torch.Tensor], tokens: torch.Tensor,
            lengths: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
            all_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run `tokens` (``[rows, new]``) after each row's `lengths` cached tokens.

    Returns the logits of the last new token per row (``[rows, vocab]``; every new token's
    with `all_logits`) and the new tokens' keys and values, ``[layers, rows, kv_heads, new,
    head_dim]`` each.
    """
    rows, new = tokens.shape
    heads, kv_heads, dim = shape.heads, shape.kv_heads, shape.head_dim
    group = heads // kv_heads
    columns = keys.shape[3]
    x = F.embedding(tokens, flat[0]).float() * F.embedding(tokens, flat[1])
    positions = lengths[:, None] + torch.arange(new, device=tokens.device)
    freqs = positions[..., None].float() * flat[2]
    angles = torch.cat((freqs, freqs), dim=-1)
    cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]
    have = torch.arange(columns, device=tokens.device)[None, :] < lengths[:, None]
    cache_mask = torch.where(have, 0.0, MASKED)[:, None, None, :]
    causal = torch.ones(new, new, dtype=torch.bool, device=tokens.device).tril()
    new_mask = torch.where(causal, 0.0, MASKED).repeat(group, 1)
    scale = dim ** -0.5
    new_keys, new_values = [], []
    for index, layer in enumerate(_layers(kind, flat, shape.layers)):
        h = _rms(x, layer.input_norm, shape.eps).reshape(rows * new, shape.hidden)
        qkv = _linear(h, layer.qkv).view(rows, new, heads + 2 * kv_heads, dim)
        q = _rotate(qkv[:, :, :heads], cos, sin) * scale
        k = _rotate(qkv[:, :, heads:heads + kv_heads], cos, sin).transpose(1, 2)
        v = qkv[:, :, heads + kv_heads:].transpose(1, 2)
        q = q.transpose(1, 2).reshape(rows, kv_heads, group * new, dim)
        scores = torch.cat([q @ keys[index].transpose(-1, -2) + cache_mask,
                            q @ k.transpose(-1, -2) + new_mask], dim=-1).softmax(dim=-1)
        out = scores[..., :columns] @ values[index] + scores[..., columns:] @ v
        out = out.view(rows, kv_heads, group, new, dim).permute(0, 3, 1, 2, 4)
        x = x + _linear(out.reshape(rows * new, heads * dim), layer.o).view(rows, new, -1)
        h = _rms(x, layer.post_norm, shape.eps).reshape(rows * new, shape.hidden)
        gate, up = _linear(h, layer.gate_up).chunk(2, dim=-1)
        x = x + _linear(F.silu(gate) * up, layer.down).view(rows, new, -1)
        new_keys.append(k)
        new_values.append(v)
    last = x if all_logits else x[:, -1:]
    head = flat[4:4 + HEAD[kind]]
    logits = _linear(_rms(last, flat[3], shape.eps).reshape(-1, shape.hidden), head)
    logits = logits.view(rows, -1, shape.vocab) if all_logits else logits
    return logits, torch.stack(new_keys), torch.stack(new_values)


class DecodeStep(nn.Module):
    """One new token per row: what `step_compiler` exports (weights are inputs, so one
    compiled step serves any weights of the same shapes)."""

    def __init__(self, shape: LlamaShape, kind: str) -> None:
        super().__init__()
        self.shape = shape
        self.kind = kind

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor, flat: list[torch.Tensor],
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`tokens`, `lengths`: ``[rows]``; returns logits ``[rows, vocab]`` and the keys
        and values ``[layers, rows, kv_heads, head_dim]`` to store at column `lengths`."""
        logits, new_keys, new_values = forward(self.shape, self.kind, flat, tokens[:, None],
                                               lengths, keys, values)
        return logits, new_keys[:, :, :, 0], new_values[:, :, :, 0]


def empty_cache(shape: LlamaShape, rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed keys and values for `rows` slots of `columns` tokens."""
    size = (shape.layers, rows, shape.kv_heads, columns, shape.head_dim)
    return torch.zeros(size), torch.zeros(size)
