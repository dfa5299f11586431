"""CPU kernels for the model's linear layers, each keeping ONE copy of its weight.

A decoding step streams every weight from memory once, so the bytes a weight takes and how
well a kernel streams it decide the speed. Which kernel is fastest depends on the CPU (MKL
is slow on a few rows on some, oneDNN's per-call setup costs on others, bf16 and int8 need
the matching instructions), so `bot.engines.local.kernel_choice` times them on the machine
and this module only implements them:

* ``mkl``: fp32, the plain weight, `F.linear` (what `nn.Linear` does): exact.
* ``onednn``: fp32, the weight packed once for oneDNN (same values, another layout).
* ``bf16``: the weight rounded to bfloat16 and packed for oneDNN; rows are rounded to
  bfloat16 on the way in (half the bytes; fast on CPUs with AVX-512 BF16 or AMX).
* ``int8``: the weight quantized per output channel to int8 and packed for oneDNN; each row
  of the input is quantized with its own scale, so a row's result does not depend on the
  other rows of a batch (a quarter of the bytes; fast with VNNI or AMX).

oneDNN builds, and caches up to 1024 of, a kernel for every distinct row count, each with
memory of its own (about 0.6 MB per row count and weight shape), and prefills pass every
prompt length; so row counts above `EXACT_ROWS` are padded up to one of four steps per power
of two (17-32 to 32, 100 to 112, 1025 to 1280: at most 25% padding), about 30 row counts per
shape up to 4,096 rows instead of one per prompt length.
The quantized tensor types of `torch.ao` are deprecated (creating one warns), so the int8
kernel uses oneDNN's int8 linear op on plain int8 tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FP32_KERNELS = ("mkl", "onednn")
"""Kernels that compute in fp32 from the original values."""
ALL_KERNELS = ("mkl", "onednn", "bf16", "int8")
ROWS_HINT = 8
"""The batch size oneDNN lays fp32 and bf16 weights out for (it accepts any number of rows)."""
EXACT_ROWS = 16
"""Row counts oneDNN gets as they are (decoding steps of up to 16 sequences)."""


def _op(namespace: str, name: str, overload: str = "default") -> Any:
    try:
        return getattr(getattr(getattr(torch.ops, namespace), name), overload)
    except (AttributeError, RuntimeError):
        return None


_LINEAR = _op("mkldnn", "_linear_pointwise")
_REORDER = _op("mkldnn", "_reorder_linear_weight")
_QLINEAR = _op("onednn", "qlinear_pointwise")
_QPREPACK = _op("onednn", "qlinear_prepack")


def _bucketed(rows: torch.Tensor) -> torch.Tensor:
    """`rows` padded to one of few row counts (see the module docstring)."""
    count = rows.shape[0]
    if count <= EXACT_ROWS:
        return rows
    step = max(EXACT_ROWS, 1 << (count.bit_length() - 3))
    return F.pad(rows, (0, 0, 0, -count % step))


class CpuLinear(nn.Module):
    """`nn.Linear` for inference only, computed by one kernel of `ALL_KERNELS`.

    The stored weight cannot be moved to another device or dtype: convert last.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str) -> None:
        super().__init__()
        if kernel not in ALL_KERNELS:
            raise ValueError(f"unknown linear kernel {kernel!r}")
        self.kernel = kernel
        self.out_features, self.in_features = weight.shape
        weight = weight.detach().float()
        self.bias: torch.Tensor | None
        self.register_buffer("bias", None if bias is None else bias.detach().float(),
                             persistent=False)
        self.weight: torch.Tensor
        self.scale: torch.Tensor | None = None
        self.zero: torch.Tensor | None = None
        self.int8_rows: torch.Tensor | None = None
        if kernel == "mkl":
            stored = weight
        elif kernel == "onednn":
            stored = _REORDER(weight, ROWS_HINT)
        elif kernel == "bf16":
            stored = _REORDER(weight.to(torch.bfloat16), ROWS_HINT)
        else:
            q, scale = quantize_rows(weight)
            self.scale = scale.reshape(-1)
            self.zero = torch.zeros(self.out_features, dtype=torch.long)
            stored = _QPREPACK(q, None)
        self.register_buffer("weight", stored, persistent=False)
        # The plain function, not a bound method: that would be a reference cycle, and a layer
        # (with its weight) would then live until the cyclic garbage collector runs.
        self._impl: Callable[[CpuLinear, torch.Tensor], torch.Tensor] = getattr(
            CpuLinear, "_" + kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = self._impl(self, rows)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _mkl(self, rows: torch.Tensor) -> torch.Tensor:
        return F.linear(rows, self.weight, self.bias)

    def _onednn(self, rows: torch.Tensor) -> torch.Tensor:
        count = rows.shape[0]
        out: torch.Tensor = _LINEAR(_bucketed(rows), self.weight, self.bias, "none", [], "")
        return out[:count]

    def _bf16(self, rows: torch.Tensor) -> torch.Tensor:
        count = rows.shape[0]
        out: torch.Tensor = _LINEAR(_bucketed(rows).to(torch.bfloat16), self.weight, None,
                                    "none", [], "")
        out = out[:count].float()
        return out if self.bias is None else out + self.bias

    def _int8(self, rows: torch.Tensor) -> torch.Tensor:
        # As few tensor ops as possible: at one row each costs about as much as the matmul.
        count = rows.shape[0]
        rows = _bucketed(rows)
        peak = torch.linalg.vector_norm(rows, float("inf"), dim=1, keepdim=True).clamp_min_(
            1e-12)
        q = (rows * (127 / peak)).round_().to(torch.int8)
        out: torch.Tensor = _QLINEAR(q, 1.0, 0, self.weight, self.scale, self.zero, None, 1.0,
                                     0, torch.float32, "none", [], "")
        out = out[:count].mul_(peak[:count] / 127)  # each row's own scale, after the sum
        return out if self.bias is None else out + self.bias

    @property
    def stored_bytes(self) -> int:
        """Bytes of the stored weight (packed layouts may pad a little; not counted)."""
        size = {"mkl": 4, "onednn": 4, "bf16": 2, "int8": 1}[self.kernel]
        return self.out_features * self.in_features * size


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: the int8 values and each row's fp32 scale, shaped (rows, 1)."""
    scale = matrix.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    q = torch.round(matrix / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale


def available(kernel: str) -> bool:
    """Whether this torch build has the ops a kernel needs."""
    if kernel == "mkl":
        return True
    onednn = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
    if kernel in ("onednn", "bf16"):
        return onednn and _LINEAR is not None and _REORDER is not None
    return onednn and _QLINEAR is not None and _QPREPACK is not None


class CompactEmbedding(nn.Module):
    """An embedding table kept as bf16 or int8 (per-row scales) and looked up in fp32.

    With tied weights the table is also the output head, so in a quantized mode both share
    the precision the head got and the fp32 table can go.
    """

    def __init__(self, table: torch.Tensor, kind: str) -> None:
        super().__init__()
        table = table.detach().float()
        self.kind = kind
        self.scale: torch.Tensor | None
        self.values: torch.Tensor
        if kind == "bf16":
            self.register_buffer("values", table.to(torch.bfloat16), persistent=False)
            self.register_buffer("scale", None, persistent=False)
        elif kind == "int8":
            q, scale = quantize_rows(table)
            self.register_buffer("values", q, persistent=False)
            self.register_buffer("scale", scale, persistent=False)
        else:
            raise ValueError(f"unknown embedding kind {kind!r}")
        self.num_embeddings, self.embedding_dim = table.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.values).float()
        if self.scale is not None:
            rows = rows * F.embedding(ids, self.scale)
        return rows
