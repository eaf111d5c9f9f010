"""Every row-bearing event is decoded, or the reader stops (issue 7, item 4), against real MariaDB.

- A second private MariaDB with ``log_bin_compress=ON`` writes compressed query and rows events;
  the reader must give exactly what it gives for the same statements on the uncompressed
  session server, and so must a full ``deltaforge run`` into Redis.
- MySQL's TRANSACTION_PAYLOAD_EVENT cannot be produced here (no MySQL server): the replication
  packets of real MariaDB transactions are rewritten on the way in (the framing layer only:
  pymysql's packet read on the dump connection) into payload events built to the published
  format, zstd-compressed or not. The same rewriting injects unknown event types.
"""

from __future__ import annotations

import contextlib
import logging
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from deltaforge.errors import SourceError
from deltaforge.model import Event, Position, binlog_file_number
from deltaforge.preflight import check_mysql
from deltaforge.source import binlog
from deltaforge.source.binlog import BinlogSource
from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import TOPOLOGIES, Engine, binlog_end, stream_events, wait_for, write_config
from tests.test_preflight import make_cfg

pytestmark = pytest.mark.integration

Rewrite = Callable[[bytes], list[bytes]]


@pytest.fixture(scope="module")
def compressed_mariadb() -> Iterator[MariaDBServer]:
    server = MariaDBServer(server_id=7, extra_args=("--log-bin-compress=ON", "--log-bin-compress-min-len=10"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------ reading


def master(server: MariaDBServer) -> tuple[str, int]:
    file, pos = server.execute("SHOW MASTER STATUS")[0][:2]
    return str(file), int(pos)


def last_commit(server: MariaDBServer) -> tuple[str, int]:
    """The end of the newest transaction (its Xid) in the current binlog. After a FLUSH BINARY LOGS
    MariaDB writes a Binlog_checkpoint event into the new file when it gets to it, possibly after
    later transactions: the binlog's end can lie past the last commit, where no batch ever ends."""
    file, _ = master(server)
    ends = [int(r[4]) for r in server.execute(f"SHOW BINLOG EVENTS IN '{file}'") if str(r[2]) == "Xid"]
    return file, ends[-1]


def read(server: MariaDBServer, tables: list[str], start: tuple[str, int], until: tuple[str, int],
         timeout: float = 40.0) -> tuple[list[Event], list[Position]]:
    """Events and batch ends from ``start`` until a batch commits ``until`` (a SourceError propagates)."""
    src = BinlogSource(dsn=server.dsn(), tables=tables, pipeline="compressed-test", tenant="acme",
                       start=f"{start[0]}:{start[1]}", max_ms=20)
    src.open(None)
    events: list[Event] = []
    ends: list[Position] = []
    goal = (binlog_file_number(until[0]), until[1])
    timer = threading.Timer(timeout, src.stop.set)
    timer.start()
    try:
        for batch in src.batches():
            events += batch.events
            ends.append(batch.end)
            if (binlog_file_number(batch.end.file), batch.end.pos) >= goal:
                src.stop.set()
    finally:
        timer.cancel()
        src.close()
    assert ends and (ends[-1].file, ends[-1].pos) == until, (ends, until)
    return events, ends


def norm(e: Event, *, row: bool = True) -> tuple[Any, ...]:
    """What must not depend on how the server wrote the binlog (positions, server, time excluded)."""
    assert e.source is not None and e.transaction is not None
    return (e.table.split(".", 1)[1], e.op, e.before, e.after, e.transaction.seq, e.transaction.end,
            e.source.row if row else None)


# ------------------------------------------------------------------ the workload

WIDE = """CREATE TABLE {db}.wide (
  id INT PRIMARY KEY, big BIGINT UNSIGNED, amount DECIMAL(20,6), f FLOAT, d DOUBLE,
  name VARCHAR(200) CHARACTER SET utf8mb4, note LONGTEXT, tiny TINYTEXT, pic LONGBLOB, raw VARBINARY(64),
  dt DATETIME(6), ts TIMESTAMP(3) NULL, day DATE, tm TIME(2), yr YEAR, kind ENUM('a','b','c'),
  tags SET('x','y','z'), bits BIT(12), doc JSON)"""


def workload(db: str) -> list[list[str]]:
    """Statement groups (one connection each; BEGIN..COMMIT groups are one transaction)."""
    row = ("({id}, 18446744073709551615, -12345.678901, 1.5, 2.25e-300, 'héllo ✓ 😀 {id}', "
           "REPEAT('long text {id} ', 12000), 'tiny', REPEAT(UNHEX('00FF10EE'), 40000), UNHEX('DEADBEEF00'), "
           "'2024-02-29 23:59:59.123456', '2024-01-01 00:00:00.500', '1999-12-31', '-838:59:59.99', 2024, "
           "'b', 'x,z', b'101010101010', '{{\"k\": [1, 2, {{\"deep\": \"{id}\"}}]}}')")
    return [
        [f"INSERT INTO {db}.wide VALUES {row.format(id=1)}, {row.format(id=2)}, {row.format(id=3)}"],
        [f"INSERT INTO {db}.other VALUES (1, REPEAT('not captured ', 500))"],
        ["BEGIN",
         f"INSERT INTO {db}.wide (id, name) VALUES (4, 'short')",
         f"INSERT INTO {db}.other VALUES (2, REPEAT('still not captured ', 500))",
         f"UPDATE {db}.wide SET note = REPEAT('zz', 30000), pic = NULL, kind = 'c' WHERE id = 1",
         "COMMIT"],
        [f"UPDATE {db}.wide SET big = big - 1, tags = '' WHERE id IN (2, 3)"],
        [f"ALTER TABLE {db}.wide ADD COLUMN extra VARCHAR(40) DEFAULT 'added by a compressed query event'"],
        [f"INSERT INTO {db}.wide (id, extra) VALUES (5, 'after the ALTER')"],
        [f"DELETE FROM {db}.wide WHERE id IN (3, 4)"],
        [f"INSERT INTO {db}.wide (id) VALUES (6)"],
    ]


def apply(server: MariaDBServer, db: str) -> tuple[tuple[str, int], tuple[str, int]]:
    server.execute(f"CREATE DATABASE IF NOT EXISTS {db}", WIDE.format(db=db),
                   f"CREATE TABLE {db}.other (id INT PRIMARY KEY, v TEXT)")
    start = master(server)
    for group in workload(db):
        server.execute(*group)
    return start, master(server)


# the reader alone (BinlogSource), no engine: no topology to vary
def test_compressed_binlog_reads_like_an_uncompressed_one(mariadb: MariaDBServer, compressed_mariadb: MariaDBServer,
                                                         fresh_db: str) -> None:
    tables = [f"{fresh_db}.wide"]
    plain_start, plain_end = apply(mariadb, fresh_db)
    comp_start, comp_end = apply(compressed_mariadb, fresh_db)

    # the compressed server really wrote every compressed kind this test is about
    kinds = {str(r[2]) for r in compressed_mariadb.execute(f"SHOW BINLOG EVENTS IN '{comp_start[0]}'")}
    assert {"Query_compressed", "Write_rows_compressed_v1", "Update_rows_compressed_v1",
            "Delete_rows_compressed_v1"} <= kinds, kinds
    assert "Write_rows_compressed_v1" not in {str(r[2]) for r in mariadb.execute(f"SHOW BINLOG EVENTS IN '{plain_start[0]}'")}

    plain, _ = read(mariadb, tables, plain_start, plain_end)
    comp, comp_ends = read(compressed_mariadb, tables, comp_start, comp_end)
    assert len(plain) == 3 + 2 + 2 + 1 + 2 + 1
    assert [norm(e) for e in comp] == [norm(e) for e in plain]
    assert comp[0].after is not None and len(comp[0].after["note"]) > 100_000  # long values survived inflation
    assert comp[7].after is not None and comp[7].after["extra"] == "after the ALTER"
    assert comp[10].after is not None and comp[10].after["extra"] == "added by a compressed query event"
    assert len({e.event_id for e in comp}) == len(comp)
    assert {e.table for e in comp} == {f"{fresh_db}.wide"}  # the uncaptured table's compressed rows stay out
    # each commit point is the end of a transaction on its own server, the last one the binlog's end
    assert (comp_ends[-1].file, comp_ends[-1].pos) == comp_end and comp_ends[-1].gtid


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_compressed_binlog_end_to_end_into_redis(tmp_path: Path, compressed_mariadb: MariaDBServer,
                                                 redis_server: RedisServer, redis_client: Any, workers: str) -> None:
    """``deltaforge run`` on the compressed server, in every topology: every change arrives."""
    db = "e2e_compressed"
    compressed_mariadb.execute(f"DROP DATABASE IF EXISTS {db}", f"CREATE DATABASE {db}",
                               f"CREATE TABLE {db}.items (id INT PRIMARY KEY, v LONGTEXT)")
    cfg = write_config(tmp_path, compressed_mariadb, redis_server, [f"{db}.items"],
                       start=binlog_end(compressed_mariadb))
    engine = Engine(cfg, "--workers", workers).wait_ready()
    try:
        compressed_mariadb.execute(f"INSERT INTO {db}.items VALUES (1, REPEAT('a', 5000)), (2, 'two')",
                                   f"UPDATE {db}.items SET v = REPEAT('b', 7000) WHERE id = 1",
                                   f"DELETE FROM {db}.items WHERE id = 2")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 4 or engine.poll() is not None, 60, "4 entries")
    finally:
        code, out = engine.stop()
    assert code == 0, out
    events = stream_events(redis_client, "cdc:e2e")
    assert [(e["op"], (e["after"] or e["before"])["id"]) for e in events] == [("c", 1), ("c", 2), ("u", 1), ("d", 2)]
    assert events[2]["after"]["v"] == "b" * 7000 and events[2]["before"]["v"] == "a" * 5000


# the preflight (deltaforge check), no engine: no topology to vary
def test_check_reports_log_bin_compress_as_supported(compressed_mariadb: MariaDBServer, mariadb: MariaDBServer) -> None:
    compressed_mariadb.execute("CREATE DATABASE IF NOT EXISTS pf", "CREATE TABLE IF NOT EXISTS pf.t (id INT PRIMARY KEY)")
    results, _ = check_mysql(make_cfg(compressed_mariadb.dsn(), ["pf.t"]))
    lines = [r.line() for r in results]
    (line,) = [x for x in lines if "log_bin_compress" in x]
    assert line.startswith("ok   mysql: log_bin_compress is ON (events over 10 bytes are zlib-compressed)"), line
    assert "supported" in line
    assert all(r.ok for r in results), lines
    mariadb.execute("CREATE DATABASE IF NOT EXISTS pf", "CREATE TABLE IF NOT EXISTS pf.t (id INT PRIMARY KEY)")
    results, _ = check_mysql(make_cfg(mariadb.dsn(), ["pf.t"]))
    assert not [r for r in results if "compress" in r.detail]  # off: no line


# ------------------------------------------------------------ the framing layer
# BinlogSource driven directly: the rewriting patches this process, which a --workers N reader would not see


@contextlib.contextmanager
def rewriting(monkeypatch: pytest.MonkeyPatch, rewrite: Rewrite) -> Iterator[None]:
    """Pass every binlog event packet of the dump connection through ``rewrite`` (0..n packets out).

    The reader's socket seam (``binlog.dump_socket``) is wrapped: packets are re-framed between
    the server's socket and the reader, so the reader's own framing sees the rewritten stream.
    """
    real_read_ahead = binlog.read_ahead
    ahead: list[bytes] = []

    def read_ahead(conn: Any) -> bytes:
        ahead.append(real_read_ahead(conn))
        return b""  # served, rewritten, by the wrapper below

    monkeypatch.setattr(binlog, "read_ahead", read_ahead)
    monkeypatch.setattr(binlog, "dump_socket", lambda conn: _Rewriter(conn._sock, ahead.pop(), rewrite))
    yield


class _Rewriter:
    """A socket-like wrapper that rewrites whole event packets (tests only)."""

    def __init__(self, sock: Any, ahead: bytes, rewrite: Rewrite) -> None:
        self._sock = sock
        self._in = bytearray(ahead)
        self._out = bytearray()
        self._rewrite = rewrite
        self._pump()

    def _pump(self) -> None:
        while len(self._in) >= 4:
            n = int.from_bytes(self._in[:3], "little")
            if len(self._in) < 4 + n:
                return
            data = bytes(self._in[4:4 + n])
            del self._in[:4 + n]
            out = [data] if len(data) < 20 or data[0] != 0 else self._rewrite(data)  # EOF/error: not an event
            for p in out:
                self._out += len(p).to_bytes(3, "little") + b"\x01" + p

    def pending(self) -> int:
        return len(self._out)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def recv_into(self, view: Any) -> int:
        while not self._out:
            chunk = self._sock.recv(65536)
            if not chunk:
                return 0
            self._in += chunk
            self._pump()
        n = min(len(view), len(self._out))
        view[:n] = self._out[:n]
        del self._out[:n]
        return n


def etype(packet: bytes) -> int:
    return packet[5]  # OK byte, then the 19-byte header: timestamp(4) type(1) ...


def log_pos(packet: bytes) -> int:
    return int(struct.unpack_from("<I", packet, 14)[0])


def packet(event_type: int, body: bytes, end: int, flags: int = 0) -> bytes:
    """An event packet as MariaDB sends it: OK byte, header, body, CRC32 footer."""
    head = struct.pack("<IBIIIH", 1_700_000_000, event_type, 1, 19 + len(body) + 4, end, flags)
    return b"\x00" + head + body + struct.pack("<I", zlib.crc32(head + body))


def inner_event(pkt: bytes) -> bytes:
    """An event as it sits in a transaction payload: no OK byte, no checksum, length fixed."""
    ev = bytearray(pkt[1:-4])
    ev[9:13] = struct.pack("<I", len(ev))
    return bytes(ev)


def packed(n: int) -> bytes:
    if n < 251:
        return bytes([n])
    return b"\xfd" + n.to_bytes(3, "little") if n < 1 << 24 else b"\xfe" + n.to_bytes(8, "little")


def payload_packet(inner: bytes, compression: str, end: int) -> bytes:
    data = zstandard.ZstdCompressor(level=3).compress(inner) if compression == "zstd" else inner
    fields = [(2, 0 if compression == "zstd" else 255), *([(3, len(inner))] if compression == "zstd" else []),
              (1, len(data))]
    body = b"".join(packed(t) + packed(len(packed(v))) + packed(v) for t, v in fields) + b"\x00" + data
    return packet(40, body, end)


def to_payloads(db: str, compression: str, made: list[int]) -> Rewrite:
    """From a table map of ``db`` to the Xid: the transaction's events, wrapped in one payload event."""
    held: list[bytes] = []

    def rewrite(data: bytes) -> list[bytes]:
        if not held and not (etype(data) == 19 and db.encode() in data):
            return [data]
        held.append(data)
        if etype(data) != 16:
            return []
        inner = b"".join(inner_event(p) for p in held)
        end = log_pos(held[-1])
        held.clear()
        made.append(end)
        return [payload_packet(inner, compression, end)]

    return rewrite


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_mysql_transaction_payloads_read_like_the_plain_transactions(
        monkeypatch: pytest.MonkeyPatch, mariadb: MariaDBServer, fresh_db: str, compression: str) -> None:
    db = fresh_db
    mariadb.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY, v TEXT, b BLOB)")
    start = master(mariadb)
    mariadb.execute(f"INSERT INTO {db}.t VALUES (1, REPEAT('x', 3000), UNHEX('00FF')), (2, 'two', NULL)")
    mariadb.execute("BEGIN", f"INSERT INTO {db}.t VALUES (3, 'three', NULL)",
                    f"UPDATE {db}.t SET v = 'one', b = REPEAT(UNHEX('AB'), 999) WHERE id = 1",
                    f"DELETE FROM {db}.t WHERE id = 2", "COMMIT")
    mariadb.execute(f"DELETE FROM {db}.t WHERE id = 3")
    end = master(mariadb)
    plain, plain_ends = read(mariadb, [f"{db}.t"], start, end)

    made: list[int] = []
    with rewriting(monkeypatch, to_payloads(db, compression, made)):
        wrapped, wrapped_ends = read(mariadb, [f"{db}.t"], start, end)
    assert len(made) == 3, made  # every transaction came as one payload event
    assert len(plain) == 6
    # row numbers restart per rows event in the plain binlog and run across a payload (its one position)
    assert [norm(e, row=False) for e in wrapped] == [norm(e, row=False) for e in plain]
    assert [e.source.row for e in wrapped if e.source] == [0, 1, 0, 1, 2, 0]
    assert len({e.event_id for e in wrapped}) == 6
    # rows stand at their payload event's position; commit points are the payloads' ends, as before
    (pos,) = {e.source.pos for e in wrapped[2:5] if e.source}
    assert made[0] < pos < made[1]
    assert [(p.file, p.pos) for p in wrapped_ends][-1] == end
    assert {p.pos for p in wrapped_ends} <= {p.pos for p in plain_ends} | set(made)


