"""The engine's sink on a real Redis Cluster and Sentinel, broken as an operator would (issue 12).

Each scenario runs ``deltaforge run`` while rows are written, moves the stream under it (a slot
migration, a manual cluster failover, a Sentinel failover) or SIGKILLs the engine, and then checks
that every stream holds every row exactly once, in order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deltaforge.testing import MariaDBServer
from tests.e2e import TOPOLOGIES_SLOW, Engine, binlog_end, stream_events, wait_for, write_config
from tests.topologies import redis_cluster, redis_sentinel

FIXTURES = (redis_cluster, redis_sentinel)  # used as test arguments (tests/topologies.py)

pytestmark = pytest.mark.integration

ROWS = 300


def _table(mariadb: MariaDBServer, db: str, name: str = "t") -> str:
    mariadb.execute(f"CREATE TABLE {db}.{name} (id INT PRIMARY KEY, v VARCHAR(40))")
    return f"{db}.{name}"


class _Writer(threading.Thread):
    """Inserts rows ``1..n`` into each table, one autocommitted row at a time, paced so that a
    topology change lands in the middle of the drain."""

    def __init__(self, mariadb: MariaDBServer, tables: list[str], n: int = ROWS, pause: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.mariadb, self.tables, self.n, self.pause = mariadb, tables, n, pause
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = self.mariadb.connect(user="root")
            conn.autocommit(True)
            with conn.cursor() as cur:
                for i in range(1, self.n + 1):
                    for t in self.tables:
                        cur.execute(f"INSERT INTO {t} VALUES (%s, %s)", (i, f"v{i}"))
                    self.done = i
                    time.sleep(self.pause)
            conn.close()
        except BaseException as e:  # noqa: BLE001 - re-raised by the test
            self.error = e


def _ids(client: Any, stream: str) -> list[int]:
    return [e["after"]["id"] for e in stream_events(client, stream)]


def _xlen(client: Any, stream: str) -> int:
    """The stream's length, or -1 while the test's own client cannot reach its master (a killed
    master before its replica took over)."""
    import redis

    try:
        return int(client.xlen(stream))
    except redis.exceptions.RedisError:
        return -1


def _drain_through(engine: Engine, writer: _Writer, change: Any, client: Any, streams: list[str]) -> None:
    writer.start()
    wait_for(lambda: writer.done >= ROWS // 3 or writer.error is not None, 60, "a third of the rows")
    change()
    writer.join(120)
    assert writer.error is None, writer.error
    try:
        wait_for(lambda: all(_xlen(client, s) >= ROWS for s in streams) or engine.poll() is not None, 120,
                 f"{ROWS} entries in {streams}")
    except AssertionError as e:
        raise AssertionError(f"{e}; engine output (tail):\n{engine.output[-3000:]}") from None
    time.sleep(0.5)  # anything duplicated would show now
    assert engine.poll() is None, engine.output


@pytest.mark.parametrize("change", ["reshard", "failover", "kill"])
@pytest.mark.parametrize("workers", TOPOLOGIES_SLOW)
def test_a_drain_while_the_streams_slot_moves_lands_every_row_once(
        tmp_path: Path, mariadb: MariaDBServer, redis_cluster: Any, fresh_db: str, workers: str, change: str) -> None:
    """The stream's slot migrated to another master (ASK, then MOVED), its master failed over to
    its replica (CLUSTER FAILOVER), or its master SIGKILLed in the middle of the drain: the
    replica takes over after the node timeout, without the writes it had not received yet (the
    sink's lineage check sees the older checkpoint and re-delivers from it)."""
    table = _table(mariadb, fresh_db)
    stream = f"cdc:{change}{workers}"
    cfg = write_config(tmp_path, mariadb, redis_cluster, [table], name=f"{change}{workers}", stream=stream,
                       start=binlog_end(mariadb))
    client = redis_cluster.client()
    before = redis_cluster.master_of_key(stream)
    move = {"reshard": lambda: redis_cluster.reshard_key(stream),
            "failover": lambda: redis_cluster.failover(before.port),
            "kill": lambda: redis_cluster.kill(before.port)}[change]
    engine = Engine(cfg, "--workers", workers).wait_ready(60)
    try:
        _drain_through(engine, _Writer(mariadb, [table]), move, client, [stream])
    finally:
        code, out = engine.stop()
        if change == "kill":  # back as its successor's replica: the module's cluster whole again
            redis_cluster.restart(before.port)
            redis_cluster.wait_healthy()
    assert code == 0, out
    assert redis_cluster.master_of_key(stream).port != before.port  # it did move
    assert _ids(client, stream) == list(range(1, ROWS + 1))
    client.close()


@pytest.mark.parametrize("template", ["tagged", "spread"])
def test_a_template_killed_mid_drain_resumes_every_stream_exactly_once(
        tmp_path: Path, mariadb: MariaDBServer, redis_cluster: Any, fresh_db: str, template: str) -> None:
    """A tagged template commits in one slot; a spread one (no hash tag) commits each stream with
    its own checkpoint on its own master (sink/slot_split.py). SIGKILL mid-drain, restart."""
    tables = [_table(mariadb, fresh_db, name) for name in ("a", "b", "c")]
    if template == "tagged":
        stream, streams = "'{cdc}:$${table}'", [f"{{cdc}}:{t}" for t in tables]
    else:
        stream, streams = "'cdc:$${table}'", [f"cdc:{t}" for t in tables]
    cfg = write_config(tmp_path, mariadb, redis_cluster, tables, name=template, stream=stream,
                       start=binlog_end(mariadb))
    client = redis_cluster.client()
    writer = _Writer(mariadb, tables)
    engine = Engine(cfg, "--workers", "1").wait_ready(60)
    try:
        writer.start()
        try:
            wait_for(lambda: client.xlen(streams[0]) >= ROWS // 3 or engine.poll() is not None, 60,
                     "a third of the rows")
        except AssertionError as e:
            raise AssertionError(f"{e}; engine output (tail):\n{engine.output[-3000:]}") from None
        assert engine.poll() is None, engine.output
        engine.stop(signal.SIGKILL)
        engine = Engine(cfg, "--workers", "1").wait_ready(60)
        writer.join(120)
        assert writer.error is None, writer.error
        wait_for(lambda: all(client.xlen(s) >= ROWS for s in streams), 120, "every row in both streams")
        time.sleep(0.5)
    finally:
        code, out = engine.stop()
    assert code == 0, out
    for s in streams:
        assert _ids(client, s) == list(range(1, ROWS + 1)), s
    client.close()


@pytest.mark.parametrize("workers", TOPOLOGIES_SLOW)
def test_a_drain_through_a_sentinel_failover_lands_every_row_once(
        tmp_path: Path, mariadb: MariaDBServer, redis_sentinel: Any, fresh_db: str, workers: str) -> None:
    table = _table(mariadb, fresh_db)
    stream = "cdc:sentinel"
    cfg = write_config(tmp_path, mariadb, redis_sentinel, [table], name="sentinel", stream=stream,
                       start=binlog_end(mariadb))
    before = redis_sentinel.master_address()
    engine = Engine(cfg, "--workers", workers).wait_ready(60)
    client = None
    try:
        # Paced so that rows keep coming after the switch (~6 s): a rollback is detected at the next
        # commit (an engine idle through the whole failover would notice it only with the next change).
        writer = _Writer(mariadb, [table], pause=0.04)

        class _Following:  # the stream read on whichever node is master now
            def xlen(self, s: str) -> int:
                c = redis_sentinel.master_client()
                try:
                    return int(c.xlen(s))
                finally:
                    c.close()

        _drain_through(engine, writer, redis_sentinel.failover, _Following(), [stream])
    finally:
        code, out = engine.stop()
    assert code == 0, out
    assert redis_sentinel.master_address() != before
    client = redis_sentinel.master_client()
    assert _ids(client, stream) == list(range(1, ROWS + 1))
    client.close()


def _check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltaforge", "check", str(cfg)], capture_output=True, text=True,
                          timeout=120)


