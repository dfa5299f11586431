"""The console adapter, driven through stdin/stdout as a user would."""

from __future__ import annotations

import io
from pathlib import Path

from bot.app import run_bot
from bot.config import Settings
from bot.core.conversation import ConversationCore
from bot.platforms.console.adapter import ConsoleAdapter
from bot.storage.sqlite import SQLiteHistoryStore
from bot.types import ChannelKey
from tests.fakes.backends import EchoBackend


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_piped_input_prints_only_the_answers(core: ConversationCore) -> None:
    out = io.StringIO()
    console = ConsoleAdapter(core, stdin=io.StringIO("hello bot\n\n/help\nbye now\n"),
                             stdout=out, user_name="ada")
    await console.start()
    lines = out.getvalue().splitlines()
    assert lines[0] == "echo: hello bot"
    assert lines[1].startswith("I'm Bot.")
    assert lines[-1] == "echo: bye now"


async def test_interactive_session_streams_with_prompts(core: ConversationCore) -> None:
    out = io.StringIO()
    console = ConsoleAdapter(core, stdin=TTY("one two\n"), stdout=out, user_name="ada")
    assert console.interactive
    await console.start()
    text = out.getvalue()
    assert "Chatting in console:local as ada" in text
    assert "ada> Bot> echo: one two\n" in text
    assert text.rstrip().endswith("Bye.")


async def test_history_survives_a_restart(settings: Settings) -> None:
    backend = EchoBackend()
    for line in ("my name is Ada", "what is my name?"):
        out = io.StringIO()
        await run_bot(settings, lambda: backend, console=True, channel="room",
                      stdin=io.StringIO(line), stdout=out)
    # The second run's prompt carried the first run's turns, read back from SQLite.
    assert backend.prompts[-1][1]["content"].endswith("my name is Ada")
    async with SQLiteHistoryStore(settings.history_db) as history:
        turns = await history.recent(ChannelKey("console", "room"))
    assert [t.text for t in turns] == ["my name is Ada", "echo: my name is Ada",
                                       "what is my name?", "echo: what is my name?"]
    assert Path(settings.history_db).is_file()


def test_sigterm_stops_the_bot_cleanly(tiny_model_dir: Path, tmp_path: Path) -> None:
    """What a Procfile host sends: the process exits 0 and the history file is closed."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MODEL": str(tiny_model_dir), "HISTORY_DB": str(tmp_path / "h.db"),
           "MAX_NEW_TOKENS": "8"}
    env.pop("DISCORD_TOKEN", None)
    env.pop("SLACK_BOT_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "console", "--env-file", str(tmp_path / "none.env")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=root, env=env)
    assert proc.stdin is not None and proc.stderr is not None and proc.stdout is not None
    proc.stdin.write("hello\n")
    proc.stdin.flush()
    for line in proc.stderr:  # wait until the model is up
        if line.startswith("Model ready"):
            break
    proc.stdout.readline()  # the answer to "hello"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    proc.stdin.close()
    proc.stdout.close()
    proc.stderr.close()
    assert not (tmp_path / "h.db-wal").exists() or (tmp_path / "h.db-wal").stat().st_size == 0
