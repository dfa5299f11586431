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
* ``int8w``: the weight in int8 per output channel, rows kept in bf16 (torch's own
  `_weight_int8pack_mm`, with AVX2 and AVX-512 loops; no VNNI needed, nothing saturates).
* ``int4``: 4 bits per weight in groups of 32 (`bot.engines.local.int4`: torch's own int4
  kernel, bf16 rows in; an eighth of the bytes plus the scales; exact for a Q4 GGUF source).

oneDNN builds, and caches up to 1024 of, a kernel for every distinct row count, each with
memory of its own (about 0.6 MB per row count and weight shape), and prefills pass every
prompt length; so row counts above `EXACT_ROWS` are padded up to one of four steps per power
of two (17-32 to 32, 100 to 112, 1025 to 1280: at most 25% padding), about 30 row counts per
shape up to 4,096 rows instead of one per prompt length.
The quantized tensor types of `torch.ao` are deprecated (creating one warns), so the int8
kernel uses oneDNN's int8 linear op on plain int8 tensors.

Whether a kernel may be used is a check of what it computes, not of the CPU's name: oneDNN's
bf16 packing refuses CPUs without AVX-512 (or AVX-NE-CONVERT), and its int8 kernels on an
AVX2-only CPU (no VNNI) add products in saturating 16-bit sums and return wrong numbers
without an error (a row of ones times a matrix of ones: 0.5 instead of 64). `available`
builds each kernel on a probe matrix and compares it with fp32 (`wrong_results`); the kernel
timing at first start repeats that on the model's own weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bot.engines.local import int4

FP32_KERNELS = ("mkl", "onednn")
"""Kernels that compute in fp32 from the original values."""
ALL_KERNELS = ("mkl", "onednn", "bf16", "int8", "int8w", "int4")
ROWS_HINT = 8
"""The batch size oneDNN lays fp32 and bf16 weights out for (it accepts any number of rows)."""
EXACT_ROWS = 16
"""Row counts oneDNN gets as they are (decoding steps of up to 16 sequences)."""
BATCH_CHECK_ROWS = 8
"""Rows of the batched input a kernel is checked on."""
TOLERANCE = {"mkl": 1e-5, "onednn": 1e-4, "bf16": 0.01, "int8": 0.05, "int8w": 0.03,
             "int4": 0.15}
"""Relative error (norm of the difference over the norm of fp32's result) a kernel may show
against ``x @ weight.T`` in fp32 on `probe_inputs`: what rounding the weights and inputs
costs (on the bundled model's weights at most 0.0045 for bf16, 0.033 for int8, 0.0034 for
int4 on its Q4_1 layers and 0.09 on its Q8_0 output head; normal random weights 0.09)."""
SAME_ARITHMETIC = 2e-3
"""Relative error a kernel may show against `emulate`, its own rounding of weights, inputs
and output done in fp32: only the order of the sums remains (at most 7e-5 on the bundled model's
weights). A saturating int8 kernel is 0.03-0.1 off there (1.9 on the probe matrix), while
its error against fp32 (0.04-0.11) is close to an honest int8 kernel's (up to 0.033), so
this is the check that tells them apart."""


def _op(namespace: str, name: str, overload: str = "default") -> Any:
    try:
        return getattr(getattr(getattr(torch.ops, namespace), name), overload)
    except (AttributeError, RuntimeError):
        return None


