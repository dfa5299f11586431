"""Find out what the server serves: its models, their context length, how to count tokens.

Each server says it differently: vLLM and SGLang put ``max_model_len`` in ``/v1/models``,
llama.cpp puts the per-slot ``n_ctx`` in ``/v1/models`` (``meta``) and in ``/props``; Ollama
says nothing the bot can rely on, so ``CONTEXT_TOKENS`` applies there. Token counting is exact
where the server tokenizes (llama.cpp ``/tokenize`` + ``/apply-template``, vLLM ``/tokenize``
with messages) and estimated with a safety margin elsewhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from bot.engines.remote.client import OpenAIClient, error_message
from bot.errors import ConfigError

log = logging.getLogger(__name__)

PromptCounting = Literal["apply-template", "messages", "estimate"]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One entry of ``/v1/models``, with the context length when the server tells it."""

    id: str
    context_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What discovery learnt; `model` is the one the bot uses unless a channel picks another."""

    models: tuple[ServedModel, ...]
    model: str
    context_tokens: int
    context_source: str
    tokenize: bool
    prompt_counting: PromptCounting
    server: str
    vision: bool = False
    """The server says its model reads images (llama.cpp /props, Ollama /api/show)."""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def parse_models(data: Any) -> tuple[ServedModel, ...]:
    """The models of a ``/v1/models`` answer (OpenAI ``data`` list; extra fields vary)."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return ()
    found = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        meta = entry.get("meta")
        if not isinstance(meta, dict):
            meta = {}
        context = (_int(entry.get("max_model_len")) or _int(meta.get("n_ctx"))
                   or _int(entry.get("context_length")) or _int(entry.get("max_context_length")))
        found.append(ServedModel(entry["id"], context))
    return tuple(found)


async def list_models(client: OpenAIClient) -> tuple[ServedModel, ...]:
    """``GET /models``, checked: a wrong base URL or key stops start-up with one line.

    Raises:
        Unreachable: nothing answered (start-up goes on; the engine reconnects).
        ConfigError: the server answered, but not as an OpenAI-compatible API root.
    """
    url = f"{client.base_url}/models"
    status, data = await client.request_json("GET", url)
    if status in (401, 403):
        raise ConfigError("LLM_API_KEY", f"a key the server accepts (GET {url} answered "
                          f"{status}: {error_message_of(data)})")
    if status == 200 and isinstance(data, dict) and isinstance(data.get("data"), list):
        return parse_models(data)
    hint = await _suggest_base(client) if status == 404 else None
    what = f"GET {url} answered {status}" + ("" if data is not None or status != 200
                                            else " with something that is not JSON")
    if hint:
        raise ConfigError("LLM_BASE_URL", f"the API root of an OpenAI-compatible server: "
                          f"{what}, but {hint}/models works, so set LLM_BASE_URL={hint}",
                          client.base_url)
    raise ConfigError("LLM_BASE_URL", f"the API root of an OpenAI-compatible server, which "
                      f"serves /models and /chat/completions, such as http://host:8080/v1 "
                      f"({what})", client.base_url)


def error_message_of(data: Any) -> str:
    return error_message(json.dumps(data)) if data is not None else "(no JSON body)"


async def _suggest_base(client: OpenAIClient) -> str | None:
    """A base URL near the configured one that does serve /models (a missing /v1)."""
    base = client.base_url
    candidates = []
    if "/chat/completions" in base:
        candidates.append(base.split("/chat/completions", 1)[0])
    elif not base.endswith("/v1"):
        candidates.append(f"{base}/v1")
    for candidate in candidates:
        try:
            status, data = await client.request_json("GET", f"{candidate}/models", timeout=5)
        except Exception:
            continue
        if status == 200 and isinstance(data, dict) and "data" in data:
            return candidate
    return None


