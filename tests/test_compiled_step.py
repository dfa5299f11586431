"""Compiled decode steps on the tiny model: built in a child process while the eager step
serves, swapped in between steps, the same tokens, loaded from disk at the next start.

Slow: AOTInductor compiles the tiny model's step in one to three minutes on two cores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.engines.contract import GenerationRequest, SamplingParams, StepOutput
from bot.engines.local.linear_kernels import available
from bot.engines.local.llama_weights import LlamaShape
from bot.engines.local.static_batch import StaticDecodeBatch
from bot.engines.local.step_backend import StepBackend, step_backend
from bot.engines.local.step_compiler import CompiledSteps

pytestmark = pytest.mark.slow
KIND = "int4" if available("int4") else "fp32"


def backend(folder: Path, root: Path, slots: tuple[int, ...] = (2,)) -> StepBackend:
    built = step_backend(AutoModelForCausalLM.from_pretrained(folder).eval(),
                         AutoTokenizer.from_pretrained(folder), kind=KIND, name="tiny",
                         bot_name="Bot", context_tokens=1024, prompt_cache_mb=0,
                         steps_root=root, compile_delay=0, compiled_slots=slots)
    assert built is not None and built.steps is not None
    return built


def decode(batch: StaticDecodeBatch, requests: list[GenerationRequest]) -> list[list[int]]:
    firsts: dict[int, StepOutput] = {}
    batch.admit(list(enumerate(requests)), firsts.__setitem__)
    got: dict[int, list[int]] = {}
    while len(got) < len(requests):
        for seq_id, output in batch.step().items():
            if output.finished:
                got[seq_id] = batch.reply_tokens(seq_id)
                batch.finish(seq_id)
    return [got[i] for i in range(len(requests))]


def test_a_compiled_step_is_swapped_in_and_decodes_the_same(
        tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    requests = [GenerationRequest([{"role": "user", "content": text}],
                                  SamplingParams(max_new_tokens=110, temperature=0.0))
                for text in ("hello there", "what is the weather like today in Paris?")]
    first = backend(tiny_model_dir, tmp_path)
    assert first.steps is not None
    eager = decode(first.open_batch(), requests)  # served while the child compiles
    assert "compiling 2" in first.info.note()
    assert first.steps.building
    with caplog.at_level(logging.INFO):
        first.steps.wait()
    assert first.info.note() == "; compiled decode steps for 2 rows"
    assert not first.steps.building
    assert "decode step for 2 slot(s) compiled in" in caplog.text
    batch = first.open_batch()
    compiled = batch._step_for(2)
    assert type(compiled).__name__ == "_Loaded"
    assert compiled.unlocked  # type: ignore[union-attr]  # run with the GIL released
    # 110 new tokens grow the cache from 128 to 192 columns: one compiled step takes both
    assert decode(batch, requests) == eager
    first.close()

    again = backend(tiny_model_dir, tmp_path)  # a later start: loaded, nothing to build
    assert again.info.note() == "; compiled decode steps for 2 rows"
    assert again.steps is not None and not again.steps.building
    assert decode(again.open_batch(), requests) == eager
    again.close()


def test_a_failed_build_leaves_the_steps_eager(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    broken = LlamaShape(layers=1, hidden=32, heads=0, kv_heads=0, head_dim=8,
                        intermediate=64, vocab=64, eps=1e-5)  # no heads: export fails
    steps = CompiledSteps(tmp_path, broken, "fp32", [1, 2], delay=0)
    with caplog.at_level(logging.WARNING):
        steps.wait()
    steps.close()
    assert not steps.building  # no more tries after a failure
    assert steps.get(1) is None and steps.get(2) is None
    assert steps.describe() == "to compile: 2 rows; failed to compile: 1 row"
    assert "compiling the decode step for 1 slot(s) failed" in caplog.text
    assert (tmp_path / "step-1.log").read_text()  # the child's output, for the user
