"""Fixtures that give every test a working bot: settings, a real worker thread, history, core.

Unit tests run on fake backends (`tests.fakes.backends`) or a tiny random-weight model built
offline (`tests.tiny_model`); tests marked `slow` load the real bundled SmolLM2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.engines.contract import Backend
from bot.engines.worker import ModelWorker
from bot.storage.interface import HistoryStore
from bot.storage.sqlite import SQLiteHistoryStore
from tests.fakes.backends import EchoBackend
from tests.pg_fixtures import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.tiny_model import save_tiny_model


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(history_db=tmp_path / "history.sqlite3", model_cache_dir=tmp_path / "models",
                    max_new_tokens=32, max_queue=4, bot_name="Bot")


@pytest.fixture
def backend() -> EchoBackend:
    return EchoBackend()


@pytest.fixture
async def worker(backend: EchoBackend, settings: Settings) -> AsyncIterator[ModelWorker]:
    async with ModelWorker(lambda: backend, max_pending=settings.max_queue,
                           timeout=settings.generation_timeout) as started:
        yield started


@pytest.fixture
async def history(settings: Settings) -> AsyncIterator[HistoryStore]:
    async with SQLiteHistoryStore(settings.history_db,
                                  max_per_channel=settings.history_max_messages) as store:
        yield store


@pytest.fixture
def core(worker: ModelWorker, history: HistoryStore, settings: Settings) -> ConversationCore:
    return ConversationCore(worker=worker, history=history, settings=settings)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a ChatML template, saved once per test session."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model without a chat template, like a GPT-2-style base model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-base"), chat_template=False)


@pytest.fixture
def tiny_backend_factory(tiny_model_dir: Path, settings: Settings) -> Callable[[], Backend]:
    from bot.app import hf_backend_factory
    from bot.engines.local.model_source import resolve_model

    return hf_backend_factory(settings, resolve_model(str(tiny_model_dir)))


def with_settings(settings: Settings, **changes: object) -> Settings:
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
