"""Personas, per-channel settings, the FTS5 knowledge base, and how the core uses them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.core.personas import load_personas
from bot.core.prompting import knowledge_block
from bot.engines.worker import ModelWorker
from bot.errors import ConfigError
from bot.storage.interface import ChannelSettings, HistoryStore
from bot.storage.knowledge import KnowledgeBase, fts_query, split_passages
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, IncomingMessage
from tests.fakes.backends import EchoBackend, WordCounter

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_KB = ROOT / "examples" / "knowledge"
KEY = ChannelKey("slack", "C1")
THREAD = ChannelKey("slack", "C1", "1700000000.000100")


def message(text: str, *, key: ChannelKey = KEY, addressed: bool = True, admin: bool = False,
            in_bot_thread: bool = False) -> IncomingMessage:
    return IncomingMessage(key=key, message_id="m", author_id="u", author_name="ada", text=text,
                           addressed=addressed, is_admin=admin, in_bot_thread=in_bot_thread)


@pytest.fixture
async def knowledge(tmp_path: Path) -> AsyncIterator[KnowledgeBase]:
    async with KnowledgeBase(SAMPLE_KB, tmp_path / "kb.sqlite3") as kb:
        await kb.reindex()
        yield kb


@pytest.fixture
def kb_core(worker: ModelWorker, history: HistoryStore, settings: Settings,
            knowledge: KnowledgeBase) -> ConversationCore:
    return ConversationCore(worker=worker, history=history, settings=settings,
                            knowledge=knowledge)


def test_shipped_personas_and_user_overrides(tmp_path: Path) -> None:
    shipped = load_personas(None)
    assert {"assistant", "support", "writer", "summarizer"} <= set(shipped)
    assert shipped["support"].use_knowledge and not shipped["assistant"].use_knowledge
    assert shipped["writer"].max_new_tokens is not None
    assert shipped["writer"].max_new_tokens > 256
    (tmp_path / "pirate.toml").write_text('description = "Arr"\nsystem_prompt = "Talk like a '
                                          'pirate."\ntemperature = 0.9\n')
    (tmp_path / "writer.toml").write_text('description = "Mine"\nmax_new_tokens = 100\n')
    mine = load_personas(tmp_path)
    assert mine["pirate"].temperature == 0.9
    assert mine["writer"].description == "Mine" and mine["writer"].max_new_tokens == 100


def test_a_broken_persona_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("temperature = [oops")
    with pytest.raises(ConfigError, match="PERSONAS_DIR: expected valid persona files "
                                          r"\(bad.toml"):
        load_personas(tmp_path)
    (tmp_path / "bad.toml").write_text("temperature = 99")
    with pytest.raises(ConfigError, match="temperature 0-5"):
        load_personas(tmp_path)


async def test_channel_settings_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with SQLiteHistoryStore(path) as store:
        assert await store.channel_settings(KEY) == ChannelSettings()
        saved = ChannelSettings(persona="support", system_prompt="Be terse.",
                                thread_replies=False, enabled=False)
        await store.save_channel_settings(KEY, saved)
    async with SQLiteHistoryStore(path) as store:
        assert await store.channel_settings(KEY) == saved
        assert await store.channel_settings(THREAD) == saved  # threads inherit
        assert await store.channel_settings(ChannelKey("discord", "C1")) == ChannelSettings()


def test_passages_split_at_headings_and_queries_are_safe() -> None:
    passages = split_passages("faq.md", (SAMPLE_KB / "brightbird-faq.md").read_text())
    headings = [p.heading for p in passages]
    assert "Returns and refunds" in headings and "Warranty" in headings
    assert all(len(p.text) <= 800 for p in passages)
    assert fts_query('What is the "refund" policy?! AND OR NOT *') == (
        '"refund" OR "policy" OR "not"')
    assert fts_query("?? !!") == ""


async def test_retrieval_finds_the_right_passages(knowledge: KnowledgeBase) -> None:
    stats = await knowledge.stats()
    assert stats.documents == 3 and stats.passages >= 8
    cases = {
        "How many days do I have to return my feeder for a refund?": "Returns and refunds",
        "how do I reset it to factory settings": "Resetting the feeder",
        "Which Android version does the app need?": "Supported phones",
        "does the warranty cover squirrels": "Warranty",
    }
    for question, heading in cases.items():
        found = await knowledge.search(question, scope="assistant")
        assert found and found[0].heading == heading, question
    # a persona's own folder is searched only for that persona
    assert not await knowledge.search("serial number escalation", scope="assistant")
    found = await knowledge.search("serial number escalation", scope="support")
    assert found[0].path == "support/escalation.md"


async def test_reindex_picks_up_changes(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "a.md").write_text("# Alpha\nThe alpha code is 1234.")
    async with KnowledgeBase(folder, tmp_path / "kb.db") as kb:
        assert (await kb.reindex()).changed == 1
        assert (await kb.reindex()).changed == 0
        (folder / "b.txt").write_text("Beta facts: zebra crossing.")
        (folder / "a.md").unlink()
        stats = await kb.reindex()
        assert (stats.documents, stats.changed) == (1, 2)
        assert await kb.search("alpha code", scope="") == []
        assert (await kb.search("zebra", scope=""))[0].path == "b.txt"


async def test_knowledge_block_fits_its_budget(knowledge: KnowledgeBase) -> None:
    passages = await knowledge.search("refund warranty battery reset app", scope="", limit=8)
    counter = WordCounter()
    block, sources = knowledge_block(counter, passages, 120)
    assert counter.count_text(block) <= 120
    assert sources and all(s.endswith(".md") for s in sources)
    assert knowledge_block(counter, passages, 5) == ("", [])


async def test_support_persona_answers_from_the_knowledge_base(
        kb_core: ConversationCore, backend: EchoBackend) -> None:
    admin_set = await kb_core.handle(message("/persona support", admin=True))
    assert admin_set is not None and "now uses the **support** persona" in admin_set.text
    reply = await kb_core.handle(message("How long do I have to return the feeder?"))
    assert reply is not None
    prompt = backend.prompts[-1]
    assert "friendly customer support agent" in prompt[0]["content"]
    newest = prompt[-1]["content"]
    assert newest.startswith("Reference passages:\n\n[brightbird-faq.md — Returns and refunds]")
    assert "45 days of delivery" in newest
    assert newest.endswith("\n\nHow long do I have to return the feeder?")
    # The echo only repeats the question, which the passages do not back: no made-up answer.
    assert reply.text.startswith("I don't know")
    assert reply.text.endswith("\n\nSources: support/escalation.md")
    status = await kb_core.handle(message("/status"))
    assert status is not None
    assert "Persona here: support" in status.text
    assert "Knowledge base: 3 documents" in status.text


async def test_non_admins_cannot_change_settings(kb_core: ConversationCore,
                                                 history: HistoryStore) -> None:
    for command in ("/persona writer", "/settings threads off", "/settings prompt Be rude.",
                    "/reindex"):
        reply = await kb_core.handle(message(command))
        assert reply is not None and reply.text.startswith("Only members who can manage"), command
    assert await history.channel_settings(KEY) == ChannelSettings()
    listing = await kb_core.handle(message("/persona"))
    assert listing is not None and "uses the **assistant** persona" in listing.text
    assert "• writer" in listing.text


async def test_custom_prompt_and_disabling_a_channel(kb_core: ConversationCore,
                                                     backend: EchoBackend) -> None:
    saved = await kb_core.handle(message("/settings prompt You are a pirate named {bot_name}.",
                                         admin=True))
    assert saved is not None and saved.text == "Saved: set."
    await kb_core.handle(message("hello"))
    assert backend.prompts[-1][0]["content"] == "You are a pirate named Bot."
    await kb_core.handle(message("/settings enabled off", admin=True))
    assert await kb_core.handle(message("anyone there?")) is None
    assert len(backend.prompts) == 1
    shown = await kb_core.handle(message("/settings"))
    assert shown is not None and "Answer in this channel: off" in shown.text
    bad = await kb_core.handle(message("/settings enabled maybe", admin=True))
    assert bad is not None and bad.text == "Usage: /settings enabled on|off"


async def test_replies_without_mention_only_in_bot_threads(kb_core: ConversationCore,
                                                           backend: EchoBackend) -> None:
    other_thread = ChannelKey("slack", "C1", "1700000000.000999")
    assert await kb_core.handle(message("chatter", key=other_thread, addressed=False)) is None
    assert await kb_core.handle(message("side talk", addressed=False)) is None  # channel
    first = await kb_core.handle(message("start", key=THREAD))  # mention in the thread
    assert first is not None
    follow = await kb_core.handle(message("and then?", key=THREAD, addressed=False))
    assert follow is not None and follow.text == "echo: and then?"
    flagged = ChannelKey("slack", "C1", "1700000000.000555")
    by_adapter = await kb_core.handle(message("hi", key=flagged, addressed=False,
                                              in_bot_thread=True))
    assert by_adapter is not None
    await kb_core.handle(message("/settings threads off", admin=True))
    assert await kb_core.handle(message("more?", key=THREAD, addressed=False)) is None
    assert len(backend.prompts) == 3
