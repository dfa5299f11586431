"""HTTP to an OpenAI-compatible server: JSON requests and the chat-completions stream.

Runs on the event loop (aiohttp); no thread. A stream is closed, not returned to the
connection pool, whenever it ends early (cancel, timeout, error), so the server sees the
disconnect and stops generating (llama.cpp frees the slot on its next write).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from bot.engines.remote.errors import (
    ContextTooLong,
    HTTPStatusError,
    ServerBusy,
    StreamBroken,
    StreamErrorEvent,
    Unreachable,
)
from bot.engines.remote.sse import DONE, Delta, SSEParser, chunk_delta, decode_chunk

_CONTEXT_WORDS = re.compile(
    r"context[ _](length|size|window)|maximum context|exceed_context|exceeds the available "
    r"context|too many tokens|prompt is too long|input .*longer than", re.IGNORECASE)
KEEPALIVE_S = 2.0
"""aiohttp drops idle connections within twice this: under llama.cpp's 5 s."""
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
_CONNECTION_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                      aiohttp.ClientOSError, ConnectionError)


def server_root(base_url: str) -> str:
    """The server's own root, where llama.cpp and vLLM serve /props, /tokenize, /health."""
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def error_message(body: str) -> str:
    """The server's explanation inside an error body (OpenAI, vLLM, llama.cpp, FastAPI)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            found = error.get("message") or error.get("detail") or data.get("message")
            if found:
                return str(found)[:300]
        elif isinstance(error, str):
            return error[:300]
        if "detail" in data:
            return str(data["detail"])[:300]
    return body.strip()[:300]


def classify(status: int, body: str) -> HTTPStatusError:
    """The error for an HTTP error answer; context-length refusals are told apart."""
    message = error_message(body)
    if status in (429, 503):
        return ServerBusy(status, message)
    if status in (400, 413, 422) and _CONTEXT_WORDS.search(body):
        return ContextTooLong(status, message)
    return HTTPStatusError(status, message)


class OpenAIClient:
    """One aiohttp session to one server.

    Args:
        base_url: the API root, ``http://host:8080/v1``.
        api_key: sent as a bearer token; never logged.
        connect_timeout: seconds to connect before the server counts as unreachable.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 connect_timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.root = server_root(self.base_url)
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout,
                                              sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Headers for every request: the bearer token when one is set."""
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def __repr__(self) -> str:
        return f"OpenAIClient({self.base_url!r}, api_key={'***' if self._api_key else None})"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Servers close idle keep-alive connections (llama.cpp after 5 s); give them up
            # first, so a request rarely meets a connection the server has just closed.
            connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self.headers,
                                                  connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request_json(self, method: str, url: str, body: Mapping[str, Any] | None = None,
                           *, timeout: float = 10.0) -> tuple[int, Any]:
        """`(status, parsed JSON or None)`; raises `Unreachable` when nothing answered."""
        try:
            async with asyncio.timeout(timeout):
                async with self.session.request(method, url, json=body) as response:
                    text = await response.text()
        except (*_CONNECTION_ERRORS, TimeoutError) as exc:
            raise Unreachable(f"{method} {url}: {_describe(exc)}") from None
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, None

    async def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[Delta]:
        """POST /chat/completions with ``stream: true`` and yield each chunk's delta.

        Raises:
            Unreachable: no connection, or it dropped before the server answered.
            HTTPStatusError: an error status (`ServerBusy`, `ContextTooLong` among them).
            StreamBroken: the stream ended before its finish.
            StreamErrorEvent: the server put an error into the stream.
        """
        url = f"{self.base_url}/chat/completions"
        response = None
        for attempt in (1, 2):
            try:
                response = await self.session.post(url, json={**body, "stream": True},
                                                   headers={"Accept": "text/event-stream"})
                break
            except _STALE as exc:
                # A pooled connection the server closed as we reused it: nothing was
                # generated, so one retry on a fresh connection is safe.
                if attempt == 2:
                    raise Unreachable(f"POST {url}: {_describe(exc)}") from None
            except _CONNECTION_ERRORS as exc:
                raise Unreachable(f"POST {url}: {_describe(exc)}") from None
        assert response is not None
        clean_end = False
        try:
            if response.status != 200:
                text = await response.text()
                clean_end = True
                raise classify(response.status, text)
            parser = SSEParser()
            finished = False
            try:
                async for line in response.content:
                    data = parser.feed(line)
                    if data is None:
                        continue
                    if data == DONE:
                        clean_end = True
                        return
                    chunk = decode_chunk(data)
                    if "error" in chunk:
                        raise StreamErrorEvent(error_message(data))
                    delta = chunk_delta(chunk)
                    finished = finished or delta.finish_reason is not None
                    yield delta
            except (aiohttp.ClientPayloadError, *_CONNECTION_ERRORS) as exc:
                raise StreamBroken(_describe(exc)) from None
            last = parser.close()
            if last is not None and last != DONE:
                delta = chunk_delta(decode_chunk(last))
                finished = finished or delta.finish_reason is not None
                yield delta
            if not finished and last != DONE:
                raise StreamBroken("the stream ended before the answer finished")
            clean_end = True
        finally:
            if clean_end:
                response.release()
            else:
                response.close()  # drop the connection: the server stops generating


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
