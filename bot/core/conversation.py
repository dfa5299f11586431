"""The conversation core: decides whether and how to answer, and keeps history in order.

It never imports discord, slack_bolt or torch. Adapters call `handle()` with an
`IncomingMessage` and send the `Reply` it returns; while the model works, `on_progress`
receives the reply so far, so each adapter can stream it its own way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

from bot.config import Settings
from bot.core.answering import Answerer
from bot.core.claims import Claims
from bot.core.commands import (
    COMMANDS,
    CommandContext,
    ProgressCallback,
    QueueCallback,
    TranscriptFetcher,
)
from bot.core.controls import Controls
from bot.core.documents import DocumentDesk
from bot.core.grounding import Evidence
from bot.core.inflight import InFlight, Stale
from bot.core.personas import DEFAULT_PERSONA, Persona, load_personas
from bot.core.prompting import knowledge_block
from bot.core.reanswer import Reanswering
from bot.core.repetition import trim_loop
from bot.core.stable_prompt import StablePrompts
from bot.core.summarize import summarize_lines
from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.service import GenerationService
from bot.errors import (
    BusyError,
    GenerationError,
    RateLimited,
    StoreUnavailable,
    UnavailableError,
    UserError,
)
from bot.ops.metrics import BotMetrics
from bot.ops.request_context import new_request_id
from bot.ops.request_context import outcome as request_outcome
from bot.storage.interface import ChannelSettings, HistoryStore
from bot.storage.knowledge import KnowledgeBase
from bot.types import ChannelKey, IncomingMessage, Prompt, Reply, Turn

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong while I was answering. Please try again."
EMPTY_PROMPT_HINT = "Hi! Ask me something, or type /help to see what I can do."
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


_OUTCOMES: tuple[tuple[type[UserError], str], ...] = (
    (BusyError, "busy"), (RateLimited, "rate_limited"), (UnavailableError, "unavailable"),
    (StoreUnavailable, "store_unavailable"))
"""The request outcome (metrics, logs) of each kind of `UserError`; any other is "refused"."""


def _outcome_of(error: UserError) -> str:
    return next((name for kind, name in _OUTCOMES if isinstance(error, kind)), "refused")


def clean_text(text: str) -> str:
    """Drop control and invisible formatting characters; keep newlines, tabs and emoji."""
    return _CONTROL.sub("", text.replace("\r\n", "\n")).strip()


class ConversationCore:
    """Routes messages to commands or the model, and records the conversation.

    Args:
        worker: generates text (`ModelWorker` or anything with the same surface).
        history: where each channel's turns are kept.
        settings: prompt, sampling and limits.
        clock: seconds, injectable for tests of uptime and the rate limit. By default uptime
            reads the monotonic clock and the rate limit wall time, which every instance
            sharing a store agrees on.
    """

    def __init__(self, *, worker: GenerationService, history: HistoryStore, settings: Settings,
                 personas: Mapping[str, Persona] | None = None,
                 knowledge: KnowledgeBase | None = None, metrics: BotMetrics | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.worker = worker
        self.history = history
        self.settings = settings
        self.personas = dict(personas) if personas is not None else load_personas()
        self.knowledge = knowledge
        self.metrics = metrics or BotMetrics()
        self.metrics.watch_queue(lambda: self.worker.queue_depth)
        self.inflight = InFlight()
        self.claims = Claims(history)
        self._clock = clock or time.monotonic
        self._wall = clock or time.time
        self._started = self._clock()
        self.status_providers: list[Callable[[], list[str]]] = []
        """Extra `/status` lines from the adapters (e.g. the Discord shards of this process)."""
        self._locks: defaultdict[ChannelKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._prompts = StablePrompts()
        self._answerer = Answerer(worker=worker, settings=settings, metrics=self.metrics,
                                  inflight=self.inflight, knowledge=knowledge)
        # Summaries (`complete`) run without a repetition penalty: it also counts the
        # transcript's words, which a summary should reuse (ROUGE-L 0.37 without, 0.33 with).
        self.sampling = SamplingParams(max_new_tokens=settings.max_new_tokens,
                                       temperature=settings.temperature, top_p=settings.top_p)
        self.documents = DocumentDesk(worker=worker, history=history, settings=settings,
                                      sampling=self.sampling, locks=self._locks,
                                      inflight=self.inflight)
        self.controls = Controls(self, Reanswering(self, answerer=self._answerer,
                                                   locks=self._locks, documents=self.documents),
                                 wall=self._wall)
        """Stop, Regenerate, Continue and votes on answers (`bot.core.controls`)."""

    async def handle(self, msg: IncomingMessage, *, on_progress: ProgressCallback | None = None,
                     fetch_transcript: TranscriptFetcher | None = None,
                     on_queued: QueueCallback | None = None) -> Reply | None:
        """Answer `msg`, or record it as context and return None when not addressed.

        Never raises for a user's input: user errors come back as their message, anything
        unexpected is logged with its traceback and answered with a short apology.
        """
        text = clean_text(msg.text)
        try:
            command, args = self._parse_command(msg, text)
            channel = await self.history.channel_settings(msg.key)
            if command is None and not (channel.enabled and (
                    msg.addressed or await self._continues_bot_thread(msg, text, channel))):
                await self._record_context(msg, text)
                return None
            if not msg.addressed and command is not None:
                return None  # a stray "/word" in passing is not a command for the bot
        except StoreUnavailable as exc:
            self.metrics.count(msg.key.platform, "store_unavailable")
            return Reply(msg.key, str(exc), reply_to=msg.message_id) if msg.addressed else None
        except Exception:
            log.exception("could not read the settings of %s", msg.key)
            return Reply(msg.key, APOLOGY, reply_to=msg.message_id)
        new_request_id(msg.key.platform)
        log.info("request from %s in %s: %s", msg.author_id, msg.key,
                 f"/{command}" if command else f"{len(text)} characters")
        try:
            await self.check_rate(msg)
            if command is None:
                answer = await self.chat(msg, text, on_progress=on_progress,
                                         on_queued=on_queued)
            else:
                entry = COMMANDS.get(command)
                if entry is None:
                    raise UserError(f"I don't know the command /{command}. Try /help.")
                request_outcome.set("command")
                ctx = CommandContext(self, msg, args, on_progress, fetch_transcript, on_queued)
                answer = await entry.handler(ctx)
        except Stale as dropped:
            log.info("dropped: %s", dropped)
            self.metrics.count(msg.key.platform, "dropped")
            return None
        except UserError as exc:
            request_outcome.set(_outcome_of(exc))
            answer = str(exc)
        except GenerationError:
            log.warning("generation failed for %s", msg.key, exc_info=True)
            request_outcome.set("error")
            answer = APOLOGY
        except Exception:
            log.exception("unexpected error while handling a message in %s", msg.key)
            request_outcome.set("error")
            answer = APOLOGY
        self.metrics.count(msg.key.platform, request_outcome.get())
        log.info("reply: %s, %d characters", request_outcome.get(), len(answer))
        return Reply(msg.key, answer, reply_to=msg.message_id,
                     controls=self.controls.offered(msg))

    def message_deleted(self, key: ChannelKey, message_id: str) -> None:
        """An adapter saw a message deleted: a request for it is dropped, not answered."""
        self.inflight.deleted(key, message_id)

    def claimed(self, key: ChannelKey, message_id: str, event_id: str, *,
                order: int | None = None) -> contextlib.AbstractAsyncContextManager[bool]:
        """Claim a platform event before answering it; yields whether this process won
        (`Claims.claimed`: several instances may receive the same event)."""
        return self.claims.claimed(key, message_id, event_id, order=order)

    async def check_rate(self, msg: IncomingMessage) -> None:
        if msg.is_admin:
            return  # admins are exempt, so they can always reach /reset and /settings
        limit = self.settings.rate_limit_per_minute
        wait = await self.history.rate_hit(f"{msg.key.platform}:{msg.author_id}", limit=limit,
                                           now=self._wall())
        if wait > 0:
            raise RateLimited(
                f"You're sending requests faster than I can answer (at most "
                f"{limit} a minute). Please try again in {max(1, math.ceil(wait))} s.")

    async def _continues_bot_thread(self, msg: IncomingMessage, text: str,
                                    channel: ChannelSettings) -> bool:
        """An unmentioned message in a thread the bot is part of, where that is wanted."""
        if not (text and msg.key.thread_id and channel.thread_replies):
            return False
        return msg.in_bot_thread or await self.history.has_assistant_turn(msg.key)

    async def _record_context(self, msg: IncomingMessage, text: str) -> None:
        if text and not text.startswith("/"):
            await self.history.add(msg.key, Turn("user", msg.author_name,
                                                 text[: self.settings.max_input_chars]),
                                   message_id=msg.message_id)

    def persona_for(self, channel: ChannelSettings) -> Persona:
        """The channel's persona, falling back to the default if it was removed."""
        return self.personas.get(channel.persona or DEFAULT_PERSONA,
                                 self.personas[DEFAULT_PERSONA])

    def sampling_for(self, persona: Persona) -> SamplingParams:
        """The persona's sampling; its reply budget never takes over half the context."""
        budget = persona.max_new_tokens or self.settings.max_new_tokens
        return SamplingParams(
            max_new_tokens=min(budget, self.worker.info.context_tokens // 2),
            temperature=(self.settings.temperature if persona.temperature is None
                         else persona.temperature),
            top_p=self.settings.top_p if persona.top_p is None else persona.top_p,
            repetition_penalty=(self.settings.repetition_penalty
                                if persona.repetition_penalty is None
                                else persona.repetition_penalty))

    def system_prompt_for(self, channel: ChannelSettings, persona: Persona) -> str:
        prompt = channel.system_prompt or persona.system_prompt or self.settings.system_prompt
        return prompt.replace("{bot_name}", self.settings.bot_name)

    @staticmethod
    def _parse_command(msg: IncomingMessage, text: str) -> tuple[str | None, str]:
        if msg.command:
            return msg.command.lower().lstrip("/"), clean_text(msg.args)
        if text.startswith("/") and len(text) > 1:
            name, _, args = text[1:].partition(" ")
            return name.lower(), args.strip()
        return None, text

    async def chat(self, msg: IncomingMessage, text: str, *,
                   on_progress: ProgressCallback | None = None,
                   on_queued: QueueCallback | None = None) -> str:
        """Answer `text` from `msg`'s author with the channel's history as context (and
        the documents it shares or the conversation holds: `core.documents`)."""
        text = clean_text(text)
        reading = await self.documents.prepare(msg, text)
        if reading.summary:
            channel = await self.history.channel_settings(msg.key)
            persona = self.persona_for(channel)

            async def record(answer: str) -> None:
                await self.controls.record(msg, answer, persona=persona, channel=channel)

            return await self.documents.summarise(msg, text, reading, record=record,
                                                  on_progress=on_progress)
        text = reading.question(text)
        if not text:
            return reading.finish("", []) or EMPTY_PROMPT_HINT
        limit = self.settings.max_input_chars
        if len(text) > limit:
            raise UserError(f"That message is too long for me ({len(text):,} characters); "
                            f"please keep it under {limit:,}.")
        channel = await self.history.channel_settings(msg.key)
        persona = self.persona_for(channel)
        sampling = self.sampling_for(persona)
        system = self.system_prompt_for(channel, persona)
        context_tokens = self.worker.info.context_tokens
        reference, sources = "", list[str]()
        grounded = persona.use_knowledge and self.knowledge is not None
        evidence: list[Evidence] = []
        if grounded and self.knowledge is not None:
            passages = await self.knowledge.search(
                text, scope=persona.name, limit=self.settings.knowledge_passages)
            reference, sources = await asyncio.to_thread(
                knowledge_block, self.worker.token_counter, passages,
                (context_tokens - sampling.max_new_tokens) // 2)
            evidence = [Evidence(p.path, f"{p.heading}\n{p.text}") for p in passages
                        if p.path in sources]
            on_progress = None  # an answer the passages may not back is never shown early
        reference, sources, system = await self.documents.context(
            reading, text, system=system, reference=reference, sources=sources,
            context_tokens=context_tokens, reply_tokens=sampling.max_new_tokens)
        self.inflight.arrived(msg)
        order = self.claims.order_of(msg.key, msg.message_id)
        await self.claims.after_earlier(msg.key, order)
        async with self._locks[msg.key], self.history.channel_lock(msg.key, order=order):
            self.inflight.check(msg)
            turns = await self.history.recent(msg.key)
            user_turn = Turn("user", msg.author_name, reading.turn_text(text))
            prompt, start = await asyncio.to_thread(
                self._prompts.build, self.worker.token_counter,
                self._prompts.window(msg.key, turns), system=system, message=user_turn,
                context_tokens=context_tokens,
                reply_tokens=sampling.max_new_tokens + reading.image_tokens, reference=reference)
            self._prompts.remember(msg.key, start)
            ahead = self.worker.queue_depth
            request = GenerationRequest(prompt, sampling, cache_key=str(msg.key),
                                        model=channel.model, images=reading.images)
            pending = (msg.key, msg.message_id)
            self.inflight[pending] = self.worker.submit(request)
            try:
                # Stored before anything is shown, so an acknowledged message survives a crash.
                try:
                    await self.history.add(msg.key, user_turn, message_id=msg.message_id)
                except Exception:
                    self.inflight[pending].cancel()  # not stored: not answered either
                    raise
                if ahead and on_queued is not None:
                    await on_queued(ahead)
                speakers = {t.author for t in turns if t.role == "user"} | {msg.author_name}
                answer = await self._answerer.answer(request, pending, on_progress, speakers)
                if grounded:
                    answer, sources = await self._answerer.grounded(answer, text, evidence,
                                                                    persona)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                handle = self.inflight.get(pending)
                if handle is None or not handle.cancelled or (
                        task is not None and task.cancelling()):
                    raise
                await self.history.delete_message(msg.key, msg.message_id)
                raise Stale(f"message {msg.message_id} was deleted while queued") from None
            finally:
                self.inflight.done(pending)
            await self.controls.record(msg, answer, persona=persona, channel=channel)
            self.inflight.answered(msg)
        return reading.finish(answer, sources)

    async def complete(self, prompt: Prompt) -> str:
        """Run one prompt through the model without touching history (summaries); a loop at
        its end is trimmed."""
        handle = self.worker.submit(GenerationRequest(prompt, self.sampling))
        return trim_loop((await handle.result()).text).strip()

    async def summarize(self, key: ChannelKey, count: int, *,
                        fetch_transcript: TranscriptFetcher | None = None) -> str:
        """Summarise the last `count` messages, read from the platform when it can."""
        if fetch_transcript is not None:
            turns = await fetch_transcript(count)
        else:
            turns = await self.history.recent(key, count)
        lines = [f"{t.author}: {clean_text(t.text)}" for t in turns[-count:] if t.text.strip()]
        if not lines:
            raise UserError("There is nothing to summarise here yet.")
        # one model job per channel keeps channels fair
        async with self._locks[key], self.history.channel_lock(key):
            summary = await summarize_lines(
                lines, complete=self.complete, counter=self.worker.token_counter,
                context_tokens=self.worker.info.context_tokens,
                reply_tokens=self.sampling.max_new_tokens)
        noun = "message" if len(lines) == 1 else "messages"
        return f"Summary of the last {len(lines)} {noun}:\n{summary}"

    async def served_models(self) -> list[str]:
        """The models the engine can serve: a server's list, or the in-process model."""
        list_models = getattr(self.worker, "list_models", None)
        if list_models is None:
            return [self.worker.info.name]
        return list(await list_models())

    def default_model(self) -> str:
        return self.worker.info.name

    async def status_text(self, key: ChannelKey) -> str:
        info = self.worker.info
        stats = await self.history.stats()
        channel = await self.history.channel_settings(key)
        persona = self.persona_for(channel)
        uptime = int(self._clock() - self._started)
        hours, rest = divmod(uptime, 3600)
        minutes, seconds = divmod(rest, 60)
        lines = [
            f"Model: {channel.model or info.name} on {info.device} ({info.dtype}{info.note()}), "
            f"context {info.context_tokens} tokens, replies up to "
            f"{self.sampling_for(persona).max_new_tokens} tokens",
            f"Queue: {self.worker.queue_depth} request(s) in progress or waiting "
            f"(limit {self.settings.max_queue})",
            f"Persona here: {persona.name}",
            f"Stored: {await self.history.count(key)} messages in this conversation, "
            f"{stats.turns} in {stats.channels} conversation(s) in all; "
            + (f"kept {self.settings.history_retention_days:g} days"
               if self.settings.history_retention_days else "kept until /reset or /forget"),
        ]
        if self.knowledge is not None:
            kb = await self.knowledge.stats()
            lines.append(f"Knowledge base: {kb.documents} documents, {kb.passages} passages")
        lines.append(await self.controls.status_line(key))
        for provide in self.status_providers:
            lines.extend(provide())
        lines.append(f"Uptime: {hours}h {minutes:02d}m {seconds:02d}s")
        return "\n".join(lines)
