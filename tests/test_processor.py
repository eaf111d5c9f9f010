"""The JavaScript processor stage (deltaforge/process/js.py): no servers needed.

The seed processor is read from conf/pipeline.yaml, the user's seed pipeline verbatim.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from deltaforge import config
from deltaforge.errors import ConfigError, ProcessorError, ProcessorLimitError
from deltaforge.model import (
    Batch,
    Event,
    Position,
    Source,
    Transaction,
    derive_event_id,
    derive_synthetic_id,
)
from deltaforge.process.js import JsProcessor, ProcessorChain

# The seed's processor exactly as the user wrote it: conf/pipeline.yaml is checked byte for byte
# against seed/cache-invalidation.md in tests/test_config.py.
SEED_JS: str = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "pipeline.yaml").read_text())[
    "spec"]["processors"][0]["inline"]


# Stand-ins with the attributes of deltaforge.config.ProcessorSpec / its limits.
@dataclasses.dataclass
class Limits:
    timeout_ms: int = 500
    mem_mb: int = 128


@dataclasses.dataclass
class Spec:
    id: str
    code: str
    type: str = "javascript"
    origin: str = "processors[0].inline"
    limits: Limits = dataclasses.field(default_factory=Limits)


FILE = "binlog.000001"


def make_event(
    table: str,
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    pos: int = 1234,
    row: int = 0,
    tags: list[str] | None = None,
) -> Event:
    db, _, tbl = table.partition(".")
    return Event(
        event_id=derive_event_id("1", FILE, pos, row),
        tenant_id="acme",
        table=table,
        op=op,
        before=before,
        after=after,
        ts_ms=1_700_000_000_000 + row,
        source=Source(
            connector="mysql",
            name="cache-invalidation",
            server_id=1,
            db=db,
            table=tbl,
            file=FILE,
            pos=pos,
            row=row,
            gtid="0-1-7",
            ts_ms=1_700_000_000_000 + row,
        ),
        transaction=Transaction(id="0-1-7", seq=row, end=False),
        tags=tags,
    )


def make_batch(*events: Event, origin: str = "app.users at binlog.000001:1234") -> Batch:
    return Batch(
        seq=7,
        events=list(events),
        keys=[(1, 1234, i) for i in range(len(events))],
        end=Position(FILE, 4321, gtid="0-1-7"),
        origin=origin,
    )


def users_rows() -> list[Event]:
    return [
        make_event("app.users", "c", None, {"id": 1, "email": "a@x.io"}, row=0),
        make_event(
            "app.users", "u", {"id": 1, "email": "old@x.io"}, {"id": 1, "email": "new@x.io"}, row=1
        ),
        make_event("app.users", "d", {"id": 1, "email": "new@x.io"}, None, row=2),
    ]


@pytest.fixture
def make_proc():
    made: list[JsProcessor | ProcessorChain] = []

    def factory(code: str, pid: str = "p", index: int = 0, **limits: int) -> JsProcessor:
        proc = JsProcessor(
            Spec(id=pid, code=code, origin=f"processors[{index}].inline", limits=Limits(**limits)),
            index,
        )
        made.append(proc)
        return proc

    yield factory
    for proc in made:
        proc.close()


# --- the seed processor ---------------------------------------------------


def test_seed_processor_users(make_proc):
    proc = make_proc(SEED_JS, "generate-cache-keys")
    out = proc.process(make_batch(*users_rows()))
    ins, upd, dele = out.events
    assert ins.after == {
        "id": 1,
        "email": "a@x.io",
        "_cache_keys": ["user:1", "user:email:a@x.io", "user:1:orders", "user:1:profile"],
        "_invalidation_strategy": "batched",
    }
    assert ins.tags == ["cache:invalidate", "strategy:batched", "keys:4"]
    # The seed's documented example: email change -> 5 keys, old and new email.
    assert upd.after["_cache_keys"] == [
        "user:1",
        "user:email:new@x.io",
        "user:email:old@x.io",
        "user:1:orders",
        "user:1:profile",
    ]
    assert upd.before == {"id": 1, "email": "old@x.io"}
    assert upd.tags == ["cache:invalidate", "strategy:batched", "keys:5"]
    # Delete: keys go into `before`, strategy immediate.
    assert dele.after is None
    assert dele.before["_cache_keys"] == [
        "user:1",
        "user:email:new@x.io",
        "user:1:orders",
        "user:1:profile",
    ]
    assert dele.before["_invalidation_strategy"] == "immediate"
    assert dele.tags == ["cache:invalidate", "strategy:immediate", "keys:4"]
    # Ids, positions, keys untouched.
    assert [e.event_id for e in out.events] == [e.event_id for e in users_rows()]
    assert out.keys == [(1, 1234, 0), (1, 1234, 1), (1, 1234, 2)]
    assert (out.seq, out.end, out.origin) == (7, Position(FILE, 4321, gtid="0-1-7"), out.origin)


def test_seed_processor_products_orders_inventory(make_proc):
    proc = make_proc(SEED_JS, "generate-cache-keys")
    batch = make_batch(
        make_event("app.products", "c", None, {"id": 7, "category_id": 3, "name": "mug"}, row=0),
        make_event("app.products", "u", {"id": 8}, {"id": 8, "category_id": None}, row=1),
        make_event("app.orders", "c", None, {"id": 9, "user_id": 1}, row=2),
        make_event("app.orders", "d", {"id": 9, "user_id": 1}, None, row=3),
        make_event(
            "app.inventory",
            "u",
            {"id": 2, "product_id": 7, "qty": 5},
            {"id": 2, "product_id": 7, "qty": 4},
            row=4,
        ),
        make_event("app.inventory", "d", {"id": 2, "product_id": 7, "qty": 4}, None, row=5),
        make_event("app.users", "c", None, {"email": "no-id@x.io"}, row=6, tags=["pre"]),
    )
    ev = proc.process(batch).events
    assert ev[0].after["_cache_keys"] == ["product:7", "product:7:details", "category:3:products"]
    assert ev[0].tags == ["cache:invalidate", "strategy:batched", "keys:3"]
    assert ev[1].after["_cache_keys"] == ["product:8", "product:8:details"]
    assert ev[2].after["_cache_keys"] == ["order:9", "user:1:orders"]
    assert ev[2].after["_invalidation_strategy"] == "batched"
    assert ev[3].before["_cache_keys"] == ["order:9", "user:1:orders"]
    assert ev[3].tags == ["cache:invalidate", "strategy:immediate", "keys:2"]
    assert ev[4].after["_cache_keys"] == ["inventory:7", "product:7:stock"]
    assert ev[4].after["_invalidation_strategy"] == "immediate"
    assert "_cache_keys" not in ev[4].before
    assert ev[5].before["_cache_keys"] == ["inventory:7", "product:7:stock"]
    assert ev[5].tags == ["cache:invalidate", "strategy:immediate", "keys:2"]
    # No id -> no keys; existing tags are kept in front.
    assert ev[6].after == {
        "email": "no-id@x.io",
        "_cache_keys": [],
        "_invalidation_strategy": "batched",
    }
    assert ev[6].tags == ["pre", "cache:invalidate", "strategy:batched", "keys:0"]


def test_seed_output_is_the_native_json_the_worker_reads(make_proc):
    """What the seed's Node worker does: record = after || before; record._cache_keys."""
    proc = make_proc(SEED_JS, "generate-cache-keys")
    out = proc.process(make_batch(users_rows()[1]))
    payload = msgspec.json.decode(msgspec.json.encode(out.events[0]))
    record = payload["after"] or payload["before"]
    assert len(record["_cache_keys"]) == 5
    assert payload["table"] == "app.users"
    assert "synthetic" not in payload