def body_for(event_type: int, table_id: bytes) -> bytes:
    """A well-formed body for the types mysql-replication parses itself (it must not trip on it)."""
    if event_type == 38:  # XA_prepare: one-phase flag, format id, gtrid and bqual lengths, xid
        return b"\x00" + struct.pack("<iII", 1, 3, 0) + b"abc"
    if event_type == 39:  # Partial_update_rows on the captured table: v2 post-header, 1 column, 2 bitmaps
        return table_id + b"\x01\x00" + b"\x02\x00" + b"\x01\x01\x01" + b"\x00\x00\x00\x00\x00"
    return b"\x01\x02\x03\x04"


def inject_after_table_map(db: str, event_type: int, nth: int, flags: int = 0,
                           seen: list[int] | None = None) -> Rewrite:
    """After the ``nth`` table map of ``db``: an event of ``event_type`` (inside that transaction)."""
    count = [0]

    def rewrite(data: bytes) -> list[bytes]:
        if etype(data) == 19 and db.encode() in data:
            count[0] += 1
            if count[0] == nth:
                extra = packet(event_type, body_for(event_type, data[20:26]), log_pos(data), flags)
                if seen is not None:
                    seen.append(log_pos(extra) - (len(extra) - 1))
                return [data, extra]
        return [data]

    return rewrite


