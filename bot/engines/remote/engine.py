"""The remote engine: the generation contract over an OpenAI-compatible server.

It runs on the event loop (HTTP streaming needs no thread) and leaves batching and prefix
caching to the server. It keeps what the bot owns: a bounded queue in front of at most
``LLM_MAX_CONCURRENCY`` requests in flight, cancel (closing the stream, so the server stops),
timeouts that keep the partial answer, reasoning kept out of the answer, and faults turned
into short replies. Unreachable at start-up is not fatal: the engine reports itself down
(``/healthz``) and reconnects by itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bot.engines.contract import GenerationRequest, ModelInfo, TokenCounter
from bot.engines.handles import Completion, GenerationHandle, StopReason
from bot.engines.remote.client import OpenAIClient
from bot.engines.remote.discovery import ServerFacts, discover, parse_models
from bot.engines.remote.errors import (
    ContextTooLong,
    HTTPStatusError,
    ServerBusy,
    StreamBroken,
    StreamErrorEvent,
    Unreachable,
)
from bot.engines.remote.reasoning import ThinkFilter, strip_reasoning
from bot.engines.remote.tokens import RemoteTokenCounter
from bot.errors import BusyError, ConfigError, GenerationError, UnavailableError, UserError
from bot.types import Image, Prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """The engine's settings (from `Settings`: LLM_BASE_URL, LLM_API_KEY, LLM_MODEL ...)."""

    base_url: str
    api_key: str | None = None
    model: str | None = None
    max_concurrency: int = 4
    max_queue: int = 16
    timeout: float = 300.0
    context_tokens: int = 2048
    connect_timeout: float = 10.0
    reconnect_min: float = 0.5
    reconnect_max: float = 15.0


def display_url(url: str) -> str:
    """`url` without any user:password part, for logs and /status."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class RemoteHandle(GenerationHandle):
    """A handle whose `cancel()` also stops the request's task, closing its stream."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop,
                 timeout: float) -> None:
        super().__init__(request, loop, timeout)
        self.task: asyncio.Task[None] | None = None
        self.partial = ""
        self.shutdown = False
        self.queued = True

    def cancel(self) -> None:
        super().cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def emit(self, piece: str) -> None:
        """Pass text (or, with '', a status change such as `thinking`) to the reader."""
        self._pieces.put_nowait(piece)

    def settle(self, outcome: Completion | BaseException) -> None:
        self._settle(outcome)