def test_input_batch_is_not_mutated(make_proc):
    proc = make_proc(SEED_JS)
    rows = users_rows()
    batch = make_batch(*rows)
    proc.process(batch)
    assert batch.events == users_rows()


# --- return shapes ---------------------------------------------------------


@pytest.mark.parametrize("ret", ["null", "undefined", "[]", "", "events.filter(() => false)"])
def test_null_undefined_and_empty_mean_no_events(make_proc, ret):
    proc = make_proc(f"function processBatch(events) {{ return {ret}; }}")
    out = proc.process(make_batch(*users_rows()))
    assert out.events == [] and out.keys == []
    assert out.end == Position(FILE, 4321, gtid="0-1-7") and out.seq == 7


def test_single_object_return_is_one_event(make_proc):
    proc = make_proc(
        "function processBatch(events) { events[1].tags = ['one']; return events[1]; }"
    )
    rows = users_rows()
    out = proc.process(make_batch(*rows))
    assert [e.event_id for e in out.events] == [rows[1].event_id]
    assert out.events[0].tags == ["one"]
    assert out.keys == [(1, 1234, 1)]


def test_dropping_events_keeps_the_right_keys(make_proc):
    proc = make_proc("function processBatch(events) { return events.filter(e => e.op !== 'u'); }")
    rows = users_rows()
    out = proc.process(make_batch(*rows))
    assert [e.event_id for e in out.events] == [rows[0].event_id, rows[2].event_id]
    assert out.keys == [(1, 1234, 0), (1, 1234, 2)]


