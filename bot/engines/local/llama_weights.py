"""The weights of a Llama model as the engine's own decode step uses them.

transformers' Llama runs ~1,500 small operators a token, and on a CPU their overhead, not
the weights, decides the speed. `bot.engines.local.llama_step` computes the same thing in a
few hundred, from the tensors gathered here: query, key and value projections fused into one
matrix (as are gate and up), each stored as int4 groups of 32 (`int4`) or kept in fp32
(``fp32``, exact: the tests compare it with transformers token for token). With int4 the
output head is int8 (`HEAD_KIND`), and so is the embedding table, with a scale per row (a
quarter of fp32's 113 MiB on the bundled model; rows are looked up, not multiplied).

The tensors travel as one flat list (`Weights.flat`) in a fixed order, so that a compiled
step, which takes them as inputs rather than baking them in, can be built from `dummy`
tensors of the same shapes in another process.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bot.engines.local import int4
from bot.engines.local.linear_kernels import quantize_rows

KINDS = ("int4", "fp32")
PER_LAYER = {"int4": 10, "fp32": 6}
"""Tensors per decoder layer: two norms, and qkv, o, gate_up, down (int4: packed + scales)."""
HEAD = {"int4": 2, "fp32": 1}


@dataclass(frozen=True, slots=True)
class LlamaShape:
    """The sizes a step is built for (what a compiled step depends on, with `Weights.kind`)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LlamaShape:
        return cls(**json.loads(text))


def unsupported(config: Any) -> str | None:
    """Why the own step cannot run a model of this transformers `config` (None when it
    can): a plain Llama only."""
    if config is None or getattr(config, "model_type", None) != "llama":
        return "not a Llama model"
    rope = getattr(config, "rope_parameters", None) or {"rope_type": "default"}
    checks = {
        "rope scaling": rope.get("rope_type", "default") != "default",
        "attention or MLP biases": bool(getattr(config, "attention_bias", False)
                                        or getattr(config, "mlp_bias", False)),
        "activation other than silu": getattr(config, "hidden_act", "silu") != "silu",
        "tensor-parallel pretraining": getattr(config, "pretraining_tp", 1) != 1,
    }
    reasons = [name for name, failed in checks.items() if failed]
    return ", ".join(reasons) or None


def shape_of(config: Any) -> LlamaShape:
    """The sizes of a model with this transformers `config`."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return LlamaShape(layers=config.num_hidden_layers, hidden=config.hidden_size,
                      heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                      head_dim=head_dim, intermediate=config.intermediate_size,
                      vocab=config.vocab_size, eps=float(config.rms_norm_eps))


def fits_int4(shape: LlamaShape) -> bool:
    """Whether every matrix of the model suits torch's int4 kernel (`int4.fits`)."""
    qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    matrices = [(qkv, shape.hidden), (shape.hidden, shape.heads * shape.head_dim),
                (2 * shape.intermediate, shape.hidden), (shape.hidden, shape.intermediate),
                (shape.vocab, shape.hidden)]
    return all(int4.fits(out, inp) for out, inp in matrices)


@dataclass(frozen=True, slots=True)
class Weights:
    """All the step's tensors (`flat`), their `kind` and the model's `shape`."""

    shape: LlamaShape
    kind: str
    flat: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.flat)


def _matrix(weight: torch.Tensor, kind: str) -> list[torch.Tensor]:
    if kind == "fp32":
        return [weight.detach().float().contiguous()]
    if kind == "int8":
        q, scale = quantize_rows(weight.detach().float())
        return [q, scale.reshape(-1).bfloat16()]
    packed = int4.quantize(weight)
    return [packed.packed, packed.scales]


HEAD_KIND = {"int4": "int8", "fp32": "fp32"}
"""The output head's precision per kind. In the int4 kind it is int8 per row with bf16 rows
in (`linear_kernels`' ``int8w``): the bundled model's head is Q8_0 in its file, and int4
there cost 2.3% of the guard text's log-likelihood (int8: 0.12%)."""


@torch.inference_mode()
def from_model(model: nn.Module, kind: str, head_kind: str | None = None) -> Weights:
    """Gather (and for int4 quantize) `model`'s weights; the model can be dropped after."""
    if kind not in KINDS:
        raise ValueError(f"unknown weight kind {kind!r}")
    shape = shape_of(getattr(model, "config"))  # noqa: B009 - a transformers model
    inner: Any = getattr(model, "model")  # noqa: B009
    embedding = inner.embed_tokens.weight.detach().float()
    if kind == "fp32":
        table, scale = embedding, torch.ones(shape.vocab, 1)
    else:
        table, scale = quantize_rows(embedding)
    head: Any = getattr(model, "lm_head")  # noqa: B009
    flat = [table, scale, inner.rotary_emb.inv_freq.detach().float().clone(),
            inner.norm.weight.detach().float().clone(),
            *_matrix(head.weight, head_kind or HEAD_KIND[kind])]
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        flat += [layer.input_layernorm.weight.detach().float().clone(), *_matrix(qkv, kind),
                 *_matrix(attn.o_proj.weight, kind),
                 layer.post_attention_layernorm.weight.detach().float().clone(),
                 *_matrix(gate_up, kind), *_matrix(mlp.down_proj.weight, kind)]
    return Weights(shape, kind, flat)


def dummy(shape: LlamaShape, kind: str) -> Weights:
    """Zero weights of the right shapes and types: enough to compile a step."""
    def matrix(out_features: int, in_features: int, form: str = kind) -> list[torch.Tensor]:
        if form == "fp32":
            return [torch.zeros(out_features, in_features)]
        if form == "int8":
            return [torch.zeros(out_features, in_features, dtype=torch.int8),
                    torch.ones(out_features, dtype=torch.bfloat16)]
        return [torch.zeros(out_features, in_features // 2, dtype=torch.uint8),
                torch.zeros(in_features // int4.GROUP, out_features, 2, dtype=torch.bfloat16)]

    qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    table = torch.zeros(shape.vocab, shape.hidden, dtype=torch.int8 if kind == "int4" else None)
    flat = [table, torch.ones(shape.vocab, 1),
            torch.ones(shape.head_dim // 2), torch.ones(shape.hidden),
            *matrix(shape.vocab, shape.hidden, HEAD_KIND[kind])]
    for _ in range(shape.layers):
        flat += [torch.ones(shape.hidden), *matrix(qkv, shape.hidden),
                 *matrix(shape.hidden, shape.heads * shape.head_dim), torch.ones(shape.hidden),
                 *matrix(2 * shape.intermediate, shape.hidden),
                 *matrix(shape.hidden, shape.intermediate)]
    return Weights(shape, kind, flat)
