"""Events as bytes: the compiled block builder, its twin, and the Event encoding agree byte for byte.

The contract (DESIGN.md §3): each event's JSON is exactly ``msgspec.json.encode(Event)``,
field order included, and its id is :func:`deltaforge.model.event_id_for` of its prefix.
"""

from __future__ import annotations

import importlib
import os
import random
import struct
from typing import Any

import msgspec
import pytest

from deltaforge import _accel
from deltaforge.model import (
    Event,
    EventBlock,
    Source,
    Transaction,
    event_id_for,
    event_id_hasher,
    gtid_event_id_hasher,
)
from deltaforge.source import eventbuf as pure

compiled = importlib.import_module("deltaforge._core.eventbuf")
IMPLS = [pytest.param(pure, id="python"), pytest.param(compiled, id="cython")]


def test_the_loaded_implementation_is_the_expected_one() -> None:
    expected = "python" if os.environ.get("DELTAFORGE_NO_EXT", "") not in ("", "0") else "cython"
    assert _accel.IMPLEMENTATIONS["eventbuf"] == expected == _accel.eventbuf.IMPLEMENTATION


@pytest.mark.parametrize("impl", IMPLS)
def test_ids_are_the_model_ids(impl: Any) -> None:
    rnd = random.Random(3)
    for _ in range(300):
        gtid = f"{rnd.randrange(10)}-{rnd.randrange(10**6)}-{rnd.randrange(10**12)}"
        seq = rnd.randrange(10**6)
        assert impl.event_uuid(f"gtid|{gtid}|".encode(), seq).decode() == event_id_for(gtid_event_id_hasher(gtid), seq)
        uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
        gtid = f"{uuid}:{rnd.randrange(1, 10**15)}"  # MySQL: a two-block SHA-1 message
        assert impl.event_uuid(f"gtid|{gtid}|".encode(), seq).decode() == event_id_for(gtid_event_id_hasher(gtid), seq)
        server, file, pos = "mariadb-1" * rnd.randrange(1, 8), f"binlog.{rnd.randrange(10**6):06d}", rnd.randrange(2**32)
        assert (impl.event_uuid(f"{server}|{file}|{pos}|".encode(), seq).decode()
                == event_id_for(event_id_hasher(server, file, pos), seq))


def _rows(rnd: random.Random, n: int) -> list[tuple[Any, Any]]:
    def image(i: int) -> dict[str, Any]:
        return {"id": i, "name": rnd.choice(["a", "é\"\\\n", "日本", ""]), "f": rnd.choice([1.5, -0.0, 1e300, None]),
                "big": str(2**63 + i), "b": None}
    kinds = rnd.choice(["c", "u", "d"])
    return [(None if kinds == "c" else image(i), None if kinds == "d" else image(i + 1)) for i in range(n)], kinds


def _expected(pipeline: str, tenant: str | None, table: str, op: str, rows: list[tuple[Any, Any]], ts: int,
              server_id: int, file: str, pos: int, gtid: str | None, txid: str, seq0: int, row0: int,
              skip: int, tx_pos: int) -> list[Event]:
    db, _, tbl = table.partition(".")
    hasher = gtid_event_id_hasher(gtid) if gtid else event_id_hasher("srv", file, pos)
    out = []
    for k, (before, after) in enumerate(rows):
        seq, row = seq0 + k, row0 + k
        if seq < skip:
            continue
        out.append(Event(
            event_id=event_id_for(hasher, seq if gtid else row), tenant_id=tenant, table=table, op=op,
            before=before, after=after, ts_ms=ts,
            source=Source(connector="mysql", name=pipeline, server_id=server_id, db=db, table=tbl, file=file,
                          pos=pos, row=row, gtid=gtid, ts_ms=ts),
            transaction=Transaction(id=txid, seq=seq, end=False)))
    return out


class _Tx:
    """What the builder reads of the reader's transaction (binlog.py's _Tx)."""

    def __init__(self, gtid: str | None, txid: str, pos: int) -> None:
        self.gtid = gtid
        self.id = txid
        self.key_head = (1, pos)
        self.rows = 0


