"""End to end: real MariaDB binlog -> engine -> real Redis stream, in every topology (tests.e2e.TOPOLOGIES)."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import (
    TOPOLOGIES,
    binlog_end,
    start_engine,
    start_supervisor,
    stop_engine,
    stream_events,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


#: a processor that tags every event and holds one batch in five back for 30 ms
_SLOW_SOME = """  processors:
    - type: javascript
      id: slow-some
      inline: |
        function processBatch(events) {
          if (events.length && events[0].after && events[0].after.id % 5 === 0) {
            const until = Date.now() + 30;
            while (Date.now() < until) {}
          }
          for (const e of events) e.tags = ['seen'];
          return events;
        }
"""


def _make_items(mariadb: MariaDBServer, db: str) -> None:
    mariadb.execute(f"CREATE TABLE {db}.items (id INT PRIMARY KEY, v VARCHAR(40), n BIGINT)")


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_rows_arrive_in_binlog_order_with_tx_markers(tmp_path: Path, mariadb: MariaDBServer,
                                                      redis_server: RedisServer, redis_client, fresh_db: str,
                                                      workers: str) -> None:
    _make_items(mariadb, fresh_db)
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=binlog_end(mariadb))
    sup, t = start_supervisor(cfg, workers)
    try:
        mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES (1,'a',1),(2,'b',2)",
                        f"UPDATE {fresh_db}.items SET v='c' WHERE id=1",
                        f"DELETE FROM {fresh_db}.items WHERE id=2")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 4, what="4 entries")
    finally:
        sup.stop.set()
        t.join(10)
    assert not t.is_alive()
    events = stream_events(redis_client, "cdc:e2e")
    assert [(e["op"], (e["after"] or e["before"])["id"]) for e in events] == [("c", 1), ("c", 2), ("u", 1), ("d", 2)]
    assert [e["transaction"]["seq"] for e in events] == [0, 1, 0, 0]
    assert [e["transaction"]["end"] for e in events] == [False, True, True, True]
    assert events[2]["before"] == {"id": 1, "v": "a", "n": 1} and events[2]["after"] == {"id": 1, "v": "c", "n": 1}
    assert events[0]["table"] == f"{fresh_db}.items" and events[0]["tenant_id"] == "acme"
    assert events[0]["source"]["db"] == fresh_db and events[0]["source"]["gtid"]
    fields = redis_client.xrange("cdc:e2e")[0][1]
    assert list(fields) == [b"df-event", b"event_id", b"idempotency_key"]
    assert fields[b"event_id"].decode() == events[0]["event_id"]


@pytest.mark.chaos
@pytest.mark.parametrize("workers", TOPOLOGIES)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_exactly_once_across_kills(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                   redis_client, fresh_db: str, sig: int, workers: str) -> None:
    """Stop the engine at several points mid-stream; every row lands exactly once, in binlog order.

    The processor holds some batches back (a busy wait on one batch in five), so with several
    workers later batches finish first: the writer must still commit in binlog order."""
    _make_items(mariadb, fresh_db)
    start = binlog_end(mariadb)
    # 60 transactions of 1..40 rows, one of 700 rows (bigger than max_events) in the middle
    expected: list[int] = []
    statements = []
    next_id = 1
    rng = random.Random(7)
    for tx in range(60):
        n = 700 if tx == 30 else rng.randint(1, 40)
        ids = list(range(next_id, next_id + n))
        next_id += n
        values = ",".join(f"({i},'v{i}',{i * 7})" for i in ids)
        statements.append(f"INSERT INTO {fresh_db}.items VALUES {values}")
        expected.extend(ids)
    mariadb.execute(*statements)
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=start,
                       batch="  batch:\n    max_events: 97\n    max_ms: 5\n", processors=_SLOW_SOME)
    stream = "cdc:e2e"
    for round_ in range(6):
        proc = start_engine(cfg, "--workers", workers)
        target = min(len(expected), (round_ + 1) * len(expected) // 5)
        try:
            wait_for(lambda t=target: redis_client.xlen(stream) >= t or redis_client.xlen(stream) == len(expected),
                     timeout=60, what=f"{target} entries")
        finally:
            code, out = stop_engine(proc, sig)
        if sig == signal.SIGTERM:
            assert code == 0, out
        if redis_client.xlen(stream) == len(expected):
            break
    proc = start_engine(cfg, "--workers", workers)
    try:
        wait_for(lambda: redis_client.xlen(stream) >= len(expected), timeout=60, what="all entries")
    finally:
        code, out = stop_engine(proc, signal.SIGTERM)
    assert code == 0, out
    events = stream_events(redis_client, stream)
    ids = [e["after"]["id"] for e in events]
    assert len(ids) == len(set(ids)), "duplicates in the stream"
    assert ids == expected
    assert all(e["tags"] == ["seen"] for e in events)


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_split_transaction_resumes_exactly(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                           redis_client, fresh_db: str, workers: str) -> None:
    _make_items(mariadb, fresh_db)
    start = binlog_end(mariadb)
    values = ",".join(f"({i},'x',{i})" for i in range(1, 1001))
    mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES {values}")
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=start,
                       batch="  batch:\n    max_events: 100\n")
    proc = start_engine(cfg, "--workers", workers)
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= 300, what="300 entries")
    finally:
        stop_engine(proc, signal.SIGKILL)
    landed = redis_client.xlen("cdc:e2e")
    assert landed % 100 == 0, "a split batch landed partly"
    proc = start_engine(cfg, "--workers", workers)
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= 1000, what="1000 entries")
    finally:
        stop_engine(proc)
    events = stream_events(redis_client, "cdc:e2e")
    assert [e["after"]["id"] for e in events] == list(range(1, 1001))
    assert [e["transaction"]["seq"] for e in events] == list(range(1000))
    assert [e["transaction"]["end"] for e in events].count(True) == 1 and events[-1]["transaction"]["end"]
    assert len({e["transaction"]["id"] for e in events}) == 1


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_alter_table_mid_stream(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                redis_client, fresh_db: str, workers: str) -> None:
    _make_items(mariadb, fresh_db)
    start = binlog_end(mariadb)
    mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES (1,'before',1)",
                    f"ALTER TABLE {fresh_db}.items ADD COLUMN color VARCHAR(10) DEFAULT 'red' AFTER v",
                    f"INSERT INTO {fresh_db}.items VALUES (2,'after','blue',2)",
                    f"ALTER TABLE {fresh_db}.items DROP COLUMN v",
                    f"UPDATE {fresh_db}.items SET n = 3 WHERE id = 2")
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=start)
    sup, t = start_supervisor(cfg, workers)
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 3, what="3 entries")
    finally:
        sup.stop.set()
        t.join(10)
    assert not t.is_alive()
    events = stream_events(redis_client, "cdc:e2e")
    assert events[0]["after"] == {"id": 1, "v": "before", "n": 1}
    assert events[1]["after"] == {"id": 2, "v": "after", "color": "blue", "n": 2}
    assert events[2]["before"] == {"id": 2, "color": "blue", "n": 2}
    assert events[2]["after"] == {"id": 2, "color": "blue", "n": 3}


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_second_instance_is_fenced(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                   redis_client, fresh_db: str, workers: str) -> None:
    _make_items(mariadb, fresh_db)
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=binlog_end(mariadb))
    first = start_engine(cfg, "--workers", workers)
    try:
        mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES (1,'a',1)")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 1, what="first entry")
        second = start_engine(cfg, "--workers", workers)
        try:
            mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES (2,'b',2)")
            mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES (3,'c',3)")
            wait_for(lambda: first.poll() is not None or second.poll() is not None, timeout=30,
                     what="one instance to stop")
        finally:
            code2, out2 = stop_engine(second)
    finally:
        code1, out1 = stop_engine(first)
    assert 4 in (code1, code2), (out1, out2)
    assert "another instance" in (out1 + out2)
    ids = [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_js_error_stops_without_commit(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                       redis_client, fresh_db: str, workers: str) -> None:
    _make_items(mariadb, fresh_db)
    processors = """  processors:
    - type: javascript
      id: boom
      inline: |
        function processBatch(events) {
          if (events.some(e => e.after && e.after.v === 'poison')) {
            throw new Error('poison row');
          }
          return events;
        }
