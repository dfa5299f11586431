"""The own Llama step (`llama_step`, `static_batch`, `step_backend`) on the tiny model.

In fp32 it must compute what transformers computes, token for token, through continuous
batching (rows joining and leaving) and the prompt cache; in int4 what transformers computes
with the same int4 kernels in its linear layers. The compiled step is in
tests/test_compiled_step.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from bot.engines.contract import GenerationRequest, SamplingParams, StepOutput
from bot.engines.local import int4, static_batch
from bot.engines.local.backend import load_backend
from bot.engines.local.cpu_linear import convert_linears
from bot.engines.local.kernel_choice import KernelChoice
from bot.engines.local.linear_kernels import available
from bot.engines.local.llama_step import empty_cache, forward
from bot.engines.local.llama_weights import from_model, unsupported
from bot.engines.local.model_source import ModelSource
from bot.engines.local.quality import mean_log_likelihood
from bot.engines.local.static_batch import StaticDecodeBatch, slot_count
from bot.engines.local.step_backend import StepBackend, step_backend
from bot.engines.worker import ModelWorker

PROMPTS = ["hello", "what is the weather like today in Paris?", "0123456789",
           "alice: the team decided to ship on Friday. bob: fine by me, see you then",
           "Summarise the conversation, please", "how are you", "capital of France",
           "x" * 60]
needs_int4 = pytest.mark.skipif(not (available("int4") and available("int8w")),
                                reason="no int4 or int8 weight kernel in this torch")


def load(folder: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def own(folder: Path, kind: str = "fp32", prompt_cache_mb: float = 64) -> StepBackend:
    backend = step_backend(load(folder), AutoTokenizer.from_pretrained(folder), kind=kind,
                           name="tiny", bot_name="Bot", context_tokens=1024,
                           prompt_cache_mb=prompt_cache_mb, steps_root=None)
    assert backend is not None
    return backend


def chat(text: str, max_new_tokens: int = 24, key: str | None = None) -> GenerationRequest:
    return GenerationRequest([{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": text}],
                             SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                             cache_key=key)


def reference(model: PreTrainedModel, backend: StepBackend,
              request: GenerationRequest) -> list[int]:
    """Plain, unbatched greedy `model.generate` on a transformers model."""
    ids = torch.tensor([backend.renderer.encode(request.prompt)])
    with torch.inference_mode():
        out = model.generate(  # type: ignore[operator]
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=request.sampling.max_new_tokens,
            pad_token_id=backend.endings.pad_id)
    return list(out[0, ids.shape[1]:].tolist())


def admit(batch: StaticDecodeBatch, entries: list[tuple[int, GenerationRequest]]) -> None:
    firsts: dict[int, StepOutput] = {}
    batch.admit(entries, lambda seq_id, output: firsts.__setitem__(seq_id, output))
    assert sorted(firsts) == sorted(seq_id for seq_id, _ in entries)


def run_all(batch: StaticDecodeBatch, requests: list[GenerationRequest],
            joins: tuple[int, ...] = (0, 3, 4, 9), per_join: int = 2) -> list[list[int]]:
    """Decode `requests`, `per_join` joining at each step of `joins`, each leaving when done."""
    got: dict[int, list[int]] = {}
    waiting = list(range(len(requests)))
    running: set[int] = set()
    steps = 0
    while waiting or running:
        if (steps in joins or not running) and waiting:
            admit(batch, [(seq_id, requests[seq_id]) for seq_id in waiting[:per_join]])
            running.update(waiting[:per_join])
            waiting = waiting[per_join:]
        for seq_id, output in batch.step().items():
            if output.finished:
                got[seq_id] = batch.reply_tokens(seq_id)
                batch.finish(seq_id)
                running.discard(seq_id)
        steps += 1
    assert len(batch) == 0
    return [got[i] for i in range(len(requests))]


def test_the_own_forward_computes_what_transformers_does(tiny_model_dir: Path) -> None:
    model = load(tiny_model_dir)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 8, 120, 64, 11]])
    weights = from_model(model, "fp32")
    keys, values = empty_cache(weights.shape, 1, 32)
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        got, new_keys, new_values = forward(weights.shape, "fp32", weights.flat, ids[:, :6],
                                            torch.tensor([0]), keys, values, all_logits=True)
        assert torch.allclose(got, want[:, :6], atol=1e-5)
        keys[:, :, :, :6], values[:, :, :, :6] = new_keys, new_values
        for position in range(6, 10):  # one token at a time after the cached ones
            got, new_keys, new_values = forward(weights.shape, "fp32", weights.flat,
                                                ids[:, position:position + 1],
                                                torch.tensor([position]), keys, values)
            keys[:, :, :, position:position + 1] = new_keys
            values[:, :, :, position:position + 1] = new_values
            assert torch.allclose(got, want[:, position], atol=1e-5)


def test_batched_greedy_tokens_equal_unbatched_transformers(tiny_model_dir: Path) -> None:
    backend = own(tiny_model_dir)
    model = load(tiny_model_dir)
    requests = [chat(text, 8 + 5 * i) for i, text in enumerate(PROMPTS)]
    expected = [reference(model, backend, r) for r in requests]
    assert run_all(backend.open_batch(), requests) == expected


def test_rows_leaving_mid_batch_shrink_the_cache_and_leave_the_others_unchanged(
        tiny_model_dir: Path) -> None:
    backend = own(tiny_model_dir)
    model = load(tiny_model_dir)
    requests = [chat(text, 20) for text in PROMPTS[:5]]
    expected = [reference(model, backend, r) for r in requests]
    batch = backend.open_batch()
    admit(batch, list(enumerate(requests)))
    for _ in range(3):
        batch.step()
    assert batch._keys.shape[1] == 8  # five rows: eight slots
    for seq_id in (0, 1, 2):  # cancelled: at a quarter of the slots in use, it shrinks
        batch.finish(seq_id)
    assert batch._keys.shape[1] == 2
    batch.finish(3)
    while not (outputs := batch.step())[4].finished:
        pass
    assert batch.reply_tokens(4) == expected[4]
    assert outputs[4].finished


def test_rows_joining_together_get_their_cache_in_one_allocation(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Growing slot by slot would copy the cache at each join and hold two copies at once."""
    batch = own(tiny_model_dir).open_batch()
    sizes: list[tuple[int, int]] = []
    resize = batch._resize

    def counted(slots: int, columns: int) -> None:
        sizes.append((slots, columns))
        resize(slots, columns)

    monkeypatch.setattr(batch, "_resize", counted)
    admit(batch, list(enumerate(chat(text, 4) for text in PROMPTS[:5])))
    assert len(sizes) == 1
    assert sizes[0][0] == 8 and batch._keys.shape[1] == 8


