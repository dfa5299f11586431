"""One reply from the model: streamed to the adapter tidied, stopped when it loops, retried
once when it comes out empty, marked when it was cut off, and checked against the knowledge
passages when the persona answers from them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from bot.config import Settings
from bot.core.commands import ProgressCallback
from bot.core.grounding import ESCALATION_QUERY, MIN_SUPPORT, Evidence, sources_drawn_on, support
from bot.core.inflight import InFlight, Pending
from bot.core.personas import Persona
from bot.core.repetition import loop_start
from bot.core.replies import NO_ANSWER, tidy_reply
from bot.engines.contract import GenerationRequest
from bot.engines.handles import GenerationHandle
from bot.engines.service import GenerationService
from bot.ops.metrics import BotMetrics
from bot.ops.request_context import outcome as request_outcome
from bot.storage.knowledge import KnowledgeBase

log = logging.getLogger(__name__)

TIMEOUT_MARK = "\n\n_(cut off: the answer took too long)_"
SHUTDOWN_MARK = "\n\n_(cut off: the bot is restarting)_"
SERVER_ERROR_MARK = "\n\n_(cut off: the model server stopped answering; please ask again)_"
THINKING = "_thinking..._"
UNKNOWN_REPLY = "I don't know: the documents I have don't answer that."
RETRY_TEMPERATURE = 0.7
"""A reply that came out empty is tried once more, sampled at least this warm."""


class Answerer:
    """Turns a submitted `GenerationRequest` into the reply text the user sees."""

    def __init__(self, *, worker: GenerationService, settings: Settings, metrics: BotMetrics,
                 inflight: InFlight, knowledge: KnowledgeBase | None) -> None:
        self.worker = worker
        self.settings = settings
        self.metrics = metrics
        self.inflight = inflight
        self.knowledge = knowledge

    async def answer(self, request: GenerationRequest, pending: Pending,
                     on_progress: ProgressCallback | None, speakers: set[str]) -> str:
        """Generate the reply to `request` (already submitted under `pending`); an empty or
        name-only one is retried once, sampled, and then replaced by a short apology, so
        nothing blank is ever posted."""
        text, reason = await self._stream(self.inflight[pending], on_progress, speakers)
        if not text and reason in ("done", "loop"):
            log.info("the reply was empty once tidied; retrying it sampled")
            retry = dataclasses.replace(request, sampling=dataclasses.replace(
                request.sampling, temperature=max(request.sampling.temperature,
                                                  RETRY_TEMPERATURE)))
            self.inflight[pending] = self.worker.submit(retry)
            text, reason = await self._stream(self.inflight[pending], on_progress, speakers)
        text = text or NO_ANSWER
        if reason == "timeout":
            request_outcome.set("timeout")
            text += TIMEOUT_MARK
        elif reason == "shutdown":
            text += SHUTDOWN_MARK
        elif reason == "error":
            request_outcome.set("partial")
            text += SERVER_ERROR_MARK
        return text

    async def _stream(self, handle: GenerationHandle, on_progress: ProgressCallback | None,
                      speakers: set[str]) -> tuple[str, str]:
        """Relay the reply as it grows, tidied (`tidy_reply`); stop it once it loops.

        Returns the tidied reply ('' when nothing is left of it) and why it ended: the
        engine's stop reason, or ``"loop"`` when the repetition check cancelled it.
        """
        so_far = ""
        started = time.monotonic()
        first: float | None = None
        reason = "done"
        completion_tokens: int | None = None
        async for piece in handle:
            if not piece:  # a status change: a reasoning model started thinking
                if on_progress is not None and handle.thinking and not so_far.strip():
                    await on_progress(THINKING)
                continue
            if first is None:
                first = time.monotonic() - started
            so_far += piece
            if loop_start(so_far) is not None:
                handle.cancel()  # any engine: the worker stops it between tokens
                reason = "loop"
                break
            if on_progress is not None:
                shown = self.tidy(so_far, speakers)
                if shown:
                    await on_progress(shown)
        if reason != "loop":
            completion = await handle.result()
            so_far, reason = completion.text, completion.stop_reason
            completion_tokens = completion.tokens
        total = time.monotonic() - started
        tokens = completion_tokens
        if tokens is None:
            tokens = await asyncio.to_thread(self.worker.token_counter.count_text, so_far)
        self.metrics.observe_generation(first_token=first, total=total, tokens=tokens)
        log.info("generated %d tokens in %.2f s (first after %s s), %s", tokens, total,
                 "-" if first is None else f"{first:.2f}", reason)
        return self.tidy(so_far, speakers), reason

    def tidy(self, text: str, speakers: set[str]) -> str:
        return tidy_reply(text, speakers=speakers, bot_name=self.settings.bot_name)

    async def grounded(self, answer: str, question: str, evidence: list[Evidence],
                       persona: Persona) -> tuple[str, list[str]]:
        """The answer and the files it drew on, or, when the passages do not back it,
        "I don't know" and who to ask (the knowledge base's escalation section)."""
        score = support(answer, question, evidence)
        if score >= MIN_SUPPORT:
            return answer, sources_drawn_on(answer, question, evidence)
        log.info("answer not backed by the passages (support %.2f); saying so", score)
        request_outcome.set("unknown")
        reply = (persona.unknown_reply or UNKNOWN_REPLY).replace(
            "{bot_name}", self.settings.bot_name)
        assert self.knowledge is not None
        found = await self.knowledge.search(ESCALATION_QUERY, scope=persona.name, limit=1)
        if not found:
            return reply, []
        return f"{reply}\n\n{found[0].text}", [found[0].path]
