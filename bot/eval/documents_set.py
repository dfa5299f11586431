"""The documents set: public-domain texts shared with the bot (its source named in
``data/documents.json``), questions about them and a reference summary each.

The bot gets each text as a shared file through the full core (whole, ranked passages or
map-reduce, as a user's file would); the plain baseline is the same model given the text
itself and the question in one message, cut to fit its window, as one would paste it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from bot.core.conversation import ConversationCore
from bot.core.prompting import fit_text
from bot.documents.readers import read_bytes
from bot.engines.service import GenerationService
from bot.eval import scoring
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, Document, IncomingMessage, Shared

ANSWER_TOKENS = 64
SUMMARY_TOKENS = 160


class Host(Protocol):
    """What the set uses of `bot.eval.runner.Evaluation`."""

    worker: GenerationService

    def core(self, history: HistoryStore, max_new_tokens: int) -> ConversationCore: ...

    def fresh_key(self) -> ChannelKey: ...

    async def plain(self, text: str, max_new_tokens: int) -> str: ...


async def run(host: Host, history: HistoryStore, items: list[dict[str, Any]],
              concurrency: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Scores (answers found, ROUGE-L of summaries, degenerate replies) and every reply."""
    gate = asyncio.Semaphore(concurrency)

    async def share(core: ConversationCore, item: dict[str, Any], text: str) -> str:
        document = read_bytes(item["text"].encode("utf-8"), item["name"])
        assert isinstance(document, Document)
        key = host.fresh_key()
        async with gate:
            reply = await core.handle(IncomingMessage(
                key=key, message_id=f"{key.channel_id}-1", author_id="u1", author_name="ada",
                text=text, shared=Shared(documents=(document,))))
        answer = reply.text if reply is not None else ""
        return answer.split("\n\nSources:", 1)[0]

    async def plain(item: dict[str, Any], request: str, tokens: int) -> str:
        counter = host.worker.token_counter
        room = host.worker.info.context_tokens - tokens - counter.count_text(request) - 32
        text = await asyncio.to_thread(fit_text, counter, item["text"], room)
        async with gate:
            return await host.plain(f"{text}\n\n{request}", tokens)

    asking = host.core(history, ANSWER_TOKENS)
    summing = host.core(history, SUMMARY_TOKENS)
    questions = [(item, q) for item in items for q in item["questions"]]
    bot_answers, plain_answers, bot_summaries, plain_summaries = await asyncio.gather(
        asyncio.gather(*(share(asking, item, q["q"]) for item, q in questions)),
        asyncio.gather(*(plain(item, q["q"], ANSWER_TOKENS) for item, q in questions)),
        asyncio.gather(*(share(summing, item, "") for item in items)),
        asyncio.gather(*(plain(item, "Summarise this document.", SUMMARY_TOKENS)
                         for item in items)))
    n_q, n_s = len(questions), len(items)
    scores: dict[str, float] = {"items": n_q + n_s}
    for column, answers, summaries in (("bot", bot_answers, bot_summaries),
                                       ("plain", plain_answers, plain_summaries)):
        scores[f"contains_{column}"] = sum(
            scoring.contains(a, q["a"]) for a, (_, q) in zip(answers, questions,
                                                             strict=True)) / n_q
        scores[f"rougeL_{column}"] = sum(
            scoring.rouge_l(s, item["summary"]) for s, item in zip(summaries, items,
                                                                   strict=True)) / n_s
        scores[f"degenerate_{column}"] = sum(
            scoring.degenerate(r) for r in [*answers, *summaries]) / (n_q + n_s)
    replies = [{"document": item["id"], "q": q["q"], "a": q["a"], "bot": b, "plain": p}
               for (item, q), b, p in zip(questions, bot_answers, plain_answers, strict=True)]
    replies += [{"document": item["id"], "summary": item["summary"], "bot": b, "plain": p}
                for item, b, p in zip(items, bot_summaries, plain_summaries, strict=True)]
    return scores, replies
