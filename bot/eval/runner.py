"""Runs the evaluation sets through the full conversation core and, side by side, through
the same engine prompted plainly (its chat template and the question alone)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.core.personas import load_personas
from bot.core.prompting import knowledge_block
from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.service import GenerationService
from bot.eval import documents_set, scoring
from bot.storage.interface import ChannelSettings, HistoryStore
from bot.storage.knowledge import KnowledgeBase
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, IncomingMessage, Turn

DATA = Path(__file__).with_name("data")
FACT_TOKENS = 48
"""Reply budget of a factual answer (as in the issue's check: greedy, 48 new tokens)."""
LONG_TOKENS = 256
SUMMARY_TOKENS = 160
LEAD_MESSAGES = 3
"""The baseline summary: the conversation's first few messages, as they are."""
ASKER = "ada"
T = TypeVar("T")


@dataclass(slots=True)
class Options:
    """What to run: `limit` items of each set (0: all), and which sets."""

    limit: int = 0
    sets: tuple[str, ...] = ("factual", "long", "knowledge", "summaries", "languages",
                             "documents")
    knowledge_dir: Path = Path("examples/knowledge")
    concurrency: int = 16


@dataclass(slots=True)
class Results:
    """Scores (``name -> {"bot": x, "plain": y, ...}``) and every reply, for the report."""

    model: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    replies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "scores": self.scores, "replies": self.replies}


def load(name: str, limit: int) -> list[dict[str, Any]]:
    path = DATA / name
    if path.suffix == ".json":
        items: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    else:
        items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    return items[:limit] if limit else items


