"""Readers run in a child process, one file at a time, with a time and a memory limit.

Why a process and not a thread: a thread cannot be stopped, so a PDF that makes a parser spin
would keep a core busy after its answer gave up, and a parser that crashes (PDFium is C++)
would take the bot with it. The child is ``python -m bot.documents.sandbox``: it imports only
the readers, caps its address space (`MEMORY_MB`), and is killed and started afresh when a
file takes longer than the time limit or kills it. Messages are length-prefixed pickles over
its stdin/stdout; only our own child writes what the parent unpickles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import struct
import sys
from typing import Any

from bot.documents.readers import DEFAULT_MAX_CHARS, ReadError, read_bytes
from bot.types import Document, Image

log = logging.getLogger(__name__)

MEMORY_MB = 2048
"""Address space of the reader process; a file that needs more fails alone."""
_HEADER = struct.Struct(">I")


class ReaderProcess:
    """Reads files in the child process; `read` is awaited on the event loop.

    Args:
        timeout: seconds one file may take (then the child is killed and restarted).
        max_chars: DOCUMENT_MAX_CHARS, the most text kept from one document.
    """

    def __init__(self, *, timeout: float = 30.0, max_chars: int = DEFAULT_MAX_CHARS,
                 memory_mb: int = MEMORY_MB) -> None:
        self.timeout = timeout
        self.max_chars = max_chars
        self.memory_mb = memory_mb
        self._child: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0
        """Times the child was killed (a file over the time limit, or a crash)."""

    async def __aenter__(self) -> ReaderProcess:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def read(self, data: bytes, name: str, *, source: str = "file") -> Document | Image:
        """Read `data` (see `bot.documents.readers.read_bytes`).

        Raises:
            ReadError: the file cannot be read, took too long, or crashed the reader.
        """
        async with self._lock:
            child = await self._started()
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await _exchange(child, (data, name, self.max_chars, source))
            except TimeoutError:
                log.warning("reading %r took longer than %g s; restarting the reader",
                            name, self.timeout)
                await self._kill()
                self.restarts += 1
                raise ReadError(f"reading it took longer than {self.timeout:g} s") from None
            except (EOFError, ConnectionError, asyncio.IncompleteReadError,
                    pickle.UnpicklingError):
                code = child.returncode
                log.warning("the reader process ended on %r (exit %s); restarting it",
                            name, code)
                await self._kill()
                self.restarts += 1
                raise ReadError("it made the reader fail (too large or damaged?)") from None
        status, value = reply
        if status == "ok":
            assert isinstance(value, Document | Image)
            return value
        raise ReadError(str(value))

    async def close(self) -> None:
        """Stop the child (it also ends by itself when our end of its stdin closes)."""
        async with self._lock:
            await self._kill()

    async def _started(self) -> asyncio.subprocess.Process:
        if self._child is None or self._child.returncode is not None:
            self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.documents.sandbox", str(self.memory_mb),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return self._child

    async def _kill(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        await child.wait()
        if child.stdin is not None:
            child.stdin.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await child.stdin.wait_closed()


async def _exchange(child: asyncio.subprocess.Process, message: object) -> Any:
    assert child.stdin is not None and child.stdout is not None
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    child.stdin.write(_HEADER.pack(len(body)) + body)
    await child.stdin.drain()
    size = _HEADER.unpack(await child.stdout.readexactly(_HEADER.size))[0]
    return pickle.loads(await child.stdout.readexactly(size))


def _serve(memory_mb: int) -> None:
    """The child's loop: read a request, answer it, until stdin closes."""
    try:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass  # no such limit here; the time limit still holds
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a library that prints must not corrupt the protocol
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        data, name, max_chars, source = pickle.loads(stdin.read(_HEADER.unpack(header)[0]))
        reply: tuple[str, object]
        try:
            reply = ("ok", read_bytes(data, name, max_chars=max_chars, source=source))
        except ReadError as exc:
            reply = ("error", str(exc))
        except MemoryError:
            reply = ("error", f"it needs more memory than I allow ({memory_mb} MB)")
        except RecursionError:
            reply = ("error", "it is nested too deeply to read")
        except Exception as exc:  # a parser's own bug: this file fails, the reader goes on
            print(f"reader: {name!r} failed: {exc!r}", file=sys.stderr)
            reply = ("error", f"it could not be read ({type(exc).__name__})")
        body = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_HEADER.pack(len(body)) + body)
        stdout.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else MEMORY_MB)