@pytest.mark.parametrize("event_type,name", [(200, "unknown type (200)"), (38, "XA_prepare (38)"),
                                             (39, "Partial_update_rows (39)")])
def test_unknown_event_inside_a_transaction_stops_before_the_checkpoint_passes_it(
        monkeypatch: pytest.MonkeyPatch, mariadb: MariaDBServer, fresh_db: str, event_type: int, name: str) -> None:
    db = fresh_db
    mariadb.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY)")
    start = master(mariadb)
    mariadb.execute(f"INSERT INTO {db}.t VALUES (1), (2)")
    after_first = master(mariadb)
    mariadb.execute(f"INSERT INTO {db}.t VALUES (3)")
    mariadb.execute(f"INSERT INTO {db}.t VALUES (4)")
    end = master(mariadb)
    seen: list[int] = []
    src = BinlogSource(dsn=mariadb.dsn(), tables=[f"{db}.t"], pipeline="unknown-test", tenant=None,
                       start=f"{start[0]}:{start[1]}", max_ms=20)
    batches = []
    timer = threading.Timer(40, src.stop.set)
    timer.start()
    with rewriting(monkeypatch, inject_after_table_map(db, event_type, 2, seen=seen)):
        src.open(None)
        try:
            with pytest.raises(SourceError) as err:
                for batch in src.batches():
                    batches.append(batch)
        finally:
            timer.cancel()
            src.close()
    text = str(err.value)
    assert not err.value.retriable
    assert f"binlog event {name} at {start[0]}:{seen[0]} is inside a transaction" in text, text
    assert "fix: " in text
    # the complete transaction before it was handed out, and no commit point passes the unknown event
    assert [e.after["id"] for b in batches for e in b.events if e.after] == [1, 2]
    assert batches and (batches[-1].end.file, batches[-1].end.pos) == after_first
    assert all(b.end.pos <= after_first[1] for b in batches) and end[1] > after_first[1]


