"""Poison events without stopping the world (``on_error: dlq``): bisection, config, sink, metrics.

The processor tests need no server; the sink tests (marked integration) use the session Redis.
The end-to-end test through ``deltaforge run`` is in tests/test_e2e_dlq.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

import msgspec
import pytest

from deltaforge.errors import ConfigError, ProcessorError, SinkError
from deltaforge.model import Batch, DeadLetter, Event, Position
from deltaforge.process.js import JsProcessor, ProcessorChain
from deltaforge.runtime.stats import Stats
from tests import test_sink as ts
from tests.test_config import MINIMAL, error, load
from tests.test_processor import FILE, make_batch, make_event


@dataclasses.dataclass
class Limits:
    timeout_ms: int = 2000
    mem_mb: int = 128


@dataclasses.dataclass
class Spec:
    id: str
    code: str
    on_error: str = "dlq"
    type: str = "javascript"
    origin: str = "spec.processors[0].inline"
    limits: Limits = dataclasses.field(default_factory=Limits)


# Line 3 throws for a poison row: the dead letter must name it.
POISON_JS = """function processBatch(events) {
  for (const e of events) {
    if (e.after && e.after.poison) throw new Error('poison row ' + e.after.id);
    e.tags = ['k:' + e.after.id];
  }
  return events;
}
"""


def rows(n: int, poison: set[int] = frozenset(), **extra: Any) -> list[Event]:  # type: ignore[assignment]
    return [make_event("app.items", "c", None, {"id": i, **({"poison": True} if i in poison else {}), **extra},
                       row=i) for i in range(n)]


@pytest.fixture
def proc():
    made: list[JsProcessor] = []

    def factory(code: str = POISON_JS, pid: str = "keys", on_error: str = "dlq", **limits: int) -> JsProcessor:
        p = JsProcessor(Spec(id=pid, code=code, on_error=on_error, limits=Limits(**limits)), 0)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


def _bound(n: int, k: int) -> int:
    """The bisection's call budget: the whole batch once, then two calls per level per poison event."""
    return 1 + 2 * k * math.ceil(math.log2(n))


# ----------------------------------------------------------------------------- bisection


@pytest.mark.parametrize(("n", "poison"), [(64, {5, 40}), (100, {0}), (100, {99}), (37, {3, 4, 36}), (1, {0}),
                                           (2, {1})])
def test_only_the_throwing_rows_go_to_the_dlq_and_the_rest_keeps_its_order(proc, n, poison) -> None:
    p = proc()
    batch = make_batch(*rows(n, poison))
    out = p.process(batch)
    survivors = [i for i in range(n) if i not in poison]
    assert [e.after["id"] for e in out.events] == survivors
    assert [e.tags for e in out.events] == [[f"k:{i}"] for i in survivors]
    assert out.keys == [batch.keys[i] for i in survivors]
    assert [d.event.after["id"] for d in out.dead] == sorted(poison)
    assert out.dead_keys == [batch.keys[i] for i in sorted(poison)]
    for d in out.dead:
        i = d.event.after["id"]
        assert d.stage == "processor" and d.processor == "keys" and d.table == "app.items"
        assert (d.file, d.pos, d.row, d.gtid) == (FILE, 1234, i, "0-1-7")
        assert d.event_id == batch.events[i].event_id and d.event == batch.events[i]
        assert f"poison row {i}" in d.error
        assert "at line 3 of spec.processors[0].inline" in d.error
        if n > 1:  # the failing event, not the batch (a batch of one keeps the batch's own origin)
            assert f"app.items at {FILE}:1234 row {i}" in d.error
    assert out.end == batch.end and out.seq == batch.seq
    assert p.calls <= _bound(n, len(poison)) if n > 1 else p.calls == 1


def test_number_of_v8_calls_is_logarithmic(proc) -> None:
    p = proc()
    p.process(make_batch(*rows(1024, {700})))
    assert p.calls <= _bound(1024, 1) == 21
    p.calls = 0
    p.process(make_batch(*rows(1024)))
    assert p.calls == 1  # no failure, no bisection


def test_stop_is_the_default_and_raises_as_before(proc) -> None:
    p = proc(on_error="stop")
    with pytest.raises(ProcessorError, match=r"poison row 5 at line 3 of spec\.processors\[0\]\.inline"):
        p.process(make_batch(*rows(8, {5})))
    assert JsProcessor(Spec(id="x", code=POISON_JS, on_error=None), 0).on_error == "stop"  # type: ignore[arg-type]


