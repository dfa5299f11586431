"""The console adapter: chat with the bot in a terminal, or pipe questions through it.

Each input line is one message in one channel (``console:<channel>``), so history survives a
restart like on any platform. ``/attach PATH`` reads a local file and attaches it to the next
line (``printf '/attach report.pdf\nSummarise this.\n' | python -m bot console``), and links
in a line are read as on the chat platforms. Interactive sessions stream the answer as it is
generated; piped input prints only the answers on stdout, which makes the bot scriptable:
``echo "What is the capital of France?" | python -m bot console``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import itertools
import logging
import sys
import threading
from typing import TextIO

from bot.core.conversation import ConversationCore
from bot.documents.intake import Intake
from bot.platforms.console.attach import attach_file
from bot.types import ChannelKey, IncomingMessage, Reply, Shared

log = logging.getLogger(__name__)
_EOF = None


class ConsoleAdapter:
    """Reads lines from `stdin`, answers on `stdout`; the third adapter, shaped like the others.

    Args:
        interactive: stream answers and show a prompt; defaults to whether stdin is a TTY.
    """

    platform = "console"

    def __init__(self, core: ConversationCore, *, stdin: TextIO | None = None,
                 stdout: TextIO | None = None, channel: str = "local",
                 user_name: str | None = None, interactive: bool | None = None,
                 intake: Intake | None = None) -> None:
        self.core = core
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.key = ChannelKey("console", channel)
        self.user_name = user_name or _login_name()
        self.interactive = self.stdin.isatty() if interactive is None else interactive
        self._ids = itertools.count(1)
        self._streamed = ""
        self._stopped = asyncio.Event()
        self._serving = False
        self.intake = intake
        self._attached = Shared()

    @property
    def connected(self) -> bool:
        """True while `start()` is reading input."""
        return self._serving

    async def start(self) -> None:
        """Serve lines until end of input or `stop()`."""
        lines = self._read_lines_in_background()
        if self.interactive:
            self._write(f"Chatting in {self.key} as {self.user_name}. Type /help for commands, "
                        "Ctrl-D to quit.\n")
        self._serving = True
        try:
            while not self._stopped.is_set():
                self._prompt()
                line = await lines.get()
                if line is _EOF:
                    break
                await self.handle_line(line)
        finally:
            self._serving = False
        if self.interactive:
            self._write("\nBye.\n")

    async def stop(self) -> None:
        self._stopped.set()

    def to_incoming(self, line: str) -> IncomingMessage:
        """A console line as a message addressed to the bot in this console channel."""
        return IncomingMessage(key=self.key, message_id=f"console-{next(self._ids)}",
                               author_id=self.user_name, author_name=self.user_name,
                               text=line, addressed=True, is_admin=True, is_direct=True)

    async def handle_line(self, line: str) -> None:
        if not line.strip():
            return
        if line.strip().split(None, 1)[0].lower() == "/attach":
            attached, said, ok = await attach_file(line.strip()[len("/attach"):], self.intake)
            self._attached += attached
            if ok and not self.interactive:
                print(said, file=sys.stderr, flush=True)  # stdout is for answers only
            else:
                self._write(self._label() + said + "\n")
            return
        self._streamed = ""
        shared, self._attached = self._attached, Shared()
        if self.intake is not None:
            shared += await self.intake.links(line)
        message = dataclasses.replace(self.to_incoming(line), shared=shared)
        reply = await self.core.handle(message, on_progress=self._progress)
        if reply is not None:
            await self.send(reply)

    async def send(self, reply: Reply) -> None:
        text = reply.text
        if self._streamed and text.startswith(self._streamed):
            self._write(text[len(self._streamed):] + "\n")
        else:
            if self._streamed:
                self._write("\n")
            self._write(self._label() + text + "\n")
        self._streamed = ""

    async def _progress(self, so_far: str) -> None:
        if not self.interactive:
            return
        if not self._streamed:
            self._write(self._label())
        if so_far.startswith(self._streamed):
            self._write(so_far[len(self._streamed):])
            self._streamed = so_far

    def _label(self) -> str:
        return f"{self.core.settings.bot_name}> " if self.interactive else ""

    def _prompt(self) -> None:
        if self.interactive:
            self._write(f"{self.user_name}> ")

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def _read_lines_in_background(self) -> asyncio.Queue[str | None]:
        """Feed stdin lines to the loop from a daemon thread (works for TTYs, pipes, files)."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def read() -> None:
            try:
                for line in self.stdin:
                    loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
            except (OSError, ValueError):
                log.debug("stdin closed", exc_info=True)
            finally:
                try:
                    loop.call_soon_threadsafe(lines.put_nowait, _EOF)
                except RuntimeError:
                    pass  # the loop already ended

        threading.Thread(target=read, name="console-stdin", daemon=True).start()
        return lines


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"
