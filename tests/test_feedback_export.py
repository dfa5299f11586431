"""``python -m bot.feedback export``: the votes as JSON lines, run as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bot.core.conversation import ConversationCore
from bot.types import ChannelKey, IncomingMessage, Press

REPO = Path(__file__).resolve().parent.parent
KEY = ChannelKey("slack", "C1", "1700000000.000100")


def run_export(*args: str, history_db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HISTORY_DB": str(history_db)}
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "bot.feedback", "export", *args,
                           "--env-file", os.devnull], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


async def test_export_writes_the_rated_answers_as_json_lines(core: ConversationCore) -> None:
    for qid, text in (("q1", "What is the capital of France?"), ("q2", "unrated")):
        await core.handle(IncomingMessage(KEY, qid, "U-ADA", "ada", text))
    await core.controls.press(Press(KEY, "q1", "up", "U-BO", "bo"))
    await core.controls.press(Press(KEY, "q1", "down", "U-CY", "cy"))
    done = run_export("--since", "1", history_db=core.settings.history_db)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["vote"], x["question"], x["answer"]) for x in lines] == [
        ("up", "What is the capital of France?", "echo: What is the capital of France?"),
        ("down", "What is the capital of France?", "echo: What is the capital of France?")]
    first = lines[0]
    assert (first["persona"], first["model"], first["engine"]) == (
        "assistant", "fake", "in-process (cpu, none)")
    assert (first["platform"], first["channel"], first["thread"]) == ("slack", "C1", KEY.thread_id)
    assert first["revision"] == 1 and first["time"].endswith("+00:00")
    assert "U-BO" not in done.stdout  # who voted is left out
    assert "2 rated answer(s)" in done.stderr


def test_export_explains_a_missing_history_file_and_bad_days(tmp_path: Path) -> None:
    missing = run_export("--since", "7", history_db=tmp_path / "none.sqlite3")
    assert missing.returncode == 2 and "HISTORY_DB" in missing.stderr
    assert not (tmp_path / "none.sqlite3").exists()
    bad = run_export("--since", "0", history_db=tmp_path / "none.sqlite3")
    assert bad.returncode == 2 and "--since" in bad.stderr
