"""The controls of an answer in the core (issue #18): real worker thread, fake backends, a real
SQLite file, and a fake OpenAI-compatible server for the remote engine; no platform."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bot.config import Settings
from bot.core.answering import STOPPED_MARK
from bot.core.controls import GONE, NOT_CUT, NOT_RUNNING, ONLY_ASKER, STILL_RUNNING
from bot.core.conversation import ConversationCore
from bot.core.reanswer import REGENERATE_TEMPERATURE
from bot.engines.contract import GenerationRequest
from bot.engines.worker import ModelWorker
from bot.storage.interface import HistoryStore
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, Control, IncomingMessage, Press, Reply, Turn
from tests.conftest import with_settings
from tests.fakes.backends import EchoBackend, EchoBatchBackend
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.test_remote_engine import core_for

KEY = ChannelKey("discord", "general")


def message(text: str, *, message_id: str = "q1", author: str = "ada") -> IncomingMessage:
    return IncomingMessage(key=KEY, message_id=message_id, author_id=f"id-{author}",
                           author_name=author, text=text)


def press(control: Control, *, answer_to: str = "q1", user: str = "ada",
          admin: bool = False) -> Press:
    return Press(KEY, answer_to, control, f"id-{user}", user, is_admin=admin)


class RowsBackend(EchoBatchBackend):
    """`EchoBatchBackend` that tells which rows its batch still decodes."""

    def open_batch(self):  # type: ignore[no-untyped-def]
        self.batch = super().open_batch()
        return self.batch

    def open_rows(self) -> list[int]:
        return list(self.batch.words)


class NumberedBackend(EchoBackend):
    """Answers "answer N" (N counts generations); a prompt ending with the bot's own words is
    continued with " and more words"."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 should_stop: Callable[[], bool]) -> str:
        self.requests.append(request)
        self.prompts.append(request.prompt)
        if request.prompt[-1]["role"] == "assistant":
            pieces = [" and", " more", " words"]
        else:
            pieces = ["answer", f" {len(self.requests)}"]
        for piece in pieces:
            emit(piece)
        return "".join(pieces).strip()


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


async def test_stop_keeps_the_text_so_far_stores_it_once_and_stops_the_worker(
        settings: Settings, history: HistoryStore) -> None:
    backend = RowsBackend(steps=3)  # the batching loop; three steps, then it waits
    shown: list[str] = []

    async def progress(text: str) -> None:
        shown.append(text)

    async with ModelWorker(lambda: backend, max_pending=4) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        answer = asyncio.create_task(core.handle(
            message("one two three four five six seven"), on_progress=progress))
        await until(lambda: shown and shown[-1] == "echo: one two three")
        assert await core.controls.press(press("stop", user="bo")) == ONLY_ASKER
        assert await core.controls.press(press("stop")) is None
        reply = await answer
        steps = len(backend.steps)
        backend.allow(100)  # the batch could go on now; a stopped request does not
        await until(lambda: not backend.open_rows())
        await asyncio.sleep(0.05)
        # At most the step already under way when Stop came; the echo had 4 words to go.
        assert len(backend.steps) <= steps + 1
    assert reply is not None
    assert reply.text == "echo: one two three" + STOPPED_MARK
    assert reply.controls == ("regenerate", "up", "down")
    assert await history.recent(KEY) == [
        Turn("user", "ada", "one two three four five six seven"),
        Turn("assistant", "Bot", "echo: one two three" + STOPPED_MARK)]
    stored = await history.answer(KEY, "q1")
    assert stored is not None and stored.meta.finish == "stopped"
    assert await core.controls.press(press("stop")) == NOT_RUNNING


async def test_an_admin_may_stop_someone_elses_answer(settings: Settings,
                                                      history: HistoryStore) -> None:
    backend = EchoBatchBackend(steps=1)
    async with ModelWorker(lambda: backend, max_pending=4) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        answer = asyncio.create_task(core.handle(message("a b c d")))
        await until(lambda: backend.steps)
        assert await core.controls.press(press("stop", user="mod", admin=True)) is None
        reply = await answer
    assert reply is not None and reply.text.endswith(STOPPED_MARK)