class _Schema:
    def __init__(self, db: str, table: str) -> None:
        self.db, self.table = db, table


@pytest.mark.parametrize("tenant", [None, "acme \"q\""])
def test_blocks_are_the_event_encoding_in_both_twins(tenant: str | None) -> None:
    rnd = random.Random(7)
    builders = [impl.BlockBuilder("pipe\\é", tenant, "srv") for impl in (pure, compiled)]
    schema = _Schema("app", "t\"x")
    tx = _Tx(None, "", 0)
    expected: list[Event] = []
    for step in range(60):
        rows, op = _rows(rnd, rnd.randrange(1, 6))
        file, pos = "binlog.000001", step * 100 + 10
        if rnd.random() < 0.6:  # a new transaction (else more rows of the same one)
            gtid = rnd.choice([None, f"0-1-{step}"])
            tx = _Tx(gtid, gtid or f"binlog.000001:{step * 100}", pos)
        seq, skip = tx.rows, rnd.choice([0, 0, 2])
        args = (rows, "cud".index(op), schema, 1_700_000_000 + step, 7, file, pos, tx, 0, skip)
        counts = [b.append_rows(*args) for b in builders]
        assert counts == [len(rows)] * 2
        tx.rows += len(rows)
        expected += _expected("pipe\\é", tenant, "app.t\"x", op, rows, (1_700_000_000 + step) * 1000, 7, file,
                              pos, tx.gtid, tx.id, seq, 0, skip, tx.key_head[1])
        if rnd.random() < 0.5:
            marked = [b.mark_end(tx.id) for b in builders]
            assert marked[0] == marked[1]
            if marked[0]:
                expected[-1].transaction.end = True  # type: ignore[union-attr]
        if rnd.random() < 0.2 and len(builders[0]):
            n = rnd.randrange(0, len(builders[0]) + 1)
            blocks = [b.take(n) for b in builders]
            assert blocks[0][0].data == blocks[1][0].data and blocks[0][1] == blocks[1][1]
            _check(blocks[0][0], expected[:n])
            del expected[:n]
    blocks = [b.take(len(b)) for b in builders]
    assert blocks[0][0].data == blocks[1][0].data
    _check(blocks[1][0], expected)


def _check(block: EventBlock, events: list[Event]) -> None:
    assert len(block) == len(events)
    assert block.lines() == [msgspec.json.encode(e) for e in events]
    assert [block.line(i) for i in range(len(block))] == block.lines()
    assert block.tables == [e.table for e in events]
    assert block.txids == [e.transaction.id for e in events]  # type: ignore[union-attr]
    assert block.tenants == [e.tenant_id for e in events]
    assert block.event_ids() == [e.event_id.encode() for e in events]
    assert msgspec.json.decode(block.json_array(), type=list[Event]) == events
    assert list(block) == events and block == events


def test_event_block_slices_and_round_trips() -> None:
    events = [Event(event_id=f"id{i}", table="a.b", op="c", after={"i": i, "s": "x\ny"},
                    transaction=Transaction(id=f"t{i // 2}", seq=i % 2, end=bool(i % 2))) for i in range(7)]
    block = EventBlock.from_events(events)
    again = EventBlock.from_lines(block.lines(), block.tables, block.txids, block.tenants)
    assert again.data == block.data and again.starts == block.starts and again == events
    part = again[2:5]
    assert isinstance(part, EventBlock) and part == events[2:5] and part.txids == ["t1", "t1", "t2"]
    assert again[-1] == events[-1] and again[3] == events[3]
    assert again.event_ids() == [e.event_id.encode() for e in events]  # not UUIDs: read from the decoded events
    assert not EventBlock.from_events([]) and EventBlock.from_events([]).json_array() == b"[]"
    with pytest.raises(IndexError):
        again[7]
    for picked in ([0, 3, 6], [4], [], list(range(7))):  # take: any ascending subset, the same bytes
        sub = again.take(picked)
        assert sub == [events[i] for i in picked] and sub.lines() == [again.line(i) for i in picked]
        assert sub.txids == [again.txids[i] for i in picked] and len(sub.tables) == len(sub.tenants) == len(picked)