_LINEAR = _op("mkldnn", "_linear_pointwise")
_REORDER = _op("mkldnn", "_reorder_linear_weight")
_QLINEAR = _op("onednn", "qlinear_pointwise")
_QPREPACK = _op("onednn", "qlinear_prepack")
_BF16_SUPPORTED = _op("mkldnn", "_is_mkldnn_bf16_supported")
_INT8W = _op("aten", "_weight_int8pack_mm")


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
        if kernel == "mkl":
            stored = weight
        elif kernel == "onednn":
            stored = _REORDER(weight, ROWS_HINT)
        elif kernel == "bf16":
            stored = _REORDER(weight.to(torch.bfloat16), ROWS_HINT)
        elif kernel == "int8w":
            stored, scale = quantize_rows(weight)
            self.scale = scale.reshape(-1).bfloat16()
        elif kernel == "int8":
            q, scale = quantize_rows(weight)
            self.scale = scale.reshape(-1)
            self.zero = torch.zeros(self.out_features, dtype=torch.long)
            stored = _QPREPACK(q, None)
        else:
            packed = int4.quantize(weight)
            stored, self.scale = packed.packed, packed.scales
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

    def _int8w(self, rows: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _INT8W(rows.to(torch.bfloat16), self.weight, self.scale)
        return out.float() if self.bias is None else out.float() + self.bias

    def _int4(self, rows: torch.Tensor) -> torch.Tensor:
        assert self.scale is not None
        out = int4.matmul(rows, int4.Int4Weight(self.weight, self.scale))
        return out if self.bias is None else out + self.bias

    @property
    def stored_bytes(self) -> int:
        """Bytes of the stored weight and its scales (packed layouts may pad a little; not
        counted)."""
        if self.kernel == "int4":
            assert self.scale is not None
            return self.weight.nbytes + self.scale.nbytes
        size = {"mkl": 4, "onednn": 4, "bf16": 2, "int8": 1, "int8w": 1}[self.kernel]
        return self.out_features * self.in_features * size


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: the int8 values and each row's fp32 scale, shaped (rows, 1)."""
    scale = matrix.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    q = torch.round(matrix / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def probe_inputs(in_features: int) -> list[torch.Tensor]:
    """Inputs a kernel is checked on: one row and a batch of `BATCH_CHECK_ROWS`, each of
    normal values and of positive ones (which push a saturating int8 sum over its limit)."""
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for rows in (1, BATCH_CHECK_ROWS):
        inputs.append(torch.randn(rows, in_features, generator=generator))
        inputs.append(torch.rand(rows, in_features, generator=generator))
    return inputs


def emulate(kernel: str, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What `kernel` should compute for rows `x`, with its rounding, in plain fp32 ops."""
    weight = weight.float()
    if kernel == "bf16":
        return (x.bfloat16().float() @ weight.bfloat16().float().T).bfloat16().float()
    if kernel == "int8":
        q, scale = quantize_rows(weight)
        peak = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).clamp_min(1e-12)
        qx = (x * (127 / peak)).round()
        out: torch.Tensor = (qx @ q.float().T) * scale.T * (peak / 127)
        return out
    if kernel == "int4":
        return (x.bfloat16().float() @ int4.dequantize(weight).T).bfloat16().float()
    if kernel == "int8w":
        q, scale = quantize_rows(weight)
        rows = q.float() * scale.bfloat16().float()
        return (x.bfloat16().float() @ rows.T).bfloat16().float()
    return x @ weight.T


def wrong_results(layer: nn.Module, weight: torch.Tensor, kernel: str) -> str | None:
    """Why `layer` (holding `weight` with `kernel`) does not compute what it should on
    `probe_inputs`, or None when it does (see `TOLERANCE`, `SAME_ARITHMETIC`)."""
    with torch.inference_mode():
        for x in probe_inputs(weight.shape[1]):
            got = layer(x).float()
            off = relative_error(got, x @ weight.float().T)
            if off > TOLERANCE.get(kernel, 0.0):
                return f"relative error {off:.3g} against fp32 (at most {TOLERANCE[kernel]:g})"
            off = relative_error(got, emulate(kernel, weight, x))
            if off > SAME_ARITHMETIC:
                return (f"relative error {off:.3g} against its own rounding done in fp32 "
                        f"(at most {SAME_ARITHMETIC:g})")
    return None


def _probe_weight() -> torch.Tensor:
    """Normal values, plus rows of ones: all-positive products are where a 16-bit sum
    saturates."""
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    weight[:8] = 1.0
    return weight


@functools.cache
def available(kernel: str) -> bool:
    """Whether `kernel` builds, runs and computes what fp32 does on this CPU (checked once
    per process, on a probe matrix)."""
    if kernel == "mkl":
        return True
    onednn = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
    if kernel == "int4":
        present = int4.MATMUL is not None and int4.PACK is not None
    elif kernel == "int8w":
        present = _INT8W is not None
    elif kernel in ("onednn", "bf16"):
        present = onednn and _LINEAR is not None and _REORDER is not None
    else:
        present = onednn and _QLINEAR is not None and _QPREPACK is not None
    if not present:
        return False
    if kernel == "bf16" and _BF16_SUPPORTED is not None and not _BF16_SUPPORTED():
        return False  # oneDNN's own check: AVX-512 BW/VL/DQ or AVX-NE-CONVERT
    weight = _probe_weight()
    try:
        return wrong_results(CpuLinear(weight, None, kernel), weight, kernel) is None
    except Exception:
        return False



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