def test_a_bad_return_shape_for_one_event_is_isolated(proc) -> None:
    code = """function processBatch(events) {
  if (events.some(e => e.after.id === 3)) return 42;
  if (events.some(e => e.after.id === 6)) return events.map(e => ({event_id: e.event_id, tags: 'x'}));
  return events;
}"""
    out = proc(code).process(make_batch(*rows(8)))
    assert [e.after["id"] for e in out.events] == [0, 1, 2, 4, 5, 7]
    assert [d.row for d in out.dead] == [3, 6]
    assert "processBatch returned the number 42" in out.dead[0].error
    assert "processBatch returned an invalid event" in out.dead[1].error


def test_created_events_survive_next_to_a_dead_letter(proc) -> None:
    code = """function processBatch(events) {
  const out = [];
  for (const e of events) {
    if (e.after.poison) throw new Error('nope');
    out.push(e, {table: e.table, op: 'd', before: {id: e.after.id}});
  }
  return out;
}"""
    out = proc(code).process(make_batch(*rows(4, {2})))
    assert [(e.op, (e.after or e.before)["id"]) for e in out.events] == [
        ("c", 0), ("d", 0), ("c", 1), ("d", 1), ("c", 3), ("d", 3)]
    assert [d.row for d in out.dead] == [2]


def test_every_event_failing_is_dead_lettered_and_logged_as_an_error(proc, caplog) -> None:
    p = proc("function processBatch(events) { return events.map(e => e.nope.x); }")
    with caplog.at_level(logging.ERROR, logger="deltaforge.processor"):
        out = p.process(make_batch(*rows(6)))
    assert out.events == [] and len(out.dead) == 6
    assert "reading 'x'" in out.dead[0].error and "line 1" in out.dead[0].error
    [rec] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "every one of the 6 events" in rec.getMessage() and "broken JavaScript" in rec.getMessage()
    assert p.calls <= 2 * 6 - 1  # the worst case of the bisection: a full binary tree


def test_a_timeout_on_one_event_is_dead_lettered_and_the_isolate_goes_on(proc) -> None:
    code = """function processBatch(events) {
  if (events.some(e => e.after.spin)) { while (true) {} }
  return events;
}"""
    p = proc(code, timeout_ms=100)
    evs = rows(4)
    evs[1].after["spin"] = True
    out = p.process(make_batch(*evs))
    assert [e.after["id"] for e in out.events] == [0, 2, 3]
    assert [d.row for d in out.dead] == [1]
    assert "processBatch ran longer than limits.timeout_ms=100" in out.dead[0].error
    assert [e.after["id"] for e in p.process(make_batch(*rows(3))).events] == [0, 1, 2]


def test_the_heap_limit_on_one_event_is_dead_lettered_with_a_fresh_isolate(proc) -> None:
    code = """function processBatch(events) {
  if (events.some(e => e.after.hog)) { const h = []; for (let i = 0; ; i++) h.push({i: i, s: 'x' + i}); }
  return events;
}"""
    p = proc(code, mem_mb=32, timeout_ms=10_000)
    evs = rows(3)
    evs[2].after["hog"] = True
    out = p.process(make_batch(*evs))
    assert [e.after["id"] for e in out.events] == [0, 1]
    assert [d.row for d in out.dead] == [2]
    assert "the V8 heap exceeded limits.mem_mb=32" in out.dead[0].error
    assert [e.after["id"] for e in p.process(make_batch(*rows(2))).events] == [0, 1]


def test_chain_carries_dead_letters_through_later_processors() -> None:
    first = Spec(id="keys", code=POISON_JS)
    second = Spec(id="second", origin="spec.processors[1].inline", code="""function processBatch(events) {
  return events.map(e => { if (e.after.id === 4) throw new Error('second'); e.tags.push('2'); return e; });
}""")
    third = Spec(id="third", origin="spec.processors[2].inline", on_error="stop",
                 code="function processBatch(events) { return events; }")
    batch = make_batch(*rows(6, {1}))
    with ProcessorChain([first, second, third], "p") as chain:
        out = chain.process(batch)
        assert [e.after["id"] for e in out.events] == [0, 2, 3, 5]
        assert [e.tags for e in out.events] == [["k:0", "2"], ["k:2", "2"], ["k:3", "2"], ["k:5", "2"]]
        assert [(d.processor, d.row) for d in out.dead] == [("keys", 1), ("second", 4)]
        # the second processor's dead letter holds the event as IT received it (tagged by the first)
        assert out.dead[1].event.tags == ["k:4"]
        assert out.dead_keys == [batch.keys[1], batch.keys[4]]
        # a batch the first processor empties entirely still carries its dead letters to the sink
        only = chain.process(make_batch(*rows(1, {0})))
        assert only.events == [] and [d.row for d in only.dead] == [0]
        assert chain.processors[2].calls == 1  # not called with the empty batch


