"""Property test: every batch's ``end`` is exactly where reading must resume (issue 7 item 3).

Hypothesis generates transaction shapes (how many transactions, which tables, captured or not,
multi-row statements versus one statement per row, small and large rows, inserts, updates and
deletes) and batch limits (``max_events``, ``max_bytes``, ``respect_source_tx``). Each example
writes them to a fresh database on the session MariaDB, then reads them with
:class:`BinlogSource` twice:

* the full read: one reader, every batch, up to a marker row written last;
* the restart chain: a reader delivers ONE batch and stops; a new reader resumes from that
  batch's ``end``; and so on up to the marker, as a pipeline stopped after every commit would.

The chain's concatenated events must equal the full read (same rows, same order, nothing lost
or repeated), and the full read must equal what the statements did (a model of the tables).
A reader resumed from the end of each of the full read's batches must continue it exactly, too.
Limits that cut inside transactions, and batches holding complete transactions followed by
part of the next one, are what the shapes aim at.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deltaforge.model import Batch, Position
from deltaforge.source.binlog import BinlogSource
from deltaforge.testing import MariaDBServer

pytestmark = pytest.mark.integration

CAPTURED = ("a", "b")
NOT_CAPTURED = "x"
MARKER = "m"
SMALL = st.integers(1, 40)
LARGE = st.integers(1500, 6000)  # a few of these fill a rows event (binlog_row_event_max_size 8 KiB)
READ_TIMEOUT_S = 30.0
END = {"id": 0, "n": 0, "v": "end"}

_dbs = itertools.count(1)


@dataclass(frozen=True)
class Stmt:
    kind: str  # insert | update | delete
    table: str
    sizes: tuple[int, ...] = ()  # insert: one value length per row
    multi_row: bool = True  # insert: one statement for all rows, or one statement per row
    count: int = 0  # update/delete: the `count` lowest ids of the table


@dataclass
class Limits:
    max_events: int
    max_bytes: int
    respect_source_tx: bool


@dataclass
class Model:
    """The tables' rows as the statements leave them, and the row events they must produce."""

    rows: dict[str, dict[int, dict[str, Any]]] = field(default_factory=lambda: {t: {} for t in (*CAPTURED, NOT_CAPTURED)})
    next_id: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    expected: list[tuple[Any, ...]] = field(default_factory=list)


tables = st.sampled_from((*CAPTURED, NOT_CAPTURED))
inserts = st.builds(
    Stmt, kind=st.just("insert"), table=tables,
    sizes=st.lists(st.one_of(SMALL, SMALL, SMALL, LARGE), min_size=1, max_size=3).map(tuple),
    multi_row=st.booleans())
changes = st.builds(Stmt, kind=st.sampled_from(("update", "delete")), table=tables, count=st.integers(1, 3))
transactions = st.lists(st.one_of(inserts, inserts, changes), min_size=1, max_size=3)
shapes = st.lists(transactions, min_size=1, max_size=5)
# max_bytes is compared with an estimate of ~30 bytes per small row and the value's size for a
# large one: the middle values cut after a few small rows or at every large one
limits = st.builds(Limits, max_events=st.sampled_from((1, 2, 3, 5, 1000)),
                   max_bytes=st.sampled_from((1, 60, 100, 200, 600, 5000, 16 * 1024 * 1024)),
                   respect_source_tx=st.booleans())


def _sql(db: str, stmt: Stmt, model: Model) -> list[str]:
    """The SQL of one statement; records the row events it must produce in ``model``."""
    table = model.rows[stmt.table]
    name = f"{db}.{stmt.table}"
    captured = stmt.table in CAPTURED
    if stmt.kind == "insert":
        values = []
        for size in stmt.sizes:
            row = {"id": next(model.next_id), "n": size, "v": chr(ord("a") + size % 26) * size}
            table[row["id"]] = row
            values.append(f"({row['id']}, {row['n']}, '{row['v']}')")
            if captured:
                model.expected.append((name, "c", None, row))
        if stmt.multi_row:
            return [f"INSERT INTO {name} VALUES {', '.join(values)}"]
        return [f"INSERT INTO {name} VALUES {v}" for v in values]
    ids = sorted(table)[:stmt.count]
    if not ids:
        return []
    where = f"WHERE id IN ({', '.join(map(str, ids))})"
    for i in ids:  # a multi-row UPDATE/DELETE by primary key logs its rows in key order
        before = table[i]
        if stmt.kind == "update":
            after = {**before, "n": before["n"] + 1}
            table[i] = after
            if captured:
                model.expected.append((name, "u", before, after))
        else:
            del table[i]
            if captured:
                model.expected.append((name, "d", before, None))
    return [f"UPDATE {name} SET n = n + 1 {where}" if stmt.kind == "update" else f"DELETE FROM {name} {where}"]


