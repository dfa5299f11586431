"""A throwaway PostgreSQL server on 127.0.0.1 for tests: initdb, pg_ctl start, stop, remove.

Why: the PostgreSQL store and the multi-instance tests need a real server (no mocks of the
database). The Debian package ``postgresql`` provides ``initdb`` and ``pg_ctl`` under
``/usr/lib/postgresql/<version>/bin``; they refuse to run as root, so when this process is
root they run as the ``postgres`` user (``runuser``), on a data folder that user owns. When the
package is missing and this process is root, it is installed with apt-get (a clean CI machine).

``python -m tests.pg_server`` starts one, prints its URL, waits for Enter, and removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries, and they could not be installed."""


def find_bin_dir(*, install: bool = True) -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb; installs it if allowed."""
    found = sorted((p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if found:
        return found[-1]
    if not install:
        raise PostgresUnavailable(f"no initdb under {PG_ROOT}")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable(
            "PostgreSQL is not installed; run: sudo apt-get install -y postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
                   check=True, env=env)
    return find_bin_dir(install=False)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """One running server; `url` is what DATABASE_URL would hold."""

    bin_dir: Path
    root: Path
    port: int
    user: str = "bot"
    database: str = "bot"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SERVICE_USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed ({done.returncode}): "
                                      f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVICE_USER, SERVICE_USER)
        self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
                  "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
        self.resume()
        self.create_database(self.database)

    def resume(self) -> None:
        """Start the server (again) on the same data folder and port."""
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c max_connections=300 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def pause(self) -> None:
        """Stop the server, keeping its data: clients see the connection lost."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """A fresh database on this server (one per test keeps tests apart); its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return self.url_for(name)

    def stop(self) -> None:
        with contextlib.suppress(PostgresUnavailable):
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A fresh server for the duration of the block; always stopped and removed after."""
    bin_dir = find_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="bot-pg-"))
    server = PostgresServer(bin_dir, root, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    with running_postgres() as pg:
        print(pg.url, flush=True)
        if sys.stdin.isatty():
            input("Enter stops it: ")