class RemoteEngine:
    """`GenerationService` for an OpenAI-compatible server; an async context manager.

    Args:
        config: where the server is and how much to send it.
    """

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self._client = OpenAIClient(config.base_url, config.api_key,
                                    connect_timeout=config.connect_timeout)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._facts: ServerFacts | None = None
        self._counter: TokenCounter = RemoteTokenCounter(self._client.root, "", {},
                                                         exact=False)
        self._up = False
        self._stopping = False
        self._waiting = 0
        self._active = 0
        self._handles: set[RemoteHandle] = set()
        self._reconnect: asyncio.Task[None] | None = None
        self.served = 0
        self.failed = 0

    async def __aenter__(self) -> RemoteEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- GenerationService ---------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        facts = self._facts
        where = display_url(self.config.base_url)
        if facts is None:
            return ModelInfo(name=self.config.model or "(not known yet)",
                             device=f"server {where}, unreachable", dtype="remote",
                             context_tokens=self.config.context_tokens)
        return ModelInfo(name=facts.model, device=f"{facts.server} server {where}",
                         dtype="remote", context_tokens=facts.context_tokens,
                         vision=facts.vision)

    @property
    def token_counter(self) -> TokenCounter:
        return self._counter

    @property
    def queue_depth(self) -> int:
        """Requests waiting in the bot's queue plus those in flight to the server."""
        return self._waiting + self._active

    @property
    def running(self) -> bool:
        """The server answered last time it was asked (``/healthz`` reports this)."""
        return self._up and not self._stopping

    @property
    def facts(self) -> ServerFacts | None:
        return self._facts

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue a request; it starts when one of the concurrency slots is free.

        Raises:
            BusyError: the bot's own queue is full, or the engine is stopping.
        """
        if self._stopping:
            raise BusyError("I'm restarting right now; please try again in a moment.")
        if self._waiting >= self.config.max_queue:
            raise BusyError()
        handle = RemoteHandle(request, asyncio.get_running_loop(), self.config.timeout)
        self._waiting += 1
        self._handles.add(handle)
        handle.task = asyncio.create_task(self._serve(handle), name="remote-generation")
        # Bookkeeping in a callback: a task cancelled before it first runs skips its body.
        handle.task.add_done_callback(lambda _: self._forget(handle))
        return handle

    def _leave_queue(self, handle: RemoteHandle) -> None:
        if handle.queued:
            handle.queued = False
            self._waiting -= 1

    def _forget(self, handle: RemoteHandle) -> None:
        self._leave_queue(handle)
        self._handles.discard(handle)

    async def list_models(self) -> list[str]:
        """The server's models now (the last known list if it does not answer)."""
        try:
            status, data = await self._client.request_json("GET",
                                                           f"{self._client.base_url}/models")
        except Unreachable:
            status, data = 0, None
        if status == 200:
            return [m.id for m in parse_models(data)]
        return [m.id for m in self._facts.models] if self._facts else []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Discover the server; if it does not answer, start anyway and keep trying.

        Raises:
            ConfigError: the server answered but the base URL, key or model is wrong.
        """
        try:
            await self._discover()
        except Unreachable as exc:
            log.warning("the model server is unreachable (%s); starting anyway and "
                        "reconnecting in the background", exc)
            self._mark_down()
        except ConfigError:
            await self._client.close()
            raise

    async def stop(self) -> None:
        """End requests in flight (partial text kept, marked), fail queued ones, close."""
        self._stopping = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            await asyncio.gather(self._reconnect, return_exceptions=True)
        tasks = []
        for handle in list(self._handles):
            handle.shutdown = True
            if not handle.started:
                handle.settle(GenerationError("the bot is shutting down"))
            if handle.task is not None and not handle.task.done():
                handle.task.cancel()
                tasks.append(handle.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.close()

    async def _discover(self) -> None:
        facts = await discover(self._client, wanted=self.config.model,
                               fallback_context=self.config.context_tokens)
        counter = RemoteTokenCounter(self._client.root, facts.model, self._client.headers,
                                     exact=facts.tokenize,
                                     prompt_counting=facts.prompt_counting)
        await asyncio.to_thread(counter.calibrate)
        self._facts, self._counter, self._up = facts, counter, True
        how = ("exact, " + ("per message" if counter.template else facts.prompt_counting)
               if facts.tokenize else "estimated")
        log.info("model server %s (%s): model %s, context %d tokens (from %s), %d model(s) "
                 "served, token counts %s", display_url(self.config.base_url), facts.server,
                 facts.model, facts.context_tokens, facts.context_source, len(facts.models),
                 how)

    def _mark_down(self) -> None:
        self._up = False
        if not self._stopping and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = asyncio.create_task(self._keep_reconnecting(),
                                                  name="remote-reconnect")

    async def _keep_reconnecting(self) -> None:
        delay = self.config.reconnect_min
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                await self._discover()
            except Unreachable:
                delay = min(delay * 2, self.config.reconnect_max)
                continue
            except ConfigError as exc:
                log.error("the model server answered, but: %s", exc)
                delay = self.config.reconnect_max
                continue
            except Exception:
                log.exception("reconnecting to the model server failed")
                delay = self.config.reconnect_max
                continue
            log.info("the model server is reachable again")
            return

    # -- one request -------------------------------------------------------------------------

    async def _serve(self, handle: RemoteHandle) -> None:
        try:
            async with self._slots:
                self._leave_queue(handle)
                if handle.cancelled or handle.shutdown:
                    return
                self._active += 1
                handle.started = True
                try:
                    outcome: Completion | BaseException = await self._generate(handle)
                    self.served += 1
                except (UserError, GenerationError) as exc:
                    self.failed += 1
                    outcome = exc
                except asyncio.CancelledError:
                    if not handle.shutdown:
                        raise
                    outcome = Completion(handle.partial, "shutdown")
                except Exception as exc:
                    self.failed += 1
                    log.exception("remote generation failed")
                    outcome = GenerationError(f"{type(exc).__name__}: {exc}")
                finally:
                    self._active -= 1
                handle.settle(outcome)
        except asyncio.CancelledError:
            if not (handle.shutdown or handle.cancelled):
                raise

    async def _generate(self, handle: RemoteHandle) -> Completion:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + handle.timeout
        request = handle.request
        prompt = request.prompt
        for attempt in (1, 2):
            try:
                return await self._stream_once(handle, prompt, deadline)
            except ContextTooLong as exc:
                shorter = shorten(prompt)
                if attempt == 2 or shorter is None:
                    raise GenerationError(f"the prompt does not fit the served model: "
                                          f"{exc.message}") from None
                log.info("the server found the prompt too long (%s); retrying once with "
                         "%d of its %d messages", exc.message, len(shorter), len(prompt))
                prompt = shorter
        raise AssertionError("unreachable")

    def _body(self, request: GenerationRequest, prompt: Prompt) -> dict[str, Any]:
        model = request.model or (self._facts.model if self._facts
                                                    else self.config.model)
        sampling = request.sampling
        body: dict[str, Any] = {
            "messages": with_images(prompt, request.images) if request.images else prompt,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "stream_options": {"include_usage": True},
        }
        if sampling.repetition_penalty != 1:
            # vLLM and SGLang read "repetition_penalty", llama.cpp's server "repeat_penalty";
            # both are transformers' multiplicative penalty, and each ignores the other name.
            body["repetition_penalty"] = body["repeat_penalty"] = sampling.repetition_penalty
        if model:
            body["model"] = model
        if prompt and prompt[-1]["role"] == "assistant":
            # Continue that reply: vLLM and SGLang read these; llama.cpp's server and Ollama
            # continue a final assistant message by themselves (and ignore the fields).
            body["continue_final_message"], body["add_generation_prompt"] = True, False
        return body

    async def _stream_once(self, handle: RemoteHandle, prompt: Prompt,
                           deadline: float) -> Completion:
        raw: list[str] = []
        think = ThinkFilter()
        reason: StopReason = "done"
        tokens: int | None = None
        stream = self._client.stream_chat(self._body(handle.request, prompt))
        try:
            async with asyncio.timeout_at(deadline):
                async for delta in stream:
                    if delta.completion_tokens is not None:
                        tokens = delta.completion_tokens
                    thinking = bool(delta.reasoning) and not handle.partial.strip()
                    if delta.content:
                        raw.append(delta.content)
                        visible = think.feed(delta.content)
                        thinking = think.thinking and not handle.partial.strip()
                        if visible:
                            handle.partial += visible
                            handle.thinking = False
                            handle.emit(visible)
                    if thinking and not handle.thinking:
                        handle.thinking = True
                        handle.emit("")  # wake the reader: it shows "thinking..."
            self._up = True
        except TimeoutError:
            reason = "timeout"
            log.warning("the model server took longer than %g s; keeping the partial answer",
                        handle.timeout)
        except Unreachable as exc:
            log.warning("the model server is unreachable: %s", exc)
            self._mark_down()
            raise UnavailableError() from None
        except ServerBusy as exc:
            log.info("the model server is busy: %s", exc)
            raise BusyError() from None
        except ContextTooLong:
            raise
        except HTTPStatusError as exc:
            model = handle.request.model
            if exc.status == 404 and model:
                raise UserError(f"The model server does not serve {model!r} (any more); an "
                                "admin can choose another with /model.") from None
            raise GenerationError(f"the model server answered {exc}") from None
        except (StreamBroken, StreamErrorEvent) as exc:
            broken = isinstance(exc, StreamBroken)
            if broken:
                self._mark_down()
            if not handle.partial.strip():
                if broken:
                    log.warning("the model server's stream broke before any text: %s", exc)
                    raise UnavailableError() from None
                raise GenerationError(f"the model server reported: {exc}") from None
            log.warning("the model server's stream ended mid-answer (%s); keeping the "
                        "partial answer", exc)
            reason = "error"
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        text = strip_reasoning("".join(raw)) if reason == "done" else handle.partial
        return Completion(text, reason, tokens=tokens)


def with_images(prompt: Prompt, images: tuple[Image, ...]) -> list[dict[str, Any]]:
    """The prompt with `images` added to its newest message as OpenAI ``image_url`` parts
    (data URLs), the way llama.cpp, vLLM and Ollama take them."""
    messages: list[dict[str, Any]] = [dict(m) for m in prompt]
    parts: list[dict[str, Any]] = [{"type": "text", "text": messages[-1]["content"]}]
    for image in images:
        data = base64.b64encode(image.data).decode("ascii")
        parts.append({"type": "image_url",
                      "image_url": {"url": f"data:{image.mime};base64,{data}"}})
    messages[-1]["content"] = parts
    return messages


def shorten(prompt: Prompt) -> Prompt | None:
    """The prompt with the older half of its history dropped (system and newest message
    kept), or None when there is no history left to drop."""
    head = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    history, newest = prompt[len(head):-1], prompt[-1:]
    if not history:
        return None
    keep = history[len(history) // 2 + 1:]
    while keep and keep[0]["role"] == "assistant":
        keep = keep[1:]  # a prompt may not open with the bot talking to itself
    return [*head, *keep, *newest]
