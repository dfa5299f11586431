"""The health and metrics endpoint, over real HTTP on 127.0.0.1, and its wiring in `run_bot`."""

from __future__ import annotations

import asyncio
import io
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import run_bot
from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.engines.worker import ModelWorker
from bot.errors import ConfigError
from bot.ops.server import OpsServer
from bot.platforms.console.adapter import ConsoleAdapter
from bot.platforms.discord.adapter import DiscordAdapter
from bot.platforms.slack.app import SlackAdapter
from bot.storage.interface import HistoryStore
from bot.types import ChannelKey, IncomingMessage
from tests.conftest import with_settings
from tests.fakes.backends import EchoBackend
from tests.fakes.discord_server import FakeDiscord, patched_discord_endpoints
from tests.fakes.slack_server import FakeSlack

KEY = ChannelKey("discord", "general")


@dataclass
class FakeAdapter:
    platform: str
    connected: bool = True


def message(text: str, message_id: str) -> IncomingMessage:
    return IncomingMessage(key=KEY, message_id=message_id, author_id="id-ada",
                           author_name="ada", text=text, addressed=True)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def get(http: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str, str]:
    async with http.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def get_json(http: aiohttp.ClientSession, port: int) -> tuple[int, Any]:
    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
        return response.status, await response.json()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the condition did not become true in time")
        await asyncio.sleep(0.02)


async def test_healthz_is_ok_when_the_model_is_loaded_and_all_platforms_connected(
        core: ConversationCore, http: aiohttp.ClientSession) -> None:
    adapters = [FakeAdapter("discord"), FakeAdapter("slack")]
    now = [100.0]
    async with OpsServer(core, adapters, host="127.0.0.1", port=0,
                         clock=lambda: now[0]) as ops:
        now[0] = 142.5
        status, body = await get_json(http, ops.bound_port)
    assert status == 200
    assert body == {
        "status": "ok",
        "model": {"loaded": True, "name": core.worker.info.name,
                  "device": core.worker.info.device},
        "platforms": {"discord": {"connected": True}, "slack": {"connected": True}},
        "queue_depth": 0,
        "uptime_s": 42.5,
    }


async def test_healthz_is_503_until_every_platform_is_up_and_when_one_drops(
        core: ConversationCore, http: aiohttp.ClientSession) -> None:
    discord, slack = FakeAdapter("discord"), FakeAdapter("slack", connected=False)
    async with OpsServer(core, [discord, slack], host="127.0.0.1", port=0) as ops:
        starting = await get_json(http, ops.bound_port)
        slack.connected = True
        up = await get_json(http, ops.bound_port)
        discord.connected = False
        degraded = await get_json(http, ops.bound_port)
    assert starting[0] == 503 and starting[1]["status"] == "starting"
    assert starting[1]["platforms"]["slack"] == {"connected": False}
    assert up[0] == 200 and up[1]["status"] == "ok"
    assert degraded[0] == 503 and degraded[1]["status"] == "degraded"
    assert degraded[1]["platforms"] == {"discord": {"connected": False},
                                        "slack": {"connected": True}}


async def test_healthz_reports_a_model_not_loaded(history: HistoryStore,
                                                  settings: Settings) -> None:
    worker = ModelWorker(EchoBackend)  # never started: no model
    core = ConversationCore(worker=worker, history=history, settings=settings)
    code, body = OpsServer(core, [FakeAdapter("discord")]).health()
    assert code == 503
    assert body["status"] == "starting"
    assert body["model"] == {"loaded": False, "name": None, "device": None}


