"""The seed's scenario exactly as the user wrote it: conf/pipeline.yaml, the Node worker as written, the UPDATE."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from deltaforge.demo import SCHEMA
from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import SEED, TOPOLOGIES, Engine, wait_for
from tests.nodeworker import start_node_worker

pytestmark = pytest.mark.integration

FIVE_KEYS = ["user:1", "user:email:alice.new@example.com", "user:email:alice@example.com", "user:1:orders",
             "user:1:profile"]


@pytest.fixture(params=TOPOLOGIES)
def seed_engine(request: pytest.FixtureRequest, mariadb: MariaDBServer, redis_server: RedisServer,
                redis_client: Any) -> Iterator[Engine]:
    """The seed's pipeline running, in each topology (``--workers``)."""
    mariadb.execute("DROP DATABASE IF EXISTS app", *SCHEMA)
    env = {"MYSQL_DSN": mariadb.dsn(db="app"), "REDIS_URI": redis_server.uri}
    engine = Engine(SEED, "--workers", request.param, env=env).wait_ready()
    try:
        yield engine
    finally:
        code, out = engine.stop(signal.SIGTERM)
        assert code == 0, out
        assert "Traceback" not in out


def test_seed_pipeline_with_the_seed_node_worker(seed_engine: Engine, mariadb: MariaDBServer,
                                                 redis_server: RedisServer, redis_client: Any) -> None:
    node = start_node_worker(redis_server.uri)
    try:
        node.wait_for_line("Starting cache invalidation worker")
        redis_client.mset({k: "cached" for k in [*FIVE_KEYS, "user:2", "product:10"]})
        mariadb.execute("UPDATE app.users SET email = 'alice.new@example.com' WHERE id = 1")
        assert node.wait_for_line("Invalidated") == "Invalidated 5 keys for app.users"
        wait_for(lambda: not any(redis_client.exists(k) for k in FIVE_KEYS), what="the five keys deleted")
        assert redis_client.exists("user:2") and redis_client.exists("product:10")
    finally:
        node.stop()
    assert not any("Worker error" in line for line in node.lines)
    (_entry_id, fields), = redis_client.xrange("cache:invalidations")
    assert next(iter(fields)) == b"df-event"


def test_seed_pipeline_with_deltaforge_worker(seed_engine: Engine, mariadb: MariaDBServer,
                                              redis_server: RedisServer, redis_client: Any) -> None:
    worker = subprocess.Popen([sys.executable, "-m", "deltaforge", "worker", "--block-ms", "200"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "REDIS_URI": redis_server.uri})
    try:
        redis_client.mset({k: "cached" for k in FIVE_KEYS})
        redis_client.mset({"order:100": "x", "user:2:orders": "x", "inventory:10": "x", "product:10:stock": "x"})
        mariadb.execute(
            "UPDATE app.users SET email = 'alice.new@example.com' WHERE id = 1",
            "INSERT INTO app.orders (id, user_id, total, placed_at) VALUES (100, 2, 49.90, NOW(6))",
            "UPDATE app.inventory SET quantity = quantity - 1 WHERE product_id = 10",
        )
        wait_for(lambda: not any(redis_client.exists(k) for k in
                                 [*FIVE_KEYS, "order:100", "user:2:orders", "inventory:10", "product:10:stock"]),
                 what="all keys deleted")
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out
    lines = [line for line in out.splitlines() if line.startswith("Invalidated")]
    assert lines == ["Invalidated 5 keys for app.users", "Invalidated 2 keys for app.orders",
                     "Invalidated 2 keys for app.inventory"]
