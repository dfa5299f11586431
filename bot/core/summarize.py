"""Summaries of any length of transcript or document, by map-reduce over a small window.

The text is cut into chunks that fit, in order; each chunk is summarised, and the partial
summaries are combined (again in chunks, if there are many) until one summary is left. Chat
transcripts (`/summarize`) and shared documents (`bot.core.documents`) differ only in their
instructions and how a chunk is framed (`SummaryPrompts`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from bot.core.prompting import chunk_lines, fit_text
from bot.engines.contract import TokenCounter
from bot.types import Prompt

Complete = Callable[[Prompt], Awaitable[str]]
PartDone = Callable[[int, int], Awaitable[None]]
"""Told ``(part, parts in all)`` as the first pass starts reading each part (progress)."""

MAP_INSTRUCTIONS = (
    "You summarise chat transcripts. Write a short, factual summary of the conversation "
    "below: the main topics, decisions, open questions and who said what when it matters. "
    "Use a few bullet points."
)
REDUCE_INSTRUCTIONS = (
    "You combine partial summaries of one long chat, given in order, into a single short "
    "summary with a few bullet points. Keep decisions and open questions."
)


def _unframed(body: str, part: int, parts: int) -> str:
    return body


@dataclass(frozen=True, slots=True)
class SummaryPrompts:
    """The instructions of the first pass (`map`) and of combining (`reduce`), and how a
    chunk is put in the first pass's message (`frame(body, part, parts)`)."""

    map: str
    reduce: str
    frame: Callable[[str, int, int], str] = _unframed
    reduce_ask: str = ""
    """Said after the partial summaries when combining them (small models otherwise often
    answer the summaries instead of combining them)."""


CHAT = SummaryPrompts(MAP_INSTRUCTIONS, REDUCE_INSTRUCTIONS)


def _prompt(instructions: str, body: str) -> Prompt:
    return [{"role": "system", "content": instructions}, {"role": "user", "content": body}]


async def summarize_lines(lines: list[str], *, complete: Complete, counter: TokenCounter,
                          context_tokens: int, reply_tokens: int,
                          prompts: SummaryPrompts = CHAT, on_part: PartDone | None = None,
                          complete_last: Complete | None = None,
                          concurrency: int = 1) -> str:
    """Summarise lines (``"name: text"``, or a document's paragraphs), however many.

    Args:
        complete: runs one prompt through the model and returns its reply.
        reply_tokens: the reply budget of each model call.
        on_part: progress of the first pass (called as each part starts).
        complete_last: runs the call whose reply is the summary itself (e.g. streamed to
            the user); `complete` by default.
        concurrency: first-pass chunks in flight at once (the engine batches them); their
            summaries stay in order.
    """
    if not lines:
        raise ValueError("nothing to summarise")
    last = complete_last or complete
    frame_cost = await asyncio.to_thread(counter.count_text, prompts.frame("", 99, 99))
    room = await asyncio.to_thread(_room, counter, prompts.map, context_tokens,
                                   reply_tokens + frame_cost)
    chunks = await asyncio.to_thread(chunk_lines, counter, lines, room)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def first_pass(index: int, chunk: list[str]) -> str:
        body = prompts.frame("\n".join(chunk), index + 1, len(chunks))
        run = last if len(chunks) == 1 else complete
        async with gate:
            if on_part is not None and len(chunks) > 1:
                await on_part(index + 1, len(chunks))
            return await run(_prompt(prompts.map, body))

    summaries = await _all_or_none([first_pass(i, c) for i, c in enumerate(chunks)])
    room = await asyncio.to_thread(_room, counter, f"{prompts.reduce} {prompts.reduce_ask}",
                                   context_tokens, reply_tokens)
    while len(summaries) > 1:
        groups = await asyncio.to_thread(chunk_lines, counter, summaries, room)
        if len(groups) == len(summaries):  # no progress: each summary fills a chunk alone
            groups = [summaries[i:i + 2] for i in range(0, len(summaries), 2)]
            groups = [[await asyncio.to_thread(fit_text, counter, s, room // 2 - 2)
                       for s in group] for group in groups]
        run = last if len(groups) == 1 else complete
        ask = f"\n\n{prompts.reduce_ask}" if prompts.reduce_ask else ""
        summaries = [await run(_prompt(prompts.reduce, "\n\n".join(group) + ask))
                     for group in groups]
    return summaries[0]


async def _all_or_none(calls: Sequence[Coroutine[Any, Any, str]]) -> list[str]:
    """The calls' results in order; when one fails (or is stopped), the others are
    cancelled, so none goes on after the summary has ended (showing "part 4 of 6" over
    the final reply, say)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def _room(counter: TokenCounter, instructions: str, context_tokens: int,
          reply_tokens: int) -> int:
    """Tokens left for the text once instructions and the reply budget are counted."""
    overhead = counter.count_prompt(_prompt(instructions, ""))
    room = context_tokens - reply_tokens - overhead - 8
    if room < 32:
        raise ValueError("the context window is too small to summarise; "
                         "raise CONTEXT_TOKENS or lower MAX_NEW_TOKENS")
    return room