def _answer_case(rnd: random.Random) -> tuple[EventBlock, list[Any], bytes]:
    events = [Event(event_id=f"{i:08d}-0000-5000-8000-000000000000", tenant_id=rnd.choice([None, "t"]),
                    table="a.b", op="u", before={"k": "x\\\"]}" * rnd.randrange(3)}, after={"n": [i, {"z": None}]},
                    ts_ms=i, source=Source(connector="mysql", name="p", server_id=1, db="a", table="b",
                                           file="f", pos=i, row=0, gtid=None, ts_ms=i),
                    transaction=Transaction(id=f"tx{i}", seq=0, end=True), tags=rnd.choice([None, ["a", "b]"]]),
                    synthetic=rnd.choice([msgspec.UNSET, "proc"])) for i in range(6)]
    block = EventBlock.from_events(events)
    block = EventBlock(block.data, block.starts, block.tables, block.txids, block.tenants)
    items = []
    for _ in range(rnd.randrange(0, 9)):
        if rnd.random() < 0.8:
            items.append([rnd.randrange(6), rnd.choice([None, {"é": "\u2028", "q": [1.5e300, -0.0]}]),
                          rnd.choice([None, {}, {"a": {"b": "]["}}]), rnd.choice([None, [], ["x\"y"]])])
        else:
            items.append([-1 - rnd.randrange(6), {"table": "c.d", "op": "c", "after": {"v": "{"}}, 0, 0])
    return block, [(1, i, 0, "") for i in range(6)], msgspec.json.encode(items)


def test_processor_answers_splice_identically_in_both_twins() -> None:
    rnd = random.Random(9)

    def created(k: int, p: int, raw: bytes) -> tuple[bytes, str, str, str | None]:
        return b'{"made":' + raw + b',"k":' + str(k).encode() + b"}", "c.d", f"p{p}", None

    for _ in range(400):
        block, keys, answer = _answer_case(rnd)
        outs = [impl.splice_answer(block, keys, answer, created) for impl in (pure, compiled)]
        (b1, k1), (b2, k2) = outs
        assert b1.data == b2.data and b1.starts == b2.starts and k1 == k2
        assert (b1.tables, b1.txids, b1.tenants) == (b2.tables, b2.txids, b2.tenants)
        items = msgspec.json.decode(answer)
        for n, (i, before, after, tags) in enumerate(items):
            line = msgspec.json.decode(b1.line(n))
            if i >= 0:
                want = msgspec.json.decode(block.line(i))
                want.update(before=before, after=after, tags=tags)
                assert line == want and list(line) == list(want)  # the input's fields, in their order
            else:
                assert line["made"] == before and line["k"] == n


def test_cloudevents_envelopes_are_built_from_the_bytes_identically() -> None:
    """Both twins build from a block exactly what the object encoder (envelope.py) writes."""
    from deltaforge.sink.envelope import Envelope

    rnd = random.Random(4)
    events = [Event(event_id=f"{i:08d}-0000-5000-8000-000000000000", tenant_id=rnd.choice([None, "t\"é"]),
                    table=rnd.choice(["a.b", "x.y\\z"]), op=rnd.choice(["c", "u", "d", "r", "x\"y"]),
                    before=rnd.choice([None, {"k": [1, "x"]}]), after={"n": i, "s": "é\n", "f": 1.5},
                    ts_ms=rnd.choice([0, 1_714_564_800_123, 253_402_300_799_999]),
                    transaction=rnd.choice([None, Transaction(id=f"tx{i}", seq=0, end=True)])) for i in range(300)]
    block = EventBlock.from_events(events)
    block = EventBlock(block.data, block.starts, block.tables, block.txids, block.tenants)  # not pre-decoded
    built = [impl.cloudevents_block(block, "pipe\"x") for impl in (pure, compiled)]
    assert built[0].data == built[1].data
    assert built[1].lines() == Envelope("cloudevents", "pipe\"x").encode(events)
    assert Envelope("cloudevents", "pipe\"x").encode(block) == built[1].lines()
    assert compiled.cloudevents_block(EventBlock.from_events([]), "p").data == b""


