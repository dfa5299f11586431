"""Assemble the bot from settings: worker + history + core, then run the adapters.

Kept apart from `__main__` so tests can build the same app with a tiny model injected.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, TextIO

from bot.config import Settings, redact_url
from bot.core.conversation import ConversationCore
from bot.core.personas import load_personas
from bot.documents.intake import Intake
from bot.engines.contract import Backend
from bot.engines.local.model_source import ModelSource
from bot.engines.service import ManagedEngine
from bot.engines.worker import ModelWorker
from bot.errors import ConfigError, StoreUnavailable
from bot.ops.server import OpsServer
from bot.platforms.base import Adapter
from bot.platforms.console.adapter import ConsoleAdapter
from bot.storage.interface import HistoryStore
from bot.storage.knowledge import KnowledgeBase
from bot.storage.sqlite import SQLiteHistoryStore

if TYPE_CHECKING:
    from bot.storage.postgres import PostgresHistoryStore

log = logging.getLogger(__name__)


def hf_backend_factory(settings: Settings, source: ModelSource) -> Callable[[], Backend]:
    """A factory the worker calls on its own thread, so torch loads there, not at import."""

    def make() -> Backend:
        from bot.engines.local.backend import load_backend

        return load_backend(source, device=settings.device, dtype=settings.model_dtype,
                            cache_dir=str(settings.model_cache_dir), bot_name=settings.bot_name,
                            context_tokens=settings.context_tokens,
                            prompt_cache_mb=settings.prompt_cache_mb,
                            quantize=settings.model_quantize)

    return make


def remote_engine(settings: Settings) -> ManagedEngine:
    """The engine for LLM_BASE_URL: an OpenAI-compatible server; torch is never imported."""
    from bot.engines.remote.engine import RemoteConfig, RemoteEngine

    assert settings.llm_base_url is not None
    return RemoteEngine(RemoteConfig(
        base_url=settings.llm_base_url, api_key=settings.llm_api_key, model=settings.llm_model,
        max_concurrency=settings.llm_max_concurrency, max_queue=settings.max_queue,
        timeout=settings.generation_timeout, context_tokens=settings.context_tokens))


def platform_adapters(core: ConversationCore, settings: Settings,
                      intake: Intake | None = None) -> list[Adapter]:
    """One adapter per platform that has a token; SDKs are imported only when used."""
    adapters: list[Adapter] = []
    if settings.discord_token:
        from bot.platforms.discord.adapter import DiscordAdapter

        adapters.append(DiscordAdapter(core, settings, intake=intake))
    if settings.slack_bot_token:
        from bot.platforms.slack.app import SlackAdapter

        adapters.append(SlackAdapter(core, settings, intake=intake))
    return adapters


async def run_bot(settings: Settings, make_backend: Callable[[], Backend] | None, *,
                  console: bool = False, channel: str = "local", stdin: TextIO | None = None,
                  stdout: TextIO | None = None, engine: ManagedEngine | None = None) -> None:
    """Load the model, open history, and serve the adapters until they end or a signal.

    With `console` (or no platform token) the console chat runs; it ends at end of input.
    With `settings.ops_port` the health and metrics endpoint serves alongside, until then.

    Raises:
        ConfigError: a persona file is malformed, OPS_PORT is taken, or the DATABASE_URL
            server cannot be reached.
        ModelLoadError: the model could not be loaded.
    """
    personas = load_personas(settings.personas_dir)
    history = await open_history(settings)  # first: a bad DATABASE_URL fails at once
    worker: ManagedEngine
    if engine is not None:
        worker = engine
    elif settings.llm_base_url:
        print(f"Connecting to the model server ({settings.llm_base_url})...",
              file=sys.stderr, flush=True)
        worker = remote_engine(settings)
    else:
        if make_backend is None:
            raise ValueError("run_bot needs make_backend, an engine, or LLM_BASE_URL")
        print(f"Loading the model ({settings.model}); the first start converts it and "
              "takes longer...", file=sys.stderr, flush=True)
        worker = ModelWorker(make_backend, max_pending=settings.max_queue,
                             timeout=settings.generation_timeout,
                             max_batch_size=settings.max_batch_size,
                             batch_token_budget=settings.batch_token_budget)
    async with history, worker:
        info = worker.info
        print(f"Model ready: {info.name} on {info.device} ({info.dtype}). "
              f"History: {describe_history(settings)}", file=sys.stderr, flush=True)
        async with AsyncExitStack() as stack:
            knowledge = None
            if settings.knowledge_dir.is_dir():
                knowledge = await stack.enter_async_context(
                    KnowledgeBase(settings.knowledge_dir, settings.knowledge_db))
                stats = await knowledge.reindex()
                print(f"Knowledge base {settings.knowledge_dir}: {stats.documents} documents, "
                      f"{stats.passages} passages.", file=sys.stderr, flush=True)
            if settings.history_retention_days:
                retention = asyncio.create_task(
                    keep_retention(history, settings.history_retention_days))
                stack.callback(retention.cancel)
            core = ConversationCore(worker=worker, history=history, settings=settings,
                                    personas=personas, knowledge=knowledge)
            # One reader process and link fetcher for every adapter (files and links).
            intake = await stack.enter_async_context(Intake.from_settings(settings))
            adapters: list[Adapter]
            if console or not settings.platforms:
                adapters = [ConsoleAdapter(core, stdin=stdin, stdout=stdout, channel=channel,
                                           intake=intake)]
            else:
                adapters = platform_adapters(core, settings, intake)
            if settings.ops_port:
                await stack.enter_async_context(
                    OpsServer(core, adapters, host=settings.ops_host, port=settings.ops_port))
            # Start-up leaves ~500,000 long-lived objects (torch, transformers, SDKs); freezing
            # them keeps full garbage collections from stalling the event loop for 0.2-0.4 s.
            gc.collect()
            gc.freeze()
            await _serve(adapters)


async def open_history(settings: Settings) -> SQLiteHistoryStore | PostgresHistoryStore:
    """The history store, opened: SQLite by default, PostgreSQL when DATABASE_URL is set
    (several instances share it). Opened before the model loads, so a bad URL fails fast.

    Raises:
        ConfigError: the PostgreSQL server cannot be reached, or its schema is newer.
    """
    if not settings.database_url:
        return await SQLiteHistoryStore(settings.history_db,
                                        max_per_channel=settings.history_max_messages).open()
    from bot.storage.postgres import PostgresHistoryStore

    store = PostgresHistoryStore(settings.database_url,
                                 max_per_channel=settings.history_max_messages,
                                 pool_size=settings.database_pool_size,
                                 lock_pool_size=settings.database_pool_size + settings.max_queue)
    try:
        return await store.open()
    except StoreUnavailable as exc:
        raise ConfigError("DATABASE_URL", f"a reachable PostgreSQL server: {exc}") from None
    except RuntimeError as exc:  # a newer schema than this bot knows
        raise ConfigError("DATABASE_URL", str(exc)) from None


def describe_history(settings: Settings) -> str:
    """Where history is kept, for the start-up line (never with a password)."""
    if settings.database_url:
        return f"PostgreSQL {redact_url(settings.database_url)}"
    return str(settings.history_db)


async def keep_retention(history: HistoryStore, days: float, *,
                         every: float = 3600.0) -> None:
    """Delete turns older than `days` now and then every `every` seconds, until cancelled."""
    while True:
        try:
            deleted = await history.prune(days)
            if deleted:
                log.info("retention: deleted %d messages older than %g days", deleted, days)
        except Exception:
            log.exception("retention pruning failed; trying again later")
        await asyncio.sleep(every)


async def _serve(adapters: list[Adapter]) -> None:
    """Run every adapter on this loop until all end; SIGTERM/SIGINT stop them all."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = _install_signal_handlers(loop, stopping.set)
    running = asyncio.create_task(_run_all(adapters))
    stop_requested = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({running, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            log.info("a signal asked the bot to shut down")
        else:
            running.result()  # re-raises a ConfigError from an adapter's start()
    finally:
        for adapter in adapters:
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping the %s adapter failed", adapter.platform)
        stop_requested.cancel()
        running.cancel()
        await asyncio.gather(running, stop_requested, return_exceptions=True)
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _run_all(adapters: list[Adapter]) -> None:
    """Run the adapters side by side; one that fails is logged and the others keep going."""

    async def run(adapter: Adapter) -> None:
        try:
            await adapter.start()
        except ConfigError:
            raise  # a rejected token: __main__ prints one line and exits 2
        except Exception:
            log.exception("the %s adapter stopped with an error", adapter.platform)

    await asyncio.gather(*(run(a) for a in adapters))


def _install_signal_handlers(loop: asyncio.AbstractEventLoop,
                             callback: Callable[[], None]) -> list[signal.Signals]:
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, callback)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no signal support: Ctrl-C still interrupts
    return installed
