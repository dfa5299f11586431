"""The quality guard on the real bundled model (slow): faster kernels must not cost quality.

The mean log-likelihood per token of a fixed public-domain text (tests/data/README.md) stays
within 1% of plain fp32 in the exact mode and within 3% in the quantized modes; greedy
replies stay free of degenerate repetition, and ``off`` gives the same greedy text as plain
`model.generate`. The default for the bundled Q4_1 file, int4 on the own Llama step, must
lose nothing against fp32: within 0.5%.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.local.cpu_linear import convert_linears
from bot.engines.local.kernel_choice import KernelChoice
from bot.engines.local.model_cache import load_pretrained
from bot.engines.local.model_source import bundled_model
from bot.engines.local.quality import (
    is_degenerate,
    mean_log_likelihood,
    relative_change,
    repeated_share,
)
from bot.engines.local.rendering import PromptRenderer
from bot.engines.local.step_backend import step_backend

pytestmark = pytest.mark.slow
TEXT = Path(__file__).parent / "data" / "pride_and_prejudice_ch1-2.txt"
PROMPTS = ["Write a long story about a robot who learns to paint. Describe every step.",
           "Explain how rain forms.", "Give me three tips for sleeping well.",
           "What is a good way to learn a language?"]
LIMIT = {"off": 0.01, "bf16": 0.03, "int8": 0.03, "int4": 0.005}
"""int8-all is not guarded here: it loops more often than fp32 (docs/benchmarks.md)."""
REPLY_TOKENS = 48

Loaded = tuple[PreTrainedModel, PreTrainedTokenizerBase]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quality-models")


def load(cache_dir: Path) -> Loaded:
    model, tokenizer = load_pretrained(bundled_model(), dtype=torch.float32,
                                       cache_dir=cache_dir)
    model.eval()  # type: ignore[no-untyped-call]
    return model, tokenizer


def greedy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    renderer = PromptRenderer(tokenizer, "Assistant")
    replies = []
    for prompt in PROMPTS:
        inputs = torch.tensor([renderer.encode([{"role": "user", "content": prompt}])])
        with torch.inference_mode():
            out = model.generate(  # type: ignore[operator]
                input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                max_new_tokens=REPLY_TOKENS, pad_token_id=tokenizer.eos_token_id)
        replies.append(out[0, inputs.shape[1]:].tolist())
    return replies


@pytest.fixture(scope="module")
def reference(cache_dir: Path) -> tuple[float, list[list[int]], list[int]]:
    """Plain fp32 `nn.Linear`: the text's log-likelihood, greedy replies, the text's ids."""
    model, tokenizer = load(cache_dir)
    ids = list(tokenizer(TEXT.read_text())["input_ids"])
    assert len(ids) > 2000
    return mean_log_likelihood(model, ids), greedy(model, tokenizer), ids


@pytest.mark.parametrize("mode", ["off", "bf16", "int8", "int4"])
def test_a_mode_keeps_the_likelihood_and_gives_sane_greedy_replies(
        mode: str, cache_dir: Path,
        reference: tuple[float, list[list[int]], list[int]]) -> None:
    plain_ll, plain_replies, ids = reference
    model, tokenizer = load(cache_dir)
    done = convert_linears(model, mode, KernelChoice(cache_dir / "kernels.json"))
    assert done.layers == 30 * 7 + 1
    ll = mean_log_likelihood(model, ids)
    assert relative_change(ll, plain_ll) <= LIMIT[mode], (mode, ll, plain_ll, done.kernels)
    replies = greedy(model, tokenizer)
    shares = [round(repeated_share(r), 2) for r in replies]
    assert not any(is_degenerate(r) for r in replies), (mode, shares, done.kernels)
    if mode == "off":
        assert replies == plain_replies  # the default mode gives plain generate's text


def test_plain_greedy_replies_are_not_degenerate_either(
        reference: tuple[float, list[list[int]], list[int]]) -> None:
    """The repetition check itself passes the reference, so a failure above means the mode."""
    _, replies, _ = reference
    assert not any(is_degenerate(r) for r in replies)
    assert is_degenerate([1, 2, 3, 4, 5] * 12)  # and it catches a loop


def test_the_int4_default_on_the_own_step_loses_nothing(
        cache_dir: Path, reference: tuple[float, list[list[int]], list[int]]) -> None:
    """What `MODEL_QUANTIZE=auto` serves for the bundled model: int4 layers holding the Q4_1
    file's own values, the head in int8, on the own decode step."""
    plain_ll, _, ids = reference
    model, tokenizer = load(cache_dir)
    backend = step_backend(model, tokenizer, kind="int4", name="bundled", bot_name="Assistant",
                           context_tokens=2048, prompt_cache_mb=0, steps_root=None)
    assert backend is not None
    ll = backend.log_likelihood(ids)
    assert relative_change(ll, plain_ll) <= LIMIT["int4"], (ll, plain_ll)
    replies = []
    for prompt in [*PROMPTS, "What is the capital of France?"]:
        request = GenerationRequest([{"role": "user", "content": prompt}],
                                    SamplingParams(max_new_tokens=REPLY_TOKENS, temperature=0))
        replies.append(backend.generate(request, lambda _: None, lambda: False))
    encoded = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
    assert not any(is_degenerate(r) for r in encoded), replies
    assert "Paris" in replies[-1]
