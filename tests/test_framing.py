"""Binlog framing: the compiled scanner and its pure-Python twin are interchangeable and exact.

The twin (``deltaforge.source.framing``) is the specification. Both are fed the same bytes:
hand-built events of every type the reader acts on or skips, packets cut at every byte,
events split over 16 MiB packet chains, truncations and random corruption (both must agree,
byte for byte, on what they return or on the DecodeError they raise), and the raw dump of a
real MariaDB, recorded through the reader's socket seam.
"""

from __future__ import annotations

import importlib
import os
import random
import struct
import zlib
from typing import Any

import pytest

from deltaforge import _accel
from deltaforge.errors import DecodeError
from deltaforge.source import framing as pure

compiled = importlib.import_module("deltaforge._core.framing")
IMPLS = [pytest.param(pure, id="python"), pytest.param(compiled, id="cython")]

SCHEMA = object()  # stands for a TableSchema: the scanner only carries it


def test_the_loaded_implementation_is_the_expected_one() -> None:
    expected = "python" if os.environ.get("DELTAFORGE_NO_EXT", "") not in ("", "0") else "cython"
    assert _accel.IMPLEMENTATIONS["framing"] == expected
    assert _accel.framing.IMPLEMENTATION == expected
    assert compiled.IMPLEMENTATION == "cython" and pure.IMPLEMENTATION == "python"


# ------------------------------------------------------------------------------- builders

def event(etype: int, body: bytes, end: int = 1000, flags: int = 0, server_id: int = 7,
          ts: int = 1_700_000_000, checksum: bool = True) -> bytes:
    """Header + body (+ CRC32 footer) of one event."""
    size = 19 + len(body) + (4 if checksum else 0)
    head = struct.pack("<IBIIIH", ts, etype, server_id, size, end, flags)
    raw = head + body
    return raw + struct.pack("<I", zlib.crc32(raw)) if checksum else raw


def packets(payload: bytes, seq: int = 1) -> bytes:
    """A payload framed as MySQL packets (split at 0xFFFFFF, with the empty tail packet)."""
    out = []
    while True:
        chunk, payload = payload[:0xFFFFFF], payload[0xFFFFFF:]
        out.append(len(chunk).to_bytes(3, "little") + bytes([seq & 0xFF]) + chunk)
        seq += 1
        if len(chunk) < 0xFFFFFF:
            return b"".join(out)


def ok(ev: bytes) -> bytes:
    return packets(b"\x00" + ev)


def fde(version: bytes = b"10.11.9-MariaDB-log", checksum: bool = True) -> bytes:
    post = bytes([56, 13, 0, 8, 0, 18, 0, 4, 4, 4, 4, 18, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 8, 8, 8, 2, 0, 0, 0,
                  10, 10, 10] + [0] * 140)
    body = struct.pack("<H", 4) + version.ljust(50, b"\0") + struct.pack("<I", 0) + bytes([19]) + post
    body += b"\x01"  # checksum algorithm: CRC32
    if not checksum:
        body += b"\0\0\0\0"  # FDE keeps its checksum field even when the stream has none
    return event(15, body, end=256, checksum=checksum)


def rotate(name: bytes, pos: int = 4, checksum: bool = True) -> bytes:
    return event(4, struct.pack("<Q", pos) + name, end=0, checksum=checksum)


def mariadb_gtid(domain: int, seq: int, flags: int = 0, server_id: int = 7, checksum: bool = True) -> bytes:
    return event(162, struct.pack("<QIB", seq, domain, flags) + b"\0" * 6, server_id=server_id,
                 checksum=checksum)


def mysql_gtid(sid: bytes, gno: int, checksum: bool = True) -> bytes:
    return event(33, b"\x00" + sid + struct.pack("<Q", gno) + b"\x02" + b"\0" * 16, checksum=checksum)


