"""Session fixtures: one private MariaDB and one private Redis for the whole run.

Tests that break their servers (failover, restarts, Redis rollbacks and freezes) get their own,
function-scoped, started only when a test asks and removed however it ends:
``mariadb_primary`` + ``mariadb_replica`` (GTID replication, binlog files numbered differently:
the primary at binlog.000006, the replica at binlog.000002) and ``redis_own``.

No test skips for a missing server: ``MissingBinaryError`` fails the run with the
apt package to install.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from deltaforge.testing import MariaDBReplica, MariaDBServer, RedisServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``fuzz_long`` runs (10x the CI amounts) are deselected, not skipped, unless ``-m`` names them."""
    if "fuzz_long" in (config.getoption("-m") or ""):
        return
    keep = [item for item in items if item.get_closest_marker("fuzz_long") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


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


#: binlog file numbers the failover fixtures put the two servers on (they must differ)
PRIMARY_BINLOG = "binlog.000006"
REPLICA_BINLOG = "binlog.000002"


@pytest.fixture
def mariadb_primary() -> Iterator[MariaDBServer]:
    """A private primary of its own (server_id 1) at binlog.000006, for tests that fail it over or restart it."""
    server = MariaDBServer(server_id=1).start()
    try:
        server.flush_binlogs(5)
        yield server
    finally:
        server.stop()


@pytest.fixture
def mariadb_replica(mariadb_primary: MariaDBServer) -> Iterator[MariaDBReplica]:
    """A GTID replica (server_id 2, log_slave_updates) of ``mariadb_primary``, caught up, at binlog.000002."""
    replica = MariaDBReplica(mariadb_primary, server_id=2).start()
    try:
        replica.flush_binlogs(1)
        yield replica
    finally:
        replica.stop()


@pytest.fixture
def redis_own() -> Iterator[RedisServer]:
    """A private Redis for one test that crash-restarts, rolls back or freezes it."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
