"""The guards between the model and the user: loops stopped, labels and blanks never posted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.core.repetition import loop_start, trim_loop
from bot.core.replies import NO_ANSWER, strip_leading_labels, tidy_reply
from bot.engines.contract import GenerationRequest
from bot.engines.worker import ModelWorker
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, IncomingMessage
from tests.fakes.backends import EchoBackend

KEY = ChannelKey("discord", "general")
PARAGRAPH = ("Walking is also a great way to improve your mental health. It's a great way "
             "to reduce stress.\n\n")


def test_a_paragraph_three_times_in_a_row_is_a_loop_cut_after_the_first_copy() -> None:
    text = "Walking helps.\n\n" + PARAGRAPH * 3
    start = loop_start(text)
    assert start is not None and text[:start].count("mental health") == 1
    assert loop_start("Walking helps.\n\n" + PARAGRAPH * 2) is None  # a short one twice: fine
    long = ("The gears in the rear wheel are connected to the rear axle, which is connected "
            "to the rear wheel. The rear wheel is connected to the rear axle, and the rear "
            "axle is connected to the front axle.\n\n")
    assert len(long) >= 160  # a paragraph twice in a row is already a loop
    assert trim_loop("Intro.\n\n" + long * 2 + long[:50]) == ("Intro.\n\n" + long).rstrip()
    assert trim_loop(text) == ("Walking helps.\n\n" + PARAGRAPH).rstrip()


def test_a_loop_cut_off_mid_copy_is_trimmed_at_the_end_of_its_first_copy() -> None:
    text = "Walking helps.\n\n" + PARAGRAPH * 3 + PARAGRAPH[:25]
    assert trim_loop(text) == ("Walking helps.\n\n" + PARAGRAPH).rstrip()


def test_chinese_and_japanese_loops_are_found_without_word_boundaries() -> None:
    assert trim_loop("散步对健康有好处。" + "它可以减轻压力，让人心情愉快。" * 5) == \
        "散步对健康有好处。它可以减轻压力，让人心情愉快。"
    assert trim_loop("歩くのは体にいいです。" * 8) == "歩くのは体にいいです。"


def test_a_line_coming_back_a_third_time_with_others_between_is_a_loop() -> None:
    poem = ("In the depths of the ocean,\nAbe a story of love and loss,\nIn a sea of gold,\n"
            "Abe a story of love and loss,\nThe sea is a mirror,\n")
    assert trim_loop(poem + "Abe a story of love and loss,\nIn a sea") == poem.rstrip()
    assert loop_start(poem) is None
    assert loop_start(poem + "Abe a story of lo") is None  # not yet complete


def test_list_items_repeated_under_new_numbers_are_a_loop() -> None:
    items = "".join(f"{i}. Learn a new language every 2-3 years.\n" for i in range(10, 20))
    assert trim_loop("Tips:\n" + items) == "Tips:\n10. Learn a new language every 2-3 years."


@pytest.mark.parametrize("text", [
    "ha ha ha ha",
    "| a | b |\n| --- | --- |\n| 1 | 2 |",
    "1. Walk daily.\n2. Walk daily with a friend.\n3. Walk daily in a park.",
    "1. Walk.\n2. Run.\n3. Swim.\n4. Cycle.\n5. Row.\n6. Climb.\n7. Skate.\n8. Ski.",
    ", ".join(f"2024-{m:02d}-01" for m in range(1, 13)),
    ", ".join(str(i) for i in range(1, 101)),
    " ".join(f"w{i}" for i in range(40)),
    " ".join(f"word{i}" for i in range(200)),
    ", ".join(f"Room {i}" for i in range(100, 130)),
    "=" * 80,
    "```python\n" + "print('hello, world, again')\n" * 3 + "```\nThat prints it three times.",
    "The the the.",
    "",
    "Paris is the capital of France.",
])
def test_ordinary_text_is_no_loop(text: str) -> None:
    assert loop_start(text) is None
    assert trim_loop(text) == text


def test_speaker_labels_at_the_start_are_stripped_and_later_ones_cut() -> None:
    assert strip_leading_labels("Alice: Once upon a time", ["Alice"]) == "Once upon a time"
    assert strip_leading_labels("Alice:\nAlice : Bot：hi", ["Alice", "Bot"]) == "hi"
    assert strip_leading_labels("Alice, here you go", ["Alice"]) == "Alice, here you go"
    assert tidy_reply("Alice:", speakers=["Alice"], bot_name="Bot") == ""
    assert tidy_reply("bob: No.\nbob: yes?", speakers=["bob"], bot_name="Bot") == "No."
    assert tidy_reply("It is 3 years.\n\n[faq.md — Warranty]\nEvery feeder...",
                      speakers=["bob"], bot_name="Bot") == "It is 3 years."


class ScriptedBackend(EchoBackend):
    """Replies with scripted texts in turn, a few characters at a time; `loop` repeats its
    text until the reply budget runs out or the worker says stop."""

    def __init__(self, replies: list[str], *, loop: bool = False) -> None:
        super().__init__()
        self.replies = replies
        self.loop = loop
        self.requests: list[GenerationRequest] = []
        self.stopped = threading.Event()
        self.emitted = 0

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        self.requests.append(request)
        text = self.replies[min(len(self.requests), len(self.replies)) - 1]
        out = ""
        if self.loop:
            text *= 2000
        for i in range(0, len(text), 4):
            piece = text[i:i + 4]
            if should_stop():
                self.stopped.set()
                break
            emit(piece)
            out += piece
            self.emitted += 1
            time.sleep(0.001)  # a model takes a while per token; the loop keeps up
        return out


def ask(text: str, author: str = "Alice") -> IncomingMessage:
    return IncomingMessage(key=KEY, message_id="m1", author_id="u1", author_name=author,
                           text=text)


async def core_with(backend: ScriptedBackend, settings: Settings,
                    history: HistoryStore) -> tuple[ConversationCore, ModelWorker]:
    worker = ModelWorker(lambda: backend, max_pending=4)
    await worker.start()
    return ConversationCore(worker=worker, history=history, settings=settings), worker


async def test_a_looping_reply_is_stopped_and_trimmed(settings: Settings,
                                                      history: HistoryStore) -> None:
    backend = ScriptedBackend(["It's a great way to reduce your carbon footprint. "],
                              loop=True)
    core, worker = await core_with(backend, settings, history)
    shown: list[str] = []

    async def progress(text: str) -> None:
        shown.append(text)

    try:
        reply = await core.handle(ask("Write a short article about walking."),
                                  on_progress=progress)
    finally:
        await worker.stop()
    assert reply is not None
    assert reply.text == "It's a great way to reduce your carbon footprint."
    assert backend.stopped.is_set()  # generation was cancelled, not run to its budget
    assert backend.emitted < 2000  # of 25,500 it would have sent
    assert (await history.recent(KEY))[-1].text == reply.text


async def test_a_name_only_reply_is_retried_sampled(settings: Settings,
                                                    history: HistoryStore) -> None:
    backend = ScriptedBackend(["Alice:", "Once upon a time, a robot picked up a brush."])
    core, worker = await core_with(backend, settings, history)
    try:
        reply = await core.handle(ask("Write a story about a robot who learns to paint."))
    finally:
        await worker.stop()
    assert reply is not None and reply.text == "Once upon a time, a robot picked up a brush."
    assert len(backend.requests) == 2
    assert backend.requests[0].sampling.temperature == settings.temperature
    assert backend.requests[1].sampling.temperature >= 0.7
    assert backend.requests[1].prompt == backend.requests[0].prompt


async def test_an_always_empty_reply_becomes_a_short_apology(settings: Settings,
                                                             history: HistoryStore) -> None:
    backend = ScriptedBackend(["Alice: ", "  \n", "never asked a third time"])
    core, worker = await core_with(backend, settings, history)
    try:
        reply = await core.handle(ask("hello?"))
    finally:
        await worker.stop()
    assert reply is not None and reply.text == NO_ANSWER
    assert len(backend.requests) == 2


async def test_a_reply_opening_with_the_askers_name_keeps_its_words(
        settings: Settings, history: HistoryStore) -> None:
    backend = ScriptedBackend(["bob: No, you can't use the feeder below -20 C."])
    core, worker = await core_with(backend, settings, history)
    try:
        reply = await core.handle(ask("Can I use it in winter?", author="bob"))
    finally:
        await worker.stop()
    assert reply is not None and reply.text == "No, you can't use the feeder below -20 C."
