"""An in-process fake OpenAI-compatible inference server, for the remote engine's tests.

Why: the engine must be tested against the wire protocol it meets in production (SSE
chunks, keep-alive comments, reasoning fields, errors in the stream, 429/503, the
context-length 400, a stall, a connection cut mid-answer) without waiting for a model, and
the server side must show what a real one would see (the request bodies, and whether the
client closed its stream). A real llama.cpp server covers the rest (`tests/llamacpp.py`).

It speaks llama.cpp's dialect by default (``/props``, ``/tokenize``, ``/apply-template``;
``flavor="vllm"`` gives ``max_model_len`` and no ``/props``; ``flavor="plain"`` only the
OpenAI routes). Tokens are words, punctuation and ChatML markers, so counts are exact and easy
to reason about. Each chat request takes the next `Behaviour` from `script` (default: echo
the last user message back, word by word).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

TOKEN = re.compile(r"<\|[a-z_]+\|>|\s*\w+|\s*[^\w\s]|\s+")
Flavor = Literal["llamacpp", "vllm", "plain"]


def fake_tokens(text: str) -> list[str]:
    """The fake tokenizer: pieces that join back into `text`."""
    return TOKEN.findall(text)


def text_of(content: Any) -> str:
    """A message's text; OpenAI content parts (text, image_url) as text and ``<image>``."""
    if isinstance(content, list):
        return "".join(p.get("text", "") if p.get("type") == "text" else "<image>"
                       for p in content)
    return str(content)


def render(messages: list[dict[str, Any]]) -> str:
    """ChatML, as SmolLM2's template renders it, with the generation header."""
    body = "".join(f"<|im_start|>{m['role']}\n{text_of(m['content'])}<|im_end|>\n"
                   for m in messages)
    return body + "<|im_start|>assistant\n"


@dataclass
class Behaviour:
    """What the fake does with one chat request.

    Attributes:
        pieces: the content chunks to stream (None: echo the last user message's words).
        reasoning: chunks sent first in `reasoning_field`, as reasoning models do.
        status: answer with this error status instead of streaming (`error_body` as body).
        keepalive: send a ``: keep-alive`` comment before every chunk.
        delay: seconds between chunks.
        break_after: cut the connection after this many content chunks (a killed server).
        error_after: put an error event into the stream after this many content chunks.
        stall_after: after this many content chunks, send only comments until the client
            goes away.
        gate: wait for this event before answering (holds a request in flight).
        done: end with ``data: [DONE]``.
    """

    pieces: list[str] | None = None
    reasoning: list[str] = field(default_factory=list)
    reasoning_field: str = "reasoning_content"
    status: int | None = None
    error_body: dict[str, Any] | None = None
    keepalive: bool = False
    delay: float = 0.0
    break_after: int | None = None
    error_after: int | None = None
    stall_after: int | None = None
    gate: asyncio.Event | None = None
    done: bool = True


def context_error(prompt_tokens: int, n_ctx: int) -> dict[str, Any]:
    """llama.cpp's answer to a prompt that does not fit."""
    return {"error": {"code": 400, "message": f"request ({prompt_tokens} tokens) exceeds the "
                      f"available context size ({n_ctx} tokens), try increasing it",
                      "type": "exceed_context_size_error", "n_prompt_tokens": prompt_tokens,
                      "n_ctx": n_ctx}}


