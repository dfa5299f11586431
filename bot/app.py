"""Assemble the bot from settings: worker + history + core, then run the adapters.

Kept apart from `__main__` so tests can build the same app with a tiny model injected.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

from bot.adapters.console_adapter import ConsoleAdapter
from bot.config import Settings
from bot.core import ConversationCore
from bot.generation import Backend
from bot.history import HistoryStore
from bot.model_source import ModelSource
from bot.worker import ModelWorker

log = logging.getLogger(__name__)


def hf_backend_factory(settings: Settings, source: ModelSource) -> Callable[[], Backend]:
    """A factory the worker calls on its own thread, so torch loads there, not at import."""

    def make() -> Backend:
        from bot.hf_backend import load_backend

        return load_backend(source, device=settings.device, dtype=settings.model_dtype,
                            cache_dir=str(settings.model_cache_dir), bot_name=settings.bot_name,
                            context_tokens=settings.context_tokens)

    return make


def make_worker(settings: Settings, make_backend: Callable[[], Backend]) -> ModelWorker:
    return ModelWorker(make_backend, max_pending=settings.max_queue,
                       timeout=settings.generation_timeout)


async def run_console(settings: Settings, make_backend: Callable[[], Backend], *,
                      channel: str = "local", stdin: TextIO | None = None,
                      stdout: TextIO | None = None) -> None:
    """Load the model, open history, and chat on the console until end of input."""
    print(f"Loading the model ({settings.model}); the first start converts it and takes "
          "longer...", file=sys.stderr, flush=True)
    async with make_worker(settings, make_backend) as worker, \
            HistoryStore(settings.history_db,
                         max_per_channel=settings.history_max_messages) as history:
        info = worker.info
        print(f"Model ready: {info.name} on {info.device} ({info.dtype}). "
              f"History: {settings.history_db}", file=sys.stderr, flush=True)
        core = ConversationCore(worker=worker, history=history, settings=settings)
        console = ConsoleAdapter(core, stdin=stdin, stdout=stdout, channel=channel)
        await console.start()
