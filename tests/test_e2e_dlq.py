"""Dead letters end to end, through ``deltaforge run`` against real MariaDB and Redis.

A poison row (the user's processBatch throws on it; or the decoder cannot decode it) goes to
``<stream>:dlq`` with its error; every other row reaches the stream exactly once and in binlog
order, across SIGKILLs of the engine. The default (``stop``) is covered by
tests/test_e2e.py::test_js_error_stops_without_commit and
tests/test_e2e_more.py::test_poison_row_stops_after_committing_what_came_before.
"""

from __future__ import annotations

import base64
import signal
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from deltaforge.model import Batch, Position
from deltaforge.source.binlog import BinlogSource
from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import (
    TOPOLOGIES,
    TOPOLOGIES_SLOW,
    binlog_end,
    start_engine,
    stop_engine,
    stream_events,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

STREAM = "cdc:e2e"
DLQ = "cdc:e2e:dlq"

# line 4 throws on a poison row
PROCESSORS = """  processors:
    - type: javascript
      id: keys
      on_error: dlq
      inline: |
        function processBatch(events) {
          for (const e of events) {
            if (e.after && e.after.v === 'poison') {
              throw new Error('poison row ' + e.after.id);
            }
            e.after._cache_keys = ['item:' + e.after.id];
          }
          return events;
        }
"""


def dead_letters(client: Any, stream: str = DLQ) -> list[dict[str, Any]]:
    out = []
    for _, fields in client.xrange(stream):
        assert list(fields) == [b"df-dlq", b"event_id"]
        out.append(orjson.loads(fields[b"df-dlq"]))
    return out


@pytest.mark.parametrize("workers", TOPOLOGIES_SLOW)  # five engine runs: ~7 s each with processes
def test_poison_rows_go_to_the_dlq_exactly_once_across_kills(tmp_path: Path, mariadb: MariaDBServer,
                                                            redis_server: RedisServer, redis_client: Any,
                                                            fresh_db: str, workers: str) -> None:
    table = f"{fresh_db}.items"
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(40))")
    start = binlog_end(mariadb)
    # 600 transactions of 1..9 rows; every 13th row is poison (alone in its transaction, first, last or
    # in the middle of one, depending on where it falls)
    statements, expected, poison = [], [], []
    next_id = 1
    for tx in range(600):
        n = 1 + (tx * 7) % 9
        ids = list(range(next_id, next_id + n))
        next_id += n
        values = []
        for i in ids:
            bad = i % 13 == 0
            (poison if bad else expected).append(i)
            values.append(f"({i},'{'poison' if bad else f'v{i}'}')")
        statements.append(f"INSERT INTO {table} VALUES {','.join(values)}")
    mariadb.execute(*statements)
    cfg = write_config(tmp_path, mariadb, redis_server, [table], start=start, processors=PROCESSORS,
                       batch="  batch:\n    max_events: 11\n    max_ms: 5\n")
    kills = []  # (stream length, DLQ length) at each kill, for the failure message
    proc = start_engine(cfg, "--workers", workers)
    try:
        wait_for(lambda: redis_client.xlen(STREAM) >= len(expected) // 3, timeout=60, what="a third of the rows")
    finally:
        stop_engine(proc, signal.SIGKILL)
        kills.append((redis_client.xlen(STREAM), redis_client.xlen(DLQ)))
    for _ in range(3):  # kill it right after it starts committing again, twice, then let it finish
        proc = start_engine(cfg, "--workers", workers)
        try:
            seen = redis_client.xlen(STREAM)
            wait_for(lambda s=seen: redis_client.xlen(STREAM) > s or redis_client.xlen(STREAM) >= len(expected),
                     timeout=60, what="progress")
        finally:
            code, out = stop_engine(proc, signal.SIGKILL)
            kills.append((redis_client.xlen(STREAM), redis_client.xlen(DLQ)))
    proc = start_engine(cfg, "--workers", workers)
    try:
        # one more poison row, so that the last run surely commits a dead letter (and logs it)
        mariadb.execute(f"INSERT INTO {table} VALUES ({next_id},'v{next_id}'),({next_id + 1},'poison')")
        expected.append(next_id)
        poison.append(next_id + 1)
        wait_for(lambda: redis_client.xlen(STREAM) >= len(expected) and redis_client.xlen(DLQ) >= len(poison),
                 timeout=60, what="every row")
    finally:
        code, out = stop_engine(proc, signal.SIGTERM)
    assert code == 0, out
    print("stream/DLQ lengths at the kills:", kills, "final:", len(expected), len(poison))
    events = stream_events(redis_client, STREAM)
    assert [e["after"]["id"] for e in events] == expected, kills  # exactly once, in binlog order
    assert all(e["after"]["_cache_keys"] == [f"item:{e['after']['id']}"] for e in events)
    dead = dead_letters(redis_client)
    assert [d["event"]["after"]["id"] for d in dead] == poison, kills  # exactly once, in binlog order
    for d in dead:
        i = d["event"]["after"]["id"]
        assert d["stage"] == "processor" and d["processor"] == "keys" and d["table"] == table
        assert f"poison row {i}" in d["error"] and "at line 4 of spec.processors[0].inline" in d["error"]
        assert d["file"] == d["event"]["source"]["file"] and d["row"] == d["event"]["source"]["row"]
        assert d["pos"] > 0 and d["gtid"] and d["event_id"] == d["event"]["event_id"]
        assert d["event"]["source"]["pos"] == d["pos"] and d["event"]["after"]["v"] == "poison"
    # the last run logged each of its dead letters once, as a warning naming processor, table and position
    warned = [line for line in out.splitlines() if "dead letter from processor keys" in line]
    assert len(warned) == len({line for line in warned})
    assert warned, f"the last run logged none of its dead letters:\n{out}"
    last = dead[-1]
    assert f"dead letter from processor keys: {table} at {last['file']}:{last['pos']} row {last['row']}: " in warned[-1]
    assert "Traceback" not in out


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_undecodable_rows_go_to_the_dlq_with_their_bytes(tmp_path: Path, mariadb: MariaDBServer,
                                                        redis_server: RedisServer, redis_client: Any,
                                                        fresh_db: str, workers: str) -> None:
    """A value the decoder cannot render (a charset Python lacks): with on_decode_error: dlq the rows
    event goes to the DLQ, raw, and the rest of the binlog flows on; a SIGKILL and restart repeat nothing."""
    table = f"{fresh_db}.odd"
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(10) CHARACTER SET swe7)")
    start = binlog_end(mariadb)
    mariadb.execute(f"INSERT INTO {table} VALUES (1,NULL)",
                    f"INSERT INTO {table} VALUES (2,'abc')",            # poison, alone
                    f"INSERT INTO {table} VALUES (3,NULL),(4,NULL)",
                    "BEGIN",
                    f"INSERT INTO {table} VALUES (5,NULL)",
                    f"INSERT INTO {table} VALUES (6,'xyz'),(7,NULL)",   # one rows event: both rows dead
                    f"INSERT INTO {table} VALUES (8,NULL)",
                    "COMMIT")
    cfg = write_config(tmp_path, mariadb, redis_server, [table], start=start)
    cfg.write_text(cfg.read_text().replace("      id: src\n", "      id: src\n      on_decode_error: dlq\n"))
    proc = start_engine(cfg, "--workers", workers)
    try:
        wait_for(lambda: redis_client.xlen(STREAM) >= 5 and redis_client.xlen(DLQ) >= 2, timeout=60,
                 what="5 rows and 2 dead letters")
    finally:
        code, out = stop_engine(proc, signal.SIGKILL)
    proc = start_engine(cfg, "--workers", workers)
    try:
        mariadb.execute(f"INSERT INTO {table} VALUES (9,NULL)")
        wait_for(lambda: redis_client.xlen(STREAM) >= 6, timeout=60, what="the row written after the restart")
    finally:
        code, out = stop_engine(proc, signal.SIGTERM)
    assert code == 0, out
    assert [e["after"]["id"] for e in stream_events(redis_client, STREAM)] == [1, 3, 4, 5, 8, 9]
    dead = dead_letters(redis_client)
    assert len(dead) == 2
    for d in dead:
        assert d["stage"] == "decoder" and d["processor"] is None and d["table"] == table
        assert "swe7" in d["error"] and table in d["error"] and d["event"] is None and d["row"] is None
        assert d["pos"] > 0 and d["gtid"]
        assert base64.b64decode(d["raw"])  # the rows event's body, as the binlog holds it
    assert b"abc" in base64.b64decode(dead[0]["raw"]) and b"xyz" in base64.b64decode(dead[1]["raw"])
    assert dead[0]["pos"] < dead[1]["pos"]


