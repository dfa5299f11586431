"""The remote engine against a fake OpenAI-compatible server, and through the core.

Why: the remote engine is what users of llama.cpp, vLLM, SGLang and Ollama run; its
streaming, cancel, timeouts and fault replies must behave like the in-process engine's, and
the server must see what a real one would (a closed stream when a request is cancelled). The
fake (`tests.fakes.openai_server`) plays each fault on the wire; `tests/test_llamacpp.py`
repeats the essentials on a real llama.cpp server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.config import Settings
from bot.core.answering import SERVER_ERROR_MARK, THINKING, TIMEOUT_MARK
from bot.core.conversation import ConversationCore
from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.remote.engine import RemoteConfig, RemoteEngine
from bot.errors import BusyError, ConfigError, UnavailableError
from bot.ops.server import OpsServer
from bot.storage.interface import ChannelSettings, HistoryStore
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey, IncomingMessage, Turn
from tests.fakes.openai_server import Behaviour, FakeOpenAI, context_error, fake_tokens, render

REPO = Path(__file__).resolve().parent.parent
KEY = ChannelKey("discord", "general")
SYSTEM = {"role": "system", "content": "You are terse."}


def ask(text: str) -> GenerationRequest:
    return GenerationRequest([SYSTEM, {"role": "user", "content": text}],
                             SamplingParams(max_new_tokens=64, temperature=0.0))


def message(text: str, *, message_id: str = "m1", admin: bool = False,
            key: ChannelKey = KEY, command: str | None = None) -> IncomingMessage:
    return IncomingMessage(key=key, message_id=message_id, author_id="id-ada",
                           author_name="ada", text=text, is_admin=admin, command=command,
                           args=text if command else "")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=("small", "large")) as server:
        yield server


@contextlib.asynccontextmanager
async def engine_for(fake: FakeOpenAI, **changes: object) -> AsyncIterator[RemoteEngine]:
    config = dataclasses.replace(RemoteConfig(fake.base_url, reconnect_min=0.05,
                                              reconnect_max=0.1), **changes)  # type: ignore[arg-type]
    async with RemoteEngine(config) as engine:
        yield engine


@contextlib.asynccontextmanager
async def core_for(fake: FakeOpenAI, settings: Settings, history: HistoryStore,
                   **changes: object) -> AsyncIterator[ConversationCore]:
    async with engine_for(fake, **changes) as engine:
        yield ConversationCore(worker=engine, history=history, settings=settings)


async def collect(handle: object) -> list[str]:
    return [piece async for piece in handle]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------ discovery, streaming


async def test_streams_pieces_and_learns_models_context_and_exact_counts(
        fake: FakeOpenAI) -> None:
    async with engine_for(fake) as engine:
        assert engine.running and engine.info.name == "small"
        assert engine.info.context_tokens == 2048 and engine.info.dtype == "remote"
        handle = engine.submit(ask("hello there, friend"))
        pieces = await collect(handle)
        completion = await handle.result()
        counter = engine.token_counter
        prompt = [SYSTEM, {"role": "user", "content": "a b, c"}]
        counted = await asyncio.to_thread(counter.count_prompt, prompt)
        text_count = await asyncio.to_thread(counter.count_text, "one two three.")
        cut = await asyncio.to_thread(counter.truncate_text, "one two three four", 2)
    assert "".join(pieces) == completion.text == "Echo: hello there, friend"
    assert len(pieces) > 3 and completion.stop_reason == "done"
    assert completion.tokens == len(pieces)
    assert counted == len(fake_tokens(render(prompt)))  # exact, as the server counts
    assert text_count == 4 and cut == "one two"
    body = fake.requests[0]
    assert body["stream"] is True and body["model"] == "small"
    assert body["messages"][-1]["content"] == "hello there, friend"
    assert (body["max_tokens"], body["temperature"]) == (64, 0.0)


async def test_vllm_and_plain_servers(settings: Settings) -> None:
    async with FakeOpenAI(flavor="vllm", n_ctx=4096) as vllm, engine_for(vllm) as engine:
        assert engine.info.context_tokens == 4096
        prompt = [SYSTEM, {"role": "user", "content": "x y"}]
        assert await asyncio.to_thread(engine.token_counter.count_prompt, prompt) == \
            len(fake_tokens(render(prompt)))
    async with FakeOpenAI(flavor="plain") as plain, \
            engine_for(plain, context_tokens=1234) as engine:
        assert engine.info.context_tokens == 1234  # CONTEXT_TOKENS: the server does not say
        text = "What is the capital of France?"
        estimate = await asyncio.to_thread(engine.token_counter.count_text, text)
        assert estimate >= len(fake_tokens(text))  # an estimate errs on the high side
        handle = engine.submit(ask("hi"))
        assert (await handle.result()).text == "Echo: hi"


async def test_keepalive_comments_are_ignored(fake: FakeOpenAI) -> None:
    fake.script.append(Behaviour(pieces=["Hello", " world"], keepalive=True))
    async with engine_for(fake) as engine:
        assert (await engine.submit(ask("x")).result()).text == "Hello world"


async def test_api_key_is_sent_as_bearer_and_never_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-SECRET-remote-9f3a"
    async with FakeOpenAI(api_key=secret) as server:
        with pytest.raises(ConfigError, match="LLM_API_KEY"):
            async with engine_for(server, api_key="sk-wrong"):
                pass
        async with engine_for(server, api_key=secret) as engine:
            assert (await engine.submit(ask("hi")).result()).text == "Echo: hi"
            assert secret not in repr(engine._client)
    assert server.auth_headers == [f"Bearer {secret}"]
    assert secret not in caplog.text and "sk-wrong" not in caplog.text
    assert "***" in repr(Settings(llm_api_key=secret)) and secret not in repr(
        Settings(llm_api_key=secret))


# ------------------------------------------------------------------------ configuration errors


async def test_missing_v1_is_one_clear_configuration_error(fake: FakeOpenAI) -> None:
    base = fake.base_url.removesuffix("/v1")
    with pytest.raises(ConfigError) as caught:
        async with engine_for(fake, base_url=base):
            pass
    text = str(caught.value)
    assert text.startswith("LLM_BASE_URL: expected")
    assert f"GET {base}/models answered 404" in text and f"LLM_BASE_URL={base}/v1" in text
    with pytest.raises(ConfigError, match="LLM_MODEL.*small, large"):
        async with engine_for(fake, model="missing"):
            pass


def test_bad_base_url_stops_start_up_with_one_line(fake_port: int) -> None:
    for url, needle in ((f"http://127.0.0.1:{fake_port}", "LLM_BASE_URL"),
                        ("ftp://example", "LLM_BASE_URL: expected an http")):
        result = subprocess.run(
            [sys.executable, "-m", "bot", "console", "--env-file", "/dev/null"],
            input="", capture_output=True, text=True, timeout=60, cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "LLM_BASE_URL": url, "HISTORY_DB": ":memory:",
                 "PYTHONPATH": str(REPO)})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert lines[-1].startswith(f"Configuration error: {needle}"), result.stderr
        assert "Traceback" not in result.stderr


@pytest.fixture
def fake_port() -> Iterator[int]:
    """A plain HTTP server on a free port that answers 404 to everything (no /v1 there)."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]  # type: ignore[misc]
    server.shutdown()
    server.server_close()
    thread.join()


