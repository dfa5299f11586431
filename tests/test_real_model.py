"""Real-model tests on the bundled SmolLM2-135M-Instruct (marked slow; CI runs them).

They catch quality regressions a random-weight model cannot: the model must still know
that Paris is the capital of France, through the whole stack and through the console.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import hf_backend_factory
from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.engines.local.model_cache import cache_folder
from bot.engines.local.model_source import bundled_model
from bot.engines.worker import ModelWorker
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, IncomingMessage, Turn

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
KEY = ChannelKey("console", "real")


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One conversion per test run, shared by the tests and the console subprocess."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def real_settings(settings: Settings, model_cache: Path) -> Settings:
    return dataclasses.replace(settings, model_cache_dir=model_cache, temperature=0.0,
                               max_new_tokens=64, max_queue=8)


@pytest.fixture
async def real_core(real_settings: Settings) -> AsyncIterator[ConversationCore]:
    factory = hf_backend_factory(real_settings, bundled_model())
    async with ModelWorker(factory) as worker, \
            SQLiteHistoryStore(real_settings.history_db) as store:
        yield ConversationCore(worker=worker, history=store, settings=real_settings)


def ask(text: str, message_id: str = "m1", key: ChannelKey = KEY) -> IncomingMessage:
    return IncomingMessage(key=key, message_id=message_id, author_id="u1", author_name="ada",
                           text=text)


async def test_the_gguf_is_converted_once_and_cached(real_core: ConversationCore,
                                                     model_cache: Path) -> None:
    folder = cache_folder(bundled_model(), model_cache)
    assert (folder / ".complete").is_file()
    assert (folder / "model.safetensors").is_file()
    assert real_core.worker.info.name.startswith("SmolLM2-135M-Instruct")


async def test_capital_of_france_through_the_full_stack(real_core: ConversationCore) -> None:
    reply = await real_core.handle(ask("What is the capital of France?"))
    assert reply is not None
    assert "Paris" in reply.text


async def test_follow_up_uses_the_channel_history(real_core: ConversationCore) -> None:
    await real_core.handle(ask("What is the capital of France?"))
    reply = await real_core.handle(ask("Repeat the name of that city.", "m2"))
    assert reply is not None and "Paris" in reply.text


async def test_odd_input_gets_answers_and_the_bot_keeps_working(
        real_core: ConversationCore) -> None:
    huge = await real_core.handle(ask("a" * 100_000))
    assert huge is not None and "too long" in huge.text
    odd = await real_core.handle(ask("\x00\x1b🦉🦉 hello?! \u202e"))
    assert odd is not None and odd.text.strip()
    fresh = ChannelKey("console", "fresh")
    reply = await real_core.handle(ask("What is the capital of France?", "m3", fresh))
    assert reply is not None and "Paris" in reply.text


async def test_map_reduce_summary_on_a_small_window(real_settings: Settings) -> None:
    small = dataclasses.replace(real_settings, context_tokens=384, max_new_tokens=48)
    factory = hf_backend_factory(small, bundled_model())
    async with ModelWorker(factory) as worker, SQLiteHistoryStore(small.history_db) as store:
        core = ConversationCore(worker=worker, history=store, settings=small)
        for i in range(30):
            await store.add(KEY, Turn(
                "user", "sam", f"Item {i}: we agreed the launch moves to Friday and the "
                "budget stays at ten thousand euros."))
        reply = await core.handle(ask("/summarize 30"))
    assert reply is not None
    assert reply.text.startswith("Summary of the last 30 messages:")
    assert len(reply.text.split(":", 1)[1].strip()) > 10


def test_console_answers_piped_input(model_cache: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MODEL_CACHE_DIR": str(model_cache), "TEMPERATURE": "0",
           "HISTORY_DB": str(tmp_path / "h.sqlite3")}
    env.pop("DISCORD_TOKEN", None)
    env.pop("SLACK_BOT_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--env-file", str(tmp_path / "none.env")],
        input="What is the capital of France?\n", capture_output=True, text=True, cwd=ROOT,
        env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "Model ready" in result.stderr


async def test_support_channel_answers_from_the_sample_knowledge_base(
        real_settings: Settings, tmp_path: Path) -> None:
    from bot.storage.knowledge import KnowledgeBase

    factory = hf_backend_factory(real_settings, bundled_model())
    async with ModelWorker(factory) as worker, \
            SQLiteHistoryStore(real_settings.history_db) as store, \
            KnowledgeBase(ROOT / "examples" / "knowledge", tmp_path / "kb.db") as kb:
        await kb.reindex()
        core = ConversationCore(worker=worker, history=store, settings=real_settings,
                                knowledge=kb)
        admin = IncomingMessage(key=KEY, message_id="a", author_id="u1", author_name="ada",
                                text="/persona support", is_admin=True)
        await core.handle(admin)
        reply = await core.handle(ask("How many days do I have to return a Brightbird feeder "
                                      "for a refund?"))
    assert reply is not None
    assert "45" in reply.text  # only the sample knowledge base says 45 days
    assert "Sources: brightbird-faq.md" in reply.text


# -- shared documents (issue #17) -------------------------------------------------------

def shares(text: str, data: bytes, name: str, message_id: str = "d1") -> IncomingMessage:
    from bot.documents.readers import read_bytes
    from bot.types import Document, Shared

    document = read_bytes(data, name)
    assert isinstance(document, Document)
    return IncomingMessage(key=KEY, message_id=message_id, author_id="u1", author_name="ada",
                           text=text, shared=Shared(documents=(document,)))


async def test_a_pdf_summary_says_what_the_pdf_says(real_core: ConversationCore) -> None:
    from tests import document_files as files

    reply = await real_core.handle(shares("", files.pdf(), "report.pdf"))
    assert reply is not None and reply.text.endswith("Sources: report.pdf")
    said = reply.text.lower()
    assert sum(word in said for word in ("brightbird", "feeder", "porto", "refund",
                                         "42,000", "18")) >= 2, reply.text


async def test_a_question_is_answered_from_the_pdf(real_core: ConversationCore) -> None:
    from tests import document_files as files

    reply = await real_core.handle(shares("Where will the second factory open?",
                                          files.pdf(), "report.pdf"))
    assert reply is not None and "Porto" in reply.text


def test_console_attach_prints_a_summary_of_the_pdf(model_cache: Path, tmp_path: Path) -> None:
    from tests import document_files as files

    (tmp_path / "report.pdf").write_bytes(files.pdf())
    env = {**os.environ, "MODEL_CACHE_DIR": str(model_cache), "TEMPERATURE": "0",
           "HISTORY_DB": str(tmp_path / "h.sqlite3")}
    env.pop("DISCORD_TOKEN", None)
    env.pop("SLACK_BOT_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--env-file", str(tmp_path / "none.env")],
        input="/attach report.pdf\nSummarise this.\n", capture_output=True, text=True,
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Attached report.pdf (PDF, 3 pages" in result.stderr
    said = result.stdout.lower()
    assert "brightbird" in said or "feeder" in said, result.stdout
    assert result.stdout.strip().endswith("Sources: report.pdf")
