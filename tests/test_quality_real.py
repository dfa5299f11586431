"""The cases of issue 14 on the real bundled model (slow): no loop, no name-only reply, and
a support question the sample knowledge base does not answer gets "I don't know"."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import hf_backend_factory
from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.engines.local.model_source import bundled_model
from bot.engines.worker import ModelWorker
from bot.eval import scoring
from bot.storage.interface import ChannelSettings
from bot.storage.knowledge import KnowledgeBase
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, IncomingMessage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def real_core(settings: Settings, tmp_path: Path) -> AsyncIterator[ConversationCore]:
    real = dataclasses.replace(settings, model_cache_dir=tmp_path / "models", temperature=0.0,
                               max_new_tokens=256, rate_limit_per_minute=0)
    async with ModelWorker(hf_backend_factory(real, bundled_model())) as worker, \
            SQLiteHistoryStore(real.history_db) as store, \
            KnowledgeBase(ROOT / "examples" / "knowledge", tmp_path / "kb.db") as kb:
        await kb.reindex()
        yield ConversationCore(worker=worker, history=store, settings=real, knowledge=kb)


def ask(text: str, key: ChannelKey, author: str = "ada") -> IncomingMessage:
    return IncomingMessage(key=key, message_id="m1", author_id="u1", author_name=author,
                           text=text)


async def test_greedy_long_replies_neither_loop_nor_come_back_as_a_name(
        real_core: ConversationCore) -> None:
    article = await real_core.handle(ask("Write a short article about the benefits of walking.",
                                         ChannelKey("console", "walk")))
    story = await real_core.handle(ask(
        "Write a long story about a robot who learns to paint. Describe every step.",
        ChannelKey("discord", "story"), author="Alice"))
    assert article is not None and story is not None
    assert not scoring.degenerate(article.text, ["ada"]), article.text
    assert not scoring.degenerate(story.text, ["Alice"]), story.text
    assert len(story.text) > 100 and not story.text.startswith("Alice")


async def test_support_says_it_does_not_know_what_the_faq_does_not_say(
        real_core: ConversationCore) -> None:
    key = ChannelKey("slack", "support")
    await real_core.history.save_channel_settings(key, ChannelSettings(persona="support"))
    reply = await real_core.handle(ask("Does the feeder work with Alexa?", key))
    assert reply is not None
    assert reply.text.startswith("I don't know")
    assert reply.text.endswith("Sources: support/escalation.md")
