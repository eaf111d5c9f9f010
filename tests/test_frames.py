"""Frames between stages: batches as bytes (header + the block unchanged) and errors as records.

A batch must come back equal, index and all (the reader's spans included), through bytes and
through a shared-memory ring; an error must come back as its own class with its detail, hint,
retriable flag and exit code, or as RemoteError naming what it was.
"""

from __future__ import annotations

import random

import pytest

from deltaforge import _accel
from deltaforge.errors import ConfigError, DecodeError, FencedError, SourceUnavailable
from deltaforge.model import Batch, DeadLetter, EventBlock, Position
from deltaforge.runtime.frames import (
    Kind,
    RemoteError,
    decode_batch,
    decode_error,
    encode_batch,
    encode_error,
)
from tests.test_eventbuf import _synth_events


def _reader_batch() -> Batch:
    eb = _accel.eventbuf
    builder = eb.BlockBuilder("pipe", "acme", "srv")
    tx = eb.Tx("binlog.000003", 3, 4, "0-1-5", None, False)
    for ev in _synth_events(random.Random(3), 6):
        builder.add_rows(ev, tx, "binlog.000003", False, 0)
    builder.mark_end(tx.id)
    block, keys = builder.take(len(builder))
    dead = DeadLetter(stage="decoder", error="bad row", table="app.t", file="binlog.000003", pos=9,
                      gtid="0-1-5", raw="AAE=", ts_ms=1)
    return Batch(seq=42, events=block, keys=keys, origin="app.synth at binlog.000003:1000",
                 end=Position(file="binlog.000003", pos=777, gtid="0-1-5", server="srv"),
                 dead=[dead], dead_keys=[(3, 4, 9, "0-1-5")])


def _same(a: Batch, b: Batch) -> None:
    ea, eb = a.events, b.events
    assert isinstance(ea, EventBlock) and isinstance(eb, EventBlock)
    assert (ea.data, ea.starts, ea.tables, ea.txids, ea.tenants, ea.spans) == \
           (eb.data, eb.starts, eb.tables, eb.txids, eb.tenants, eb.spans)
    assert ea.ids_are_uuids() == eb.ids_are_uuids()
    assert (a.seq, a.end, a.origin, a.dead, a.dead_keys) == (b.seq, b.end, b.origin, b.dead, b.dead_keys)
    assert [tuple(k) for k in a.keys] == [tuple(k) for k in b.keys]


def test_a_reader_batch_round_trips_as_bytes_and_through_a_ring() -> None:
    batch = _reader_batch()
    head, data = encode_batch(batch)
    assert data is batch.events.data  # type: ignore[union-attr]  # the events' bytes, not re-encoded
    again = decode_batch(head + data)
    _same(batch, again)
    assert list(again.events) == list(batch.events)
    with _accel.ring.Ring.create(1 << 16) as ring:
        ring.put(Kind.BATCH, head + data)
        kind, view = ring.get()
        assert kind == Kind.BATCH
        _same(batch, decode_batch(view))
        del view


def test_a_batch_of_event_objects_and_an_empty_one_travel_as_blocks() -> None:
    batch = _reader_batch()
    objects = Batch(seq=1, events=list(batch.events), keys=batch.keys, end=batch.end)
    again = decode_batch(b"".join(encode_batch(objects)))
    assert list(again.events) == list(batch.events) and again.events.data == batch.events.data  # type: ignore[union-attr]
    empty = Batch(seq=2, events=EventBlock(b"", [0], [], [], []), keys=[], end=batch.end)
    again = decode_batch(b"".join(encode_batch(empty)))
    assert len(again.events) == 0 and again.end == batch.end and again.seq == 2


@pytest.mark.parametrize("err", [
    ConfigError("spec.sinks[0].config.stream", "must not be empty", "name a stream"),
    SourceUnavailable("the binlog connection was lost", "the pipeline restarts from its checkpoint"),
    DecodeError("app.t.c (INT): bad value at byte 3"),
    FencedError("another instance took over", "stop the other one"),
])
def test_errors_cross_as_records_and_come_back_as_their_class(err: Exception) -> None:
    back = decode_error(encode_error(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert (back.retriable, back.exit_code) == (err.retriable, err.exit_code)  # type: ignore[attr-defined]


def test_other_errors_come_back_as_remote_errors_naming_them() -> None:
    back = decode_error(encode_error(ValueError("boom")))
    assert isinstance(back, RemoteError) and not back.retriable and back.exit_code == 70
    assert str(back).startswith("internal error ValueError: boom (fix: this is a DeltaForge bug")
    unknown = SourceUnavailable("gone", "retry")
    # a class the receiver cannot import (same length: the msgpack string header stays valid)
    frame = encode_error(unknown).replace(b"SourceUnavailable", b"NoSuchErrorClass1")
    back = decode_error(frame)
    assert isinstance(back, RemoteError) and back.retriable and str(back) == "gone (fix: retry)"
