"""The generation contract as the core sees it: one `submit()` that returns a handle at once.

`ModelWorker` (in-process) and a remote engine both satisfy it; the core imports only this,
`contract` and `handles`, never an implementation.
"""

from __future__ import annotations

from typing import Protocol, Self

from bot.engines.contract import GenerationRequest, ModelInfo, TokenCounter
from bot.engines.handles import GenerationHandle


class GenerationService(Protocol):
    """What the core needs from a worker: `ModelWorker`, or a remote one."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def token_counter(self) -> TokenCounter: ...

    @property
    def queue_depth(self) -> int: ...

    def submit(self, request: GenerationRequest) -> GenerationHandle: ...


class ManagedEngine(GenerationService, Protocol):
    """An engine the app starts and stops: `ModelWorker`, or `RemoteEngine`."""

    @property
    def running(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...