"""
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=binlog_end(mariadb),
                       processors=processors)
    mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES (1,'ok',1)")
    mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES (2,'poison',2)")
    code, out = start_engine(cfg, "--workers", workers, ready=False).wait(60)
    assert code not in (0, None), out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: ") and "boom" in last and "poison row" in last and "line 3" in last, out
    assert f"{fresh_db}.items" in last
    assert "Traceback" not in out
    ids = [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")]
    assert 2 not in ids


@pytest.mark.parametrize("batch", [
    "  batch:\n    max_bytes: 2048\n",
    "  batch:\n    max_events: 64\n    respect_source_tx: false\n",
], ids=["max_bytes", "ignore_tx_boundaries"])
@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_batch_limits_split_and_resume(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                       redis_client, fresh_db: str, batch: str, workers: str) -> None:
    _make_items(mariadb, fresh_db)
    start = binlog_end(mariadb)
    expected: list[int] = []
    statements = []
    for tx in range(12):
        ids = range(len(expected) + 1, len(expected) + 1 + (250 if tx == 5 else 30))
        expected.extend(ids)
        statements.append(f"INSERT INTO {fresh_db}.items VALUES " +
                          ",".join(f"({i},'{'x' * 30}',{i})" for i in ids))
    mariadb.execute(*statements)
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=start, batch=batch)
    proc = start_engine(cfg, "--workers", workers)
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= 200, what="200 entries")
    finally:
        stop_engine(proc, signal.SIGKILL)
    proc = start_engine(cfg, "--workers", workers)
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= len(expected), what="all entries")
    finally:
        code, out = stop_engine(proc)
    assert code == 0, out
    events = stream_events(redis_client, "cdc:e2e")
    assert [e["after"]["id"] for e in events] == expected
    ends = [e["after"]["id"] for e in events if e["transaction"]["end"]]
    assert len(ends) == 12
    checkpoint = redis_client.get("{e2e}:deltaforge:checkpoint:e2e:stream")
    assert b'"skip_rows":0' in checkpoint