def _write(server: MariaDBServer, db: str, shape: list[list[Stmt]]) -> tuple[Position, list[tuple[Any, ...]]]:
    """Create the tables, write the transactions and the marker; returns (start position, expected events)."""
    server.execute(f"CREATE DATABASE {db}",
                   *(f"CREATE TABLE {db}.{t} (id INT PRIMARY KEY, n INT NOT NULL, v TEXT NOT NULL)"
                     for t in (*CAPTURED, NOT_CAPTURED, MARKER)))
    file, pos = server.execute("SHOW MASTER STATUS")[0][:2]
    gtid = server.execute(f"SELECT BINLOG_GTID_POS('{file}', {pos})")[0][0]
    start = Position(file=str(file), pos=int(pos), gtid=str(gtid) if gtid else None)
    model = Model()
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            for tx in shape:
                cur.execute("BEGIN")
                for stmt in tx:
                    for sql in _sql(db, stmt, model):
                        cur.execute(sql)
                cur.execute("COMMIT")
            cur.execute(f"INSERT INTO {db}.{MARKER} VALUES (0, 0, 'end')")
            # A reader wrongly resumed past the marker finds these instead of waiting forever (two
            # transactions: a wrong skip_rows can hide the first's rows, never the second's).
            cur.execute(f"INSERT INTO {db}.{MARKER} VALUES (1, 1, 'after the end')")
            cur.execute(f"INSERT INTO {db}.{MARKER} VALUES (2, 2, 'after the end')")
    finally:
        conn.close()
    return start, [*model.expected, (f"{db}.{MARKER}", "c", None, END)]


def _key(batch: Batch) -> list[tuple[Any, ...]]:
    out = []
    for e in batch.events:
        assert e.transaction is not None
        out.append((e.table, e.op, e.before, e.after, e.transaction.seq, e.transaction.end))
    return out


def _upto_end(events: list[tuple[Any, ...]], db: str) -> tuple[list[tuple[Any, ...]], bool]:
    """The events up to the first marker-table row, and whether that row is the END marker."""
    for i, e in enumerate(events):
        if e[0] == f"{db}.{MARKER}":
            return events[:i + 1], e[3] == END
    return events, False


def _read(server: MariaDBServer, db: str, start: Position, lim: Limits, *, one_batch: bool) -> list[Batch]:
    """Batches from ``start``: one, or all up to the batch holding the marker row."""
    stop = threading.Event()
    source = BinlogSource(
        dsn=server.dsn(), tables=[f"{db}.{t}" for t in (*CAPTURED, MARKER)], pipeline="split-property",
        tenant=None, max_events=lim.max_events, max_bytes=lim.max_bytes, max_ms=60_000,
        respect_source_tx=lim.respect_source_tx, stop=stop)
    guard = threading.Timer(READ_TIMEOUT_S, stop.set)  # a lost marker must fail, not hang
    guard.start()
    out: list[Batch] = []
    try:
        source.open(start)
        batches = source.batches()
        try:
            for batch in batches:
                out.append(batch)
                if one_batch or any(e.table == f"{db}.{MARKER}" for e in batch.events):
                    break
        finally:
            batches.close()
    finally:
        guard.cancel()
        source.close()
    return out


