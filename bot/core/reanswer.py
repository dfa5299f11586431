"""Regenerate and Continue: a stored answer written again, or written on from its cut.

The prompt is rebuilt from the stored conversation as it was before the question (later
turns are not the question's context), with the channel's current persona and the documents
the question had (those it shared, else the conversation's newest; a summary of documents is
summarised again); Regenerate samples
(at least `REGENERATE_TEMPERATURE`, so it is never the same greedy text), Continue gives the
model its own unfinished answer to go on with. Both hold the conversation's locks, like a
new message, and replace the stored answer in place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Protocol

from bot.config import Settings
from bot.core.answering import Answerer, finish
from bot.core.commands import ProgressCallback
from bot.core.documents import DocumentDesk, Reading, asked_text, is_summary_request
from bot.core.grounding import Evidence
from bot.core.inflight import InFlight
from bot.core.personas import Persona
from bot.core.prompting import build_chat_prompt, knowledge_block
from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.service import GenerationService
from bot.ops.metrics import BotMetrics
from bot.ops.request_context import new_request_id
from bot.storage.answer_records import StoredAnswer
from bot.storage.interface import ChannelSettings, HistoryStore
from bot.storage.knowledge import KnowledgeBase
from bot.types import ChannelKey, IncomingMessage, Press, Turn

log = logging.getLogger(__name__)

REGENERATE_TEMPERATURE = 0.8
"""A regenerated answer is sampled at least this warm, so it differs from the first."""


def engine_name(device: str, dtype: str) -> str:
    """What produced an answer, for the export: the in-process device or the server."""
    return device if dtype == "remote" else f"in-process ({device}, {dtype})"


class ReanswerHost(Protocol):
    """What regenerating needs of the core; `ConversationCore` provides it."""

    settings: Settings
    history: HistoryStore
    worker: GenerationService
    metrics: BotMetrics
    inflight: InFlight
    knowledge: KnowledgeBase | None

    def persona_for(self, channel: ChannelSettings) -> Persona: ...

    def sampling_for(self, persona: Persona) -> SamplingParams: ...

    def system_prompt_for(self, channel: ChannelSettings, persona: Persona) -> str: ...

    async def check_rate(self, msg: IncomingMessage) -> None: ...


class Reanswering:
    """Writes a stored answer again (Regenerate) or on (Continue)."""

    def __init__(self, host: ReanswerHost, *, answerer: Answerer,
                 locks: Mapping[ChannelKey, asyncio.Lock],
                 documents: DocumentDesk | None = None) -> None:
        self.host = host
        self.answerer = answerer
        self.locks = locks
        self.documents = documents

    async def run(self, press: Press, stored: StoredAnswer, *,
                  on_progress: ProgressCallback | None) -> str | None:
        """The new answer text (stored in place of the old), or None if the answer or its
        question disappeared meanwhile. Raises `UserError` (busy, rate limited)."""
        host, key, continuing = self.host, press.key, press.control == "continue"
        new_request_id(key.platform)
        await host.check_rate(IncomingMessage(key, press.answer_to, press.user_id,
                                              press.user_name, "", is_admin=press.is_admin))
        channel = await host.history.channel_settings(key)
        persona = host.persona_for(channel)
        sampling = host.sampling_for(persona)
        if not continuing:
            sampling = dataclasses.replace(
                sampling, temperature=max(sampling.temperature, REGENERATE_TEMPERATURE))
        question = Turn("user", stored.question_author or press.user_name, stored.question or "")
        asked = asked_text(question.text)
        prefix = stored.text if continuing else ""
        reference, sources, evidence = await self._knowledge(persona, asked, sampling)
        grounded = bool(reference) and not continuing
        if grounded:
            on_progress = None  # an answer the passages may not back is never shown early
        system = host.system_prompt_for(channel, persona)
        documents = (await self.documents.for_answer(key, press.answer_to)
                     if self.documents is not None else [])
        summarised = documents if is_summary_request(asked) and not continuing else []
        if documents and not summarised and self.documents is not None:
            reference, sources, system = await self.documents.context(
                Reading(documents=documents), asked, system=system, reference=reference,
                sources=sources, context_tokens=host.worker.info.context_tokens,
                reply_tokens=sampling.max_new_tokens)
        async with self.locks[key], host.history.channel_lock(key):
            earlier = await host.history.turns_before(key, press.answer_to)
            if earlier is None:
                return None
            if summarised and self.documents is not None:
                text = await self.documents.stoppable_summary(
                    summarised, (key, press.answer_to), stored.meta.asker_id,
                    on_progress=on_progress, sampling=dataclasses.replace(
                        self.documents.sampling, temperature=sampling.temperature))
                sources = [d.name for d in summarised]
            else:
                prompt = await asyncio.to_thread(self._prompt, system, earlier, question,
                                                 sampling, reference, prefix)
                request = GenerationRequest(prompt, sampling, cache_key=str(key),
                                            model=channel.model)
                pending = (key, press.answer_to)
                host.inflight.asked(key, press.answer_to, stored.meta.asker_id)
                host.inflight[pending] = host.worker.submit(request)
                speakers = {t.author for t in earlier if t.role == "user"} | {question.author}
                try:
                    text = await self.answerer.answer(request, pending, on_progress, speakers,
                                                      prefix=prefix)
                    if grounded:
                        text, sources = await self.answerer.grounded(text, asked, evidence,
                                                                     persona)
                finally:
                    host.inflight.done(pending)
            info = host.worker.info
            meta = dataclasses.replace(stored.meta, persona=persona.name,
                                       model=channel.model or info.name,
                                       engine=engine_name(info.device, info.dtype),
                                       finish=finish.get())
            revised = await host.history.revise_answer(key, press.answer_to, text, meta=meta,
                                                       new_revision=not continuing)
        if revised is None:
            return None
        host.metrics.count(key.platform, "answered")
        log.info("%s: %d characters, %s", press.control, len(text), finish.get())
        if sources and not continuing:
            text += "\n\nSources: " + ", ".join(sources)
        return text

    def _prompt(self, system: str, earlier: list[Turn], question: Turn,
                sampling: SamplingParams, reference: str, prefix: str) -> list[dict[str, str]]:
        """The question's prompt as it was; a continued answer ends it (runs off the loop)."""
        counter = self.host.worker.token_counter
        reply = sampling.max_new_tokens + (counter.count_text(prefix) if prefix else 0)
        prompt = build_chat_prompt(counter, system=system, history=earlier, message=question,
                                   context_tokens=self.host.worker.info.context_tokens,
                                   reply_tokens=reply, reference=reference)
        if prefix:
            prompt.append({"role": "assistant", "content": prefix})
        return prompt

    async def _knowledge(self, persona: Persona, question: str, sampling: SamplingParams,
                         ) -> tuple[str, list[str], list[Evidence]]:
        """Reference passages for a persona that answers from the knowledge base."""
        knowledge = self.host.knowledge
        if not (persona.use_knowledge and knowledge is not None):
            return "", [], []
        passages = await knowledge.search(question, scope=persona.name,
                                          limit=self.host.settings.knowledge_passages)
        budget = (self.host.worker.info.context_tokens - sampling.max_new_tokens) // 2
        reference, sources = await asyncio.to_thread(
            knowledge_block, self.host.worker.token_counter, passages, budget)
        evidence = [Evidence(p.path, f"{p.heading}\n{p.text}") for p in passages
                    if p.path in sources]
        return reference, sources, evidence