@pytest.mark.parametrize(
    ("ret", "expected"),
    [
        ("42", "returned the number 42"),
        ("'nope'", 'returned the string "nope"'),
        ("true", "returned the boolean true"),
        ("[events[0], null]", "element 1 is null"),
        ("[events[0], 7]", "element 1 is the number 7"),
        ("[[events[0]]]", "element 0 is an array"),
        ("() => 1", "returned a function"),
        ("Promise.resolve(events)", "a Promise"),
        ("{after: {n: 10n}}", "JSON.stringify rejects"),
    ],
)
def test_wrong_return_types(make_proc, ret, expected):
    proc = make_proc(f"function processBatch(events) {{\n  return {ret};\n}}", "shape")
    with pytest.raises(ProcessorError) as info:
        proc.process(make_batch(*users_rows()))
    msg = str(info.value)
    assert msg.startswith("spec.processors[0] (shape): processBatch returned ")
    assert expected in msg
    assert "app.users at binlog.000001:1234" in msg
    assert "\n" not in msg
    assert not info.value.retriable


def test_async_process_batch_is_rejected(make_proc):
    proc = make_proc("async function processBatch(events) { return events; }")
    with pytest.raises(ProcessorError, match="synchronously"):
        proc.process(make_batch(*users_rows()))


@pytest.mark.parametrize(
    ("mutation", "where"),
    [
        ("events[0].before = 'x'", "$[0].before"),
        ("events[1].after = [1, 2]", "$[1].after"),
        ("events[2].tags = ['a', 1]", "$[2].tags[1]"),
        ("events[0].tags = 'a'", "$[0].tags"),
        ("events[0].event_id = 12", "$[0].event_id"),
    ],
)
def test_invalid_field_types_are_rejected(make_proc, mutation, where):
    proc = make_proc(f"function processBatch(events) {{ {mutation}; return events; }}", "types")
    with pytest.raises(ProcessorError) as info:
        proc.process(make_batch(*users_rows()))
    assert "processors[0] (types): processBatch returned an invalid event" in str(info.value)
    assert where in str(info.value)


# --- the field contract ----------------------------------------------------


def test_unknown_top_level_fields_are_dropped(make_proc):
    proc = make_proc(
        "function processBatch(events) {\n"
        "  return events.map(e => { e.cache_keys = ['k']; e.extra = {a: 1}; return e; });\n"
        "}"
    )
    out = proc.process(make_batch(*users_rows()))
    payload = [msgspec.json.decode(line) for line in out.events.lines()]  # the bytes the sink writes
    assert len(payload) == len(users_rows())
    assert all("cache_keys" not in p and "extra" not in p for p in payload)
    assert out.events == users_rows()


def test_immutable_fields_are_restored(make_proc):
    proc = make_proc(
        """
        function processBatch(events) {
          for (const e of events) {
            e.tenant_id = 'evil'; e.table = 'x.y'; e.op = 'q'; e.ts_ms = 'soon';
            e.source = 'nowhere'; e.transaction = null; e.synthetic = 'me';
            e.after = {changed: true};
          }
          return events.reverse();
        }
        """
    )
    rows = users_rows()
    out = proc.process(make_batch(*rows))
    assert out.keys == [(1, 1234, 2), (1, 1234, 1), (1, 1234, 0)]
    for got, want in zip(out.events, reversed(rows), strict=True):
        assert got == msgspec.structs.replace(want, after={"changed": True})
        assert got.synthetic is msgspec.UNSET


def test_huge_integers_as_strings_survive(make_proc):
    big = "18446744073709551615"
    proc = make_proc(
        "function processBatch(events) { events[0].after.copy = events[0].after.n; return events; }"
    )
    out = proc.process(make_batch(make_event("app.t", "c", None, {"id": 1, "n": big})))
    assert out.events[0].after == {"id": 1, "n": big, "copy": big}


