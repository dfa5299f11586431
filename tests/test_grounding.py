"""Support answers name only the sources they drew on, and say so when the passages do not
answer (the check in `bot.core.grounding`, through the core with the sample knowledge base)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.core.grounding import Evidence, sources_drawn_on, support, words
from bot.engines.contract import GenerationRequest
from bot.engines.worker import ModelWorker
from bot.storage.interface import ChannelSettings, HistoryStore
from bot.storage.knowledge import KnowledgeBase
from bot.types import ChannelKey, IncomingMessage
from tests.fakes.backends import EchoBackend

SAMPLE_KB = Path(__file__).resolve().parents[1] / "examples" / "knowledge"
KEY = ChannelKey("slack", "support")
FAQ = Evidence("faq.md", "Every Brightbird feeder has a 3-year warranty covering the camera, "
               "the battery and the solar panel.")


def test_words_are_lowercased_singular_and_cjk_characters_count_alone() -> None:
    assert words("The Feeders have 3 batteries!") == {"feeder", "3", "battery"}
    assert words("保修期是三年") == {"保", "修", "期", "是", "三", "年"}


def test_an_answer_is_backed_when_its_new_words_are_in_the_passages() -> None:
    question = "How long is the warranty on the feeder?"
    assert support("The warranty on the feeder is 3 years.", question, [FAQ]) == 1.0
    assert support("The feeder is blue.", "What colour is the feeder?", [FAQ]) == 0.0
    assert support("The warranty on the feeder.", question, [FAQ]) == 0.0  # adds nothing
    assert support("The warranty covers the camera for 5 years.", question, [FAQ]) == 0.0
    other = Evidence("app.md", "The app runs on Android 11 or newer.")
    assert sources_drawn_on("It is 3 years.", question, [other, FAQ]) == ["faq.md"]


class FixedBackend(EchoBackend):
    """Always replies `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        self.prompts.append(request.prompt)
        emit(self.text)
        return self.text


@pytest.fixture
async def knowledge(tmp_path: Path) -> AsyncIterator[KnowledgeBase]:
    async with KnowledgeBase(SAMPLE_KB, tmp_path / "kb.sqlite3") as kb:
        await kb.reindex()
        yield kb


async def ask_support(text: str, reply: str, settings: Settings, history: HistoryStore,
                      knowledge: KnowledgeBase) -> tuple[str, list[str]]:
    backend = FixedBackend(reply)
    shown: list[str] = []

    async def progress(part: str) -> None:
        shown.append(part)

    async with ModelWorker(lambda: backend) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings,
                                knowledge=knowledge)
        await history.save_channel_settings(KEY, ChannelSettings(persona="support"))
        answer = await core.handle(IncomingMessage(
            key=KEY, message_id="m1", author_id="u1", author_name="bob", text=text),
            on_progress=progress)
    assert answer is not None
    return answer.text, shown


async def test_a_backed_answer_names_the_file_it_drew_on(
        settings: Settings, history: HistoryStore, knowledge: KnowledgeBase) -> None:
    text, shown = await ask_support(
        "How long is the warranty?", "Every feeder has a 3-year warranty.", settings, history,
        knowledge)
    assert text == "Every feeder has a 3-year warranty.\n\nSources: brightbird-faq.md"
    assert shown == []  # never streamed before it is checked


async def test_an_invented_answer_becomes_i_dont_know_and_who_to_ask(
        settings: Settings, history: HistoryStore, knowledge: KnowledgeBase) -> None:
    text, shown = await ask_support(
        "Does the feeder work with Alexa?",
        "Yes, the feeder works with Alexa and Google Home via the Brightbird skill.",
        settings, history, knowledge)
    assert text.startswith("I don't know: our documentation doesn't answer that")
    assert "support@brightbird.example" in text
    assert text.endswith("\n\nSources: support/escalation.md")
    assert "Alexa and Google Home" not in text and shown == []
    stored = await history.recent(KEY)
    assert stored[-1].text.startswith("I don't know")  # history holds what the user saw