def query(text: bytes, schema: bytes = b"app", status: bytes = b"\x00\x00\x00\x00\x00",
          checksum: bool = True) -> bytes:
    post = struct.pack("<IIBHH", 1, 0, len(schema), 0, len(status))
    return event(2, post + status + schema + b"\0" + text, checksum=checksum)


def table_map(table_id: int, db: bytes, table: bytes, types: bytes = b"\x03\x0f",
              checksum: bool = True) -> bytes:
    body = table_id.to_bytes(6, "little") + b"\x01\x00" + bytes([len(db)]) + db + b"\0"
    body += bytes([len(table)]) + table + b"\0" + bytes([len(types)]) + types + b"\x02\x50\x00" + b"\x02"
    return event(19, body, checksum=checksum)


def rows(etype: int, table_id: int, images: bytes, ncols: int = 2, checksum: bool = True,
         extra: bytes = b"") -> bytes:
    body = table_id.to_bytes(6, "little") + b"\x00\x00"
    if etype >= 30:
        body += struct.pack("<H", 2 + len(extra)) + extra
    width = (ncols + 7) // 8
    body += bytes([ncols]) + b"\xff" * width
    if etype in (24, 31):
        body += b"\xff" * width
    return event(etype, body + images, checksum=checksum)


def xid(checksum: bool = True) -> bytes:
    return event(16, struct.pack("<Q", 99), checksum=checksum)


def drain(scanner: Any, captured: str = "app") -> list[Any]:
    out = []
    while (ev := scanner.next()) is not None:
        if ev[0] == pure.TABLE_MAP:
            scanner.set_table(ev[5], ev[8], SCHEMA if ev[6] == captured else None)
        out.append(ev)
    return out


def stream(checksum: bool = True) -> bytes:
    """A dump: every type the scanner handles, skips or returns."""
    c = checksum
    sid = bytes(range(16))
    evs = [
        rotate(b"binlog.000003", checksum=c), fde(checksum=c),
        event(163, b"\0" * 4, checksum=c),  # Gtid_list: harmless, skipped
        event(27, b"binlog.000003", checksum=c),  # heartbeat, skipped
        mariadb_gtid(0, 41, checksum=c), table_map(5, b"app", b"t", checksum=c),
        rows(23, 5, b"\x00\x01\x00\x00\x00\x01a", checksum=c),
        table_map(5, b"app", b"t", checksum=c),  # the same bytes: a cache hit, not returned
        rows(24, 5, b"\x00\x01\x00\x00\x00\x01a\x00\x01\x00\x00\x00\x01b", checksum=c),
        table_map(6, b"other", b"u", checksum=c), rows(25, 6, b"\x00\x02\x00\x00\x00\x00", checksum=c),
        rows(30, 9, b"\x00", checksum=c),  # never mapped: skipped
        rows(30, 5, b"\x00\x01\x00\x00\x00\x01z", extra=b"\x00\x01\x02", checksum=c),
        xid(checksum=c),
        mysql_gtid(sid, 12345678901, checksum=c), query(b"BEGIN", checksum=c), query(b" commit\n", checksum=c),
        query(b"ROLLBACK", checksum=c), query("ALTER TABLE t ADD c INT -- é".encode(), checksum=c),
        event(39, b"\0" * 10, checksum=c),  # Partial_update_rows: returned as OTHER
        event(200, b"\1\2\3", flags=0x80, checksum=c),  # ignorable: skipped
        event(201, b"\1\2\3", checksum=c),  # unknown: OTHER
        table_map(5, b"app", b"t", types=b"\x03\x0f\x03", checksum=c),  # id reused, other shape: a miss
    ]
    return b"".join(ok(e) for e in evs)


# ------------------------------------------------------------------------------- twins