# --- created events ---------------------------------------------------------

CREATE_JS = """
function processBatch(events) {
  const out = [{table: 'app.audit', op: 'c', after: {note: 'before all'}}];
  for (const e of events) {
    out.push(e);
    if (e.op === 'u') {
      out.push({table: 'app.audit', op: 'c', after: {changed: e.after.id}, tags: ['audit']});
      out.push({table: 'app.audit', op: 'c', after: {second: true}, ts_ms: 5, tenant_id: 't2',
                event_id: 'user-chosen', synthetic: 'ignored'});
    }
  }
  return out;
}
"""


def test_created_events_get_deterministic_synthetic_ids(make_proc):
    rows = users_rows()
    proc = make_proc(CREATE_JS, "auditor", index=1)
    out = proc.process(make_batch(*rows))
    ids = [e.event_id for e in out.events]
    first, upd = rows[0].event_id, rows[1].event_id
    assert ids == [
        derive_synthetic_id(first, "auditor", 0),  # before any input: first input is parent
        first,
        upd,
        derive_synthetic_id(upd, "auditor", 0),
        derive_synthetic_id(upd, "auditor", 1),
        rows[2].event_id,
    ]
    assert len(set(ids)) == len(ids)
    created = [e for e in out.events if e.synthetic is not msgspec.UNSET]
    assert [e.synthetic for e in created] == ["auditor"] * 3
    audit = out.events[3]
    assert (audit.table, audit.op, audit.after, audit.tags) == (
        "app.audit",
        "c",
        {"changed": 1},
        ["audit"],
    )
    # Inherited from the parent where absent, kept where given.
    assert audit.tenant_id == "acme" and audit.source == rows[1].source
    assert audit.transaction == rows[1].transaction and audit.ts_ms == rows[1].ts_ms
    assert (out.events[4].ts_ms, out.events[4].tenant_id) == (5, "t2")
    assert out.keys == [
        (1, 1234, 0),
        (1, 1234, 0),
        (1, 1234, 1),
        (1, 1234, 1),
        (1, 1234, 1),
        (1, 1234, 2),
    ]
    # Replaying the same batch gives the same ids.
    again = proc.process(make_batch(*users_rows()))
    assert [e.event_id for e in again.events] == ids
    assert msgspec.json.decode(msgspec.json.encode(audit))["synthetic"] == "auditor"


def test_created_events_after_the_first_input_do_not_collide(make_proc):
    # Created before any input AND after the first input share the parent: ids differ.
    proc = make_proc(
        "function processBatch(events) {\n"
        "  const mk = () => ({table: 'app.x', op: 'c', after: {}});\n"
        "  return [mk(), events[0], mk()];\n"
        "}"
    )
    rows = users_rows()
    out = proc.process(make_batch(*rows))
    parent = rows[0].event_id
    assert [e.event_id for e in out.events] == [
        derive_synthetic_id(parent, "p", 0),
        parent,
        derive_synthetic_id(parent, "p", 1),
    ]


def test_duplicated_input_becomes_a_created_event(make_proc):
    proc = make_proc(
        "function processBatch(events) { return [events[0], {...events[0], tags: ['copy']}]; }"
    )
    rows = users_rows()
    out = proc.process(make_batch(*rows))
    assert out.events[0].event_id == rows[0].event_id
    assert out.events[1].event_id == derive_synthetic_id(rows[0].event_id, "p", 0)
    assert out.events[1].synthetic == "p" and out.events[1].tags == ["copy"]
    assert out.events[1].table == "app.users" and out.events[1].source == rows[0].source


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ("{op: 'c', after: {}}", "table is missing"),
        ("{table: 'nodot', op: 'c'}", 'not "db.table"'),
        ("{table: 5, op: 'c'}", "table is invalid"),
        ("{table: 'app.x'}", "op is missing"),
        ("{table: 'app.x', op: 'insert'}", "not one of c|u|d|r"),
        ("{table: 'app.x', op: 'c', source: {file: 1}}", "source is invalid"),
        ("{table: 'app.x', op: 'c', ts_ms: 'now'}", "ts_ms is invalid"),
    ],
)
def test_created_event_validation(make_proc, obj, expected):
    proc = make_proc(f"function processBatch(events) {{ return events.concat([{obj}]); }}", "mk")
    with pytest.raises(ProcessorError) as info:
        proc.process(make_batch(*users_rows()))
    assert "processors[0] (mk): processBatch returned a new event (element 3" in str(info.value)
    assert expected in str(info.value)