async def bounded(jobs: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """Run `jobs` concurrently, at most `limit` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return await asyncio.gather(*(one(job) for job in jobs))


class Evaluation:
    """One engine, a fresh history and knowledge index in a temporary folder."""

    def __init__(self, worker: GenerationService, settings: Settings, options: Options,
                 folder: Path) -> None:
        self.worker = worker
        self.options = options
        self.settings = dataclasses.replace(
            settings, temperature=0.0, rate_limit_per_minute=0,
            history_db=folder / "history.sqlite3", knowledge_db=folder / "knowledge.sqlite3",
            knowledge_dir=options.knowledge_dir)
        self.results = Results(model=worker.info.name)
        self._counter = 0

    def core(self, history: HistoryStore, max_new_tokens: int,
             knowledge: KnowledgeBase | None = None) -> ConversationCore:
        settings = dataclasses.replace(self.settings, max_new_tokens=max_new_tokens)
        return ConversationCore(worker=self.worker, history=history, settings=settings,
                                personas=load_personas(settings.personas_dir),
                                knowledge=knowledge)

    def fresh_key(self) -> ChannelKey:
        self._counter += 1
        return ChannelKey("console", f"eval-{self._counter}")

    async def ask(self, core: ConversationCore, text: str,
                  key: ChannelKey | None = None) -> str:
        key = key or self.fresh_key()
        reply = await core.handle(IncomingMessage(
            key=key, message_id=f"m{self._counter}", author_id="u1", author_name=ASKER,
            text=text))
        return reply.text if reply is not None else ""

    async def plain(self, text: str, max_new_tokens: int) -> str:
        """The same engine with its chat template and the message alone, greedy."""
        handle = self.worker.submit(GenerationRequest(
            [{"role": "user", "content": text}],
            SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)))
        return (await handle.result()).text.strip()

    async def run(self) -> Results:
        async with SQLiteHistoryStore(self.settings.history_db) as history:
            for name in self.options.sets:
                await getattr(self, f"_{name}")(history)
        return self.results

    # -- the sets --------------------------------------------------------------------

    def _record(self, name: str, scores: dict[str, float],
                replies: list[dict[str, Any]]) -> None:
        self.results.scores[name] = scores
        self.results.replies[name] = replies

    async def _both(self, core: ConversationCore, items: list[dict[str, Any]],
                    tokens: int) -> tuple[list[str], list[str]]:
        limit = self.options.concurrency
        bot = await bounded((self.ask(core, item["q"]) for item in items), limit)
        plain = await bounded((self.plain(item["q"], tokens) for item in items), limit)
        return bot, plain

    async def _factual(self, history: HistoryStore) -> None:
        items = load("factual.jsonl", self.options.limit)
        bot, plain = await self._both(self.core(history, FACT_TOKENS), items, FACT_TOKENS)
        n = len(items)

        def rate(check: Callable[[str, dict[str, Any]], bool], replies: list[str]) -> float:
            return sum(check(r, item) for r, item in zip(replies, items, strict=True)) / n

        self._record("factual", {
            "contains_bot": rate(lambda r, i: scoring.contains(r, i["a"]), bot),
            "contains_plain": rate(lambda r, i: scoring.contains(r, i["a"]), plain),
            "exact_bot": rate(lambda r, i: scoring.exact(r, i["a"]), bot),
            "exact_plain": rate(lambda r, i: scoring.exact(r, i["a"]), plain),
            "degenerate_bot": rate(lambda r, i: scoring.degenerate(r, [ASKER]), bot),
            "degenerate_plain": rate(lambda r, i: scoring.degenerate(r, [ASKER]), plain),
            "items": n,
        }, [{"q": i["q"], "a": i["a"], "bot": b, "plain": p}
            for i, b, p in zip(items, bot, plain, strict=True)])

    async def _long(self, history: HistoryStore) -> None:
        items = load("long.jsonl", self.options.limit)
        bot, plain = await self._both(self.core(history, LONG_TOKENS), items, LONG_TOKENS)
        n = len(items)
        self._record("long", {
            "degenerate_bot": sum(scoring.degenerate(r, [ASKER]) for r in bot) / n,
            "degenerate_plain": sum(scoring.degenerate(r, [ASKER]) for r in plain) / n,
            "chars_bot": sum(len(r) for r in bot) / n,
            "chars_plain": sum(len(r) for r in plain) / n,
            "items": n,
        }, [{"q": i["q"], "bot": b, "plain": p} for i, b, p in zip(items, bot, plain,
                                                                    strict=True)])

    async def _knowledge(self, history: HistoryStore) -> None:
        if not self.options.knowledge_dir.is_dir():
            return
        every = load("knowledge.jsonl", 0)
        limit = self.options.limit or len(every)
        items = ([i for i in every if i["answered"]][:limit]
                 + [i for i in every if not i["answered"]][:limit])
        async with KnowledgeBase(self.options.knowledge_dir,
                                 self.settings.knowledge_db) as knowledge:
            await knowledge.reindex()
            core = self.core(history, FACT_TOKENS * 2, knowledge)
            keys = [self.fresh_key() for _ in items]
            for key in keys:
                await history.save_channel_settings(key, ChannelSettings(persona="support"))
            bot = await bounded((self.ask(core, item["q"], key)
                                 for item, key in zip(items, keys, strict=True)),
                                self.options.concurrency)

            async def plain(question: str) -> str:  # the passages and the question alone
                passages = await knowledge.search(question, scope="support",
                                                  limit=self.settings.knowledge_passages)
                block, _ = knowledge_block(self.worker.token_counter, passages, 1024)
                return await self.plain(f"{block}\n\n{question}", FACT_TOKENS * 2)

            baseline = await bounded((plain(item["q"]) for item in items),
                                     self.options.concurrency)
        scores: dict[str, float] = {"items": len(items)}
        for column, replies in (("bot", bot), ("plain", baseline)):
            answered = [(r, i) for r, i in zip(replies, items, strict=True) if i["answered"]]
            unanswered = [r for r, i in zip(replies, items, strict=True) if not i["answered"]]
            scores[f"answered_right_{column}"] = sum(
                scoring.contains(r, i["a"]) and not scoring.says_unknown(r)
                for r, i in answered) / max(1, len(answered))
            scores[f"answered_said_unknown_{column}"] = sum(
                scoring.says_unknown(r) for r, _ in answered) / max(1, len(answered))
            scores[f"unanswered_said_unknown_{column}"] = sum(
                scoring.says_unknown(r) for r in unanswered) / max(1, len(unanswered))
            scores[f"degenerate_{column}"] = sum(
                scoring.degenerate(r, [ASKER]) for r in replies) / len(replies)
        self._record("knowledge", scores, [
            {"q": i["q"], "answered": i["answered"], "bot": b, "plain": p}
            for i, b, p in zip(items, bot, baseline, strict=True)])

    async def _summaries(self, history: HistoryStore) -> None:
        items = load("summaries.json", self.options.limit)
        core = self.core(history, SUMMARY_TOKENS)

        async def summarise(item: dict[str, Any]) -> str:
            key = self.fresh_key()
            for author, text in item["messages"]:
                await history.add(key, Turn("user", author, text))
            reply = await self.ask(core, f"/summarize {len(item['messages'])}", key)
            return reply.split("\n", 1)[1] if reply.startswith("Summary of") else reply

        def transcript(item: dict[str, Any]) -> list[str]:
            return [f"{author}: {text}" for author, text in item["messages"]]

        bot = await bounded((summarise(item) for item in items), self.options.concurrency)
        plain = await bounded((self.plain("Summarise this conversation.\n\n"
                                          + "\n".join(transcript(item)), SUMMARY_TOKENS)
                               for item in items), self.options.concurrency)
        lead = [" ".join(transcript(item)[:LEAD_MESSAGES]) for item in items]
        refs = [item["summary"] for item in items]
        n = len(items)

        def mean_rouge(predictions: list[str]) -> float:
            return sum(scoring.rouge_l(p, r) for p, r in zip(predictions, refs,
                                                             strict=True)) / n

        self._record("summaries", {
            "rougeL_bot": mean_rouge(bot), "rougeL_plain": mean_rouge(plain),
            "rougeL_lead": mean_rouge(lead),
            "degenerate_bot": sum(scoring.degenerate(r) for r in bot) / n,
            "degenerate_plain": sum(scoring.degenerate(r) for r in plain) / n,
            "items": n,
        }, [{"id": i["id"], "bot": b, "plain": p, "lead": ld}
            for i, b, p, ld in zip(items, bot, plain, lead, strict=True)])

    async def _languages(self, history: HistoryStore) -> None:
        items = load("languages.jsonl", self.options.limit)
        bot, plain = await self._both(self.core(history, FACT_TOKENS), items, FACT_TOKENS)
        n = len(items)

        def rate(check: Callable[[str, dict[str, Any]], bool], replies: list[str]) -> float:
            return sum(check(r, item) for r, item in zip(replies, items, strict=True)) / n

        self._record("languages", {
            "same_script_bot": rate(lambda r, i: scoring.same_script(i["q"], r), bot),
            "same_script_plain": rate(lambda r, i: scoring.same_script(i["q"], r), plain),
            "contains_bot": rate(lambda r, i: scoring.contains(r, i["a"]), bot),
            "contains_plain": rate(lambda r, i: scoring.contains(r, i["a"]), plain),
            "items": n,
        }, [{"q": i["q"], "bot": b, "plain": p} for i, b, p in zip(items, bot, plain,
                                                                    strict=True)])


    async def _documents(self, history: HistoryStore) -> None:
        items = load("documents.json", self.options.limit)
        scores, replies = await documents_set.run(self, history, items,
                                                  self.options.concurrency)
        self._record("documents", scores, replies)


async def evaluate(worker: GenerationService, settings: Settings,
                   options: Options) -> Results:
    """Every chosen set on `worker`, in a temporary folder that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bot-eval-") as folder:
        return await Evaluation(worker, settings, options, Path(folder)).run()
