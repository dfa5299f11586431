"""Fake backends for unit tests: they satisfy `bot.generation.Backend` without a model."""

from __future__ import annotations

import threading
from collections.abc import Callable

from bot.generation import GenerationRequest, ModelInfo
from bot.types import Prompt

FAKE_INFO = ModelInfo(name="fake", device="cpu", dtype="none", context_tokens=512)


class WordCounter:
    """Counts whitespace-separated words as tokens, plus 3 per message of framing."""

    def count_prompt(self, prompt: Prompt) -> int:
        return sum(3 + len(m["content"].split()) for m in prompt) + 2

    def count_text(self, text: str) -> int:
        return len(text.split())

    def truncate_text(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:max_tokens])


class EchoBackend:
    """Replies 'echo: <last user message>', one word at a time."""

    def __init__(self, info: ModelInfo = FAKE_INFO) -> None:
        self.info = info
        self.prompts: list[Prompt] = []
        self.thread_names: list[str] = []
        self.closed = False

    def token_counter(self) -> WordCounter:
        return WordCounter()

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        self.prompts.append(request.prompt)
        self.thread_names.append(threading.current_thread().name)
        last = request.prompt[-1]["content"].splitlines()[-1]
        words = ["echo:", *last.split(":", 1)[-1].split()][: request.sampling.max_new_tokens]
        out = []
        for word in words:
            if should_stop():
                break
            piece = word if not out else " " + word
            out.append(piece)
            emit(piece)
        return "".join(out)

    def close(self) -> None:
        self.closed = True


class GatedBackend(EchoBackend):
    """Blocks each generation until the test opens the gate: for queue and cancel tests."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.started = threading.Event()

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        self.started.set()
        while not self.gate.wait(0.01):
            if should_stop():
                return "stopped early"
        return super().generate(request, emit, should_stop)


class FailingBackend(EchoBackend):
    """Raises when the newest line contains 'boom', echoes otherwise."""

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        if "boom" in request.prompt[-1]["content"].splitlines()[-1]:
            raise RuntimeError("the model exploded")
        return super().generate(request, emit, should_stop)
