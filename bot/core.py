"""The conversation core: decides whether and how to answer, and keeps history in order.

It never imports discord, slack_bolt or torch. Adapters call `handle()` with an
`IncomingMessage` and send the `Reply` it returns; while the model works, `on_progress`
receives the reply so far, so each adapter can stream it its own way.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

from bot.commands import (
    COMMANDS,
    CommandContext,
    ProgressCallback,
    TranscriptFetcher,
)
from bot.config import Settings
from bot.errors import GenerationError, UserError
from bot.generation import GenerationRequest, SamplingParams
from bot.history import ChannelSettings, HistoryStore
from bot.knowledge import KnowledgeBase
from bot.personas import DEFAULT_PERSONA, Persona, load_personas
from bot.prompting import build_chat_prompt, cut_at_speaker, knowledge_block
from bot.summarize import summarize_lines
from bot.types import ChannelKey, IncomingMessage, Prompt, Reply, Turn
from bot.worker import GenerationHandle, GenerationService

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong while I was answering. Please try again."
EMPTY_PROMPT_HINT = "Hi! Ask me something, or type /help to see what I can do."
TIMEOUT_MARK = "\n\n_(cut off: the answer took too long)_"
SHUTDOWN_MARK = "\n\n_(cut off: the bot is restarting)_"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def clean_text(text: str) -> str:
    """Drop control and invisible formatting characters; keep newlines, tabs and emoji."""
    return _CONTROL.sub("", text.replace("\r\n", "\n")).strip()


class ConversationCore:
    """Routes messages to commands or the model, and records the conversation.

    Args:
        worker: generates text (`ModelWorker` or anything with the same surface).
        history: where each channel's turns are kept.
        settings: prompt, sampling and limits.
        clock: monotonic seconds, injectable for uptime tests.
    """

    def __init__(self, *, worker: GenerationService, history: HistoryStore, settings: Settings,
                 personas: Mapping[str, Persona] | None = None,
                 knowledge: KnowledgeBase | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.worker = worker
        self.history = history
        self.settings = settings
        self.personas = dict(personas) if personas is not None else load_personas()
        self.knowledge = knowledge
        self._clock = clock
        self._started = clock()
        self._locks: defaultdict[ChannelKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.sampling = SamplingParams(max_new_tokens=settings.max_new_tokens,
                                       temperature=settings.temperature, top_p=settings.top_p)

    async def handle(self, msg: IncomingMessage, *, on_progress: ProgressCallback | None = None,
                     fetch_transcript: TranscriptFetcher | None = None) -> Reply | None:
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
            if command is None:
                answer = await self.chat(msg, text, on_progress=on_progress)
            else:
                entry = COMMANDS.get(command)
                if entry is None:
                    raise UserError(f"I don't know the command /{command}. Try /help.")
                ctx = CommandContext(self, msg, args, on_progress, fetch_transcript)
                answer = await entry.handler(ctx)
        except UserError as exc:
            answer = str(exc)
        except GenerationError:
            log.warning("generation failed for %s", msg.key, exc_info=True)
            answer = APOLOGY
        except Exception:
            log.exception("unexpected error while handling a message in %s", msg.key)
            answer = APOLOGY
        return Reply(msg.key, answer, reply_to=msg.message_id)

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
            top_p=self.settings.top_p if persona.top_p is None else persona.top_p)

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
                   on_progress: ProgressCallback | None = None) -> str:
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
        if persona.use_knowledge and self.knowledge is not None:
            passages = await self.knowledge.search(
                text, scope=persona.name, limit=self.settings.knowledge_passages)
            reference, sources = await asyncio.to_thread(
                knowledge_block, self.worker.token_counter, passages,
                (context_tokens - sampling.max_new_tokens) // 2)
        async with self._locks[msg.key]:
            turns = await self.history.recent(msg.key)
            user_turn = Turn("user", msg.author_name, text)
            prompt = await asyncio.to_thread(
                build_chat_prompt, self.worker.token_counter, system=system, history=turns,
                message=user_turn, context_tokens=context_tokens,
                reply_tokens=sampling.max_new_tokens, reference=reference)
            handle = self.worker.submit(GenerationRequest(prompt, sampling))
            await self.history.add(msg.key, user_turn, message_id=msg.message_id)
            speakers = {t.author for t in turns if t.role == "user"} | {msg.author_name}
            answer = await self._stream(handle, on_progress, speakers)
            await self.history.add(msg.key, Turn("assistant", self.settings.bot_name, answer))
        if sources:
            answer += "\n\nSources: " + ", ".join(sources)
        return answer

    async def _stream(self, handle: GenerationHandle, on_progress: ProgressCallback | None,
                      speakers: set[str]) -> str:
        """Relay the reply as it grows, cut where the model starts writing as a person."""
        so_far = ""
        async for piece in handle:
            so_far += piece
            shown = cut_at_speaker(so_far, speakers)
            if on_progress is not None and shown.strip():
                await on_progress(shown)
        completion = await handle.result()
        text = cut_at_speaker(completion.text, speakers).strip()
        text = text or "(I had nothing to say to that.)"
        if completion.stop_reason == "timeout":
            text += TIMEOUT_MARK
        elif completion.stop_reason == "shutdown":
            text += SHUTDOWN_MARK
        return text

    async def complete(self, prompt: Prompt) -> str:
        """Run one prompt through the model without touching history."""
        handle = self.worker.submit(GenerationRequest(prompt, self.sampling))
        return (await handle.result()).text.strip()

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
        summary = await summarize_lines(
            lines, complete=self.complete, counter=self.worker.token_counter,
            context_tokens=self.worker.info.context_tokens,
            reply_tokens=self.sampling.max_new_tokens)
        noun = "message" if len(lines) == 1 else "messages"
        return f"Summary of the last {len(lines)} {noun}:\n{summary}"

    async def status_text(self, key: ChannelKey) -> str:
        info = self.worker.info
        stats = await self.history.stats()
        persona = self.persona_for(await self.history.channel_settings(key))
        uptime = int(self._clock() - self._started)
        hours, rest = divmod(uptime, 3600)
        minutes, seconds = divmod(rest, 60)
        lines = [
            f"Model: {info.name} on {info.device} ({info.dtype}), "
            f"context {info.context_tokens} tokens, replies up to "
            f"{self.sampling_for(persona).max_new_tokens} tokens",
            f"Queue: {self.worker.queue_depth} request(s) in progress or waiting "
            f"(limit {self.settings.max_queue})",
            f"Persona here: {persona.name}",
            f"History: {stats.turns} messages in {stats.channels} conversation(s)",
        ]
        if self.knowledge is not None:
            kb = await self.knowledge.stats()
            lines.append(f"Knowledge base: {kb.documents} documents, {kb.passages} passages")
        lines.append(f"Uptime: {hours}h {minutes:02d}m {seconds:02d}s")
        return "\n".join(lines)
