"""Summaries of any length of transcript, by map-reduce over a small context window.

The transcript is cut into chunks that fit; each chunk is summarised, and the partial
summaries are combined (again in chunks, if there are many) until one summary is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bot.core.prompting import chunk_lines, fit_text
from bot.engines.contract import TokenCounter
from bot.types import Prompt

Complete = Callable[[Prompt], Awaitable[str]]

MAP_INSTRUCTIONS = (
    "You summarise chat transcripts. Write a short, factual summary of the conversation "
    "below: the main topics, decisions, open questions and who said what when it matters. "
    "Use a few bullet points."
)
REDUCE_INSTRUCTIONS = (
    "You combine partial summaries of one long chat, given in order, into a single short "
    "summary with a few bullet points. Keep decisions and open questions."
)


def _prompt(instructions: str, body: str) -> Prompt:
    return [{"role": "system", "content": instructions}, {"role": "user", "content": body}]


async def summarize_lines(lines: list[str], *, complete: Complete, counter: TokenCounter,
                          context_tokens: int, reply_tokens: int) -> str:
    """Summarise transcript lines (``"name: text"``), however many there are.

    Args:
        complete: runs one prompt through the model and returns its reply.
        reply_tokens: the reply budget of each model call.
    """
    if not lines:
        raise ValueError("nothing to summarise")
    room = await asyncio.to_thread(_room, counter, MAP_INSTRUCTIONS, context_tokens,
                                   reply_tokens)
    chunks = await asyncio.to_thread(chunk_lines, counter, lines, room)
    summaries = [await complete(_prompt(MAP_INSTRUCTIONS, "\n".join(chunk)))
                 for chunk in chunks]
    room = await asyncio.to_thread(_room, counter, REDUCE_INSTRUCTIONS, context_tokens,
                                   reply_tokens)
    while len(summaries) > 1:
        groups = await asyncio.to_thread(chunk_lines, counter, summaries, room)
        if len(groups) == len(summaries):  # no progress: each summary fills a chunk alone
            groups = [summaries[i:i + 2] for i in range(0, len(summaries), 2)]
            groups = [[await asyncio.to_thread(fit_text, counter, s, room // 2 - 2)
                       for s in group] for group in groups]
        summaries = [await complete(_prompt(REDUCE_INSTRUCTIONS, "\n\n".join(group)))
                     for group in groups]
    return summaries[0]


def _room(counter: TokenCounter, instructions: str, context_tokens: int,
          reply_tokens: int) -> int:
    """Tokens left for the transcript once instructions and the reply budget are counted."""
    overhead = counter.count_prompt(_prompt(instructions, ""))
    room = context_tokens - reply_tokens - overhead - 8
    if room < 32:
        raise ValueError("the context window is too small to summarise; "
                         "raise CONTEXT_TOKENS or lower MAX_NEW_TOKENS")
    return room