async def test_stop_closes_the_stream_of_an_inference_server(settings: Settings,
                                                             history: HistoryStore) -> None:
    words = [f" w{i}" for i in range(200)]
    shown: list[str] = []

    async def progress(text: str) -> None:
        shown.append(text)

    async with FakeOpenAI() as server:
        server.script.append(Behaviour(pieces=words, delay=0.02))
        async with core_for(server, settings, history) as core:
            answer = asyncio.create_task(core.handle(message("talk"), on_progress=progress))
            await until(lambda: shown and len(shown[-1].split()) >= 3)
            assert await core.controls.press(press("stop")) is None
            reply = await answer
            await until(lambda: server.disconnects == 1)
    assert reply is not None and reply.text.endswith(STOPPED_MARK)
    kept = reply.text.removesuffix(STOPPED_MARK).split()
    assert 3 <= len(kept) < 200 and kept == [w.strip() for w in words[:len(kept)]]
    assert server.finished == 0
    assert (await history.recent(KEY))[-1] == Turn("assistant", "Bot", reply.text)


async def test_regenerate_replaces_the_stored_answer_with_a_sampled_one(
        settings: Settings, history: HistoryStore) -> None:
    backend = NumberedBackend()
    async with ModelWorker(lambda: backend, max_pending=4) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        await core.handle(message("earlier", message_id="q0"))
        first = await core.handle(message("the question"))
        await core.handle(message("a later message", message_id="q2"))
        assert first is not None and first.text == "answer 2"
        assert await core.controls.press(press("regenerate", user="bo")) == ONLY_ASKER
        shown: list[str] = []

        async def progress(text: str) -> None:
            shown.append(text)

        again = await core.controls.press(press("regenerate"), on_progress=progress)
    assert isinstance(again, Reply)
    assert again.text == "answer 4" and shown[-1] == "answer 4"
    assert again.controls == ("regenerate", "up", "down") and again.reply_to == "q1"
    assert [t.text for t in await history.recent(KEY)] == [
        "earlier", "answer 1", "the question", "answer 4", "a later message", "answer 3"]
    request = backend.requests[-1]
    assert request.sampling.temperature >= REGENERATE_TEMPERATURE
    # The prompt is the conversation as it was when the question was asked.
    assert [m["content"] for m in request.prompt[1:]] == ["earlier", "answer 1", "the question"]
    stored = await history.answer(KEY, "q1")
    assert stored is not None and stored.revision == 2


async def test_continue_goes_on_from_the_cut(settings: Settings, history: HistoryStore) -> None:
    backend = NumberedBackend()
    settings = with_settings(settings, max_new_tokens=2)  # "answer 1" fills the budget
    async with ModelWorker(lambda: backend, max_pending=4) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        first = await core.handle(message("the question"))
        assert first is not None and first.controls == ("regenerate", "continue", "up", "down")
        more = await core.controls.press(press("continue"))
    assert isinstance(more, Reply) and more.text == "answer 1 and more words"
    assert backend.requests[-1].prompt[-1] == {"role": "assistant", "content": "answer 1"}
    assert backend.requests[-1].sampling.temperature == settings.temperature
    assert (await history.recent(KEY))[-1] == Turn("assistant", "Bot", more.text)
    stored = await history.answer(KEY, "q1")
    assert stored is not None and stored.revision == 1  # the same answer, longer


async def test_continue_is_refused_for_an_answer_that_was_not_cut(
        core: ConversationCore) -> None:
    first = await core.handle(message("short"))
    assert first is not None and "continue" not in first.controls
    assert await core.controls.press(press("continue")) == NOT_CUT