def test_check_reports_the_cluster_and_the_node_of_the_sinks_slot(
        tmp_path: Path, mariadb: MariaDBServer, redis_cluster: Any, fresh_db: str) -> None:
    table = _table(mariadb, fresh_db)
    cfg = write_config(tmp_path, mariadb, redis_cluster, [table], name="checkc", stream="cdc:check")
    res = _check(cfg)
    owner = redis_cluster.master_of_key("cdc:check")
    assert "Cluster: 3 masters" in res.stdout and "16384 of 16384 slots served" in res.stdout, res.stdout + res.stderr
    assert f"on 127.0.0.1:{owner.port}" in res.stdout and "{cdc:check}:deltaforge:checkpoint:checkc:stream" in res.stdout


def test_check_reports_the_sentinel_topology(
        tmp_path: Path, mariadb: MariaDBServer, redis_sentinel: Any, fresh_db: str) -> None:
    table = _table(mariadb, fresh_db)
    cfg = write_config(tmp_path, mariadb, redis_sentinel, [table], name="checks", stream="cdc:check")
    res = _check(cfg)
    host, port = redis_sentinel.master_address()
    assert f"master {host}:{port} named by 3 of 3 sentinels, 1 replica(s)" in res.stdout, res.stdout + res.stderr


def test_check_passes_a_template_spread_over_slots_and_says_how_it_commits(
        tmp_path: Path, mariadb: MariaDBServer, redis_cluster: Any, fresh_db: str) -> None:
    table = _table(mariadb, fresh_db)
    cfg = write_config(tmp_path, mariadb, redis_cluster, [table], name="checksp", stream="'cdc:$${table}'")
    res = _check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "streams spread over slots, one checkpoint each" in res.stdout
    assert "{checksp}:deltaforge:checkpoint:checksp:stream" in res.stdout
