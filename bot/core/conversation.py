"""The conversation core: decides whether and how to answer, and keeps history in order.

It never imports discord, slack_bolt or torch. Adapters call `handle()` with an
`IncomingMessage` and send the `Reply` it returns; while the model works, `on_progress`
receives the reply so far, so each adapter can stream it its own way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Callable, Mapping

from bot.config import Settings
from bot.core.commands import (
    COMMANDS,
    CommandContext,
    ProgressCallback,
    QueueCallback,
    TranscriptFetcher,
)
from bot.core.grounding import (
    ESCALATION_QUERY,
    MIN_SUPPORT,
    Evidence,
    sources_drawn_on,
    support,
)
from bot.core.personas import DEFAULT_PERSONA, Persona, load_personas
from bot.core.prompting import build_chat_prompt, knowledge_block, window_from
from bot.core.repetition import loop_start, trim_loop
from bot.core.replies import NO_ANSWER, tidy_reply
from bot.core.summarize import summarize_lines
from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.handles import GenerationHandle
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
TIMEOUT_MARK = "\n\n_(cut off: the answer took too long)_"
SHUTDOWN_MARK = "\n\n_(cut off: the bot is restarting)_"
SERVER_ERROR_MARK = "\n\n_(cut off: the model server stopped answering; please ask again)_"
THINKING = "_thinking..._"
PREFIX_HEADROOM = 4
"""When history must be cut, cut to 1/4 of the budget below the limit, so the next turns fit
behind the same beginning (a stable prefix for the servers' and our own prompt caches)."""
UNKNOWN_REPLY = "I don't know: the documents I have don't answer that."
RETRY_TEMPERATURE = 0.7
"""A reply that came out empty is tried once more, sampled at least this warm."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


_OUTCOMES: tuple[tuple[type[UserError], str], ...] = (
    (BusyError, "busy"), (RateLimited, "rate_limited"), (UnavailableError, "unavailable"),
    (StoreUnavailable, "store_unavailable"))
"""The request outcome (metrics, logs) of each kind of `UserError`; any other is "refused"."""


def _outcome_of(error: UserError) -> str:
    return next((name for kind, name in _OUTCOMES if isinstance(error, kind)), "refused")


class _Dropped(Exception):
    """A request that went stale before generation started; it gets no reply."""


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
        self._latest: dict[tuple[ChannelKey, str], str] = {}
        self._deleted: OrderedDict[tuple[ChannelKey, str], None] = OrderedDict()
        self._inflight: dict[tuple[ChannelKey, str], GenerationHandle] = {}
        self._clock = clock or time.monotonic
        self._wall = clock or time.time
        self._started = self._clock()
        self._orders: dict[tuple[ChannelKey, str], int] = {}  # claimed messages' order
        self._order_changed = asyncio.Condition()
        self.status_providers: list[Callable[[], list[str]]] = []
        """Extra `/status` lines from the adapters (e.g. the Discord shards of this process)."""
        self._locks: defaultdict[ChannelKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._prompt_starts: OrderedDict[ChannelKey, Turn] = OrderedDict()
        # Summaries (`complete`) run without a repetition penalty: it also counts the
        # transcript's words, which a summary should reuse (ROUGE-L 0.37 without, 0.33 with).
        self.sampling = SamplingParams(max_new_tokens=settings.max_new_tokens,
                                       temperature=settings.temperature, top_p=settings.top_p)

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
            await self._check_rate(msg)
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
        except _Dropped as dropped:
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
        return Reply(msg.key, answer, reply_to=msg.message_id)

    def message_deleted(self, key: ChannelKey, message_id: str) -> None:
        """An adapter saw a message deleted: a request for it is dropped, not answered."""
        self._deleted[(key, message_id)] = None
        while len(self._deleted) > 10_000:
            self._deleted.popitem(last=False)
        handle = self._inflight.get((key, message_id))
        if handle is not None and not handle.started:
            handle.cancel()  # still queued: the worker skips it (once started, it is answered)

    @contextlib.asynccontextmanager
    async def claimed(self, key: ChannelKey, message_id: str, event_id: str, *,
                      order: int | None = None) -> AsyncIterator[bool]:
        """Claim a platform event before answering it; yields whether this process won.

        Several instances may receive the same event (Slack behind a load balancer, its
        retries, two Discord processes on one shard); only the one whose claim comes first
        answers. `order` (a Discord snowflake, a Slack ts as microseconds) keeps a
        conversation's turns in the order sent across instances. If the store cannot be
        reached the event is answered anyway (with the store's short error, most likely).
        """
        try:
            won = await self.history.claim_event(event_id, key=key, order=order)
        except StoreUnavailable:
            log.warning("could not claim %s: the store is unavailable", event_id)
            won = True
        if not won:
            log.info("%s was claimed by another instance (or already answered)", event_id)
            yield False
            return
        if order is not None:
            self._orders[(key, message_id)] = order
        try:
            yield True
        finally:
            if self._orders.pop((key, message_id), None) is not None:
                async with self._order_changed:
                    self._order_changed.notify_all()
            with contextlib.suppress(StoreUnavailable):
                await self.history.finish_event(event_id)

    ORDER_WAIT = 30.0
    """Longest a turn waits for an earlier claimed message of its conversation."""

    async def _after_earlier_claims(self, key: ChannelKey, order: int | None) -> None:
        """Wait (bounded) until this process has no earlier claimed message of `key` still
        being handled, so turns take the channel lock in the order they were sent, not in
        the order their platform calls happened to finish (the store's lock does the same
        across instances)."""
        if order is None:
            return

        def none_earlier() -> bool:
            return not any(k == key and o < order for (k, _), o in self._orders.items())

        async with self._order_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._order_changed.wait_for(none_earlier),
                                       self.ORDER_WAIT)

    async def _check_rate(self, msg: IncomingMessage) -> None:
        if msg.is_admin:
            return  # admins are exempt, so they can always reach /reset and /settings
        limit = self.settings.rate_limit_per_minute
        wait = await self.history.rate_hit(f"{msg.key.platform}:{msg.author_id}", limit=limit,
                                           now=self._wall())
        if wait > 0:
            raise RateLimited(
                f"You're sending requests faster than I can answer (at most "
                f"{limit} a minute). Please try again in {max(1, math.ceil(wait))} s.")

    def _check_stale(self, msg: IncomingMessage) -> None:
        """Raise `_Dropped` if the message was deleted or its author has sent a newer one."""
        author = (msg.key, msg.author_id)
        if (msg.key, msg.message_id) in self._deleted:
            raise _Dropped(f"message {msg.message_id} was deleted before generation started")
        latest = self._latest.get(author)
        if latest is not None and latest != msg.message_id:
            raise _Dropped(f"{msg.author_id} sent a newer message in {msg.key}")

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
        """Answer `text` from `msg`'s author with the channel's history as context."""
        text = clean_text(text)
        if not text:
            return EMPTY_PROMPT_HINT
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
        author = (msg.key, msg.author_id)
        self._latest[author] = msg.message_id
        order = self._orders.get((msg.key, msg.message_id))
        await self._after_earlier_claims(msg.key, order)
        async with self._locks[msg.key], self.history.channel_lock(msg.key, order=order):
            self._check_stale(msg)
            turns = await self.history.recent(msg.key)
            user_turn = Turn("user", msg.author_name, text)
            prompt, start = await asyncio.to_thread(
                self._stable_prompt, window_from(turns, self._prompt_starts.get(msg.key)),
                system, user_turn, context_tokens, sampling.max_new_tokens, reference)
            self._remember_start(msg.key, start)
            ahead = self.worker.queue_depth
            request = GenerationRequest(prompt, sampling, cache_key=str(msg.key),
                                        model=channel.model)
            pending = (msg.key, msg.message_id)
            self._inflight[pending] = self.worker.submit(request)
            try:
                # Stored before anything is shown, so an acknowledged message survives a crash.
                try:
                    await self.history.add(msg.key, user_turn, message_id=msg.message_id)
                except Exception:
                    self._inflight[pending].cancel()  # not stored: not answered either
                    raise
                if ahead and on_queued is not None:
                    await on_queued(ahead)
                speakers = {t.author for t in turns if t.role == "user"} | {msg.author_name}
                answer = await self._answer(request, pending, on_progress, speakers)
                if grounded:
                    answer, sources = await self._grounded(answer, text, evidence, persona)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                handle = self._inflight.get(pending)
                if handle is None or not handle.cancelled or (
                        task is not None and task.cancelling()):
                    raise
                await self.history.delete_message(msg.key, msg.message_id)
                raise _Dropped(f"message {msg.message_id} was deleted while queued") from None
            finally:
                self._inflight.pop(pending, None)
            await self.history.add(msg.key, Turn("assistant", self.settings.bot_name, answer))
            if self._latest.get(author) == msg.message_id:
                del self._latest[author]
        if sources:
            answer += "\n\nSources: " + ", ".join(sources)
        return answer

    def _stable_prompt(self, window: list[Turn], system: str, user_turn: Turn,
                       context_tokens: int, reply_tokens: int,
                       reference: str) -> tuple[Prompt, Turn | None]:
        """The prompt over `window` (the history from where this channel's last prompt began)
        and the turn it now begins with.

        When the window no longer fits, it is cut with headroom (`PREFIX_HEADROOM`), so the
        new beginning also holds for the next few turns. Runs off the event loop.
        """
        kept: list[Turn] = []

        def build(reply: int) -> Prompt:
            return build_chat_prompt(self.worker.token_counter, system=system, history=window,
                                     message=user_turn, context_tokens=context_tokens,
                                     reply_tokens=reply, reference=reference, kept_out=kept)

        prompt = build(reply_tokens)
        if len(kept) < len(window):  # cut: cut deeper, so the next turns keep this start
            headroom = (context_tokens - reply_tokens) // PREFIX_HEADROOM
            prompt = build(reply_tokens + headroom)
        return prompt, (kept[0] if kept else None)

    def _remember_start(self, key: ChannelKey, start: Turn | None) -> None:
        if start is None:
            self._prompt_starts.pop(key, None)
            return
        self._prompt_starts[key] = start
        self._prompt_starts.move_to_end(key)
        while len(self._prompt_starts) > 10_000:
            self._prompt_starts.popitem(last=False)

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
                shown = self._tidy(so_far, speakers)
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
        return self._tidy(so_far, speakers), reason

    async def _grounded(self, answer: str, question: str, evidence: list[Evidence],
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

    def _tidy(self, text: str, speakers: set[str]) -> str:
        return tidy_reply(text, speakers=speakers, bot_name=self.settings.bot_name)

    async def _answer(self, request: GenerationRequest, pending: tuple[ChannelKey, str],
                      on_progress: ProgressCallback | None, speakers: set[str]) -> str:
        """Generate the reply to `request`; an empty or name-only one is retried once,
        sampled, and then replaced by a short apology, so nothing blank is ever posted."""
        text, reason = await self._stream(self._inflight[pending], on_progress, speakers)
        if not text and reason in ("done", "loop"):
            log.info("the reply was empty once tidied; retrying it sampled")
            retry = dataclasses.replace(request, sampling=dataclasses.replace(
                request.sampling, temperature=max(request.sampling.temperature,
                                                  RETRY_TEMPERATURE)))
            self._inflight[pending] = self.worker.submit(retry)
            text, reason = await self._stream(self._inflight[pending], on_progress, speakers)
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
        for provide in self.status_providers:
            lines.extend(provide())
        lines.append(f"Uptime: {hours}h {minutes:02d}m {seconds:02d}s")
        return "\n".join(lines)
