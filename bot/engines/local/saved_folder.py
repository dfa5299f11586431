"""Read a model folder's config, generation config and tokenizer without transformers' model
registry, for the warm start of the own step (`step_backend.stored_step_backend`).

`AutoConfig` and `AutoTokenizer` import transformers' table of every model, and a Llama's
config class pulls in `torch.distributed` and sympy on the way: about 40 MiB a serving bot
never uses. A folder transformers wrote when it converted a GGUF file names every size
in ``config.json`` and its tokenizer class in ``tokenizer_config.json``, so both are read
directly; anything else goes through the Auto classes as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transformers import GenerationConfig, PreTrainedTokenizerBase

LLAMA_KEYS = frozenset({
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "vocab_size",
    "max_position_embeddings"})
"""What `llama_weights.shape_of` and `step_backend` read, all written by transformers."""
TOKENIZERS_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
"""Tokenizer classes that are the plain `tokenizers`-backed one (what AutoTokenizer loads)."""


def config_of(location: str) -> Any:
    """The folder's model config: ``config.json`` as attributes for a Llama that names
    every size, else `AutoConfig`'s."""
    values = _json(Path(location) / "config.json")
    if values.get("model_type") == "llama" and LLAMA_KEYS <= values.keys():
        return SimpleNamespace(**values)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(location)


def generation_config_of(location: str, config: Any) -> GenerationConfig:
    """``generation_config.json``, or what transformers derives from the model config."""
    try:
        return GenerationConfig.from_pretrained(location)
    except OSError:  # no generation_config.json
        from transformers import AutoConfig

        full = config if hasattr(config, "to_dict") else AutoConfig.from_pretrained(location)
        return GenerationConfig.from_model_config(full)


def tokenizer_of(location: str) -> PreTrainedTokenizerBase:
    """The folder's tokenizer: the `tokenizers`-backed class directly when that is the
    class ``tokenizer_config.json`` names, else `AutoTokenizer`'s choice."""
    named = _json(Path(location) / "tokenizer_config.json").get("tokenizer_class")
    chosen: PreTrainedTokenizerBase
    if named in TOKENIZERS_CLASSES:
        from transformers import PreTrainedTokenizerFast

        chosen = PreTrainedTokenizerFast.from_pretrained(location)
    else:
        from transformers import AutoTokenizer

        chosen = AutoTokenizer.from_pretrained(location)
    return chosen


def _json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}