# ----------------------------------------------------------------------------- config


def _with_processor(extra: str) -> str:
    return MINIMAL + """  processors:
    - type: javascript
      id: p
      inline: 'function processBatch(e) { return e; }'
""" + extra


def test_on_error_config_defaults_and_values() -> None:
    cfg = load(_with_processor(""))
    assert cfg.spec.processors[0].on_error == "stop"
    assert cfg.spec.source.config.on_decode_error == "stop"
    assert cfg.spec.sinks[0].config.dlq_stream is None
    cfg = load(_with_processor("      on_error: dlq\n").replace(
        "tables: [app.users]", "tables: [app.users]\n      on_decode_error: dlq").replace(
        "stream: s\n", "stream: s\n        dlq_stream: 'dead:${source.table}'\n"))
    assert cfg.spec.processors[0].on_error == "dlq"
    assert cfg.spec.source.config.on_decode_error == "dlq"
    assert cfg.spec.sinks[0].config.dlq_stream == "dead:${source.table}"


@pytest.mark.parametrize(("text", "path", "fragment"), [
    (_with_processor("      on_error: dql\n"), "spec.processors[0].on_error",
     "unknown value 'dql'; did you mean dlq? (line 22) (fix: use one of: stop, dlq)"),
    (MINIMAL.replace("tables: [app.users]", "tables: [app.users]\n      on_decode_error: skip"),
     "spec.source.config.on_decode_error", "unknown value 'skip'"),
    (MINIMAL.replace("stream: s\n", "stream: s\n        dlq_stream: s\n"), "spec.sinks[0].config.dlq_stream",
     "is the sink's own stream 's'"),
    (MINIMAL.replace("stream: s\n", "stream: s\n        dlq_stream: 'x:${source.nope}'\n"),
     "spec.sinks[0].config.dlq_stream", "unknown field"),
    (_with_processor("      on_errors: dlq\n"), "spec.processors[0].on_errors", "did you mean on_error?"),
])
def test_on_error_config_errors(text: str, path: str, fragment: str) -> None:
    err = error(text)
    assert err.path == path
    assert fragment in str(err) and "(fix: " in str(err)


def test_the_journal_key_points_at_on_error() -> None:
    err = error(MINIMAL + "  journal: {enabled: true}\n")
    assert "on_error: dlq" in str(err)


def test_config_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load(_with_processor("      on_error: 1\n"))


# ----------------------------------------------------------------------------- metrics and logs


def test_stats_count_and_log_each_dead_letter_once(caplog) -> None:
    stats = Stats()
    batch = make_batch(*rows(3, {1}))
    dead = DeadLetter(stage="processor", processor="keys", error="boom at line 3", table="app.items",
                      file=FILE, pos=1234, row=1, event=batch.events[1])
    out = Batch(seq=1, events=batch.events[::2], keys=batch.keys[::2], end=batch.end, dead=[dead],
                dead_keys=[batch.keys[1]])
    with caplog.at_level(logging.WARNING, logger="deltaforge.pipeline"):
        stats.record(batch, out)
    assert stats.dead_letters == 1
    assert 'deltaforge_dlq_entries_total{pipeline="p"} 1.0' in stats.prometheus("p")
    [rec] = caplog.records
    assert rec.levelno == logging.WARNING
    assert rec.getMessage() == f"dead letter from processor keys: app.items at {FILE}:1234 row 1: boom at line 3"


def test_dead_letter_json_shape() -> None:
    d = DeadLetter(stage="decoder", error="e", table="a.b", file=FILE, pos=4, raw="AAE=")
    doc = json.loads(msgspec.json.encode(d))
    assert list(doc) == ["stage", "processor", "error", "table", "file", "pos", "row", "gtid", "event_id",
                         "event", "raw", "ts_ms"]
    assert Batch(seq=1, events=[], keys=[], end=Position(FILE, 4)).dead == []


# ----------------------------------------------------------------------------- the sink (real Redis)


def _with_dead(batch: Batch, *seqs: int, processor: str = "keys") -> Batch:
    """``batch`` with the events of transaction rows ``seqs`` moved to its dead letters."""
    keep = [i for i, k in enumerate(batch.keys) if k[2] not in seqs]
    gone = [i for i, k in enumerate(batch.keys) if k[2] in seqs]
    dead = [DeadLetter(stage="processor", processor=processor, error=f"boom {batch.keys[i][2]}",
                       table=batch.events[i].table, file=FILE, pos=batch.keys[i][1], row=0,
                       event_id=batch.events[i].event_id, event=batch.events[i]) for i in gone]
    return Batch(seq=batch.seq, events=[batch.events[i] for i in keep], keys=[batch.keys[i] for i in keep],
                 end=batch.end, dead=dead, dead_keys=[batch.keys[i] for i in gone])