# ----------------------------------------------------------------------------- add_rows: the JSON path


class _Images(msgspec.Struct):
    before: msgspec.Raw
    after: msgspec.Raw


def json_images(impl: Any, schema: Any, body: bytes, kind: int, present: bytes,
                present2: bytes | None) -> list[tuple[bytes, bytes]]:
    """The row images ``impl``'s BlockBuilder.add_rows writes for one rows event, as raw JSON."""
    builder = impl.BlockBuilder("p", None, "srv")
    tx = impl.Tx("binlog.000001", 1, 4, None, None, False)
    ev = (-10, 500, 100, 1_700_000_000, 7, kind, schema, present, present2, body)
    builder.add_rows(ev, tx, "binlog.000001", False, 0)
    block, _ = builder.take(len(builder))
    return [(bytes(x.before), bytes(x.after)) for x in msgspec.json.decode(block.json_array(), type=list[_Images])]


def encoded_images(rows: list[tuple[Any, Any]]) -> list[tuple[bytes, bytes]]:
    """What json_images must equal: msgspec's encoding of the object decoder's rows."""
    return [(msgspec.json.encode(b), msgspec.json.encode(a)) for b, a in rows]


def _synth_events(rnd: random.Random, n: int) -> list[tuple[Any, ...]]:
    """Scanner-shaped rows events of the synthetic all-types table (WRITE, UPDATE, DELETE), each
    one the decoder reads (the generator can draw values a column rejects: those are redrawn)."""
    from deltaforge.errors import DecodeError
    from deltaforge.source import rowdecode
    from deltaforge.source.schema import TableSchema
    from tests.test_rowdecode_twins import SYNTH, _row

    schema = TableSchema(db="app", table="synth", columns=SYNTH, full_metadata=True)
    present = b"\xff" * ((len(SYNTH) + 7) // 8)
    out = []
    while len(out) < n:
        k, kind = len(out), rnd.randrange(3)
        body = b"".join(_row(SYNTH, rnd) + (_row(SYNTH, rnd) if kind == 1 else b"")
                        for _ in range(rnd.randint(1, 4)))
        try:
            rowdecode.decode_rows(schema, body, kind, present, present if kind == 1 else None)
        except DecodeError:
            continue
        out.append((-10, 1000 + 100 * k, 100, 1_700_000_000 + k, 7, kind, schema, present,
                    present if kind == 1 else None, body))
    return out


def test_add_rows_is_the_decoder_encoded_in_both_twins() -> None:
    """add_rows (decode straight into JSON) == append_rows of the object decoder's rows, in both
    twins, across transactions, restarts inside one (skip), payload numbering, commits and takes."""
    from deltaforge.source import rowdecode

    rnd = random.Random(11)
    events = _synth_events(rnd, 120)
    via_objects = pure.BlockBuilder("pipe", "t", "srv")
    builders = [impl.BlockBuilder("pipe", "t", "srv") for impl in (pure, compiled)]
    txs: list[Any] = []
    for k, ev in enumerate(events):
        if k % 5 == 0:
            gtid = rnd.choice([None, f"0-1-{k}"])
            txs = [impl.Tx("binlog.000003", 3, ev[1] - ev[2], gtid, None, False) for impl in (pure, compiled, pure)]
        in_payload, skip = rnd.random() < 0.3, rnd.choice([0, 0, 3])
        costs = [b.add_rows(ev, tx, "binlog.000003", in_payload, skip) for b, tx in zip(builders, txs[:2], strict=True)]
        rows = rowdecode.decode_rows(ev[6], ev[9], ev[5], ev[7], ev[8])
        tx = txs[2]
        via_objects.append_rows(rows, ev[5], ev[6], ev[3], ev[4], "binlog.000003", ev[1] - ev[2], tx,
                                tx.rows if in_payload else 0, skip)
        tx.rows += len(rows)
        assert costs[0] == costs[1] and txs[0].rows == txs[1].rows == tx.rows
        assert (costs[0] > 0) == any(tx.rows - len(rows) + i >= skip for i in range(len(rows)))
        assert builders[0].origin == builders[1].origin
        if rnd.random() < 0.4:
            assert len({b.mark_end(t.id) for b, t in zip([*builders, via_objects], txs, strict=True)}) == 1
        if rnd.random() < 0.2:
            n = rnd.randrange(len(via_objects) + 1)
            blocks = [b.take(n) for b in [*builders, via_objects]]
            assert blocks[0][0].data == blocks[1][0].data == blocks[2][0].data
            assert blocks[0][0].spans == blocks[1][0].spans == blocks[2][0].spans
            assert blocks[0][1] == blocks[1][1] == blocks[2][1]
    blocks = [b.take(len(b)) for b in [*builders, via_objects]]
    assert blocks[0][0].data == blocks[1][0].data == blocks[2][0].data
    assert blocks[0][0].spans == blocks[1][0].spans == blocks[2][0].spans
    msgspec.json.decode(blocks[1][0].json_array(), type=list[Event])  # and it is the Event shape


@pytest.mark.parametrize("impl", IMPLS)
def test_add_rows_that_fails_leaves_nothing_behind(impl: Any) -> None:
    from deltaforge.errors import DecodeError

    rnd = random.Random(12)
    good, bad = _synth_events(rnd, 2)
    builder = impl.BlockBuilder("pipe", None, "srv")
    tx = impl.Tx("binlog.000003", 3, 4, "0-1-9", None, False)
    builder.add_rows(good, tx, "binlog.000003", False, 0)
    before, rows = builder.nbytes, tx.rows
    cut = (*bad[:9], bad[9][:-3])  # the last value runs past the end of the body
    with pytest.raises(DecodeError, match=r"^app\.synth\.\w+ \(.*byte \d+"):
        builder.add_rows(cut, tx, "binlog.000003", False, 0)
    assert builder.nbytes == before and tx.rows == rows and len(builder) == len(builder.tables) == len(builder.txids)
    builder.add_rows(bad, tx, "binlog.000003", False, 0)  # and it goes on from there
    block, _ = builder.take(len(builder))
    assert len(msgspec.json.decode(block.json_array(), type=list[Event])) == len(block)


@pytest.mark.parametrize("impl", IMPLS)
def test_the_readers_blocks_splice_by_their_spans_as_by_scanning(impl: Any) -> None:
    """A reader block carries where `before` and `,"ts_ms":` start in each line (EventBlock.spans);
    the compiled splice uses them instead of scanning: same output as scanning, in both twins."""
    rnd = random.Random(13)
    builder = impl.BlockBuilder("pipe", "t", "srv")
    tx = impl.Tx("binlog.000003", 3, 4, "0-1-5", None, False)
    for ev in _synth_events(rnd, 12):
        builder.add_rows(ev, tx, "binlog.000003", False, 0)
    builder.mark_end(tx.id)
    block, keys = builder.take(len(builder))
    assert block.spans is not None and len(block.spans) == 8 * len(block)
    for i in range(len(block)):
        a, b = struct.unpack_from("=ii", block.spans, 8 * i)
        line = block.line(i)
        assert line[a - 9:a] == b'"before":' and line[b:b + 9] == b',"ts_ms":'
    assert block[2:5].spans == block.spans[16:40]
    scanned = EventBlock(block.data, block.starts, block.tables, block.txids, block.tenants, True)

    def created(k: int, p: int, raw: bytes) -> tuple[bytes, str, str, str | None]:
        return b'{"made":' + raw + b"}", "c.d", f"p{p}", None

    for _ in range(50):
        items = [[rnd.randrange(len(block)), rnd.choice([None, {"a": "]\"}"}]), rnd.choice([None, {"b": [1]}]),
                  rnd.choice([None, ["x"]])] if rnd.random() < 0.9 else [-1, {"op": "c"}, 0, 0]
                 for _ in range(rnd.randrange(len(block) + 2))]
        answer = msgspec.json.encode(items)
        outs = [mod.splice_answer(b, keys, answer, created)
                for mod in (pure, compiled) for b in (block, scanned)]
        assert len({o[0].data for o in outs}) == 1 and all(o[1] == outs[0][1] for o in outs)