def _read_until(mariadb: MariaDBServer, table: str, start: str, end: tuple[str, int],
                resume: Position | None = None) -> list[Batch]:
    """Batches of a dlq-mode reader from ``start`` (or ``resume``) until it reaches binlog position ``end``."""
    stop = threading.Event()
    source = BinlogSource(dsn=mariadb.dsn(), tables=[table], pipeline="dlq-split", tenant=None, start=start,
                          max_events=2, max_ms=0, stop=stop)
    source.on_decode_error = "dlq"
    batches: list[Batch] = []
    try:
        source.open(resume)
        for batch in source.batches():
            batches.append(batch)
            if (batch.end.file, batch.end.pos) >= end:
                stop.set()
    finally:
        source.close()
    return batches


def _tokens(batches: list[Batch]) -> list[tuple[str, int]]:
    """Rows and dead letters in binlog order: ("row", id) and ("dead", rows event position)."""
    out: list[tuple[str, int]] = []
    for b in batches:
        items = [(k, ("row", e.after["id"])) for k, e in zip(b.keys, b.events, strict=True)]
        items += [(k, ("dead", d.pos)) for k, d in zip(b.dead_keys, b.dead, strict=True)]
        out += [t for _, t in sorted(items)]
    return out


# no engine, no topology: the reader (BinlogSource) alone, resumed from each batch end
def test_dead_rows_in_a_split_transaction_resume_exactly(mariadb: MariaDBServer, fresh_db: str) -> None:
    """Undecodable rows events inside a transaction larger than the batch: resuming from the end of
    ANY batch (the checkpoint a sink would hold) yields exactly the rows and dead letters after it."""
    table = f"{fresh_db}.odd"
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(10) CHARACTER SET swe7)")
    start = binlog_end(mariadb)
    mariadb.execute("BEGIN",
                    *(f"INSERT INTO {table} VALUES ({i},{'NULL' if i % 3 else repr('bad')})" for i in range(1, 12)),
                    f"INSERT INTO {table} VALUES (12,NULL),(13,NULL),(14,'bad')",
                    f"INSERT INTO {table} VALUES (15,NULL)",
                    "COMMIT",
                    f"INSERT INTO {table} VALUES (16,NULL)")
    file, pos = binlog_end(mariadb).rsplit(":", 1)
    end = (file, int(pos))
    batches = _read_until(mariadb, table, start, end)
    everything = _tokens(batches)
    assert [t for t in everything if t[0] == "row"] == [("row", i) for i in (1, 2, 4, 5, 7, 8, 10, 11, 15, 16)]
    assert len([t for t in everything if t[0] == "dead"]) == 4  # 3, 6, 9 and the event of 12..14
    assert any(b.end.skip_rows and b.dead for b in batches)  # dead letters inside the split transaction
    assert len([b for b in batches if b.end.skip_rows]) >= 4  # the transaction was split, often
    for i, batch in enumerate(batches[:-1]):
        resumed = _tokens(_read_until(mariadb, table, start, end, resume=batch.end))
        assert resumed == _tokens(batches[i + 1:]), f"resume from {batch.end}"
