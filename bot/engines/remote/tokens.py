"""Token counts for prompt trimming, from the server when it can tell, else a safe estimate.

The core calls the counter from worker threads (``asyncio.to_thread``), many times per
prompt, so counts are cached (history lines come back every turn) and fetched with a plain
blocking HTTP call: no event loop is needed and none is blocked. When the server cannot
tokenize, or a call fails, the estimate errs on the high side (UTF-8 bytes / 3, plus a margin
per message) so a trimmed prompt still fits; a server that still refuses it gets one retry
with a shorter history (`bot.engines.remote.engine`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from typing import Any

from bot.engines.remote.discovery import PromptCounting, tokenize_body
from bot.types import Prompt

log = logging.getLogger(__name__)

MESSAGE_OVERHEAD = 8
"""Estimated template tokens around one message (ChatML uses 5; others a few more)."""
PROMPT_MARGIN = 16
"""Extra tokens added to an estimated prompt, for the generation header and slack."""


def estimate_tokens(text: str) -> int:
    """A deliberately high guess: English runs ~4 bytes a token, CJK ~3 bytes a token."""
    return math.ceil(len(text.encode("utf-8")) / 3)


class RemoteTokenCounter:
    """`TokenCounter` over a server's ``/tokenize`` (and ``/apply-template``), cached.

    Args:
        root: the server root (``http://host:8080``, no ``/v1``).
        model: sent along for servers that serve several.
        headers: the bearer token, if any.
        exact: the server tokenizes; False means estimates only.
        prompt_counting: how whole prompts are counted exactly, if at all.
    """

    def __init__(self, root: str, model: str, headers: dict[str, str], *, exact: bool,
                 prompt_counting: PromptCounting = "estimate", cache_size: int = 4096,
                 timeout: float = 5.0) -> None:
        self.root = root
        self.model = model
        self.exact = exact
        self.prompt_counting: PromptCounting = prompt_counting if exact else "estimate"
        self._headers = {"Content-Type": "application/json", **headers}
        self._timeout = timeout
        self._cache: OrderedDict[str, list[int] | int] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.failures = 0
        self.template: tuple[int, int] | None = None
        """(tokens per message, tokens per prompt) once `calibrate` found the template additive."""

    def calibrate(self) -> None:
        """Learn the chat template's cost per message from two exact counts.

        Most templates wrap each message in special tokens, so a prompt costs the sum of its
        contents plus a fixed amount per message and per prompt; then counting needs no
        request beyond the (cached) contents. A template where that does not hold keeps
        asking the server for every prompt.
        """
        if self.prompt_counting == "estimate":
            return
        two: Prompt = [{"role": "system", "content": "Hello"}, {"role": "user", "content": "World"}]
        four: Prompt = [*two, {"role": "assistant", "content": "Again"},
                        {"role": "user", "content": "Yes, twice"}]
        five: Prompt = [*four, {"role": "assistant", "content": "Fine then"}]
        exact = [self._exact_prompt(p) for p in (two, four, five)]
        if any(e is None for e in exact):
            return
        rest = [e - sum(self.count_text(m["content"]) for m in p)  # type: ignore[operator]
                for e, p in zip(exact, (two, four, five), strict=True)]
        per_message, extra = divmod(rest[1] - rest[0], 2)
        base = rest[0] - 2 * per_message
        if extra == 0 and per_message >= 0 and base + 5 * per_message == rest[2]:
            self.template = (per_message, base)

    # -- TokenCounter ------------------------------------------------------------------

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        tokens = self._tokens(text)
        return estimate_tokens(text) if tokens is None else len(tokens)

    def count_prompt(self, prompt: Prompt) -> int:
        if self.template is not None:
            per_message, base = self.template
            return sum(self.count_text(m["content"]) + per_message for m in prompt) + base
        exact = self._exact_prompt(prompt)
        if exact is not None:
            return exact
        return sum(self.count_text(m["content"]) + MESSAGE_OVERHEAD for m in prompt) \
            + PROMPT_MARGIN

    def _exact_prompt(self, prompt: Prompt) -> int | None:
        if self.prompt_counting == "apply-template":
            rendered = self._post("/apply-template", {"messages": prompt})
            if isinstance(rendered, dict) and isinstance(rendered.get("prompt"), str):
                tokens = self._tokens(rendered["prompt"], special=True)
                if tokens is not None:
                    return len(tokens)
        elif self.prompt_counting == "messages":
            counted = self._post("/tokenize", {"model": self.model, "messages": prompt,
                                               "add_generation_prompt": True})
            if isinstance(counted, dict) and isinstance(counted.get("count"), int):
                return int(counted["count"])
        return None

    def truncate_text(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        if self.exact:
            pieces = self._post("/tokenize", {**tokenize_body(self.model, text),
                                              "with_pieces": True})
            tokens = pieces.get("tokens") if isinstance(pieces, dict) else None
            if isinstance(tokens, list) and all(isinstance(t, dict) and "piece" in t
                                                for t in tokens):
                return "".join(str(t["piece"]) for t in tokens[:max_tokens])
        # Estimate: cut by bytes, then back off until the estimate fits.
        data = text.encode("utf-8")[: max_tokens * 3]
        cut = data.decode("utf-8", "ignore")
        while cut and self.count_text(cut) > max_tokens:
            cut = cut[: int(len(cut) * 0.9)]
        return cut

    # -- HTTP ----------------------------------------------------------------------------

    def _tokens(self, text: str, *, special: bool = False) -> list[int] | None:
        if not self.exact:
            return None
        key = ("S" if special else "T") + text
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit if isinstance(hit, list) else None
        body = tokenize_body(self.model, text)
        if special:
            body.update(add_special=False, parse_special=True)
        data = self._post("/tokenize", body)
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            return None
        with self._lock:
            self._cache[key] = tokens
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return tokens

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        if _on_event_loop():
            return None  # never block the loop on HTTP: the caller falls back to estimates
        request = urllib.request.Request(f"{self.root}{path}", data=json.dumps(body).encode(),
                                         headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError) as exc:
            self.failures += 1
            log.debug("token count from %s%s failed (%s); estimating", self.root, path,
                      type(exc).__name__)
            return None


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