async def test_presses_on_an_answer_that_is_gone_are_explained(core: ConversationCore) -> None:
    for control in ("regenerate", "continue", "up", "down"):
        assert await core.controls.press(press(control, answer_to="nope")) == GONE
    await core.handle(message("hello"))
    await core.history.forget_channel(KEY)
    assert await core.controls.press(press("regenerate")) == GONE


async def test_a_regeneration_can_be_stopped_and_not_pressed_twice(
        settings: Settings, history: HistoryStore) -> None:
    backend = EchoBatchBackend(steps=1)  # "echo: x" takes one step, then it waits
    async with ModelWorker(lambda: backend, max_pending=4) as worker:
        core = ConversationCore(worker=worker, history=history, settings=settings)
        await core.handle(message("x"))
        again = asyncio.create_task(core.controls.press(press("regenerate")))
        await until(lambda: (KEY, "q1") in core.inflight)
        assert await core.controls.press(press("regenerate")) == STILL_RUNNING
        assert await core.controls.press(press("stop")) is None
        stopped = await again
        backend.allow(100)
    assert isinstance(stopped, Reply) and stopped.text.endswith(STOPPED_MARK)
    assert (await history.recent(KEY))[-1] == Turn("assistant", "Bot", stopped.text)


async def test_a_vote_is_stored_once_and_changed_once(core: ConversationCore) -> None:
    await core.handle(message("hello"))
    notes = [await core.controls.press(press(c, user="bo")) for c in ("up", "up", "down")]
    assert notes[0] is not None and "👍" in notes[0] and "recorded" in notes[0]
    assert notes[1] is not None and "already" in notes[1]
    assert notes[2] is not None and "Changed" in notes[2] and "👎" in notes[2]
    await core.controls.press(press("up", user="cy"))  # anyone may vote, not only the asker
    records = await core.history.feedback_since(0)
    assert [(r.value, r.question, r.answer) for r in records] == [
        (-1, "hello", "echo: hello"), (1, "hello", "echo: hello")]
    assert records[0].persona == "assistant" and records[0].model == "fake"
    assert records[0].engine == "in-process (cpu, none)"
    counted = {(s.labels["value"], s.value) for m in core.metrics.registry.collect()
               if m.name == "bot_feedback" for s in m.samples if s.name.endswith("_total")}
    assert counted == {("up", 2.0), ("down", 1.0)}
    status = await core.handle(message("/status", message_id="s1"))
    assert status is not None and "Feedback here: 1 👍, 1 👎" in status.text


async def test_presses_work_after_a_restart(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "restart.sqlite3"
    for round_ in (1, 2):
        backend = NumberedBackend()
        async with SQLiteHistoryStore(path) as store, \
                ModelWorker(lambda b=backend: b, max_pending=4) as worker:
            core = ConversationCore(worker=worker, history=store, settings=settings)
            if round_ == 1:
                await core.handle(message("the question"))
                continue
            assert await core.controls.press(press("regenerate", user="bo")) == ONLY_ASKER
            again = await core.controls.press(press("regenerate"))
            assert isinstance(again, Reply) and again.text == "answer 1"  # a new process
            assert "👍" in str(await core.controls.press(press("up", user="bo")))
            assert [t.text for t in await store.recent(KEY)] == ["the question", "answer 1"]
            stored = await store.answer(KEY, "q1")
            assert stored is not None and stored.revision == 2


def test_a_prompt_ending_with_the_bots_words_is_continued(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from bot.engines.local.rendering import PromptRenderer

    renderer = PromptRenderer(AutoTokenizer.from_pretrained(tiny_model_dir), "Bot")
    asked = [{"role": "user", "content": "Count to five."}]
    fresh = renderer.render(asked)
    continued = renderer.render([*asked, {"role": "assistant", "content": "One, two,"}])
    assert continued.startswith(fresh) and continued.endswith("One, two,")
    assert fresh.rstrip().endswith("assistant")
