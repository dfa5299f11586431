"""The console's /attach and links, through `run_bot` as `python -m bot console` runs it."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from bot.app import run_bot
from bot.config import Settings
from tests import document_files as files
from tests.fakes.backends import EchoBackend
from tests.link_server import link_server


async def console(settings: Settings, text: str, backend: EchoBackend) -> str:
    out = io.StringIO()
    await run_bot(settings, lambda: backend, console=True, stdin=io.StringIO(text),
                  stdout=out)
    return out.getvalue()


async def test_attach_then_summarise_prints_the_summary(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "report.pdf").write_bytes(files.pdf())
    backend = EchoBackend()
    out = await console(settings, f"/attach {tmp_path / 'report.pdf'}\nSummarise this.\n",
                        backend)
    assert out.strip().endswith("Sources: report.pdf")  # stdout: the answer only
    assert "Attached report.pdf (PDF, 3 pages" in capsys.readouterr().err
    assert "Brightbird Feeders: third quarter report" in backend.prompts[0][-1]["content"]


async def test_attach_problems_are_one_line_and_the_next_line_is_answered(
        settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "secret.pdf").write_bytes(files.pdf(password="x"))
    (tmp_path / "big.txt").write_bytes(b"x" * 5000)
    small = dataclasses.replace(settings, attachment_max_bytes=4000)
    out = await console(small, f"/attach {tmp_path / 'secret.pdf'}\n"
                               f"/attach {tmp_path / 'nothing.pdf'}\n"
                               f"/attach {tmp_path / 'big.txt'}\n"
                               "/attach\nhello\n", EchoBackend())
    assert out.splitlines() == [
        "I couldn't read secret.pdf: it is password-protected.",
        f"There is no file at {tmp_path / 'nothing.pdf'}.",
        "I couldn't read big.txt: it is 5 KB, more than I read (4 KB, ATTACHMENT_MAX_BYTES).",
        "Usage: /attach PATH (a local file; it goes with your next message)",
        "echo: hello"]


async def test_a_link_in_a_console_line_is_read(settings: Settings) -> None:
    backend = EchoBackend()
    async with link_server() as pages:
        allowed = dataclasses.replace(settings, links_allow_hosts=("127.0.0.1",))
        out = await console(allowed, f"Who climbed the steps? {pages.url('/article')}\n",
                            backend)
        assert pages.paths == ["/article"]
        off = dataclasses.replace(allowed, fetch_links=False)
        await console(off, f"And now? {pages.url('/article')}\n", EchoBackend())
        assert pages.paths == ["/article"]  # FETCH_LINKS=off: not fetched again
    assert out.strip().endswith(f"Sources: {pages.url('/article')}")
    assert "212 steps of the Aldercliff lighthouse" in backend.prompts[0][-1]["content"]