async def test_metrics_in_prometheus_text_format(core: ConversationCore, history: HistoryStore,
                                                 http: aiohttp.ClientSession) -> None:
    await core.handle(message("hello there", "m1"))
    await core.handle(message("/help", "m2"))
    stored = (await history.stats()).turns
    assert stored >= 2
    async with OpsServer(core, [FakeAdapter("discord")], host="127.0.0.1", port=0) as ops:
        status, content_type, text = await get(http, ops.bound_port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    lines = text.splitlines()
    assert 'bot_requests_total{outcome="answered",platform="discord"} 1.0' in lines
    assert 'bot_requests_total{outcome="command",platform="discord"} 1.0' in lines
    assert "bot_time_to_first_token_seconds_count 1.0" in lines
    assert 'bot_generation_seconds_bucket{le="+Inf"} 1.0' in lines
    assert "bot_generation_seconds_count 1.0" in lines
    assert "bot_queue_depth 0.0" in lines
    assert "# TYPE bot_tokens_per_second gauge" in lines
    assert f"bot_history_messages {float(stored)}" in lines


async def test_a_taken_port_is_a_config_error_naming_ops_port(core: ConversationCore) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            await OpsServer(core, [], host="127.0.0.1", port=port).start()
    assert caught.value.variable == "OPS_PORT"
    assert str(caught.value).startswith("OPS_PORT: expected a port free on OPS_HOST=127.0.0.1 (")


def test_ops_settings() -> None:
    assert Settings.from_env({}).ops_port == 0  # off by default
    assert Settings.from_env({"OPS_PORT": ""}).ops_port == 0
    settings = Settings.from_env({"OPS_PORT": "9090", "OPS_HOST": "127.0.0.1"})
    assert (settings.ops_port, settings.ops_host) == (9090, "127.0.0.1")
    assert Settings.from_env({}).ops_host == "0.0.0.0"
    for bad in ("http", "-1", "65536", "90.5"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"OPS_PORT": bad})
        assert str(caught.value) == (
            f"OPS_PORT: expected a whole number between 0 and 65535 (got {bad!r})")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_run_bot_serves_healthz_while_the_console_runs(
        settings: Settings, http: aiohttp.ClientSession) -> None:
    """The console reads a pipe, so the bot runs until the test closes its write end."""
    port = free_port()
    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "r")
    out = io.StringIO()
    bot = asyncio.create_task(run_bot(
        with_settings(settings, ops_port=port, ops_host="127.0.0.1"), EchoBackend,
        console=True, stdin=stdin, stdout=out))

    async def healthy() -> bool:
        assert not bot.done(), bot
        try:
            status, body = await get_json(http, port)
        except aiohttp.ClientConnectionError:
            return False
        return status == 200 and body["platforms"] == {"console": {"connected": True}}

    async def answered() -> bool:
        return "echo: hello ops" in out.getvalue()

    try:
        await eventually(healthy)
        os.write(write_end, b"hello ops\n")
        await eventually(answered)
        _, _, metrics = await get(http, port, "/metrics")
    finally:
        os.close(write_end)  # end of input: the console, then the bot, stop
        try:
            await asyncio.wait_for(bot, timeout=30)
        finally:
            stdin.close()
    assert 'bot_requests_total{outcome="answered",platform="console"} 1.0' in metrics
    assert "bot_history_messages 2.0" in metrics.splitlines()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_json(http, port)  # the endpoint stopped with the bot


# ---------------------------------------------------------------------- adapters' `connected`


async def test_console_is_connected_while_it_reads(core: ConversationCore) -> None:
    seen: list[bool] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            seen.append(console.connected)
            return super().write(text)

    console = ConsoleAdapter(core, stdin=io.StringIO("hi\n"), stdout=Recording())
    assert not console.connected
    await console.start()
    assert seen == [True] and not console.connected


async def test_discord_is_connected_between_ready_and_stop(core: ConversationCore,
                                                           settings: Settings) -> None:
    async with FakeDiscord() as fake:
        adapter = DiscordAdapter(core, with_settings(settings, discord_token=fake.token),
                                 shutdown_grace=1.0)
        assert not adapter.connected
        with patched_discord_endpoints(fake):
            adapter.client._connection.guild_ready_timeout = 0.05
            task = asyncio.create_task(adapter.start())
            try:
                await fake.wait_for(lambda: adapter.connected or task.done(),
                                    message="the adapter did not connect")
                assert not task.done()
            finally:
                await adapter.stop()
                await asyncio.wait_for(task, 5)
        assert not adapter.connected


async def test_slack_is_connected_between_ready_and_stop(core: ConversationCore,
                                                         settings: Settings) -> None:
    async with FakeSlack() as fake:
        client = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)
        adapter = SlackAdapter(core, with_settings(settings, slack_bot_token="xoxb-test",
                                                   slack_app_token="xapp-test"),
                               client=client, drain_timeout=1.0)
        assert not adapter.connected
        task = asyncio.create_task(adapter.start())
        try:
            await fake.wait_for(lambda: adapter.connected or task.done())
            assert not task.done()
        finally:
            await adapter.stop()
            await asyncio.wait_for(task, 5)
        assert not adapter.connected
