"""Reading a converted model folder without transformers' model registry (`saved_folder`):
the same config values, generation config and tokenizer as the Auto classes give (that a
warm start then never imports transformers' modeling code: tests/test_stored_weights.py)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from bot.engines.local import llama_weights
from bot.engines.local.saved_folder import config_of, generation_config_of, tokenizer_of

CHAT = [{"role": "system", "content": "You are Bot."},
        {"role": "user", "content": "Héllo <|im_end|> wörld, 12345 🙂"},
        {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "and again"}]


def test_the_config_and_tokenizer_are_what_the_auto_classes_read(
        tiny_model_dir: Path) -> None:
    folder = str(tiny_model_dir)
    config, full = config_of(folder), AutoConfig.from_pretrained(folder)
    assert not hasattr(config, "to_dict")  # read from the file, not through AutoConfig
    assert llama_weights.shape_of(config) == llama_weights.shape_of(full)
    assert llama_weights.unsupported(config) == llama_weights.unsupported(full)
    assert config.max_position_embeddings == full.max_position_embeddings
    generation = generation_config_of(folder, config)
    assert generation.to_dict() == GenerationConfig.from_pretrained(folder).to_dict()

    light, auto = tokenizer_of(folder), AutoTokenizer.from_pretrained(folder)
    assert type(light) is type(auto)
    assert light.apply_chat_template(CHAT, add_generation_prompt=True) == \
        auto.apply_chat_template(CHAT, add_generation_prompt=True)
    ids = auto.encode(CHAT[1]["content"])
    assert light.encode(CHAT[1]["content"]) == ids
    assert light.decode(ids, skip_special_tokens=True) == \
        auto.decode(ids, skip_special_tokens=True)
    assert (light.eos_token_id, light.pad_token_id) == (auto.eos_token_id, auto.pad_token_id)


def test_a_folder_that_does_not_name_everything_goes_through_the_auto_classes(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    values = json.loads((tiny_model_dir / "config.json").read_text())
    del values["num_key_value_heads"]  # transformers' default: as many as attention heads
    (tmp_path / "config.json").write_text(json.dumps(values))
    config = config_of(str(tmp_path))
    assert config.num_key_value_heads == config.num_attention_heads
    assert hasattr(config, "to_dict")
