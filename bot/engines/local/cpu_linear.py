"""Swap a CPU model's linear layers for `CpuLinear`s: one weight copy, the fastest kernel.

`MODEL_QUANTIZE` sets the lowest precision a layer may get; within it each weight shape
gets the kernel `KernelChoice` timed fastest on this machine:

* ``off``: fp32 (MKL or packed oneDNN), the same greedy text as plain `model.generate`.
* ``bf16``: bf16 where it is faster than fp32 on this CPU.
* ``int8``: additionally the output head (and with tied weights the input embedding) in
  int8 where that is faster: the largest matrix, and the one that loses least by it (0.2% of
  the guard text's log-likelihood); the other layers at most bf16.
* ``int8-all``: int8 allowed in every layer. Inputs are quantized per row: with one scale
  for all the rows of a prefill (as `torch.ao` dynamic quantization does) the first token's
  huge activations coarsened every other row, the text lost 4.2% and a greedy reply looped;
  per row it loses about 1%, but 2 of the benchmark's 9 greedy replies looped (plain fp32: 1),
  see docs/benchmarks.md.
* ``int4``: 4-bit weights in groups of 32 (torch's int4 kernel) where faster, in every layer
  but the output head, which gets at most int8 (as in ``int8``): in int4 the bundled model's
  head, stored as Q8_0 in its GGUF file, cost 2.3% of the guard text's log-likelihood and a
  wrong "capital of France". For a Q4 GGUF source the layers keep the file's own values
  (`int4`); ``auto`` picks this mode there. Llama models on the CPU run this mode on the own
  decode step instead (`step_backend`).

With tied weights the embedding shares the head's storage: in fp32 the head keeps the
plain weight (MKL), in bf16/int8/int4 the embedding gets a compact table of its own (int8
in int4 mode: rows are looked up one by one, so the table need not suit a kernel).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from bot.engines.local.kernel_choice import KernelChoice, shape_key
from bot.engines.local.linear_kernels import FP32_KERNELS, CompactEmbedding, CpuLinear

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("off", "bf16", "int8", "int8-all", "int4")
_BF16 = ("bf16", *FP32_KERNELS)
_INT8 = ("int8", "int8w", *_BF16)
_INT4 = ("int4", *_BF16)
_BODY = {"off": FP32_KERNELS, "bf16": _BF16, "int8": _BF16, "int8-all": _INT8, "int4": _INT4}
_HEAD = {"off": FP32_KERNELS, "bf16": _BF16, "int8": _INT8, "int8-all": _INT8,
         "int4": _INT8}
_TIED_HEAD = {"off": ("mkl",), "bf16": ("bf16", "mkl"),
              "int8": ("int8", "int8w", "bf16", "mkl"),
              "int8-all": ("int8", "int8w", "bf16", "mkl"),
              "int4": ("int8", "int8w", "bf16", "mkl")}
"""A tied head in fp32 must keep the plain weight, which the embedding reads too."""


@dataclass(slots=True)
class Conversion:
    """What `convert_linears` did: kernels per shape (the head under ``head``), bytes."""

    kernels: dict[str, str] = field(default_factory=dict)
    layers: int = 0
    weight_bytes: int = 0
    embedding: str = "fp32"


def convert_linears(model: nn.Module, mode: str, choice: KernelChoice) -> Conversion:
    """Swap every `nn.Linear` of a CPU fp32 model for a `CpuLinear` chosen for `mode`.

    Nothing changes (an empty `Conversion`) on other devices or dtypes.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}")
    result = _swap(model, mode, choice)
    if result.layers:  # the replaced layers and their weights are unreferenced now
        _own_memory(model)
        release_freed_memory()
    return result


def _swap(model: nn.Module, mode: str, choice: KernelChoice) -> Conversion:
    linears = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    if not linears:
        return Conversion()
    sample = linears[0][2].weight
    if sample.device.type != "cpu" or sample.dtype != torch.float32:
        return Conversion()
    head = _output_head(model)
    embedding = _input_embedding(model)
    tied = (head is not None and embedding is not None
            and head.weight.data_ptr() == embedding.weight.data_ptr())
    body: dict[str, list[torch.Tensor]] = {}
    for _, _, child in linears:
        if child is not head:
            body.setdefault(shape_key(child.weight), []).append(child.weight.detach())
    kernels = choice.choose(body, {shape: _BODY[mode] for shape in body})
    if head is not None:
        head_candidates = (_TIED_HEAD if tied else _HEAD)[mode]
        kernels["head"] = choice.choose({"head": [head.weight.detach()]},
                                        {"head": head_candidates})["head"]
    result = Conversion(kernels=kernels)
    with torch.inference_mode():
        for parent, name, child in linears:
            kernel = kernels["head" if child is head else shape_key(child.weight)]
            swapped = CpuLinear(child.weight, child.bias, kernel)
            setattr(parent, name, swapped)
            result.layers += 1
            result.weight_bytes += swapped.stored_bytes
        if embedding is not None and mode != "off":
            kind = kernels["head"] if tied else mode.removesuffix("-all")
            kind = "int8" if kind in ("int4", "int8w") else kind  # a table of int8 rows
            if kind in ("bf16", "int8"):
                compact = CompactEmbedding(embedding.weight, kind)
                _replace_module(model, embedding, compact)
                result.embedding = kind
    return result


def _output_head(model: nn.Module) -> nn.Linear | None:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if getter is not None else None
    return head if isinstance(head, nn.Linear) else None


def _input_embedding(model: nn.Module) -> nn.Embedding | None:
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if getter is not None else None
    return embedding if isinstance(embedding, nn.Embedding) else None


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)


def _own_memory(model: nn.Module) -> None:
    """Copy the tensors kept as loaded out of the weights file's memory map.

    Weights loaded from safetensors may live in a memory map of the file, whose pages stay
    resident while any tensor in it does: once the plain weights that were converted are
    gone, the rest are copied out (tied tensors stay tied) so the map and its pages can go.
    """
    copies: dict[tuple[int, tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}

    def own(tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if key not in copies:
            copies[key] = tensor.detach().clone()
        return copies[key]

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CompactEmbedding) or (
                    isinstance(module, CpuLinear) and module.kernel != "mkl"):
                continue
            for param in module.parameters(recurse=False):
                param.data = own(param.data)
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None:
                    setattr(module, name, own(buffer))


def release_freed_memory() -> None:
    """glibc keeps freed blocks for reuse; `malloc_trim` returns them (no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def describe(conversion: Conversion) -> str:
    """One log line: kernels per shape and the bytes the linear weights take."""
    kernels: Sequence[str] = [f"{shape} {kernel}" for shape, kernel
                              in conversion.kernels.items()]
    return (f"{conversion.layers} linear layers ({conversion.weight_bytes / 2**20:.0f} MiB): "
            f"{', '.join(kernels)}; embedding {conversion.embedding}")
