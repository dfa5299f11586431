"""Continuous batching: the worker's batch loop on a fake, and the transformers batch on the
tiny model, whose batched greedy tokens must equal unbatched `model.generate` tokens."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.engines.contract import GenerationRequest, SamplingParams, StepOutput
from bot.engines.local.batch import HFDecodeBatch
from bot.engines.local.hf_backend import HFBackend
from bot.engines.worker import Completion, ModelWorker
from bot.errors import BusyError, GenerationError
from tests.fakes.backends import EchoBatchBackend

GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0)


def request(text: str, max_new_tokens: int = 50) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": text}],
                             SamplingParams(max_new_tokens=max_new_tokens))


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the worker thread to reach a state (a safety net, not a timing check)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the worker never got there")


# -- the batch loop, on a fake batching backend ----------------------------------------


async def test_waiting_requests_are_decoded_together() -> None:
    backend = EchoBatchBackend(steps=0)
    async with ModelWorker(lambda: backend) as worker:
        handles = [worker.submit(request(f"{word} and more")) for word in ("red", "green",
                                                                          "blue")]
        await until(lambda: len(backend.prompts) == 3)
        assert worker.queue_depth == 3
        backend.allow(100)
        texts = [(await h.result()).text for h in handles]
    assert texts == ["echo: red and more", "echo: green and more", "echo: blue and more"]
    assert backend.steps[0] == [0, 1, 2]
    assert backend.thread_names == ["model-worker"] * 3


async def test_streams_stay_separate() -> None:
    backend = EchoBatchBackend()
    async with ModelWorker(lambda: backend) as worker:
        handles = [worker.submit(request(" ".join(f"{c}{i}" for i in range(12))))
                   for c in "abc"]

        async def collect(handle: object) -> list[str]:
            return [piece async for piece in handle]  # type: ignore[attr-defined]

        streams = await asyncio.gather(*(collect(h) for h in handles))
        results = [await h.result() for h in handles]
    for letter, pieces, completion in zip("abc", streams, results, strict=True):
        assert "".join(pieces) == completion.text
        assert completion.text == "echo: " + " ".join(f"{letter}{i}" for i in range(12))


async def test_a_short_request_joins_a_running_batch_and_leaves_first() -> None:
    backend = EchoBatchBackend(steps=0)
    async with ModelWorker(lambda: backend) as worker:
        long = worker.submit(request(" ".join(["word"] * 10)))
        await until(lambda: len(backend.prompts) == 1)
        backend.allow(3)
        await until(lambda: len(backend.steps) == 3)
        short = worker.submit(request("hi there"))
        await until(lambda: len(backend.prompts) == 2)
        backend.allow(100)
        assert (await short.result()).text == "echo: hi there"
        assert (await long.result()).text == "echo: " + " ".join(["word"] * 10)
    assert backend.steps[:3] == [[0], [0], [0]]
    assert backend.steps[3:5] == [[0, 1], [0, 1]]  # joined between steps...
    assert backend.steps[5:] == [[0]] * 5  # ...and left when its reply was complete


async def test_cancelling_one_member_leaves_the_others() -> None:
    backend = EchoBatchBackend(steps=0)
    async with ModelWorker(lambda: backend) as worker:
        doomed = worker.submit(request("one two three four five six"))
        kept = worker.submit(request("seven eight nine ten eleven twelve"))
        await until(lambda: len(backend.prompts) == 2)
        backend.allow(2)
        await until(lambda: len(backend.steps) == 2)
        doomed.cancel()
        await until(lambda: worker.queue_depth == 1)
        backend.allow(100)
        assert (await kept.result()).text == "echo: seven eight nine ten eleven twelve"
        with pytest.raises(asyncio.CancelledError):
            await doomed.result()
    assert backend.steps[:2] == [[0, 1], [0, 1]]
    assert backend.steps[2:] == [[1]] * 4


async def test_a_failed_step_fails_its_batch_and_the_worker_survives() -> None:
    backend = EchoBatchBackend(steps=0)
    async with ModelWorker(lambda: backend) as worker:
        good = worker.submit(request("fine words"))
        bad = worker.submit(request("boom goes the model"))
        await until(lambda: len(backend.prompts) == 2)
        backend.allow(100)
        for handle in (good, bad):
            with pytest.raises(GenerationError, match="exploded"):
                await handle.result()
        after = worker.submit(request("still here"))
        assert (await after.result()).text == "echo: still here"
        assert worker.failed == 2
        assert worker.served == 1


async def test_a_request_failing_to_join_fails_alone() -> None:
    backend = EchoBatchBackend(steps=0)
    async with ModelWorker(lambda: backend) as worker:
        running = worker.submit(request("already running"))
        await until(lambda: len(backend.prompts) == 1)
        good = worker.submit(request("fine words"))  # these two join together, fail
        bad = worker.submit(request("unreadable input"))  # together, then retry one by one
        with pytest.raises(GenerationError, match="cannot read"):
            await bad.result()
        backend.allow(100)
        assert (await good.result()).text == "echo: fine words"
        assert (await running.result()).text == "echo: already running"
        assert worker.failed == 1


async def test_per_request_max_new_tokens() -> None:
    backend = EchoBatchBackend()
    async with ModelWorker(lambda: backend) as worker:
        handles = [worker.submit(request("a b c d e f g h", max_new_tokens=n))
                   for n in (1, 3, 9)]
        texts = [(await h.result()).text for h in handles]
    assert texts == ["echo:", "echo: a b", "echo: a b c d e f g h"]


async def test_batch_size_and_token_budget_bound_the_batch() -> None:
    backend = EchoBatchBackend()
    async with ModelWorker(lambda: backend, max_batch_size=2) as worker:
        handles = [worker.submit(request(f"n{i} x y z")) for i in range(4)]
        texts = [(await h.result()).text for h in handles]
    assert texts == [f"echo: n{i} x y z" for i in range(4)]
    assert max(len(ids) for ids in backend.steps) == 2

    backend = EchoBatchBackend()
    cost = 4 + 10  # words in the prompt + max_new_tokens
    async with ModelWorker(lambda: backend, batch_token_budget=2 * cost) as worker:
        handles = [worker.submit(request(f"n{i} x y z", max_new_tokens=10)) for i in range(3)]
        handles.append(worker.submit(request(" ".join(["big"] * 40), max_new_tokens=10)))
        results = [await h.result() for h in handles]
    assert all(r.stop_reason == "done" for r in results)
    assert max(len(ids) for ids in backend.steps) == 2
    assert [3] in backend.steps  # the oversized request ran, alone


async def test_requests_waiting_for_room_count_towards_the_queue() -> None:
    backend = EchoBatchBackend(steps=0)
    async with ModelWorker(lambda: backend, max_pending=2, max_batch_size=1) as worker:
        handles = [worker.submit(request("one"))]
        await until(lambda: len(backend.prompts) == 1)
        handles += [worker.submit(request("two")), worker.submit(request("three"))]
        await until(lambda: worker._queue.qsize() == 1)  # "two" waits for room
        handles.append(worker.submit(request("four")))
        assert worker.queue_depth == 4
        with pytest.raises(BusyError):
            worker.submit(request("five"))
        backend.allow(100)
        texts = [(await h.result()).text for h in handles]
    assert texts == ["echo: one", "echo: two", "echo: three", "echo: four"]


async def test_timeout_keeps_the_partial_answer() -> None:
    backend = EchoBatchBackend(steps=0)
    async with ModelWorker(lambda: backend, timeout=0.05) as worker:
        completion = await worker.submit(request("slow words here")).result()
    assert completion == Completion("echo:", "timeout")


async def test_stop_ends_running_requests_and_fails_waiting_ones() -> None:
    backend = EchoBatchBackend(steps=0)
    worker = ModelWorker(lambda: backend, max_batch_size=1)
    await worker.start()
    running = worker.submit(request("running words"))
    await until(lambda: len(backend.prompts) == 1)
    waiting = worker.submit(request("waiting"))
    await until(lambda: worker._queue.qsize() == 0)
    await worker.stop()
    assert (await running.result()).stop_reason == "shutdown"
    with pytest.raises(GenerationError, match="shutting down"):
        await waiting.result()
    assert backend.closed


# -- the transformers batch, on the tiny model ----------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> HFBackend:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return HFBackend(model, tokenizer, name="tiny", bot_name="Bot", context_tokens=1024)


def chat(text: str, max_new_tokens: int = 24) -> GenerationRequest:
    return GenerationRequest([{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": text}],
                             SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))


def reference(backend: HFBackend, req: GenerationRequest) -> list[int]:
    """What plain, unbatched greedy `model.generate` produces."""
    ids = torch.tensor([backend.renderer.encode(req.prompt)])
    penalty = req.sampling.repetition_penalty
    options = {} if penalty == 1 else {"repetition_penalty": penalty}
    with torch.inference_mode():
        out = backend.model.generate(  # type: ignore[operator]
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=req.sampling.max_new_tokens, pad_token_id=backend._pad_id,
            **options)
    return list(out[0, ids.shape[1]:].tolist())


def admit(batch: HFDecodeBatch,
          entries: list[tuple[int, GenerationRequest]]) -> dict[int, StepOutput]:
    """Admit `entries` and collect their first tokens."""
    firsts: dict[int, StepOutput] = {}
    batch.admit(entries, lambda seq_id, output: firsts.__setitem__(seq_id, output))
    assert sorted(firsts) == sorted(seq_id for seq_id, _ in entries)
    return firsts


def open_batch(backend: HFBackend) -> HFDecodeBatch:
    batch = backend.open_batch()
    assert batch is not None
    return batch


PROMPTS = ["hello", "what is the weather like today in Paris?", "0123456789",
           "alice: the team decided to ship on Friday. bob: fine by me, see you then",
           "Summarise the conversation, please", "how are you", "capital of France",
           "x" * 60]


def test_batched_greedy_tokens_equal_unbatched_ones(tiny: HFBackend) -> None:
    requests = [chat(text, 8 + 5 * i) for i, text in enumerate(PROMPTS)]
    expected = [reference(tiny, r) for r in requests]
    batch = open_batch(tiny)
    got: dict[int, list[int]] = {}
    running: set[int] = set()
    waiting = list(range(len(requests)))
    steps = 0
    while waiting or running:
        if steps in (0, 3, 4, 9) and waiting:  # some start together, some join mid-batch
            admit(batch, [(seq_id, requests[seq_id]) for seq_id in waiting[:2]])
            running.update(waiting[:2])
            waiting = waiting[2:]
        for seq_id, output in batch.step().items():
            if output.finished:
                got[seq_id] = batch.reply_tokens(seq_id)
                batch.finish(seq_id)
                running.discard(seq_id)
        steps += 1
    assert [got[i] for i in range(len(requests))] == expected
    assert [len(t) for t in expected] == [r.sampling.max_new_tokens for r in requests]


def test_repetition_penalty_matches_model_generate_and_leaves_other_rows_alone(
        tiny: HFBackend) -> None:
    plain = [chat(text, 20) for text in PROMPTS[:4]]
    penalised = [dataclasses.replace(r, sampling=dataclasses.replace(
        r.sampling, repetition_penalty=1.3)) for r in plain]
    requests = [r for pair in zip(plain, penalised, strict=True) for r in pair]
    expected = [reference(tiny, r) for r in requests]
    assert expected[0::2] != expected[1::2]  # the penalty changes what the tiny model says
    batch = open_batch(tiny)
    admit(batch, list(enumerate(requests)))
    got: dict[int, list[int]] = {}
    while len(got) < len(requests):
        for seq_id, output in batch.step().items():
            if output.finished:
                got[seq_id] = batch.reply_tokens(seq_id)
                batch.finish(seq_id)
    assert [got[i] for i in range(len(requests))] == expected


def test_prompts_of_similar_length_are_prefilled_together_with_padding(
        tiny: HFBackend) -> None:
    texts = ["what is the weather like?", "what is the weather like today?",
             "what is the weather like today in Paris?",
             "alice: " + "the team decided to ship on Friday. " * 6]
    requests = [chat(text, 12) for text in texts]
    expected = [reference(tiny, r) for r in requests]
    calls: list[int] = []
    model = tiny.model
    original = model.forward

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(kwargs["input_ids"].shape[0])  # type: ignore[union-attr]
        return original(*args, **kwargs)

    model.forward = counting  # type: ignore[method-assign]
    try:
        batch = open_batch(tiny)
        firsts = admit(batch, list(enumerate(requests)))
        assert sorted(calls) == [1, 3]  # the weather questions in one pass, the long one alone
        got = {}
        while len(got) < 4:
            for seq_id, output in batch.step().items():
                if output.finished:
                    got[seq_id] = batch.reply_tokens(seq_id)
                    batch.finish(seq_id)
    finally:
        model.forward = original  # type: ignore[method-assign]
    assert [got[i] for i in range(4)] == expected
    assert sorted(firsts) == [0, 1, 2, 3]


def test_removing_a_member_mid_batch_leaves_the_others_unchanged(tiny: HFBackend) -> None:
    requests = [chat(text, 20) for text in PROMPTS[:4]]
    expected = [reference(tiny, r) for r in requests]
    batch = open_batch(tiny)
    admit(batch, list(enumerate(requests)))
    for _ in range(5):
        batch.step()
    batch.finish(1)  # cancelled: its padding columns go, the rest decode on
    got = {}
    while len(got) < 3:
        for seq_id, output in batch.step().items():
            if output.finished:
                got[seq_id] = batch.reply_tokens(seq_id)
                batch.finish(seq_id)
    assert [got[0], got[2], got[3]] == [expected[0], expected[2], expected[3]]
    assert len(batch) == 0


def test_end_of_text_stops_each_sequence_on_its_own(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    backend = HFBackend(model, tokenizer, name="tiny", bot_name="Bot", context_tokens=1024)
    requests = [chat(text, 30) for text in PROMPTS[:3]]
    first = reference(backend, requests[0])
    model.generation_config.eos_token_id = first[4]  # make a token the model picks the end
    expected = [reference(backend, r) for r in requests]
    assert expected[0] == first[:5]
    batch = open_batch(backend)
    for seq_id, req in enumerate(requests):
        admit(batch, [(seq_id, req)])
    got = {}
    while len(got) < 3:
        for seq_id, output in batch.step().items():
            if output.finished:
                got[seq_id] = batch.reply_tokens(seq_id)
                batch.finish(seq_id)
    assert [got[i] for i in range(3)] == expected


async def test_concurrent_requests_through_the_worker_match_one_at_a_time(
        tiny: HFBackend, tiny_model_dir: Path) -> None:
    requests = [chat(text, 16 + 4 * i) for i, text in enumerate(PROMPTS[:6])]
    expected = [tiny.tokenizer.decode(reference(tiny, r), skip_special_tokens=True).strip()
                for r in requests]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def make() -> HFBackend:
        return HFBackend(model, tokenizer, name="tiny", bot_name="Bot", context_tokens=1024)

    async with ModelWorker(make, max_batch_size=4) as worker:
        handles = [worker.submit(r) for r in requests]

        async def collect(handle: object) -> str:
            return "".join([piece async for piece in handle])  # type: ignore[attr-defined]

        streamed = await asyncio.gather(*(collect(h) for h in handles))
        texts = [(await h.result()).text for h in handles]
    assert texts == expected
    assert [s.strip() for s in streamed] == texts


def test_sampled_rows_follow_their_own_settings(tiny: HFBackend) -> None:
    torch.manual_seed(0)
    batch = open_batch(tiny)
    hot = GenerationRequest(chat("hello").prompt,
                            SamplingParams(max_new_tokens=12, temperature=1.5, top_p=0.95))
    cold = chat("hello", 12)
    expected = reference(tiny, cold)
    outs: dict[int, list[int]] = {}
    for seq_id, req in enumerate([hot, hot, hot, cold]):
        admit(batch, [(seq_id, req)])
    while len(outs) < 4:
        for seq_id, output in batch.step().items():
            if output.finished:
                outs[seq_id] = batch.reply_tokens(seq_id)
                batch.finish(seq_id)
    assert outs[3] == expected
    assert len({tuple(outs[i]) for i in range(3)}) > 1


# -- the pieces under the transformers batch ------------------------------------------


def test_growing_layer_appends_in_place_across_its_room() -> None:
    from bot.engines.local.kv_cache import ROOM, GrowingLayer, with_room

    torch.manual_seed(0)
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = GrowingLayer(with_room(keys), with_room(values), 5)
    expected_k, expected_v = keys, values
    for _ in range(ROOM + 3):  # past the first buffer's room: it is copied once
        new_k, new_v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        got_k, got_v = layer.update(new_k, new_v)
        expected_k = torch.cat([expected_k, new_k], dim=2)
        expected_v = torch.cat([expected_v, new_v], dim=2)
        assert torch.equal(got_k, expected_k) and torch.equal(got_v, expected_v)
    assert layer.get_seq_length() == 5 + ROOM + 3


def test_sampling_respects_temperature_top_k_and_top_p() -> None:
    from bot.engines.local.sampling import next_tokens

    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0], [5.0, 0.0, 0.0, 4.9]])
    greedy = SamplingParams(temperature=0.0)
    assert next_tokens(logits, [greedy, greedy]) == [1, 0]
    narrow = SamplingParams(temperature=1.0, top_p=0.01)  # only the most likely survives
    assert all(next_tokens(logits, [narrow, narrow]) == [1, 0] for _ in range(20))
    wide = SamplingParams(temperature=1.0, top_p=1.0)
    assert all(next_tokens(logits, [wide, wide], top_k=1) == [1, 0] for _ in range(20))
    seen = {tuple(next_tokens(logits, [wide, wide], top_k=2)) for _ in range(200)}
    assert seen <= {(1, 0), (2, 0), (1, 3), (2, 3)} and len(seen) == 4
    # Rows drawn together keep their own settings: narrow, greedy and wide in one call.
    three = torch.cat([logits, logits[:1]])
    mixed = {tuple(next_tokens(three, [narrow, greedy, wide], top_k=2)) for _ in range(200)}
    assert mixed == {(1, 0, 1), (1, 0, 2)}


def test_repetition_penalty_scales_scores_of_seen_tokens_only() -> None:
    from bot.engines.local.sampling import next_tokens

    logits = torch.tensor([[4.0, 3.5, -1.0, -1.25], [4.0, 3.5, -1.0, -1.25]])
    off = SamplingParams(temperature=0.0)
    on = SamplingParams(temperature=0.0, repetition_penalty=1.5)
    asked: list[int] = []

    def seen(row: int) -> list[int]:
        asked.append(row)
        return [0, 2]

    assert next_tokens(logits, [off, on], seen=seen) == [0, 1]
    assert asked == [1]  # rows without a penalty are never looked at
    assert logits[1].tolist() == [4.0, 3.5, -1.0, -1.25]  # the caller's logits are kept
    assert next_tokens(torch.tensor([[-1.0, -1.2]]), [on], seen=lambda row: [0]) == [1]
    # Each row by its own penalty and its own tokens (repeats count once).
    mild = SamplingParams(temperature=0.0, repetition_penalty=1.2)
    strong = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    both = torch.tensor([[4.0, 3.0], [4.0, 3.0]])
    assert next_tokens(both, [mild, strong], seen=lambda row: [0, 0]) == [0, 1]
