"""Session fixtures: one private MariaDB and one private Redis for the whole run.

No test skips for a missing server: ``MissingBinaryError`` fails the run with the
apt package to install.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from deltaforge.testing import MariaDBServer, RedisServer


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    server = MariaDBServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


_db_counter = itertools.count(1)


@pytest.fixture
def fresh_db(mariadb: MariaDBServer) -> str:
    """A new, empty database name for one test (so tests never see each other's rows)."""
    name = f"t{next(_db_counter)}"
    mariadb.execute(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
    return name


@pytest.fixture
def redis_client(redis_server: RedisServer):  # type: ignore[no-untyped-def]
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()