@pytest.mark.parametrize("checksum", [True, False])
def test_both_twins_return_the_same_events_and_skip_the_same_ones(checksum: bool) -> None:
    data = stream(checksum)
    results = []
    for impl in (pure, compiled):
        sc = impl.EventScanner(checksum)
        sc.feed(data)
        results.append(drain(sc))
        assert sc.next() is None and sc.buffered() == 0 and sc.received == len(data)
    assert results[0] == results[1]
    evs = results[0]
    kinds = [e[0] for e in evs]
    assert kinds == [4, 162, 19, pure.ROWS, pure.ROWS, 19, pure.ROWS, 16, 33, 2, 2, 2, 2, pure.OTHER,
                     pure.OTHER, 19]
    assert evs[0][5:] == ("binlog.000003", 4)
    assert evs[1][5:] == ("0-7-41", 0)
    assert evs[2][5:8] == (5, "app", "t")
    assert evs[3][5:] == (0, SCHEMA, b"\xff", None, b"\x00\x01\x00\x00\x00\x01a")
    assert evs[4][5] == 1 and evs[4][8] == b"\xff" and evs[4][9].endswith(b"\x01b")
    assert evs[6][5:] == (0, SCHEMA, b"\xff", None, b"\x00\x01\x00\x00\x00\x01z")
    assert evs[8][5] == "00010203-0405-0607-0809-0a0b0c0d0e0f:12345678901"
    assert [e[5] for e in evs[9:13]] == [pure.Q_BEGIN, pure.Q_COMMIT, pure.Q_ROLLBACK, pure.Q_OTHER]
    assert evs[12][6:] == (b"app", "ALTER TABLE t ADD c INT -- é")
    assert evs[13][7] == 39 and evs[13][6][4] == 39 and len(evs[13][6]) == 19 + 10
    assert evs[14][7] == 201
    for impl in (pure, compiled):
        sc = impl.EventScanner(checksum)
        sc.feed(data)
        drain(sc)
        assert sc.post_header_len(19) == 8 and sc.post_header_len(2) == 13 and sc.post_header_len(255) is None
        assert sc.table_schema(5) is SCHEMA and sc.table_schema(6) is None and sc.table_schema(9) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_packets_cut_at_every_byte_give_the_same_events(impl: Any) -> None:
    data = stream()
    whole = impl.EventScanner(True)
    whole.feed(data)
    expected = drain(whole)
    for cut in range(1, 200):  # every cut point of the first events, then coarser
        _cut_and_compare(impl, data, [cut], expected)
    rnd = random.Random(5)
    for _ in range(50):
        _cut_and_compare(impl, data, sorted(rnd.sample(range(1, len(data)), 8)), expected)


def _cut_and_compare(impl: Any, data: bytes, cuts: list[int], expected: list[Any]) -> None:
    sc = impl.EventScanner(True)
    got: list[Any] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        sc.feed(data[prev:cut])
        prev = cut
        got.extend(drain(sc))
    assert got == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_an_event_over_16_mib_spans_a_packet_chain(impl: Any) -> None:
    image = b"\x00" + b"\x01\x00\x00\x00" + b"x" * (17 * 1024 * 1024)
    big = rows(23, 5, image)
    wire = packets(b"\x00" + big)
    assert len(wire) > 0xFFFFFF + 4
    sc = impl.EventScanner(True)
    sc.feed(ok(table_map(5, b"app", b"t")))
    drain(sc)
    sc.feed(wire[:0xFFFFFF])
    assert sc.next() is None and not sc.has_event()
    sc.feed(wire[0xFFFFFF:] + ok(xid()))
    assert sc.has_event()
    got = drain(sc)
    assert [e[0] for e in got] == [pure.ROWS, 16]
    assert got[0][9] == image


@pytest.mark.parametrize("impl", IMPLS)
def test_error_and_eof_packets(impl: Any) -> None:
    sc = impl.EventScanner(True)
    err = b"\xff" + struct.pack("<H", 1236) + b"#HY000Could not find first log file name"
    sc.feed(packets(err) + packets(b"\xfe\x00\x00\x02\x00"))
    assert sc.next() == (pure.ERROR, err)
    assert sc.next() == (pure.END,)