# --- errors ------------------------------------------------------------------


def test_syntax_error_names_the_user_line(make_proc):
    code = "\n".join(
        [f"// line {i}" for i in range(1, 12)]
        + ["let x = 1 x;", "function processBatch(e) { return e; }"]
    )
    with pytest.raises(ProcessorError) as info:
        make_proc(code, "generate-cache-keys")
    msg = str(info.value)
    assert msg.startswith(
        "spec.processors[0] (generate-cache-keys): SyntaxError at line 12: Unexpected identifier 'x'"
    )
    assert "line 12 of processors[0].inline reads `let x = 1 x;`" in msg
    assert "\n" not in msg


def test_syntax_error_names_a_file_origin():
    spec = Spec(id="f", code="function processBatch(e) {\n  return e\n", origin="conf/keys.js")
    with pytest.raises(ProcessorError) as info:
        JsProcessor(spec, 2)
    msg = str(info.value)
    assert msg.startswith("spec.processors[2] (f): SyntaxError at line 2: Unexpected end of input")
    assert "conf/keys.js" in msg


@pytest.mark.parametrize(
    "code",
    ["const x = 1;", "var processBatch = 3;", "function processbatch(e) { return e; }"],
)
def test_missing_process_batch(make_proc, code):
    with pytest.raises(ProcessorError, match=r"defines no function processBatch\(events\)"):
        make_proc(code)


def test_empty_code(make_proc):
    with pytest.raises(ProcessorError, match="has no JavaScript code"):
        make_proc("   \n")


def test_arrow_and_const_process_batch_are_accepted(make_proc):
    proc = make_proc("const processBatch = (events) => events.slice(1);")
    assert len(proc.process(make_batch(*users_rows())).events) == 2


def test_top_level_exception_at_load(make_proc):
    with pytest.raises(ProcessorError) as info:
        make_proc("function processBatch(e) { return e; }\n\nundefinedThing.go();\n")
    msg = str(info.value)
    assert "ReferenceError: undefinedThing is not defined at line 3" in msg
    assert "while loading the script" in msg


def test_runtime_exception_names_line_and_batch(make_proc):
    code = (
        "function processBatch(events) {\n"  # 1
        "  return events.map(e => {\n"  # 2
        "    const x = e.after;\n"  # 3
        "    return x === null ? x.missing : e;\n"  # 4
        "  });\n"
        "}\n"
    )
    proc = make_proc(code, "generate-cache-keys")
    batch = make_batch(users_rows()[2])  # a delete: after is null
    with pytest.raises(ProcessorError) as info:
        proc.process(batch)
    msg = str(info.value)
    assert type(info.value) is ProcessorError and not info.value.retriable
    assert msg.startswith(
        "spec.processors[0] (generate-cache-keys): TypeError: Cannot read properties of null "
        "(reading 'missing') at line 4 of processors[0].inline"
    )
    assert "app.users at binlog.000001:1234" in msg
    assert "\n" not in msg
    # The isolate survives a JS exception.
    assert len(proc.process(make_batch(users_rows()[0])).events) == 1


def test_exception_inside_a_builtin_reports_the_calling_line(make_proc):
    proc = make_proc("function processBatch(events) {\n\n  return JSON.parse('{bad');\n}")
    with pytest.raises(ProcessorError) as info:
        proc.process(make_batch(*users_rows(), origin="app.orders at binlog.000002:99"))
    msg = str(info.value)
    assert "SyntaxError: Expected property name" in msg
    assert "at line 3 of processors[0].inline" in msg
    assert "app.orders at binlog.000002:99" in msg


def test_thrown_string_and_missing_origin(make_proc):
    proc = make_proc("function processBatch(events) {\n  throw 'boom';\n}")
    batch = make_batch(*users_rows(), origin="")
    with pytest.raises(ProcessorError) as info:
        proc.process(batch)
    msg = str(info.value)
    assert "boom at line 2" in msg
    assert "#7 ending at binlog.000001:4321" in msg


# --- limits ------------------------------------------------------------------

LOOP_JS = """
function processBatch(events) {
  if (events[0].after && events[0].after.spin) { while (true) {} }
  return events;
}
"""


