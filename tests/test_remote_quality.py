"""The answer-quality guards on the remote engine (the fake OpenAI server): the repetition
penalty reaches the server, and a looping stream is stopped by the core and trimmed."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.remote.engine import RemoteConfig, RemoteEngine
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, IncomingMessage
from tests.fakes.openai_server import Behaviour, FakeOpenAI


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=("small",)) as server:
        yield server


async def test_the_repetition_penalty_is_sent_under_both_servers_names(
        fake: FakeOpenAI) -> None:
    prompt = [{"role": "user", "content": "hi"}]
    async with RemoteEngine(RemoteConfig(fake.base_url)) as engine:
        await engine.submit(GenerationRequest(prompt, SamplingParams(
            temperature=0.0, repetition_penalty=1.15))).result()
        await engine.submit(GenerationRequest(prompt, SamplingParams(temperature=0.0))).result()
    penalised, plain = fake.requests
    assert penalised["repetition_penalty"] == penalised["repeat_penalty"] == 1.15
    assert "repetition_penalty" not in plain and "repeat_penalty" not in plain


async def test_a_looping_remote_reply_is_stopped_and_trimmed(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    sentence = "It's a great way to reduce your carbon footprint. "
    fake.script.append(Behaviour(pieces=[sentence] * 400, delay=0.002))
    async with RemoteEngine(RemoteConfig(fake.base_url)) as engine:
        core = ConversationCore(worker=engine, history=history,
                                settings=dataclasses.replace(settings, max_new_tokens=2000))
        reply = await core.handle(IncomingMessage(
            key=ChannelKey("discord", "general"), message_id="m1", author_id="u1",
            author_name="ada", text="Write a short article about walking."))
        await fake.wait_for(lambda: fake.disconnects == 1)
    assert reply is not None and reply.text == sentence.strip()
    assert fake.finished == 0  # the stream was closed, not read to its end