def test_a_prompt_in_chunks_attends_only_to_the_columns_it_holds(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk of a prompt sees the columns before it, not the empty rest of the cache
    (attending to those was a quarter of a long prompt's time), and answers the same."""
    backend = own(tiny_model_dir)
    model = load(tiny_model_dir)
    request = chat(PROMPTS[0], 8)
    expected = reference(model, backend, request)
    seen: list[int] = []
    real_forward = static_batch.forward

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[5].shape[3])  # the cache's columns this chunk attends to
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(static_batch, "PREFILL_CHUNK", 4)
    monkeypatch.setattr(static_batch, "forward", recording)
    (got,) = run_all(backend.open_batch(), [request])
    prompt = len(backend.renderer.encode(request.prompt))
    assert seen == list(range(0, prompt, 4))
    assert got == expected


def test_a_follow_up_reuses_its_conversation_and_answers_the_same(
        tiny_model_dir: Path) -> None:
    backend = own(tiny_model_dir)
    batch = backend.open_batch()
    first = chat("what is the weather like today in Paris?", 12, key="chan")
    reply = run_all(batch, [first])[0]
    follow = GenerationRequest(
        [*first.prompt, {"role": "assistant", "content": backend.tokenizer.decode(
            reply, skip_special_tokens=True)}, {"role": "user", "content": "and tomorrow?"}],
        first.sampling, cache_key="chan")
    cached = run_all(batch, [follow])[0]
    assert backend.batch_stats.last_reused >= 16
    uncached = run_all(own(tiny_model_dir, prompt_cache_mb=0).open_batch(), [follow])[0]
    assert cached == uncached


@needs_int4
def test_int4_weights_compute_what_int4_linear_layers_do(tiny_model_dir: Path) -> None:
    """The own int4 step against transformers with its linear layers in the same kernels:
    int4, the head in int8 rows (``int8w``), the embedding in int8 per row."""
    backend = own(tiny_model_dir, kind="int4")
    model = load(tiny_model_dir)
    preference = {"int4": 0.0, "int8w": 0.5}
    choice = KernelChoice(None, timer=lambda kernels, _: {k: preference.get(k, 1.0)
                                                          for k in kernels})
    kernels = convert_linears(model, "int4", choice).kernels
    assert kernels.pop("head") == "int8w" and set(kernels.values()) == {"int4"}
    requests = [chat(text, 12) for text in PROMPTS[:4]]
    expected = [reference(model, backend, r) for r in requests]
    assert run_all(backend.open_batch(), requests) == expected
    ids = backend.renderer.encode(requests[1].prompt)
    assert backend.log_likelihood(ids) == pytest.approx(mean_log_likelihood(model, ids),
                                                        rel=1e-3)


async def test_the_worker_batches_the_own_step_continuously(tiny_model_dir: Path) -> None:
    backend = own(tiny_model_dir)
    model = load(tiny_model_dir)
    requests = [chat(text, 16 + 4 * i) for i, text in enumerate(PROMPTS[:6])]
    expected = [backend.tokenizer.decode(reference(model, backend, r),
                                         skip_special_tokens=True).strip() for r in requests]
    async with ModelWorker(lambda: backend, max_batch_size=4) as worker:
        handles = [worker.submit(r) for r in requests]
        texts = [(await h.result()).text for h in handles]
        assert worker.info.note() == "; eager decode steps"
    assert texts == expected
    alone = own(tiny_model_dir)
    pieces: list[str] = []
    text = await asyncio.to_thread(alone.generate, requests[2], pieces.append, lambda: False)
    assert text == expected[2] and "".join(pieces).strip() == text


def test_slot_counts_grow_in_powers_of_two() -> None:
    assert [slot_count(n) for n in (1, 2, 3, 5, 9, 16, 17, 64, 65, 130)] == [
        1, 2, 4, 8, 16, 16, 32, 64, 128, 192]


def test_int4_keeps_a_q4_block_exactly_up_to_bf16_scales() -> None:
    torch.manual_seed(0)
    scale = torch.rand(48, 2, 1) + 0.5
    low = torch.randn(48, 2, 1)
    q = torch.randint(0, 16, (48, 2, 32)).float()
    q[..., 0], q[..., 1] = 0, 15  # as llama.cpp's Q4_1 blocks: minimum and maximum present
    weight = (q * scale + low).reshape(48, 64)
    restored = int4.dequantize(weight)
    assert float((restored - weight).abs().max() / weight.abs().max()) < 0.01
    assert torch.equal(int4.levels(weight)[0], q)  # the same 16 levels, not new ones


def test_models_the_own_step_does_not_take_are_named(tiny_model_dir: Path) -> None:
    model = load(tiny_model_dir)
    assert unsupported(model.config) is None
    model.config.model_type = "gpt2"
    assert unsupported(model.config) == "not a Llama model"
    assert step_backend(model, AutoTokenizer.from_pretrained(tiny_model_dir), kind="fp32",
                        name="x", bot_name="Bot", context_tokens=64, prompt_cache_mb=0,
                        steps_root=None) is None


@needs_int4
def test_load_backend_serves_int4_on_the_own_step(tiny_model_dir: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        backend = load_backend(ModelSource("folder", str(tiny_model_dir), "tiny"),
                               device="cpu", dtype="auto", cache_dir=str(tmp_path),
                               bot_name="Bot", context_tokens=512, quantize="int4")
    try:
        assert isinstance(backend, StepBackend)
        assert backend.info.dtype == "int4 weights"
        assert "to compile: 1, 2, 4, 8, 16 rows" in backend.info.note()
        assert "own decode step, int4 weights" in caplog.text
    finally:
        backend.close()