@pytest.fixture
def fast_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build pymysql's default TLS context once, not per connection (~35 ms each; this test opens hundreds).

    The context is only used if the server offers TLS (pymysql's PREFERRED mode); the throwaway
    MariaDB does not, so nothing about the connection changes.
    """
    original = pymysql.connections.Connection._create_ssl_ctx
    cache: dict[str, Any] = {}

    def create(self: Any, sslp: Any) -> Any:
        if sslp != {}:
            return original(self, sslp)
        if "ctx" not in cache:
            cache["ctx"] = original(self, sslp)
        return cache["ctx"]

    monkeypatch.setattr(pymysql.connections.Connection, "_create_ssl_ctx", create)


def _check(server: MariaDBServer, shape: list[list[Stmt]], lim: Limits) -> None:
    db = f"split{next(_dbs)}"
    try:
        start, expected = _write(server, db, shape)
        full = _read(server, db, start, lim, one_batch=False)
        assert all(len(b.events) <= max(1, lim.max_events) for b in full)
        full_events, at_end = _upto_end([k for b in full for k in _key(b)], db)
        assert at_end and [k[:4] for k in full_events] == expected, "the full read differs from what was written"

        chain: list[tuple[Any, ...]] = []
        position = start
        for _ in range(2 * len(full_events) + 2):  # ample: a batch without rows is rare (1 s idle)
            got = _read(server, db, position, lim, one_batch=True)
            assert got, f"a reader resumed at {position} delivered nothing within {READ_TIMEOUT_S:.0f}s"
            chain.extend(_key(got[0]))
            position = got[0].end
            if any(k[0] == f"{db}.{MARKER}" for k in chain):
                break
        chain, _ = _upto_end(chain, db)
        assert chain == full_events, (
            f"stopping after every batch and resuming from its end {'loses' if len(chain) < len(full_events) else 'changes'} "
            f"rows ({len(chain)} delivered, {len(full_events)} in the binlog)")

        # the same from where the long-running reader cut (its batches follow complete transactions
        # with part of the next one more often than a fresh reader's first batch does)
        offset = 0
        for batch in full[:-1]:
            offset += len(batch.events)
            got = _read(server, db, batch.end, lim, one_batch=True)
            assert got, f"a reader resumed at {batch.end} delivered nothing within {READ_TIMEOUT_S:.0f}s"
            delivered, _ = _upto_end(_key(got[0]), db)
            assert delivered == full_events[offset:offset + len(delivered)], (
                f"resuming from the end of batch {batch.seq} ({batch.end}) does not continue the full read")
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {db}")


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(shape=shapes, lim=limits)
# the shape of the reported bug: small complete transactions, then a large row cut by size
@example(shape=[[Stmt("insert", "a", (5, 6, 7))], [Stmt("insert", "b", (4000, 3), multi_row=False)]],
         lim=Limits(max_events=1000, max_bytes=600, respect_source_tx=False))
@example(shape=[[Stmt("insert", "a", (5, 6, 7))], [Stmt("insert", "b", (4000, 3), multi_row=False)]],
         lim=Limits(max_events=1000, max_bytes=600, respect_source_tx=True))
def test_resume_from_every_batch_end_reads_the_binlog_exactly(mariadb: MariaDBServer, fast_tls: None,
                                                               shape: list[list[Stmt]], lim: Limits) -> None:
    _check(mariadb, shape, lim)


@pytest.mark.parametrize("busy", [True, False])
def test_a_busy_downstream_lets_batches_grow_a_free_one_gets_each_transaction_at_once(
        mariadb: MariaDBServer, fresh_db: str, busy: bool) -> None:
    """Transactions arriving one by one (10 ms apart): while the next stages report busy, the batch
    grows (here up to max_events, max_ms being long); when they are free, each transaction leaves
    as soon as the socket is idle (latency at low traffic)."""
    import time

    mariadb.execute(f"CREATE TABLE {fresh_db}.t (id INT PRIMARY KEY)")
    file, pos = mariadb.execute("SHOW MASTER STATUS")[0][:2]
    stop = threading.Event()
    source = BinlogSource(dsn=mariadb.dsn(), tables=[f"{fresh_db}.t"], pipeline="hold", tenant=None,
                          max_events=10, max_ms=60_000, stop=stop, start=f"{file}:{pos}")
    source.downstream_busy = (lambda: True) if busy else (lambda: False)

    def write() -> None:
        for i in range(30):
            mariadb.execute(f"INSERT INTO {fresh_db}.t VALUES ({i})")
            time.sleep(0.01)

    writer = threading.Thread(target=write)
    guard = threading.Timer(READ_TIMEOUT_S, stop.set)
    guard.start()
    sizes: list[int] = []
    try:
        source.open(None)
        writer.start()
        batches = source.batches()
        for batch in batches:
            sizes.append(len(batch.events))
            if sum(sizes) >= 30:
                break
        batches.close()
    finally:
        guard.cancel()
        writer.join()
        source.close()
    assert sum(sizes) == 30
    if busy:
        assert sizes == [10, 10, 10]
    else:
        assert len(sizes) >= 10 and max(sizes) <= 5, sizes  # (a loaded box may bunch a few)