def test_timeout_then_next_batch_works(make_proc):
    proc = make_proc(LOOP_JS, "spinner", timeout_ms=100)
    spin = make_batch(make_event("app.t", "c", None, {"id": 1, "spin": True}))
    with pytest.raises(ProcessorLimitError) as info:
        proc.process(spin)
    msg = str(info.value)
    assert "processors[0] (spinner): processBatch ran longer than limits.timeout_ms=100" in msg
    assert "processors[0].limits.timeout_ms" in msg
    ok = proc.process(make_batch(make_event("app.t", "c", None, {"id": 2})))
    assert ok.events[0].after == {"id": 2}


def test_timeout_in_top_level_code():
    with pytest.raises(ProcessorLimitError, match="top-level code ran longer"):
        JsProcessor(
            Spec(
                id="t",
                code="while (true) {}\nfunction processBatch(e) { return e; }",
                limits=Limits(timeout_ms=100),
            ),
            0,
        )


MEM_JS = """
function processBatch(events) {
  if (events[0].after.hog) {
    const hoard = [];
    for (let i = 0; ; i++) hoard.push({i: i, s: 'x' + i});
  }
  if (events[0].after.big) {
    const a = new Array(2e7).fill(1.5);
    events[0].after.n = a.length;
  }
  return events;
}
"""


@pytest.mark.parametrize("kind", ["hog", "big"])
def test_memory_limit_then_next_batch_works(make_proc, kind):
    proc = make_proc(MEM_JS, "hog", mem_mb=32, timeout_ms=10_000)
    with pytest.raises(ProcessorLimitError) as info:
        proc.process(make_batch(make_event("app.t", "c", None, {"id": 1, kind: True})))
    msg = str(info.value)
    assert "processors[0] (hog): the V8 heap exceeded limits.mem_mb=32" in msg
    assert "app.users at binlog.000001:1234" in msg
    ok = proc.process(make_batch(make_event("app.t", "c", None, {"id": 2})))
    assert ok.events[0].after == {"id": 2}


def test_limit_errors_are_processor_errors():
    assert issubclass(ProcessorLimitError, ProcessorError)
    assert not ProcessorLimitError("x").retriable


# --- the chain ---------------------------------------------------------------


def test_chain_runs_processors_in_order_each_with_its_own_process_batch():
    first = Spec(id="generate-cache-keys", code=SEED_JS, origin="processors[0].inline")
    second = Spec(
        id="fanout",
        origin="processors[1].inline",
        code="""
        function processBatch(events) {
          const out = [];
          for (const e of events) {
            e.tags = e.tags.concat(['seen:' + (e.synthetic || 'source')]);
            out.push(e);
            if (e.op === 'd') out.push({table: e.table, op: 'd', before: {id: e.before.id}});
          }
          return out;
        }
        """,
    )
    third = Spec(
        id="keep-synthetic",
        origin="processors[2].inline",
        code="function processBatch(events) { return events.filter(e => e.op === 'd'); }",
    )
    rows = users_rows()
    with ProcessorChain([first, second, third], "cache-invalidation") as chain:
        assert [p.id for p in chain.processors] == [
            "generate-cache-keys",
            "fanout",
            "keep-synthetic",
        ]
        out = chain.process(make_batch(*rows))
        dele, extra = out.events
        assert dele.event_id == rows[2].event_id
        assert dele.tags == ["cache:invalidate", "strategy:immediate", "keys:4", "seen:source"]
        assert dele.before["_cache_keys"][0] == "user:1"
        # Created by processor 1, passed through processor 2 with its id intact.
        assert extra.event_id == derive_synthetic_id(rows[2].event_id, "fanout", 0)
        assert extra.synthetic == "fanout" and extra.before == {"id": 1}
        assert out.keys == [(1, 1234, 2), (1, 1234, 2)]
        # Processor 2 dropping everything: processor 3 is not called with an empty batch.
        empty = chain.process(make_batch(rows[0]))
        assert empty.events == [] and empty.end == Position(FILE, 4321, gtid="0-1-7")


def test_chain_of_nothing_and_empty_batches():
    with ProcessorChain([], "p") as chain:
        batch = make_batch(*users_rows())
        assert chain.process(batch) is batch
    with ProcessorChain([Spec(id="a", code="function processBatch(e) { throw 1; }")], "p") as chain:
        empty = make_batch()
        assert chain.process(empty) is empty


