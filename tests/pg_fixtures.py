"""Fixtures for a real PostgreSQL: one server per test session, a fresh database per test.

Why: the PostgreSQL store is tested against the real server (no mocks of the database). The
server starts on first use (about 1.5 s, see `tests.pg_server`) and is stopped and removed
when the session ends; a missing ``postgresql`` package is installed there when possible.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.pg_server import PostgresServer, PostgresUnavailable, running_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.fail(f"no PostgreSQL for the tests: {exc}", pytrace=False)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server; tests never see each other's rows."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
