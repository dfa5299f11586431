"""Fake backends for unit tests: they satisfy `bot.engines.contract.Backend` without a model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from bot.engines.contract import GenerationRequest, ModelInfo, StepOutput
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


def echo_words(request: GenerationRequest) -> list[str]:
    """The echo reply's words: 'echo:' and the newest line's words (without its speaker's
    ``name:`` prefix, which only lines of a group chat carry), within max_new_tokens."""
    last = request.prompt[-1]["content"].splitlines()[-1]
    name, colon, rest = last.partition(": ")
    if colon and name and not any(ch.isspace() for ch in name) and len(name) <= 32:
        last = rest
    return ["echo:", *last.split()][: request.sampling.max_new_tokens]


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
        words = echo_words(request)
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


class EchoBatchBackend(EchoBackend):
    """Echoes many requests at once, one word per step, for the batching loop.

    With `steps=None` it runs freely; with a number, it decodes only that many steps until
    `allow()` permits more (idle steps return nothing), so tests can pause a batch exactly.
    A newest line containing 'boom' breaks the step it is in; 'unreadable' fails at admission.
    """

    def __init__(self, steps: int | None = None) -> None:
        super().__init__()
        self._permits = threading.Semaphore(steps if steps is not None else 10**9)
        self.steps: list[list[int]] = []  # the sequence ids decoded in each step

    def allow(self, steps: int) -> None:
        self._permits.release(steps)

    def open_batch(self) -> EchoBatch:
        return EchoBatch(self)


class EchoBatch:
    """The `DecodeBatch` of `EchoBatchBackend`: a word list per sequence."""

    def __init__(self, backend: EchoBatchBackend) -> None:
        self.backend = backend
        self.words: dict[int, list[str]] = {}
        self.said: dict[int, list[str]] = {}
        self.requests: dict[int, GenerationRequest] = {}

    def cost(self, request: GenerationRequest) -> int:
        return len(request.prompt[-1]["content"].split()) + request.sampling.max_new_tokens

    def admit(self, entries: Sequence[tuple[int, GenerationRequest]],
              ready: Callable[[int, StepOutput], None]) -> None:
        if any("unreadable" in r.prompt[-1]["content"] for _, r in entries):
            raise ValueError("cannot read this prompt")
        for seq_id, request in entries:
            self.backend.prompts.append(request.prompt)
            self.backend.thread_names.append(threading.current_thread().name)
            self.words[seq_id], self.said[seq_id] = echo_words(request), []
            self.requests[seq_id] = request
            ready(seq_id, self._next(seq_id))

    def step(self) -> dict[int, StepOutput]:
        if not self.backend._permits.acquire(timeout=0.01):
            return {}
        if any("boom" in r.prompt[-1]["content"] for r in self.requests.values()):
            raise RuntimeError("the model exploded")
        self.backend.steps.append(sorted(self.words))
        return {seq_id: self._next(seq_id) for seq_id in self.words}

    def finish(self, seq_id: int) -> str:
        self.words.pop(seq_id)
        self.requests.pop(seq_id)
        return "".join(self.said.pop(seq_id))

    def clear(self) -> None:
        self.words.clear()
        self.said.clear()
        self.requests.clear()

    def _next(self, seq_id: int) -> StepOutput:
        said, words = self.said[seq_id], self.words[seq_id]
        piece = words[len(said)] if not said else " " + words[len(said)]
        said.append(piece)
        return StepOutput(piece, len(said) == len(words))
