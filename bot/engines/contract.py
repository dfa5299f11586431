"""The contract between the model worker and whatever actually generates text.

A `Backend` is built on the worker thread and only ever called from it, so it may hold a
model that is not thread-safe. `HFBackend` (in `bot.engines.local.hf_backend`) runs a
transformers model in-process; another in-process backend would implement the same three
methods, and the core would not notice. A backend that can also decode many requests at once offers
`open_batch()` (`BatchingBackend`); the worker then batches continuously.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bot.types import Image, Prompt


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample one reply. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.2
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    """Above 1, tokens the sequence already holds are made less likely, with transformers'
    multiplicative semantics (vLLM's `repetition_penalty`, llama.cpp's `repeat_penalty`);
    a remote engine sends it as its server's field. 1 turns it off."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt to complete; the prompt is already trimmed to fit the context window."""

    prompt: Prompt
    sampling: SamplingParams
    cache_key: str | None = None
    """The conversation this prompt continues (a channel), so its cached prompt is reused."""
    model: str | None = None
    """A served model chosen for this channel (remote engines; None: the engine's default)."""
    images: tuple[Image, ...] = ()
    """Pictures for the newest message, sent only to an engine whose `ModelInfo.vision` is
    true (the remote engine adds them as OpenAI ``image_url`` parts)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What `/status` shows and what the prompt builder needs to know."""

    name: str
    device: str
    dtype: str
    context_tokens: int
    vision: bool = False
    """The model can read images: only when its server says so (llama.cpp ``/props``
    ``modalities``, Ollama ``/api/show`` ``capabilities``), never guessed from a name."""
    detail: Callable[[], str] | None = field(default=None, compare=False, repr=False)
    """A live note on the engine (the CPU engine: which decode steps are compiled yet)."""

    def note(self) -> str:
        """`detail` for a status line: ``"; ..."``, or empty."""
        return f"; {self.detail()}" if self.detail is not None else ""


class TokenCounter(Protocol):
    """Exact token arithmetic for prompt building, usable off the worker thread."""

    def count_prompt(self, prompt: Prompt) -> int:
        """Tokens of the prompt as the model will see it, generation header included."""
        ...

    def count_text(self, text: str) -> int:
        """Tokens of a bare piece of text."""
        ...

    def truncate_text(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that is at most `max_tokens` tokens."""
        ...


class Backend(Protocol):
    """Generates text; lives on, and is only called from, the worker thread."""

    info: ModelInfo

    def token_counter(self) -> TokenCounter:
        """A counter that the event-loop side may use from another thread."""
        ...

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        """Complete the prompt, calling `emit` with each new piece of text.

        Returns the whole reply. Stops early, returning what it has, once `should_stop()`
        is true. Raises on model errors; the worker fails only this request.
        """
        ...

    def close(self) -> None:
        """Release the model (called on the worker thread at shutdown)."""
        ...


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What one decoding step produced for one sequence."""

    piece: str
    """New text ('' while a token ends mid-character)."""
    finished: bool
    """The sequence hit its end-of-text token or its `max_new_tokens`."""


class DecodeBatch(Protocol):
    """Sequences decoded together, one token each per step; used only on the worker thread.

    Sequences join (`admit`) and leave (`finish`) between steps, so a short question never
    waits for a long reply to end.
    """

    def cost(self, request: GenerationRequest) -> int:
        """Tokens `request` may hold in the batch: its prompt plus its reply budget."""
        ...

    def admit(self, entries: Sequence[tuple[int, GenerationRequest]],
              ready: Callable[[int, StepOutput], None]) -> None:
        """Read the prompts of new sequences (by id) and produce their first tokens.

        `ready(seq_id, first)` is called as soon as a sequence's first token is known; from
        then on it is in the batch, and joins the next step. Raises on model errors: the
        sequences not yet reported did not join, and the running ones are untouched.
        """
        ...

    def step(self) -> dict[int, StepOutput]:
        """Decode one more token for every sequence that has not finished."""
        ...

    def finish(self, seq_id: int) -> str:
        """Remove a sequence (finished, cancelled or timed out) and return its reply."""
        ...

    def clear(self) -> None:
        """Drop every sequence, after a failed step."""
        ...


@runtime_checkable
class BatchingBackend(Protocol):
    """A backend that can also decode many requests at once."""

    def open_batch(self) -> DecodeBatch | None:
        """A new, empty batch, or None when this model cannot be batched."""
        ...
