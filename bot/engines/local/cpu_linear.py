"""Prepacked oneDNN linear layers for CPU fp32 inference.

Batched decoding multiplies a handful of rows (one per sequence) by each weight matrix. MKL,
which `nn.Linear` uses on the CPU, handles 4-16 rows two to five times slower than one: on the
bundled model, measured side by side, a step of 8 rows took 156 ms against 59 ms for one row.
oneDNN with weights packed once for its kernels takes 78 ms for 8 rows, but 70 ms for one,
since each call costs more to set up. So a layer keeps both: MKL for a single row and for long
prefills, oneDNN for a few rows (with row counts bucketed, see `ROW_BUCKET`). The output head
(the largest matrix) is faster on oneDNN either way and keeps only the packed copy. Keeping
both doubles the memory of the other weights, so models whose linear weights exceed
`KEEP_BOTH_LIMIT` keep only the packed copy. The swap is checked against `nn.Linear` on load
and skipped where oneDNN is missing.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ROWS_HINT = 8
"""The batch size oneDNN lays the weights out for (it still accepts any number of rows)."""
ROW_BUCKET = 64
"""Rows beyond which (prefills) oneDNN is not used, or used with the rows padded to a multiple
of this: oneDNN builds, and caches up to 1024 of, a kernel for every distinct row count, each
with memory of its own (about 0.6 MB per row count and weight shape here), and prompt lengths
vary, so the process would grow by hundreds of MB until that cache is full."""
EXACT_ROWS = 16
"""Row counts oneDNN gets as they are (decoding steps of up to 16 sequences); from there up to
`ROW_BUCKET` (short prefills) rows are padded to a multiple of this, so oneDNN only ever sees
about 20 row counts per weight shape."""
KEEP_BOTH_LIMIT = 2**30
"""Bytes of linear weights up to which single rows still use the unpacked copy with MKL."""


def _find_linear() -> Any:
    """oneDNN's linear op (the overload itself, which dispatches faster), if torch has it."""
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


_LINEAR = _find_linear()


class PackedLinear(nn.Module):
    """`nn.Linear` for inference only: oneDNN with a packed weight for several rows, and
    (with `keep_weight`) MKL with the plain weight for one.

    The packed weight cannot be moved to another device or dtype: pack last.
    """

    def __init__(self, linear: nn.Linear, *, keep_weight: bool = True) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.packed: torch.Tensor
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight,
                                                                               ROWS_HINT),
                             persistent=False)
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight if keep_weight else None, persistent=False)
        self.bias: torch.Tensor | None
        bias = None if linear.bias is None else linear.bias.detach()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        count = rows.shape[0]
        out: torch.Tensor
        if self.weight is not None and (count == 1 or count > ROW_BUCKET):
            out = F.linear(rows, self.weight, self.bias)
        else:
            if count > EXACT_ROWS:
                bucket = EXACT_ROWS if count <= ROW_BUCKET else ROW_BUCKET
                rows = F.pad(rows, (0, 0, 0, -count % bucket))
            out = _LINEAR(rows, self.packed, self.bias, "none", [], "")[:count]
        return out.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module) -> int:
    """Swap every `nn.Linear` of a CPU fp32 model for a `PackedLinear`; returns how many.

    Nothing changes (0) on other devices or dtypes, without oneDNN, or if a packed layer
    does not reproduce `nn.Linear` on a test input.
    """
    linears = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    if (not linears or _LINEAR is None
            or not torch.backends.mkldnn.is_available()):  # type: ignore[no-untyped-call]
        return 0
    sample = linears[0][2]
    if sample.weight.device.type != "cpu" or sample.weight.dtype != torch.float32:
        return 0
    try:
        with torch.inference_mode():
            probe = torch.randn(3, sample.in_features)
            packed = PackedLinear(sample)
            if not torch.allclose(packed(probe), sample(probe), rtol=1e-4, atol=1e-4):
                raise ValueError("packed output differs from nn.Linear")
    except Exception:
        log.warning("oneDNN linear layers are unavailable; using nn.Linear", exc_info=True)
        return 0
    head = getattr(model, "get_output_embeddings", lambda: None)()
    weight_bytes = sum(child.weight.nbytes for _, _, child in linears if child is not head)
    keep = weight_bytes <= KEEP_BOTH_LIMIT
    with torch.inference_mode():
        for parent, name, child in linears:
            setattr(parent, name, PackedLinear(child, keep_weight=keep and child is not head))
    if not keep:
        with torch.no_grad():
            # Weights loaded from safetensors live in a memory map of the file, which stays
            # mapped (its pages resident) while any tensor in it does: copy the rest out.
            for param in model.parameters():
                param.data = param.data.clone()
    return len(linears)