async def context_from_props(client: OpenAIClient) -> int | None:
    """llama.cpp's per-slot context (``/props`` ``default_generation_settings.n_ctx``)."""
    try:
        status, data = await client.request_json("GET", f"{client.root}/props", timeout=5)
    except Exception:
        return None
    if status != 200 or not isinstance(data, dict):
        return None
    settings = data.get("default_generation_settings")
    if isinstance(settings, dict):
        return _int(settings.get("n_ctx"))
    return _int(data.get("n_ctx"))


async def can_see(client: OpenAIClient, model: str) -> bool:
    """Whether the served model reads images, as the server itself says: llama.cpp's
    ``/props`` ``modalities.vision``, or Ollama's ``/api/show`` ``capabilities``. Never
    guessed from a model's name; a server that says nothing cannot see."""
    try:
        status, data = await client.request_json("GET", f"{client.root}/props", timeout=5)
        if status == 200 and isinstance(data, dict) and isinstance(data.get("modalities"), dict):
            return data["modalities"].get("vision") is True
        status, data = await client.request_json("POST", f"{client.root}/api/show",
                                                 {"model": model}, timeout=5)
        if status == 200 and isinstance(data, dict) and isinstance(data.get("capabilities"),
                                                                   list):
            return "vision" in data["capabilities"]
    except Exception:
        log.debug("vision probe failed", exc_info=True)
    return False


async def probe_tokenize(client: OpenAIClient, model: str) -> bool:
    """Whether ``/tokenize`` answers with tokens (llama.cpp, vLLM, SGLang)."""
    body = tokenize_body(model, "Hello there")
    try:
        status, data = await client.request_json("POST", f"{client.root}/tokenize", body,
                                                 timeout=5)
    except Exception:
        return False
    return status == 200 and isinstance(data, dict) and isinstance(data.get("tokens"), list)


def tokenize_body(model: str, text: str) -> dict[str, Any]:
    """One body both llama.cpp (``content``) and vLLM (``prompt``) read; each ignores the other."""
    return {"model": model, "content": text, "prompt": text, "add_special": False,
            "add_special_tokens": False}


async def probe_prompt_counting(client: OpenAIClient, model: str) -> PromptCounting:
    """How a whole chat prompt is counted exactly, if the server can."""
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        status, data = await client.request_json("POST", f"{client.root}/apply-template",
                                                 {"messages": messages}, timeout=5)
        if status == 200 and isinstance(data, dict) and isinstance(data.get("prompt"), str):
            return "apply-template"
        status, data = await client.request_json(
            "POST", f"{client.root}/tokenize",
            {"model": model, "messages": messages, "add_generation_prompt": True}, timeout=5)
        if status == 200 and isinstance(data, dict) and _int(data.get("count")):
            return "messages"
    except Exception:
        log.debug("prompt counting probe failed", exc_info=True)
    return "estimate"


async def discover(client: OpenAIClient, *, wanted: str | None,
                   fallback_context: int) -> ServerFacts:
    """Everything the engine needs before serving.

    Raises:
        Unreachable: the server did not answer (the engine retries later).
        ConfigError: wrong base URL, rejected key, or `wanted` is not served.
    """
    models = await list_models(client)
    names = [m.id for m in models]
    if wanted is not None and names and wanted not in names:
        raise ConfigError("LLM_MODEL", f"one of the served models: {', '.join(names[:20])}",
                          wanted)
    model = wanted or (names[0] if names else "")
    if not model:
        raise ConfigError("LLM_MODEL", f"a model name: {client.base_url}/models lists none")
    entry = next((m for m in models if m.id == model), None)
    context, source = (entry.context_tokens, "/v1/models") if entry and entry.context_tokens \
        else (None, "")
    if context is None:
        context = await context_from_props(client)
        source = "/props" if context else ""
    if context is None:
        context, source = fallback_context, "CONTEXT_TOKENS"
    tokenize = await probe_tokenize(client, model)
    counting = await probe_prompt_counting(client, model) if tokenize else "estimate"
    server = "llama.cpp" if counting == "apply-template" else (
        "vLLM" if counting == "messages" else "OpenAI-compatible")
    return ServerFacts(models, model, context, source, tokenize, counting, server,
                       vision=await can_see(client, model))