def test_truncated_and_corrupt_events_fail_the_same_way_in_both() -> None:
    base = [ok(fde())] + [ok(e) for e in (
        mariadb_gtid(0, 1), table_map(5, b"app", b"t"), rows(24, 5, b"\x00" * 12), rows(31, 5, b"\x00", extra=b"ab"),
        query(b"BEGIN"), query(b"INSERT INTO t VALUES (1)"), mysql_gtid(b"\x01" * 16, 3), rotate(b"b.000001"), xid())]
    prefix = base[0] + base[2]  # the format description and the map of table 5
    rnd = random.Random(11)
    checked = 0
    for raw_packet in base[1:]:
        body = raw_packet[4:]
        variants = [body[:n] for n in range(1, len(body))]
        for _ in range(300):
            b = bytearray(body)
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(1, len(b))] = rnd.randrange(256)
            variants.append(bytes(b))
        for v in variants:
            outcomes = []
            for impl in (pure, compiled):
                sc = impl.EventScanner(True)
                sc.feed(prefix)
                drain(sc)
                sc.feed(packets(v))
                try:
                    outcomes.append(("ok", drain(sc)))
                except DecodeError as e:
                    outcomes.append(("error", str(e)))
            assert outcomes[0] == outcomes[1], v
            checked += 1
    assert checked > 3000


@pytest.mark.parametrize("impl", IMPLS)
def test_no_event_type_is_dropped_unseen(impl: Any) -> None:
    """Every type the scanner does not dispatch reaches the reader as OTHER, but the harmless ones."""
    from deltaforge.source import compressed

    handled = {2, 4, 16, 19, 33, 162, 23, 24, 25, 30, 31, 32}
    sc = impl.EventScanner(False)
    sc.feed(ok(fde(checksum=False)))
    drain(sc)
    for etype in range(256):
        if etype in handled or etype == 15:  # (a format description must be one: tested above)
            continue
        out = sc.parse(event(etype, b"\0" * 40, checksum=False))
        if etype in compressed.HARMLESS or etype == 27:
            assert out is None, etype
        else:
            assert out is not None and out[0] == pure.OTHER and out[7] == etype, etype
    assert sc.parse(event(201, b"x", flags=compressed.LOG_EVENT_IGNORABLE_F, checksum=False)) is None


def test_parse_dispatches_one_plain_event_like_the_stream() -> None:
    for impl in (pure, compiled):
        sc = impl.EventScanner(True)
        sc.feed(ok(fde()))
        drain(sc)
        assert sc.parse(mariadb_gtid(1, 2, checksum=False))[5:] == ("1-7-2", 0)
        tm = sc.parse(table_map(8, b"app", b"x", checksum=False))
        assert tm[0] == 19
        sc.set_table(tm[5], tm[8], SCHEMA)
        assert sc.parse(table_map(8, b"app", b"x", checksum=False)) is None
        assert sc.parse(rows(23, 8, b"\x00", checksum=False))[6] is SCHEMA
        with pytest.raises(DecodeError, match="shorter than its 19-byte header"):
            sc.parse(b"\x00" * 10)


# ------------------------------------------------------------------ a real server's dump