def test_chain_rejects_other_processor_types():
    with pytest.raises(ConfigError, match=r"processors\[0\]\.type"):
        ProcessorChain([Spec(id="w", code="x", type="wasm")], "p")


def test_chain_reports_the_failing_processor_index():
    good = Spec(id="ok", code="function processBatch(e) { return e; }")
    bad = Spec(id="broken", code="function processBatch(e) {", origin="conf/broken.js")
    with pytest.raises(
        ProcessorError,
        match=r"^spec\.processors\[1\] \(broken\): SyntaxError at line 1: Unexpected end of input",
    ):
        ProcessorChain([good, bad], "p")


# --- loading, isolation, lifecycle --------------------------------------------


def test_real_processor_spec_from_config():
    spec = config.ProcessorSpec(
        type="javascript",
        id="generate-cache-keys",
        inline=SEED_JS,
        code=SEED_JS,
        origin="spec.processors[0].inline",
        limits=config.Limits(timeout_ms=500, mem_mb=128),
    )
    with ProcessorChain([spec], "cache-invalidation") as chain:
        proc = chain.processors[0]
        assert (proc.timeout_ms, proc.mem_mb, proc.origin) == (
            500,
            128,
            "spec.processors[0].inline",
        )
        out = chain.process(make_batch(users_rows()[1]))
        assert out.events[0].tags == ["cache:invalidate", "strategy:batched", "keys:5"]


def test_script_is_loaded_once_and_keeps_state_between_batches(make_proc):
    proc = make_proc(
        "let calls = 0;\n"
        "function processBatch(events) {\n"
        "  calls += 1;\n"
        "  return events.map(e => { e.tags = ['call:' + calls + ':' + events.length]; return e; });\n"
        "}\n"
    )
    first = proc.process(make_batch(*users_rows()))
    second = proc.process(make_batch(users_rows()[0]))
    assert [e.tags for e in first.events] == [["call:1:3"]] * 3
    assert second.events[0].tags == ["call:2:1"]


def test_processors_do_not_share_globals(make_proc):
    a = make_proc("var who = 'a';\nfunction processBatch(e) { e[0].tags = [who]; return e; }", "a")
    b = make_proc("var who = 'b';\nfunction processBatch(e) { e[0].tags = [who]; return e; }", "b")
    batch = make_batch(users_rows()[0])
    assert a.process(batch).events[0].tags == ["a"]
    assert b.process(batch).events[0].tags == ["b"]
    assert a.process(batch).events[0].tags == ["a"]


def test_user_code_replacing_json_does_not_break_the_boundary(make_proc):
    proc = make_proc(
        "JSON.stringify = () => 'hijacked';\nJSON.parse = () => [];\n"
        "function processBatch(events) { return events; }"
    )
    rows = users_rows()
    assert proc.process(make_batch(*rows)).events == rows


def test_no_text_encoder_in_the_isolate(make_proc):
    # Documented: mini-racer's global scope has no TextEncoder/TextDecoder.
    proc = make_proc(
        "function processBatch(e) { e[0].tags = [typeof TextEncoder, typeof TextDecoder]; "
        "return e; }"
    )
    assert proc.process(make_batch(users_rows()[0])).events[0].tags == ["undefined", "undefined"]


def test_mem_limit_above_v8_ceiling_is_a_config_error(make_proc):
    with pytest.raises(ConfigError, match=r"spec\.processors\[0\]\.limits\.mem_mb"):
        make_proc("function processBatch(e) { return e; }", mem_mb=1_000_000)


def test_process_after_close_is_an_error(make_proc):
    proc = make_proc("function processBatch(e) { return e; }")
    proc.close()
    proc.close()  # idempotent
    with pytest.raises(ProcessorError, match="after close"):
        proc.process(make_batch(users_rows()[0]))


def test_processor_uses_the_direct_v8_call() -> None:
    """mini-racer's internals match what _DirectCall expects (a mini-racer upgrade would show here)."""
    from deltaforge.process.js import JsProcessor, _DirectCall

    spec = type("Spec", (), {"type": "javascript", "id": "p", "code": "function processBatch(e) { return e; }",
                             "origin": "spec.processors[0].inline",
                             "limits": type("L", (), {"timeout_ms": 1000, "mem_mb": 64})()})()
    proc = JsProcessor(spec, 0)
    try:
        assert isinstance(proc._run, _DirectCall)
    finally:
        proc.close()
