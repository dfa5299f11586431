"""Prompt building by exact token counts, on the tiny model's real tokenizer."""

from __future__ import annotations

import pytest

from bot.core.prompting import (
    SPEAKERS_NOTE,
    TRUNCATION_MARK,
    build_chat_prompt,
    chunk_lines,
    to_messages,
)
from bot.engines.local.rendering import HFTokenCounter, PromptRenderer
from bot.types import Turn
from tests.tiny_model import build_tokenizer


@pytest.fixture(scope="module")
def counter() -> HFTokenCounter:
    return HFTokenCounter(PromptRenderer(build_tokenizer(), "Bot"))


GROUP = f"Be brief. {SPEAKERS_NOTE}"


def history(n: int) -> list[Turn]:
    turns = []
    for i in range(n):
        turns.append(Turn("user", "alice", f"question number {i} about the weather"))
        turns.append(Turn("assistant", "Bot", f"answer number {i}: it is sunny"))
    return turns


def test_everything_fits_when_there_is_room(counter: HFTokenCounter) -> None:
    turns = history(3)
    prompt = build_chat_prompt(counter, system="Be brief.", history=turns,
                               message=Turn("user", "bob", "and tomorrow?"),
                               context_tokens=1000, reply_tokens=100)
    assert prompt == to_messages(GROUP, [*turns, Turn("user", "bob", "and tomorrow?")])
    assert prompt[1]["content"] == "alice: question number 0 about the weather"
    assert prompt[-1] == {"role": "user", "content": "bob: and tomorrow?"}


def test_one_person_talking_gets_no_name_prefixes_and_no_speakers_note(
        counter: HFTokenCounter) -> None:
    turns = history(2)  # only alice
    prompt = build_chat_prompt(counter, system="Be brief.", history=turns,
                               message=Turn("user", "alice", "and tomorrow?"),
                               context_tokens=1000, reply_tokens=100)
    assert prompt[0] == {"role": "system", "content": "Be brief."}
    assert prompt[1]["content"] == "question number 0 about the weather"
    assert prompt[-1] == {"role": "user", "content": "and tomorrow?"}
    joined = build_chat_prompt(counter, system="Be brief.", history=turns,
                               message=Turn("user", "bob", "and tomorrow?"),
                               context_tokens=1000, reply_tokens=100)
    assert joined[0]["content"] == GROUP  # a second person: everyone's lines carry names
    assert joined[1]["content"] == "alice: question number 0 about the weather"


@pytest.mark.parametrize("context", [230, 300, 450, 700])
def test_oldest_turns_are_dropped_to_fit_exactly(counter: HFTokenCounter, context: int) -> None:
    turns = history(20)
    prompt = build_chat_prompt(counter, system="Be brief.", history=turns,
                               message=Turn("user", "bob", "and tomorrow?"),
                               context_tokens=context, reply_tokens=50)
    assert counter.count_prompt(prompt) <= context - 50
    assert prompt[-1]["content"] == "bob: and tomorrow?"
    assert prompt[-2]["content"] == "answer number 19: it is sunny"  # newest kept
    kept = len(prompt) - 2
    assert 0 < kept < 40
    # nothing more would have fitted: one more exchange goes over the budget
    bigger = to_messages(GROUP, [*turns[-kept - 2:], Turn("user", "bob", "and tomorrow?")])
    assert counter.count_prompt(bigger) > context - 50


def test_an_oversized_message_is_cut_not_sent_whole(counter: HFTokenCounter) -> None:
    huge = "the weather is sunny and warm " * 2000
    prompt = build_chat_prompt(counter, system="Be brief.", history=history(5),
                               message=Turn("user", "bob", huge),
                               context_tokens=300, reply_tokens=50)
    assert counter.count_prompt(prompt) <= 250
    assert len(prompt) == 2  # no room left for history
    content = prompt[-1]["content"]
    assert content.startswith("bob: the weather is sunny")
    assert content.endswith(TRUNCATION_MARK)


def test_system_prompt_too_big_is_reported(counter: HFTokenCounter) -> None:
    with pytest.raises(ValueError, match="CONTEXT_TOKENS"):
        build_chat_prompt(counter, system="word " * 500, history=[],
                          message=Turn("user", "a", "hi"), context_tokens=300, reply_tokens=50)


def test_runs_of_user_turns_merge_and_prompt_opens_with_a_user(counter: HFTokenCounter) -> None:
    prompt = to_messages("sys", [Turn("assistant", "Bot", "orphan"), Turn("user", "a", "one"),
                                 Turn("user", "b", "two"), Turn("assistant", "Bot", "ok")])
    assert [m["role"] for m in prompt] == ["system", "user", "assistant"]
    assert prompt[1]["content"] == "a: one\nb: two"


def test_chunks_keep_order_and_fit(counter: HFTokenCounter) -> None:
    lines = [f"alice: line {i} about the weather and the team" for i in range(100)]
    lines.insert(50, "bob: " + "very long " * 500)
    chunks = chunk_lines(counter, lines, 120)
    assert len(chunks) > 5
    flat = [line for chunk in chunks for line in chunk]
    assert flat[:50] == lines[:50] and flat[51:] == lines[51:]
    assert flat[50].endswith(TRUNCATION_MARK)
    for chunk in chunks:
        assert sum(counter.count_text(line) + 1 for line in chunk) <= 120


def test_replies_are_cut_where_the_model_speaks_for_a_person() -> None:
    from bot.core.prompting import cut_at_speaker

    text = "You can return it within 45 days.\n\nada: How many days?\nBot: 45."
    assert cut_at_speaker(text, {"ada", "bob"}) == "You can return it within 45 days.\n"
    assert cut_at_speaker("ada: is mentioned first", {"ada"}) == "ada: is mentioned first"
    assert cut_at_speaker("no speakers here", set()) == "no speakers here"