@pytest.mark.integration
def test_a_real_dump_frames_identically_in_both_twins(monkeypatch: pytest.MonkeyPatch, mariadb: Any,
                                                      fresh_db: str) -> None:
    """Record the socket bytes of a real dump through the reader's seam, then replay them to both twins."""
    import threading

    from deltaforge.source import binlog

    recorded = bytearray()

    class Recorder:
        def __init__(self, sock: Any) -> None:
            self._sock = sock

        def recv_into(self, view: Any) -> int:
            n = int(self._sock.recv_into(view))
            recorded.extend(bytes(view[:n]))
            return n

        def fileno(self) -> int:
            return int(self._sock.fileno())

    def read_ahead(conn: Any) -> bytes:
        ahead = real_read_ahead(conn)
        recorded.extend(ahead)
        return ahead

    real_read_ahead = binlog.read_ahead
    monkeypatch.setattr(binlog, "read_ahead", read_ahead)
    monkeypatch.setattr(binlog, "dump_socket", lambda conn: Recorder(conn._sock))
    mariadb.execute(f"CREATE TABLE {fresh_db}.f (id INT PRIMARY KEY, v VARCHAR(40), b BLOB)")
    src = binlog.BinlogSource(dsn=mariadb.dsn(), tables=[f"{fresh_db}.f"], pipeline="framing", tenant=None,
                              start="latest")
    src.open(None)
    stmts = [f"INSERT INTO {fresh_db}.f VALUES ({i}, 'v{i}é', REPEAT('x', {i * 100}))" for i in range(1, 40)]
    stmts += [f"UPDATE {fresh_db}.f SET v = 'w' WHERE id < 10", f"DELETE FROM {fresh_db}.f WHERE id > 30"]
    mariadb.execute(*stmts)
    stop = threading.Event()
    src.stop = stop
    seen = 0
    for batch in src.batches():
        seen += len(batch.events)
        if seen >= 39 + 9 + 9:
            stop.set()
    src.close()
    assert seen == 57
    outs = []
    for impl in (pure, compiled):
        sc = impl.EventScanner(True)
        sc.feed(bytes(recorded))
        outs.append([(e[0], e[1:5], e[5:8] if e[0] == pure.ROWS else e[5:]) for e in drain(sc, fresh_db)])
    assert outs[0] == outs[1]
    assert sum(1 for e in outs[0] if e[0] == pure.ROWS) >= 41


@pytest.mark.integration
def test_a_finished_batch_goes_out_when_only_skipped_events_follow(mariadb: Any, fresh_db: str) -> None:
    """Rows, then events the scanner skips (a new binlog's preamble), then only heartbeats: the
    rows must be handed out at once, not held until the next event the reader acts on."""
    import threading

    from deltaforge.source.binlog import BinlogSource

    mariadb.execute(f"CREATE TABLE {fresh_db}.h (id INT PRIMARY KEY)")
    src = BinlogSource(dsn=mariadb.dsn(), tables=[f"{fresh_db}.h"], pipeline="framing-idle", tenant=None,
                       start="latest", max_events=100_000, max_ms=3_600_000)
    src.open(None)
    mariadb.execute(f"INSERT INTO {fresh_db}.h VALUES (1), (2), (3)", "FLUSH BINARY LOGS")
    got = threading.Event()
    stop = threading.Event()
    src.stop = stop
    counts: list[int] = []

    def consume() -> None:
        for batch in src.batches():
            counts.append(len(batch.events))
            if sum(counts) >= 3:
                got.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    try:
        # a liveness bound, not a speed check: before the fix the rows waited for the stop
        assert got.wait(30), f"the rows were held back: {counts}"
    finally:
        stop.set()
        reader.join(30)
        src.close()
    assert sum(counts) == 3


@pytest.mark.integration
def test_an_error_packet_in_the_dump_is_one_line_naming_the_fix(mariadb: Any) -> None:
    """The server refuses the dump (a binlog it does not have): error 1236 arrives as a packet
    where an event was expected, and becomes the classified one-line SourceError."""
    from deltaforge.errors import SourceError
    from deltaforge.source.binlog import BinlogSource

    src = BinlogSource(dsn=mariadb.dsn(), tables=["app.*"], pipeline="framing-error", tenant=None,
                       start="binlog.000099:4")
    src.open(None)
    try:
        with pytest.raises(SourceError) as err:
            for _ in src.batches():
                pass
    finally:
        src.close()
    text = str(err.value)
    assert "(1236)" in text and "requested position" in text and "\n" not in text
    assert not err.value.retriable and "spec.source.config.start" in (err.value.hint or "")
