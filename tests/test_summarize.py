"""Map-reduce summaries: any transcript length fits a small context window."""

from __future__ import annotations

import asyncio

import pytest

from bot.core.summarize import MAP_INSTRUCTIONS, REDUCE_INSTRUCTIONS, summarize_lines
from bot.types import Prompt
from tests.fakes.backends import WordCounter


class RecordingModel:
    """Stands in for the worker: records prompts, answers with a short numbered summary."""

    def __init__(self) -> None:
        self.prompts: list[Prompt] = []

    async def complete(self, prompt: Prompt) -> str:
        self.prompts.append(prompt)
        return f"summary {len(self.prompts)} of {len(prompt[-1]['content'].split())} words"


async def test_a_short_transcript_takes_one_call() -> None:
    model = RecordingModel()
    result = await summarize_lines(["alice: hi", "bob: ship it friday"], complete=model.complete,
                                   counter=WordCounter(), context_tokens=512, reply_tokens=64)
    assert result == "summary 1 of 6 words"
    assert model.prompts[0][0]["content"] == MAP_INSTRUCTIONS
    assert model.prompts[0][1]["content"] == "alice: hi\nbob: ship it friday"


async def test_a_long_transcript_is_summarised_in_chunks_then_combined() -> None:
    model = RecordingModel()
    lines = [f"user{i}: " + "word " * 30 for i in range(200)]  # ~6,400 words
    counter = WordCounter()
    result = await summarize_lines(lines, complete=model.complete, counter=counter,
                                   context_tokens=512, reply_tokens=64)
    maps = [p for p in model.prompts if p[0]["content"] == MAP_INSTRUCTIONS]
    reduces = [p for p in model.prompts if p[0]["content"] == REDUCE_INSTRUCTIONS]
    assert len(maps) > 10 and len(reduces) >= 1
    for prompt in model.prompts:
        assert counter.count_prompt(prompt) <= 512 - 64
    # every line went into exactly one map call, in order
    seen = [line for p in maps for line in p[1]["content"].split("\n")]
    assert seen == lines
    assert result.startswith("summary")
    assert reduces[-1] is model.prompts[-1]


async def test_nothing_to_summarise_is_an_error() -> None:
    with pytest.raises(ValueError):
        await summarize_lines([], complete=RecordingModel().complete, counter=WordCounter(),
                              context_tokens=512, reply_tokens=64)


async def test_a_failed_part_ends_the_summary_and_the_parts_still_waiting_never_run() -> None:
    model = RecordingModel()

    async def failing(prompt: Prompt) -> str:
        await model.complete(prompt)
        if len(model.prompts) == 1:
            raise RuntimeError("the model server went away")
        await asyncio.sleep(0)
        return "summary"

    lines = [f"user{i}: " + "word " * 30 for i in range(200)]
    with pytest.raises(RuntimeError):
        await summarize_lines(lines, complete=failing, counter=WordCounter(),
                              context_tokens=512, reply_tokens=64, concurrency=2)
    for _ in range(20):
        await asyncio.sleep(0)  # whatever was left running would go on now
    assert len(model.prompts) <= 3  # the first failed; at most the two beside it started