def test_unknown_event_marked_ignorable_by_the_server_is_skipped(
        monkeypatch: pytest.MonkeyPatch, mariadb: MariaDBServer, fresh_db: str) -> None:
    db = fresh_db
    mariadb.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY)")
    start = master(mariadb)
    mariadb.execute(f"INSERT INTO {db}.t VALUES (1)", f"INSERT INTO {db}.t VALUES (2)")
    end = master(mariadb)
    with rewriting(monkeypatch, inject_after_table_map(db, 200, 1, flags=0x80)):
        events, _ = read(mariadb, [f"{db}.t"], start, end)
    assert [e.after["id"] for e in events if e.after] == [1, 2]


def test_unknown_event_outside_transactions_is_logged_once_and_skipped(
        monkeypatch: pytest.MonkeyPatch, mariadb: MariaDBServer, fresh_db: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """The Gtid_list event at the top of each binlog file, retyped to an unknown type."""
    db = fresh_db
    mariadb.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY)")
    start = master(mariadb)
    mariadb.execute(f"INSERT INTO {db}.t VALUES (1)", "FLUSH BINARY LOGS", f"INSERT INTO {db}.t VALUES (2)",
                    "FLUSH BINARY LOGS", f"INSERT INTO {db}.t VALUES (3)")
    end = last_commit(mariadb)
    retyped: list[int] = []

    def retype_gtid_list(data: bytes) -> list[bytes]:
        if etype(data) != 163:
            return [data]
        retyped.append(log_pos(data))
        return [packet(201, data[20:-4], log_pos(data))]

    caplog.set_level(logging.WARNING, logger="deltaforge.source")
    with rewriting(monkeypatch, retype_gtid_list):
        events, _ = read(mariadb, [f"{db}.t"], start, end)
    assert len(retyped) >= 3  # one at the start and one per new file (the dump also sends them)
    assert [e.after["id"] for e in events if e.after] == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if "unknown type (201)" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "outside any transaction" in warnings[0] and re.search(r" at binlog\.\d+:\d+", warnings[0])
