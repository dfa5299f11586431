"""Run the real bot (`bot.__main__.main`) in its own process, talking to a fake Discord.

Why: crash safety can only be tested on a process that really dies (``kill -9``), so
`tests/test_crash_safety.py` starts the production entry point here, unchanged, with its
settings in the environment as an operator would give them. This file only does what a real
deployment gets from the network, plus two hooks for observing the run:

* ``FAKE_DISCORD_URL`` (``http://127.0.0.1:PORT``, required with ``DISCORD_TOKEN``):
  discord.py's REST base and gateway are pointed at the fake (what
  `tests.fakes.discord_server.patched_discord_endpoints` does in-process), and the wait for
  guilds before "ready" is shortened from 2 s.
* ``FAKE_SLACK_URL`` (``http://127.0.0.1:PORT/api/``, required with ``SLACK_BOT_TOKEN``):
  slack_sdk's Web API base (and so Socket Mode's ``apps.connections.open``) is the fake's.
* ``LAUNCHER_FINISHED_LOG`` (a file, optional): each time the Discord adapter has shown an
  answer in full (`LiveReply.finish` returned), the id of the answer's first message is
  appended, flushed at once, so a test can tell a finished reply from one cut off by a kill.
* ``LAUNCHER_PROMPT_LOG`` (a file, optional): every chat prompt the core builds is appended
  as one JSON line, flushed at once, so a test can see what context the model was given.

Run as ``python -m tests.bot_launcher [bot arguments]`` from the repository root; tests use
`BotProcess`, which does that with a clean environment and reads the bot's log as it runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def point_discord_at(base: str) -> None:
    """Send discord.py's REST calls and gateway connection to the fake at `base`."""
    import discord.state
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    Route.BASE = f"{base.rstrip('/')}/api/v10"
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(base.replace("http://", "ws://", 1).rstrip("/")
                                                + "/")
    original = discord.state.ConnectionState.__init__

    @functools.wraps(original)
    def init(self: discord.state.ConnectionState, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.guild_ready_timeout = 0.1  # the fake sends every guild at once

    discord.state.ConnectionState.__init__ = init  # type: ignore[method-assign]


def point_slack_at(api_url: str) -> None:
    """Send slack_sdk's Web API calls (bolt's client included) to the fake at `api_url`."""
    from slack_sdk.web.async_base_client import AsyncBaseClient

    original = AsyncBaseClient.__init__

    @functools.wraps(original)
    def init(self: AsyncBaseClient, *args: Any, **kwargs: Any) -> None:
        kwargs["base_url"] = api_url
        original(self, *args, **kwargs)

    AsyncBaseClient.__init__ = init  # type: ignore[method-assign]


def log_finished(path: str) -> None:
    """Append the first message id of every answer the Discord adapter finished to `path`."""
    from bot.platforms.discord import live_reply

    original = live_reply.LiveReply.finish

    @functools.wraps(original)
    async def finish(self: live_reply.LiveReply, text: str) -> None:
        await original(self, text)
        if self.messages and not self.failed:
            with open(path, "a", encoding="utf-8") as out:
                out.write(f"{self.messages[0].id}\n")

    live_reply.LiveReply.finish = finish  # type: ignore[method-assign]


def log_prompts(path: str) -> None:
    """Append each prompt the core builds to `path` as a JSON line (flushed at once)."""
    import bot.core.stable_prompt

    original: Callable[..., Any] = bot.core.stable_prompt.build_chat_prompt
    lock = threading.Lock()

    @functools.wraps(original)
    def build(*args: Any, **kwargs: Any) -> Any:
        prompt = original(*args, **kwargs)
        with lock, open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(prompt) + "\n")
        return prompt

    bot.core.stable_prompt.build_chat_prompt = build  # type: ignore[assignment]


def clean_environment(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any bot setting or token, plus `settings`.

    Why: a developer's shell (or CI) may hold real tokens or other settings; the bot under
    test must see exactly what the test gives it, and never reach a real platform.
    """
    from bot.config import Settings

    names = {f.name.upper() for f in dataclasses.fields(Settings)}
    env = {k: v for k, v in os.environ.items()
           if k not in names and not k.startswith(("DISCORD_", "SLACK_", "LAUNCHER_"))}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(settings)
    return env


class BotProcess:
    """The bot running in a child process; its stderr is collected line by line.

    Args:
        settings: environment variables for the bot (``FAKE_DISCORD_URL``, ``MODEL`` ...).
        args: arguments for ``python -m bot``; ``--env-file`` points at nothing, so a
            ``.env`` in the working tree is never read.
    """

    def __init__(self, settings: Mapping[str, str], args: tuple[str, ...] = ("run",)) -> None:
        self.env = clean_environment(settings)
        self.args = [*args, "--env-file", os.devnull]
        self.lines: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bot_launcher", *self.args, cwd=REPO, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    def tail(self, count: int = 40) -> str:
        """The last lines of the bot's log, for failure messages."""
        return "\n".join(self.lines[-count:])

    async def wait_for_line(self, needle: str, timeout: float) -> str:
        """Wait until a log line contains `needle`; fail early if the process ends."""
        async with asyncio.timeout(timeout):
            while True:
                found = next((line for line in self.lines if needle in line), None)
                if found is not None:
                    return found
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"the bot exited before logging {needle!r}:\n"
                                         f"{self.tail()}")
                self._changed.clear()
                await self._changed.wait()

    async def kill(self) -> int:
        """SIGKILL: no handler runs, nothing is flushed; returns the exit status."""
        assert self._proc is not None
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGKILL)
        return await self.wait()

    async def terminate(self, timeout: float) -> int:
        """SIGTERM, as a process manager sends; returns the exit status."""
        assert self._proc is not None
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            return await self.wait()

    async def wait(self) -> int:
        """Wait for the exit and for the end of its log."""
        assert self._proc is not None and self._reader is not None
        code = await self._proc.wait()
        await self._reader
        return code

    async def close(self) -> None:
        """Make sure the process is gone (SIGKILL if it still runs)."""
        if self._proc is not None and self._reader is not None:
            await self.kill()


def main(argv: list[str]) -> int:
    base = os.environ.get("FAKE_DISCORD_URL")
    slack = os.environ.get("FAKE_SLACK_URL")
    if not (base or slack) or (os.environ.get("DISCORD_TOKEN") and not base):
        print("FAKE_DISCORD_URL is not set; refusing to connect to the real Discord",
              file=sys.stderr)
        return 2
    if os.environ.get("SLACK_BOT_TOKEN") and not slack:
        print("FAKE_SLACK_URL is not set; refusing to connect to the real Slack",
              file=sys.stderr)
        return 2
    if base:
        point_discord_at(base)
    if slack:
        point_slack_at(slack)
    if finished_log := os.environ.get("LAUNCHER_FINISHED_LOG"):
        log_finished(finished_log)
    if prompt_log := os.environ.get("LAUNCHER_PROMPT_LOG"):
        log_prompts(prompt_log)
    from bot.__main__ import main as bot_main

    return bot_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