def test_bot_with_llm_base_url_never_imports_torch(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, io, sys
        from bot.app import run_bot
        from bot.config import Settings
        from tests.fakes.openai_server import FakeOpenAI

        async def main():
            async with FakeOpenAI() as fake:
                settings = Settings(llm_base_url=fake.base_url,
                                    history_db={str(tmp_path / 'h.db')!r})
                out = io.StringIO()
                await run_bot(settings, None, console=True, stdin=io.StringIO("hello\\n"),
                              stdout=out)
                print(out.getvalue())

        asyncio.run(main())
        print("torch loaded:", "torch" in sys.modules, "transformers" in sys.modules)
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin",
                                                       "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "Echo: " in result.stdout and "hello" in result.stdout
    assert "torch loaded: False False" in result.stdout


# ------------------------------------------------------------------------ faults, through the core


async def test_reasoning_is_never_shown_or_stored_and_thinking_is_shown(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    fake.script.append(Behaviour(pieces=["<think>inline", " plan</think>", "Paris", "."],
                                 reasoning=["first ", "I think"], delay=0.02))
    seen: list[str] = []

    async def progress(text: str) -> None:
        seen.append(text)

    async with core_for(fake, settings, history) as core:
        reply = await core.handle(message("capital of France?"), on_progress=progress)
    assert reply is not None and reply.text == "Paris."
    assert seen[0] == THINKING and seen[-1] == "Paris."
    assert all("think" not in s.lower() or s == THINKING for s in seen)
    stored = await history.recent(KEY)
    assert stored[-1] == Turn("assistant", "Bot", "Paris.")


async def test_busy_server_gets_the_busy_reply_and_history_stays(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    fake.script.extend([Behaviour(status=429), Behaviour(status=503)])
    async with core_for(fake, settings, history) as core:
        first = await core.handle(message("one", message_id="m1"))
        second = await core.handle(message("two", message_id="m2"))
        third = await core.handle(message("three", message_id="m3"))
    assert first is not None and second is not None and third is not None
    assert str(BusyError()) == first.text == second.text
    # Nothing was lost: the third prompt holds all three (one person: no name prefixes).
    assert fake.requests[-1]["messages"][-1]["content"] == "one\ntwo\nthree"
    assert [t.text for t in await history.recent(KEY)][:3] == ["one", "two", "three"]


async def test_context_too_long_is_retried_once_with_a_shorter_history(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    for i in range(6):
        await history.add(KEY, Turn("user", "bob", f"line {i}"))
        await history.add(KEY, Turn("assistant", "Bot", f"answer {i}"))
    fake.script.append(Behaviour(status=400, error_body=context_error(5000, 2048)))
    async with core_for(fake, settings, history) as core:
        reply = await core.handle(message("and now?"))
    assert reply is not None and reply.text.startswith("Echo: ada: and now?")
    first, retry = fake.requests
    assert len(retry["messages"]) < len(first["messages"])
    assert retry["messages"][0] == first["messages"][0]  # the system prompt stays
    assert retry["messages"][-1] == first["messages"][-1]
    assert len(await history.recent(KEY)) == 14


async def test_error_or_break_mid_answer_keeps_the_partial_answer_with_a_note(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    fake.script.extend([Behaviour(pieces=["The", " answer", " is"], error_after=2),
                        Behaviour(pieces=["Half", " of", " it"], break_after=2)])
    async with core_for(fake, settings, history) as core:
        errored = await core.handle(message("q1", message_id="m1"))
        broken = await core.handle(message("q2", message_id="m2"))
        assert core.worker.running or True
    assert errored is not None and errored.text == "The answer" + SERVER_ERROR_MARK
    assert broken is not None and broken.text == "Half of" + SERVER_ERROR_MARK
    texts = [t.text for t in await history.recent(KEY)]
    assert texts == ["q1", "The answer" + SERVER_ERROR_MARK, "q2", "Half of" + SERVER_ERROR_MARK]


async def test_break_before_any_text_says_unreachable(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    fake.script.append(Behaviour(pieces=["never"], break_after=0))
    async with core_for(fake, settings, history) as core:
        reply = await core.handle(message("q"))
    assert reply is not None and reply.text == str(UnavailableError())
    assert [t.text for t in await history.recent(KEY)] == ["q"]


async def test_a_stall_times_out_keeps_the_partial_answer_and_closes_the_stream(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    fake.script.append(Behaviour(pieces=["Slow", " start", " never"], stall_after=2))
    async with core_for(fake, settings, history, timeout=0.5) as core:
        reply = await core.handle(message("q"))
        await fake.wait_for(lambda: fake.disconnects == 1, message="stream never closed")
    assert reply is not None and reply.text == "Slow start" + TIMEOUT_MARK


# ------------------------------------------------------------------------ queue, cancel, shutdown


async def test_queue_bounds_concurrency_and_a_cancelled_request_closes_its_stream(
        fake: FakeOpenAI) -> None:
    gate = asyncio.Event()
    fake.script.append(Behaviour(pieces=["a", "b"], stall_after=1))
    async with engine_for(fake, max_concurrency=1, max_queue=1) as engine:
        running = engine.submit(ask("first"))
        first_piece = await anext(aiter(running))
        queued = engine.submit(ask("second"))
        assert engine.queue_depth == 2 and running.started and not queued.started
        with pytest.raises(BusyError):
            engine.submit(ask("third"))
        queued.cancel()  # a deleted message: dropped before it reaches the server
        running.cancel()
        await fake.wait_for(lambda: fake.disconnects == 1, message="stream never closed")
        await fake.wait_for(lambda: engine.queue_depth == 0)
        assert len(fake.requests) == 1
        fake.script.append(Behaviour(pieces=["ok"], gate=gate))
        later = engine.submit(ask("later"))
        gate.set()
        assert (await later.result()).text == "ok"
    assert first_piece == "a"


async def test_concurrency_reaches_the_server(fake: FakeOpenAI) -> None:
    gate = asyncio.Event()
    fake.script.extend(Behaviour(pieces=[f"r{i}"], gate=gate) for i in range(4))
    async with engine_for(fake, max_concurrency=3) as engine:
        handles = [engine.submit(ask(f"q{i}")) for i in range(4)]
        await fake.wait_for(lambda: len(fake.requests) == 3)
        assert engine.queue_depth == 4
        gate.set()
        texts = [(await h.result()).text for h in handles]
    assert sorted(texts) == ["r0", "r1", "r2", "r3"]


async def test_shutdown_ends_streams_with_partial_text_and_fails_queued(
        fake: FakeOpenAI) -> None:
    fake.script.append(Behaviour(pieces=["part", "ial", "never"], stall_after=2))
    engine = RemoteEngine(RemoteConfig(fake.base_url, max_concurrency=1))
    await engine.start()
    running = engine.submit(ask("one"))
    queued = engine.submit(ask("two"))
    await fake.wait_for(lambda: fake.active == 1)
    await asyncio.sleep(0.1)
    await engine.stop()
    completion = await running.result()
    assert (completion.text, completion.stop_reason) == ("partial", "shutdown")
    with pytest.raises(Exception, match="shutting down"):
        await queued.result()
    with pytest.raises(BusyError):
        engine.submit(ask("three"))


# ------------------------------------------------------------------------ unreachable, reconnect


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_at_start_then_reconnects_by_itself(
        settings: Settings, history: HistoryStore) -> None:
    port = free_port()
    config = RemoteConfig(f"http://127.0.0.1:{port}/v1", reconnect_min=0.05, reconnect_max=0.1)
    async with RemoteEngine(config) as engine:
        core = ConversationCore(worker=engine, history=history, settings=settings)
        ops = OpsServer(core, [])
        assert not engine.running
        code, body = ops.health()
        assert code == 503 and body["model"]["loaded"] is False
        reply = await core.handle(message("anyone there?"))
        assert reply is not None and reply.text == str(UnavailableError())
        server = FakeOpenAI()
        await server.start(port)
        try:
            await server.wait_for(lambda: engine.running, message="never reconnected")
            assert ops.health()[0] == 200 and engine.info.name == "fake-model"
            again = await core.handle(message("now?", message_id="m2"))
            assert again is not None and again.text == "Echo: anyone there?\nnow?"
            assert server.requests[-1]["messages"][-1]["content"] == \
                "anyone there?\nnow?"  # the first question was kept
            await server.stop()  # the server goes away again mid-life
            lost = await core.handle(message("still?", message_id="m3"))
            assert lost is not None and lost.text == str(UnavailableError())
            assert not engine.running
            await server.start(port)
            await server.wait_for(lambda: engine.running, message="never reconnected")
        finally:
            await server.stop()
    assert [t.text for t in await history.recent(KEY)][0] == "anyone there?"


# ------------------------------------------------------------------------ /model


async def test_model_command_lists_and_admins_choose_per_channel(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    other = ChannelKey("discord", "other")
    async with core_for(fake, settings, history) as core:
        listing = await core.handle(message("", command="model"))
        denied = await core.handle(message("large", command="model", message_id="m2"))
        unknown = await core.handle(message("huge", command="model", admin=True,
                                            message_id="m3"))
        chosen = await core.handle(message("LARGE", command="model", admin=True,
                                           message_id="m4"))
        await core.handle(message("hi", message_id="m5"))
        await core.handle(message("hi", message_id="m6", key=other))
        status = await core.handle(message("", command="status", message_id="m7"))
        back = await core.handle(message("default", command="model", admin=True,
                                         message_id="m8"))
        await core.handle(message("hi again", message_id="m9"))
    assert listing is not None and "**small** (the default)" in listing.text
    assert "• large" in listing.text
    assert denied is not None and "Only members who can manage" in denied.text
    assert unknown is not None and "does not serve 'huge'" in unknown.text
    assert chosen is not None and chosen.text == "This channel now uses the model **large**."
    assert status is not None and "Model: large" in status.text
    assert back is not None and "default model, **small**" in back.text
    assert [r["model"] for r in fake.requests] == ["large", "small", "small"]
    assert (await history.channel_settings(KEY)).model is None


async def test_a_model_that_disappears_gets_a_useful_reply(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    await history.save_channel_settings(KEY, ChannelSettings(model="gone"))
    fake.script.append(Behaviour(status=404, error_body={"error": {"message": "no such model"}}))
    async with core_for(fake, settings, history) as core:
        reply = await core.handle(message("hi"))
    assert reply is not None and "/model" in reply.text and "'gone'" in reply.text


async def test_channel_model_survives_and_old_files_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)  # a file from before the model column existed
    db.executescript("""
        CREATE TABLE channel_settings (platform TEXT NOT NULL, channel_id TEXT NOT NULL,
            persona TEXT, system_prompt TEXT, thread_replies INTEGER NOT NULL DEFAULT 1,
            enabled INTEGER NOT NULL DEFAULT 1, updated_at REAL NOT NULL,
            PRIMARY KEY (platform, channel_id));
        INSERT INTO channel_settings VALUES ('discord', 'general', 'writer', NULL, 0, 1, 0);
    """)
    db.close()
    async with SQLiteHistoryStore(path) as store:
        old = await store.channel_settings(KEY)
        assert (old.persona, old.thread_replies, old.model) == ("writer", False, None)
        await store.save_channel_settings(KEY, dataclasses.replace(old, model="large"))
    async with SQLiteHistoryStore(path) as store:
        assert (await store.channel_settings(KEY)).model == "large"


async def test_model_slash_commands_on_discord_and_slack(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    from tests.fakes.discord_server import FakeDiscord, Perm
    from tests.fakes.slack_server import FakeSlack
    from tests.test_discord_adapter import channel, serving, wait_done
    from tests.test_slack_adapter import ALICE, BOB, BOSS, CHANNEL, running

    slack_settings = dataclasses.replace(settings, slack_bot_token="xoxb-test",
                                         slack_app_token="xapp-test")
    admin = Perm.VIEW_CHANNEL | Perm.MANAGE_MESSAGES
    async with core_for(fake, settings, history) as core:
        async with FakeDiscord() as discord_fake, serving(discord_fake, core, settings):
            listing = await wait_done(await discord_fake.invoke_slash_command("model"))
            chosen = await wait_done(await discord_fake.invoke_slash_command(
                "model", {"name": "large"}, member_permissions=admin))
            key = ChannelKey("discord", str(channel(discord_fake).id))
        async with FakeSlack() as slack_fake:
            slack_fake.add_channel(CHANNEL, name="general", creator=BOB)
            slack_fake.add_user(ALICE, "alice")
            slack_fake.add_user(BOSS, "boss", is_admin=True)
            async with running(core, slack_settings, slack_fake):
                await slack_fake.send_slash_command("/model", "large", CHANNEL, ALICE)
                await slack_fake.send_slash_command("/model", "large", CHANNEL, BOSS)
                texts = await slack_fake.wait_for(lambda: [
                    str(r["body"].get("text", "")) for r in slack_fake.response_posts][-2:]
                    if len(slack_fake.response_posts) >= 2 else None)
    assert "**small** (the default)" in listing and "• large" in listing
    assert chosen == "This channel now uses the model **large**."
    assert (await history.channel_settings(key)).model == "large"
    assert sorted(texts) == ["Only members who can manage messages here may change the model.",
                             "This channel now uses the model *large*."]  # in either order
    assert (await history.channel_settings(ChannelKey("slack", CHANNEL))).model == "large"


async def test_prompt_beginning_stays_stable_across_turns_for_the_prefix_cache(
        fake: FakeOpenAI, settings: Settings, history: HistoryStore) -> None:
    small = dataclasses.replace(settings, max_new_tokens=16, rate_limit_per_minute=0)
    async with FakeOpenAI(n_ctx=400) as server, core_for(server, small, history) as core:
        for i in range(20):
            await core.handle(message(f"message number {i} with a few more words in it",
                                      message_id=f"m{i}"))
        prompts = [r["messages"] for r in server.requests]
    assert len(prompts) == 20
    assert all(len(fake_tokens(render(p))) <= 400 - 16 for p in prompts)  # always fits
    assert len(prompts[-1]) < 2 * 20  # the history was cut
    firsts = [p[1]["content"] for p in prompts[1:]]  # the first history line of each prompt
    changes = sum(a != b for a, b in zip(firsts, firsts[1:], strict=False))
    # Cut with headroom, the beginning moves now and then, not on every turn once full.
    assert 1 <= changes <= 6, firsts
