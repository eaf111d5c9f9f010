"""Chaos: one 200,000-row drain through engine SIGKILLs, Redis crash-restarts from older snapshots
and a MariaDB restart, all in one run. The stream must equal the binlog: every row once, in order.

Servers are private (the test kills and restarts them). The rows are written while the chaos
happens (a writer paced over the actions, retrying through the MariaDB restart), so the actions
fall mid-drain however fast the engine is. The actions are bounded in number and spaced in time,
and the drain has a generous deadline: nothing here asserts on speed.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import Engine, write_config

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

ROWS = 200_000


def _statements() -> list[str]:
    """200,000 inserts in transactions of 1 to 99 rows, one statement each (a realistic mix).

    ``INSERT IGNORE``: a chunk cut by the MariaDB restart is sent again whole, and the statements
    that had committed insert nothing the second time (ids stay in binlog order).
    """
    rng = random.Random(7)
    statements, next_id = [], 1
    while next_id <= ROWS:
        n = min(rng.randint(1, 99), ROWS - next_id + 1)
        values = ",".join(f"({i},'row {i}')" for i in range(next_id, next_id + n))
        statements.append(f"INSERT IGNORE INTO chaos.t VALUES {values}")
        next_id += n
    return statements


def _paced_writer(server: MariaDBServer, chunks: int = 40, pause: float = 0.3) -> threading.Thread:
    """Write the rows in ``chunks`` spread over time (retrying through restarts), in a thread."""
    statements = _statements()
    size = -(-len(statements) // chunks)

    def run() -> None:
        deadline = time.monotonic() + 600
        i = 0
        while i < len(statements) and time.monotonic() < deadline:
            try:
                server.execute(*statements[i:i + size])
            except Exception:  # noqa: BLE001 - the server is restarting: send the chunk again
                time.sleep(0.5)
                continue
            i += size
            time.sleep(pause)

    thread = threading.Thread(target=run, name="chaos-writer", daemon=True)
    thread.start()
    return thread


def _stream_ids(client: object, stream: str) -> list[int]:
    import orjson

    ids: list[int] = []
    start = "-"
    while True:
        chunk = client.xrange(stream, start, "+", count=20_000)  # type: ignore[attr-defined]
        if not chunk:
            return ids
        ids.extend(orjson.loads(fields[b"df-event"])["after"]["id"] for _, fields in chunk)
        last = chunk[-1][0].decode()
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


def test_exactly_once_through_kills_redis_rollbacks_and_a_mariadb_restart(
        tmp_path: Path, mariadb_primary: MariaDBServer, redis_own: RedisServer) -> None:
    server, redis = mariadb_primary, redis_own
    server.execute("CREATE DATABASE chaos", "CREATE TABLE chaos.t (id INT PRIMARY KEY, v VARCHAR(40))")
    cfg = write_config(tmp_path, server, redis, ["chaos.t"], name="chaos", start="earliest",
                       batch="  batch:\n    max_events: 500\n")
    client = redis.client()
    # in one process; the multi-process topology's chaos is the next test
    engine = Engine(cfg, "--workers", "0").wait_ready(60)
    writer = _paced_writer(server)
    outputs: list[str] = []
    snapshots: list[Path] = []

    def length() -> int:
        try:
            return int(client.xlen("cdc:e2e"))
        except Exception:  # noqa: BLE001 - Redis is down for a moment during its own restart
            return -1

    def kill_engine() -> None:
        nonlocal engine
        outputs.append(engine.stop(signal.SIGKILL)[1])
        engine = Engine(cfg, "--workers", "0").wait_ready(60)

    def snapshot_redis() -> None:
        snapshots.append(redis.snapshot())

    def rollback_redis() -> None:
        redis.crash_restart(snapshots[-1])  # back to an older state: entries and checkpoint together

    def restart_mariadb() -> None:
        server.restart(down_for=1.0)

    actions: list[Callable[[], None]] = [
        snapshot_redis, kill_engine, rollback_redis, restart_mariadb, kill_engine,
        snapshot_redis, kill_engine, rollback_redis, kill_engine,
    ]
    lengths = []
    try:
        for action in actions:
            time.sleep(1.5)
            lengths.append(length())
            action()
            assert engine.poll() is None, engine.output
        writer.join(600)
        deadline = time.monotonic() + 600
        while length() < ROWS and time.monotonic() < deadline:
            assert engine.poll() is None, engine.output  # it rides through Redis and MariaDB restarts
            time.sleep(0.5)
        time.sleep(1.0)  # a duplicate would land right behind
    finally:
        code, out = engine.stop()
        outputs.append(out)
    assert code == 0, out
    everything = "".join(outputs)
    assert any(0 < n < ROWS for n in lengths), f"the chaos happened mid-drain: lengths {lengths}"
    assert "rolled back" in everything
    ids = _stream_ids(client, "cdc:e2e")
    assert len(ids) == ROWS, f"{len(ids)} entries for {ROWS} rows"
    assert ids == list(range(1, ROWS + 1))
    client.close()


def test_multi_process_topology_through_kills_of_any_process(
        tmp_path: Path, mariadb_primary: MariaDBServer, redis_own: RedisServer) -> None:
    """``--workers 2``: a random process (the supervisor included) is SIGKILLed about every second,
    ten times, while 200,000 rows are written and drained. Every row lands once, in order, with
    the processor's mark, and no process or shared-memory segment outlives the run."""
    import os

    from tests.test_e2e import _SLOW_SOME
    from tests.test_processes import _alive, _children, _segments

    server, redis = mariadb_primary, redis_own
    server.execute("CREATE DATABASE chaos", "CREATE TABLE chaos.t (id INT PRIMARY KEY, v VARCHAR(40))")
    cfg = write_config(tmp_path, server, redis, ["chaos.t"], name="chaos", start="earliest",
                       batch="  batch:\n    max_events: 500\n", processors=_SLOW_SOME.replace("after.id % 5", "after.id % 50"))
    client = redis.client()
    before = _segments()
    engine = Engine(cfg, "--workers", "2").wait_ready(60)
    writer = _paced_writer(server)
    rng = random.Random(11)
    outputs: list[str] = []
    every_child: set[int] = set()
    killed: list[str] = []
    lengths: list[int] = []
    try:
        for _ in range(10):
            time.sleep(1.0)
            lengths.append(int(client.xlen("cdc:e2e")))
            kids = _children(engine.proc.pid)
            every_child.update(kids.values())
            victim = rng.choice(["supervisor", *sorted(kids)])
            killed.append(victim)
            if victim == "supervisor":
                outputs.append(engine.stop(signal.SIGKILL)[1])
                engine = Engine(cfg, "--workers", "2").wait_ready(60)
            else:
                os.kill(kids[victim], signal.SIGKILL)
            assert engine.poll() is None, engine.output
        writer.join(600)
        deadline = time.monotonic() + 600
        while int(client.xlen("cdc:e2e")) < ROWS and time.monotonic() < deadline:
            assert engine.poll() is None, engine.output
            time.sleep(0.5)
        time.sleep(1.0)  # a duplicate would land right behind
        every_child.update(_children(engine.proc.pid).values())
    finally:
        code, out = engine.stop()
        outputs.append(out)
    assert code == 0, out
    assert any(0 < n < ROWS for n in lengths), f"the kills happened mid-drain: lengths {lengths}, killed {killed}"
    events = _tagged(client)
    assert [e[0] for e in events] == list(range(1, ROWS + 1)), f"killed {killed}"
    assert all(tag == ["seen"] for _, tag in events)
    deadline = time.monotonic() + 90
    while any(_alive(p) for p in every_child) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(p) for p in every_child), "a child outlived its supervisor"
    deadline = time.monotonic() + 30
    while _segments() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _segments() - before, "a ring segment was left in /dev/shm"
    client.close()


def _tagged(client: object) -> list[tuple[int, object]]:
    import orjson

    out: list[tuple[int, object]] = []
    start = "-"
    while True:
        chunk = client.xrange("cdc:e2e", start, "+", count=20_000)  # type: ignore[attr-defined]
        if not chunk:
            return out
        for _, fields in chunk:
            e = orjson.loads(fields[b"df-event"])
            out.append((e["after"]["id"], e["tags"]))
        ms, seq = chunk[-1][0].decode().split("-")
        start = f"{ms}-{int(seq) + 1}"
