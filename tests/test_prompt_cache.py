"""The per-conversation prompt cache: LRU within a byte budget, and reuse that never changes
the answer (the tiny model's cached greedy tokens equal uncached `model.generate` tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.engines.contract import GenerationRequest, SamplingParams, StepOutput
from bot.engines.local.batch import HFDecodeBatch
from bot.engines.local.hf_backend import HFBackend
from bot.engines.local.prompt_cache import CachedPrompt, PromptCache, common_prefix
from bot.engines.worker import ModelWorker
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, IncomingMessage, Prompt
from tests.conftest import with_settings

# -- the cache itself --------------------------------------------------------------------


def entry(tokens: int, fill: float = 0.0) -> CachedPrompt:
    """An entry of `tokens` tokens over 2 layers: 2 x 2 x tokens x 4 floats = 64 B a token."""
    layer = (torch.full((1, 1, tokens, 4), fill), torch.full((1, 1, tokens, 4), fill))
    return CachedPrompt(tuple(range(tokens)), (layer, layer))


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [1]) == 0


def test_least_recently_used_entries_go_first() -> None:
    cache = PromptCache(max_bytes=64 * 30)
    cache.put("a", entry(10))
    cache.put("b", entry(10))
    cache.put("c", entry(10))
    refreshed = cache.take("a")
    assert refreshed is not None
    cache.put("a", refreshed)  # a was just used again: b is now the oldest
    cache.put("d", entry(10))
    assert cache.keys() == ["c", "a", "d"]
    assert cache.nbytes == 64 * 30 and cache.evictions == 1


def test_an_entry_larger_than_the_budget_is_not_kept() -> None:
    cache = PromptCache(max_bytes=64 * 10)
    cache.put("small", entry(5))
    cache.put("huge", entry(11))
    assert cache.keys() == ["small"]
    cache.put("small", entry(11))  # replacing with a too-large entry drops the old one
    assert len(cache) == 0 and cache.nbytes == 0


def test_longest_match_reads_without_taking() -> None:
    cache = PromptCache(max_bytes=10_000)
    short, long = entry(4), entry(9)
    cache.put("long", long)
    cache.put("short", short)
    found, shared = cache.longest_match([0, 1, 2, 3, 4, 5, 99])
    assert found is long and shared == 6
    assert cache.keys() == ["short", "long"]  # still there, now the most recently used
    assert cache.longest_match([0, 1, 2, 3, 4, 5, 99], at_least=7) == (None, 0)
    assert cache.longest_match([7]) == (None, 0)


def test_take_removes_the_entry() -> None:
    cache = PromptCache(max_bytes=10_000)
    cache.put("a", entry(3, fill=1.0))
    taken = cache.take("a")
    assert taken is not None and taken.tokens == (0, 1, 2)
    assert "a" not in cache and cache.nbytes == 0
    assert cache.take("a") is None


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 40),
                          st.booleans()), max_size=40),
       st.integers(0, 64 * 60))
def test_the_budget_always_holds(ops: list[tuple[str, int, bool]], budget: int) -> None:
    cache = PromptCache(max_bytes=budget)
    sizes: dict[str, int] = {}
    for key, tokens, take in ops:
        if take:
            cache.take(key)
            assert key not in cache
        else:
            cache.put(key, entry(tokens))
            sizes[key] = 64 * tokens
            assert (key in cache) == (sizes[key] <= budget)
            if key in cache:
                assert cache.keys()[-1] == key  # the newest is the most recently used
        assert cache.nbytes <= budget
        assert cache.nbytes == sum(sizes[k] for k in cache.keys())


# -- reuse on the tiny model -------------------------------------------------------------

GREEDY = SamplingParams(max_new_tokens=20, temperature=0.0)
SYSTEM = {"role": "system", "content": "Be brief and kind."}


@pytest.fixture
def tiny(tiny_model_dir: Path) -> HFBackend:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return HFBackend(model, tokenizer, name="tiny", bot_name="Bot", context_tokens=1024)


def reference(backend: HFBackend, prompt: Prompt) -> list[int]:
    ids = torch.tensor([backend.renderer.encode(prompt)])
    with torch.inference_mode():
        out = backend.model.generate(  # type: ignore[operator]
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=GREEDY.max_new_tokens, pad_token_id=backend._pad_id)
    return list(out[0, ids.shape[1]:].tolist())


def run(batch: HFDecodeBatch, prompt: Prompt, key: str | None = "chan",
        seq_id: int = 0) -> tuple[list[int], str]:
    firsts: dict[int, StepOutput] = {}
    batch.admit([(seq_id, GenerationRequest(prompt, GREEDY, cache_key=key))],
                lambda i, first: firsts.__setitem__(i, first))
    output = firsts[seq_id]
    while not output.finished:
        output = batch.step()[seq_id]
    tokens = batch.reply_tokens(seq_id)
    return tokens, batch.finish(seq_id)


def history(turns: int) -> Prompt:
    prompt: Prompt = [SYSTEM]
    for i in range(turns):
        prompt.append({"role": "user", "content": f"alice: message {i} about the weather"})
        prompt.append({"role": "assistant", "content": f"It is sunny on day {i}."})
    return prompt


def test_a_follow_up_reuses_the_conversation_and_answers_the_same(tiny: HFBackend) -> None:
    batch = tiny.open_batch()
    assert batch is not None
    first = [*history(6), {"role": "user", "content": "bob: and tomorrow?"}]
    _, reply = run(batch, first)
    follow_up = [*first, {"role": "assistant", "content": reply},
                 {"role": "user", "content": "carol: thanks!"}]
    tokens, _ = run(batch, follow_up)
    assert tokens == reference(tiny, follow_up)
    assert batch.stats.last_reused >= len(tiny.renderer.encode(first))
    assert batch.stats.last_reused < len(tiny.renderer.encode(follow_up))


@pytest.mark.parametrize("change", ["edit", "trim", "reset"])
def test_a_changed_history_reuses_only_what_still_matches(tiny: HFBackend,
                                                          change: str) -> None:
    batch = tiny.open_batch()
    assert batch is not None
    before = [*history(6), {"role": "user", "content": "bob: and tomorrow?"}]
    run(batch, before)
    after = [dict(m) for m in before]
    if change == "edit":
        after[3]["content"] = "alice: message 1 about the rain"  # type: ignore[typeddict-item]
    elif change == "trim":
        after = [SYSTEM, *after[3:]]
    else:
        after = [SYSTEM, {"role": "user", "content": "dave: hello"}]
    prompt: Prompt = after  # type: ignore[assignment]
    tokens, _ = run(batch, prompt)
    matching = common_prefix(tiny.renderer.encode(before), tiny.renderer.encode(prompt))
    assert batch.stats.last_reused == matching
    assert matching < len(tiny.renderer.encode(prompt)) - 1
    assert tokens == reference(tiny, prompt)


def test_other_conversations_lend_their_shared_prefix(tiny: HFBackend) -> None:
    batch = tiny.open_batch()
    cache = tiny.prompt_cache
    assert batch is not None and cache is not None
    first = [*history(4), {"role": "user", "content": "bob: hi"}]
    run(batch, first, key="a")
    stored = cache.keys(), cache.nbytes
    other = [*history(4), {"role": "user", "content": "carol: something else entirely"}]
    tokens, _ = run(batch, other, key="b")
    shared = common_prefix(tiny.renderer.encode(first), tiny.renderer.encode(other))
    assert batch.stats.last_reused == shared
    assert tokens == reference(tiny, other)
    assert cache.keys() == ["a", "b"] and cache.nbytes > stored[1]  # "a" was only read
    tokens, _ = run(batch, other, key=None)  # a request without a key reads, never writes
    assert batch.stats.last_reused == len(tiny.renderer.encode(other)) - 1
    assert tokens == reference(tiny, other)
    assert cache.keys() == ["a", "b"]


def test_prompts_continuing_one_cached_prefix_are_prefilled_together(
        tiny: HFBackend) -> None:
    batch = tiny.open_batch()
    assert batch is not None
    run(batch, [*history(3), {"role": "user", "content": "bob: hi"}], key="first")
    prompts = [[*history(3), {"role": "user", "content": text}]
               for text in ("ada: hello", "cat: hello!", "dan: hello?")]
    requests = [GenerationRequest(p, GREEDY) for p in prompts]
    calls: list[tuple[int, int]] = []
    original = tiny.model.forward

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(tuple(kwargs["input_ids"].shape))  # type: ignore[union-attr,arg-type]
        return original(*args, **kwargs)

    tiny.model.forward = counting  # type: ignore[method-assign]
    try:
        firsts: dict[int, StepOutput] = {}
        batch.admit(list(enumerate(requests, start=1)),
                    lambda i, first: firsts.__setitem__(i, first))
        assert len(calls) == 1 and calls[0][0] == 3  # one pass for all three
        assert batch.stats.last_reused > 0
        got: dict[int, list[int]] = {}
        while len(got) < 3:
            for seq_id, output in batch.step().items():
                if output.finished:
                    got[seq_id] = batch.reply_tokens(seq_id)
                    batch.finish(seq_id)
    finally:
        tiny.model.forward = original  # type: ignore[method-assign]
    assert [got[i] for i in (1, 2, 3)] == [reference(tiny, p) for p in prompts]


def test_eviction_keeps_the_cache_within_its_budget(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def prompt(channel: str) -> Prompt:  # nothing shared between channels
        return [{"role": "system", "content": f"{channel * 20}"}, *history(5)[1:],
                {"role": "user", "content": f"{channel}: hi"}]

    measured = HFBackend(model, tokenizer, name="tiny", bot_name="Bot", context_tokens=1024)
    batch = measured.open_batch()
    assert batch is not None and measured.prompt_cache is not None
    run(batch, prompt("a"), key="a")
    size = measured.prompt_cache.nbytes  # every channel's entry is about this size
    backend = HFBackend(model, tokenizer, name="tiny", bot_name="Bot", context_tokens=1024,
                        prompt_cache_mb=2.5 * size / 2**20)
    batch = backend.open_batch()
    cache = backend.prompt_cache
    assert batch is not None and cache is not None
    for channel in ("a", "b", "c", "d"):
        run(batch, prompt(channel), key=channel)
        assert cache.nbytes <= cache.max_bytes
    assert cache.keys() == ["c", "d"]
    assert cache.evictions == 2
    run(batch, prompt("a") + [{"role": "user", "content": "a: again"}], key="a")
    assert batch.stats.last_reused == 0  # evicted: recomputed in full
    run(batch, prompt("d") + [{"role": "user", "content": "d: again"}], key="d")
    assert batch.stats.last_reused > 0
    assert cache.keys() == ["a", "d"]


async def test_the_core_passes_the_channel_so_follow_ups_hit_the_cache(
        tiny_model_dir: Path, settings: Settings) -> None:
    greedy = with_settings(settings, temperature=0.0, max_new_tokens=16)
    key = ChannelKey("console", "cache")
    answers: dict[float, list[str]] = {}
    backends: dict[float, HFBackend] = {}
    for budget in (64.0, 0.0):
        def make(budget: float = budget) -> HFBackend:
            model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
            tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
            backends[budget] = HFBackend(model, tokenizer, name="tiny", bot_name="Bot",
                                         context_tokens=1024, prompt_cache_mb=budget)
            return backends[budget]

        async with ModelWorker(make) as worker, SQLiteHistoryStore(
                greedy.history_db.with_suffix(f".{int(budget)}")) as store:
            core = ConversationCore(worker=worker, history=store, settings=greedy)
            answers[budget] = []
            for i, text in enumerate(["what is the weather like?", "and tomorrow?",
                                      "thanks, and on Friday?"]):
                reply = await core.handle(IncomingMessage(
                    key=key, message_id=f"m{i}", author_id="u1", author_name="ada",
                    text=text))
                assert reply is not None
                answers[budget].append(reply.text)
    assert answers[64.0] == answers[0.0]
    assert backends[64.0].batch_stats.reused_tokens > 0
    assert backends[0.0].batch_stats.reused_tokens == 0