class FakeOpenAI:
    """Serves on 127.0.0.1 (a free port) while used as an async context manager.

    Attributes:
        requests: every chat-completions body received, in order.
        disconnects: streams the client closed before the server finished them.
        finished: streams the server completed.
        active / max_active: streams in progress now / at most at once.
    """

    def __init__(self, *, models: tuple[str, ...] = ("fake-model",), n_ctx: int = 2048,
                 flavor: Flavor = "llamacpp", api_key: str | None = None,
                 enforce_context: bool = True, vision: bool | None = None,
                 ollama_capabilities: list[str] | None = None) -> None:
        self.models = list(models)
        self.n_ctx = n_ctx
        self.flavor = flavor
        self.api_key = api_key
        self.enforce_context = enforce_context
        self.vision = vision
        """llama.cpp's /props ``modalities.vision`` (None: the field is left out)."""
        self.ollama_capabilities = ollama_capabilities
        """Served by ``/api/show`` as Ollama does (None: no such route)."""
        self.script: deque[Behaviour] = deque()
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self.disconnects = 0
        self.finished = 0
        self.active = 0
        self.max_active = 0
        self.tokenize_calls = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        if self.flavor == "llamacpp":
            app.router.add_get("/props", self._props)
            app.router.add_post("/apply-template", self._apply_template)
        if self.flavor != "plain":
            app.router.add_post("/tokenize", self._tokenize)
        if self.ollama_capabilities is not None:
            app.router.add_post("/api/show", self._ollama_show)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def wait_for(self, check: Any, timeout: float = 5.0, message: str = "") -> None:
        """Wait until `check()` is true; the fake's own records change wake it."""
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._changed.wait()

    def _touch(self) -> None:
        self._changed.set()

    # -- routes --------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or \
            request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _denied(self) -> web.Response:
        return web.json_response({"error": {"message": "Invalid API Key",
                                            "type": "authentication_error", "code": 401}},
                                 status=401)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        data = []
        for name in self.models:
            entry: dict[str, Any] = {"id": name, "object": "model", "owned_by": "fake"}
            if self.flavor == "llamacpp":
                entry["meta"] = {"n_ctx": self.n_ctx, "n_ctx_train": 8192}
            elif self.flavor == "vllm":
                entry["max_model_len"] = self.n_ctx
            data.append(entry)
        return web.json_response({"object": "list", "data": data})

    async def _props(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        props: dict[str, Any] = {"default_generation_settings": {"n_ctx": self.n_ctx},
                                 "total_slots": 4}
        if self.vision is not None:
            props["modalities"] = {"vision": self.vision, "audio": False}
        return web.json_response(props)

    async def _ollama_show(self, request: web.Request) -> web.Response:
        return web.json_response({"capabilities": self.ollama_capabilities,
                                  "details": {"family": "fake"}})

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        self.tokenize_calls += 1
        body = await request.json()
        if self.flavor == "vllm" and "messages" in body:
            count = len(fake_tokens(render(body["messages"])))
            return web.json_response({"count": count, "tokens": list(range(count)),
                                      "max_model_len": self.n_ctx})
        text = body.get("content", body.get("prompt", ""))
        pieces = fake_tokens(text)
        if body.get("with_pieces"):
            return web.json_response({"tokens": [{"id": i, "piece": p}
                                                 for i, p in enumerate(pieces)]})
        return web.json_response({"tokens": list(range(len(pieces)))})

    async def _apply_template(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"prompt": render(body["messages"])})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._denied()
        body = await request.json()
        self.requests.append(body)
        self.auth_headers.append(request.headers.get("Authorization"))
        self._touch()
        behaviour = self.script.popleft() if self.script else Behaviour()
        if behaviour.gate is not None:
            await behaviour.gate.wait()
        if behaviour.status is not None:
            return web.json_response(behaviour.error_body or {"error": {
                "message": f"fake error {behaviour.status}", "code": behaviour.status}},
                status=behaviour.status)
        prompt_tokens = len(fake_tokens(render(body["messages"])))
        if self.enforce_context and prompt_tokens > self.n_ctx:
            return web.json_response(context_error(prompt_tokens, self.n_ctx), status=400)
        pieces = behaviour.pieces
        if pieces is None:
            last = next((text_of(m["content"]) for m in reversed(body["messages"])
                         if m["role"] == "user"), "")
            pieces = fake_tokens(f"Echo: {last}")
        pieces = pieces[: max(1, int(body.get("max_tokens") or len(pieces)))] \
            if behaviour.pieces is None else pieces
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self._stream(request, response, body, behaviour, pieces)
        except ConnectionResetError:  # the client closed its stream: what a real server sees
            self.disconnects += 1
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        finally:
            self.active -= 1
            self._touch()
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse,
                      body: dict[str, Any],
                      behaviour: Behaviour, pieces: list[str]) -> None:
        model = body.get("model", self.models[0] if self.models else "fake")

        async def send(delta: dict[str, Any], finish: str | None = None,
                       **extra: Any) -> None:
            if behaviour.keepalive:
                await response.write(b": keep-alive\n\n")
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                     **extra}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)

        await send({"role": "assistant", "content": None})
        for thought in behaviour.reasoning:
            await send({behaviour.reasoning_field: thought})
        for index, piece in enumerate(pieces):
            if behaviour.break_after is not None and index == behaviour.break_after:
                if request.transport is not None:
                    request.transport.abort()  # as if the server process died
                return
            if behaviour.error_after is not None and index == behaviour.error_after:
                error = {"error": {"message": "fake failure mid-stream", "code": 500}}
                await response.write(f"data: {json.dumps(error)}\n\n".encode())
                return
            if behaviour.stall_after is not None and index == behaviour.stall_after:
                while True:  # a stall: only comments, until the client goes away
                    await response.write(b": still here\n\n")
                    await asyncio.sleep(0.05)
            await send({"content": piece})
        await send({}, "stop")
        usage = {"completion_tokens": len(pieces) + len(behaviour.reasoning),
                 "prompt_tokens": len(fake_tokens(render(body["messages"])))}
        chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                 "choices": [], "usage": usage}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if behaviour.done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.finished += 1


@contextlib.asynccontextmanager
async def fake_openai(**kwargs: Any) -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(**kwargs) as server:
        yield server
