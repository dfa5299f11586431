"""4-bit weights in groups of 32 along the input, for torch's CPU int4 matmul.

`torch.ops.aten._weight_int4pack_mm_for_cpu` multiplies bf16 rows by a packed uint8 matrix
whose values are ``(q - 8) * scale + zero`` (q in 0..15), one bf16 scale and zero per group
of 32 inputs of an output row. It has hand-written AVX2 and AVX-512 loops for bf16 rows
(fp32 rows take a scalar loop, many times slower), so the input is rounded to bf16 and the
result, computed in fp32 and returned in bf16, is turned back into fp32.

A Q4_0 or Q4_1 GGUF file (the bundled model is Q4_1: blocks of 32 weights, each with a
scale and a minimum) dequantizes to exactly such groups: the smallest value of a block is
its minimum and the largest is 15 steps above it, so `quantize` finds the same 16 levels
and the int4 copy holds the file's numbers, up to bf16 rounding of each scale and zero
(0.2% of a weight). For other weights it is plain min/max 4-bit quantization (about 9%).

The packed layout follows the CPU's vector width (blocks of 64 outputs with AVX-512, 32
with AVX2): a packed matrix is only valid on the kind of CPU that packed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

GROUP = 32
"""Inputs per scale and zero: a GGUF Q4 block."""


def _op(name: str) -> Any:
    try:
        return getattr(torch.ops.aten, name).default
    except (AttributeError, RuntimeError):
        return None


MATMUL = _op("_weight_int4pack_mm_for_cpu")
PACK = _op("_convert_weight_to_int4pack_for_cpu")


def fits(out_features: int, in_features: int) -> bool:
    """Whether the kernel takes this shape: whole groups, outputs in blocks of 16."""
    return in_features % GROUP == 0 and out_features % 16 == 0 and in_features > 0


@dataclass(frozen=True, slots=True)
class Int4Weight:
    """A packed matrix and its scales and zeros (``[in / GROUP, out, 2]``, bf16)."""

    packed: torch.Tensor
    scales: torch.Tensor

    @property
    def out_features(self) -> int:
        return int(self.packed.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.packed.shape[1]) * 2

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes


def levels(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group of `GROUP` inputs: the levels q (0..15, as floats), and the fp32 scale
    and zero with ``weight ~ (q - 8) * scale + zero``; shapes ``[out, in / GROUP, GROUP]``,
    ``[out, in / GROUP]`` twice."""
    out_features, in_features = weight.shape
    groups = weight.detach().float().reshape(out_features, in_features // GROUP, GROUP)
    low = groups.amin(dim=-1)
    high = groups.amax(dim=-1)
    scale = torch.where(high > low, (high - low) / 15, torch.ones_like(high))
    q = ((groups - low[..., None]) / scale[..., None]).round_().clamp_(0, 15)
    return q, scale, low + 8 * scale


def quantize(weight: torch.Tensor) -> Int4Weight:
    """Pack a fp32 ``[out, in]`` matrix (see `fits`) for `matmul`."""
    out_features, in_features = weight.shape
    if not fits(out_features, in_features) or PACK is None:
        raise ValueError(f"int4 needs whole groups of {GROUP} inputs and outputs in blocks "
                         f"of 16, not {out_features}x{in_features}")
    q, scale, zero = levels(weight)
    scales = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().bfloat16()
    packed = PACK(q.reshape(out_features, in_features).to(torch.int32), 1)
    return Int4Weight(packed, scales)


def dequantize(weight: torch.Tensor) -> torch.Tensor:
    """The fp32 values `quantize(weight)` stands for (bf16 scales and zeros included)."""
    q, scale, zero = levels(weight)
    scale = scale.bfloat16().float()[..., None]
    zero = zero.bfloat16().float()[..., None]
    return ((q - 8) * scale + zero).reshape(weight.shape)


def matmul(rows: torch.Tensor, weight: Int4Weight) -> torch.Tensor:
    """``rows @ W.T`` for fp32 ``[n, in]`` rows: bf16 into the kernel, fp32 out."""
    out: torch.Tensor = MATMUL(rows.to(torch.bfloat16), weight.packed, GROUP, weight.scales)
    return out.float()