def _dlq(server: Any, stream: str) -> list[dict[str, Any]]:
    out = []
    for fields in ts.entries(server, stream):
        assert fields[0] == b"df-dlq" and fields[2] == b"event_id"
        doc = json.loads(fields[1])
        assert doc["event_id"] == (fields[3].decode() or None)
        out.append(doc)
    return out


@pytest.mark.integration
def test_sink_writes_dead_letters_in_the_batch_commit(redis_server: Any, redis_client: Any) -> None:
    sink = ts.make_sink(ts.cfg(redis_server))
    sink.open()
    b1 = _with_dead(ts.make_batch(5, 1), 1, 3)
    sink.write(b1)
    assert ts.event_ids(redis_server, "cdc:events") == [e.event_id for e in b1.events]
    docs = _dlq(redis_server, "cdc:events:dlq")
    assert [d["event_id"] for d in docs] == [d.event_id for d in b1.dead]
    assert [d["error"] for d in docs] == ["boom 1", "boom 3"]
    assert docs[0]["event"] == json.loads(msgspec.json.encode(b1.dead[0].event))
    assert docs[0]["stage"] == "processor" and docs[0]["processor"] == "keys" and docs[0]["table"] == "app.users"
    assert sink.dead_written == 2 and sink.entries_written == 3
    # a batch of dead letters only (every event failed) still commits them with its checkpoint
    b2 = _with_dead(ts.make_batch(2, 2), 0, 1)
    sink.write(b2)
    assert len(_dlq(redis_server, "cdc:events:dlq")) == 4 and sink.checkpoint == b2.end
    # A dead-letter stream that cannot take the entries stops the commit before anything lands:
    # the batch's own entries and its checkpoint do not move either (one transaction).
    redis_client.delete("cdc:events:dlq")
    redis_client.set("cdc:events:dlq", "x")
    sink._checked_streams.discard("cdc:events:dlq")
    before = redis_client.get(sink.checkpoint_key)
    with pytest.raises(SinkError, match=r"cdc:events:dlq.*holds a string"):
        sink.write(_with_dead(ts.make_batch(3, 3), 2))
    assert redis_client.xlen("cdc:events") == 3 and redis_client.get(sink.checkpoint_key) == before
    sink.close()


@pytest.mark.integration
def test_sink_skips_dead_letters_its_checkpoint_covers(redis_server: Any, redis_client: Any) -> None:
    sink = ts.make_sink(ts.cfg(redis_server, "s:dead", dlq_stream="{s:dead}:poison"))
    sink.open()
    # first half of a split transaction: rows 0..2, row 1 dead; the checkpoint skips 3 rows
    sink.write(_with_dead(ts.make_batch(3, 1, end=Position(FILE, 1000, skip_rows=3)), 1))
    sink.close()
    # a restart re-reads the whole transaction (rows 0..5, rows 1 and 4 dead): only rows 3.. are new
    again = ts.make_sink(ts.cfg(redis_server, "s:dead", dlq_stream="{s:dead}:poison"))
    again.open()
    again.write(_with_dead(ts.make_batch(6, 1), 1, 4))
    assert [json.loads(f[1])["after"]["id"] for f in ts.entries(redis_server, "s:dead")] == [0, 2, 3, 5]
    assert [d["error"] for d in _dlq(redis_server, "{s:dead}:poison")] == ["boom 1", "boom 4"]
    again.close()


@pytest.mark.integration
def test_dlq_stream_template_and_decoder_records(redis_server: Any, redis_client: Any) -> None:
    sink = ts.make_sink(ts.cfg(redis_server, "cdc:${table}", dlq_stream="dlq:${source.db}:${source.table}"))
    sink.open()
    b = ts.make_batch(2, 1)
    raw = DeadLetter(stage="decoder", error="app.orders at binlog.000001:1000: cannot decode row: x",
                     table="app.orders", file=FILE, pos=1000, gtid="0-1-1000", raw="AAEC", ts_ms=5)
    sink.write(Batch(seq=1, events=b.events, keys=b.keys, end=b.end, dead=[raw], dead_keys=[(1, 1000, 9)]))
    [doc] = _dlq(redis_server, "dlq:app:orders")
    assert doc["stage"] == "decoder" and doc["raw"] == "AAEC" and doc["event"] is None and doc["row"] is None
    assert redis_client.xlen("cdc:app.users") == 2
    sink.close()
