"""``streamcommit``: the sink's commit request in one buffer, and the C check of its success reply.

Three oracles for the request: the compiled module and its pure twin give identical bytes;
both equal what the sink sent before (a tuple per command through ``resp_py.encode_commands``,
the wire format the stream's consumers rely on); and hiredis parses it back to the commands.
For the reply scan: both implementations agree on every prefix and mutation of the success
reply, and a "success" verdict is only ever given to bytes hiredis parses into the success
replies.
"""

from __future__ import annotations

import importlib
import os
import random
from typing import Any

import hiredis
import pytest

from deltaforge import _accel
from deltaforge.sink import resp_py, streamcommit_py
from deltaforge.sink.envelope import Envelope

compiled = importlib.import_module("deltaforge._core.streamcommit")
IMPLS = [compiled, streamcommit_py]
DEBEZIUM = Envelope("debezium", "p")


def old_wire(kw: dict[str, Any]) -> bytes:
    """The request as the sink built it before streamcommit: one tuple per command."""
    n = len(kw["payloads"])

    def col(name: str, count: int) -> list[Any]:
        v = kw.get(name, () if name.startswith("dlq") else None)
        return list(v) if isinstance(v, (list, tuple)) else [v] * count

    streams, ids, tenants, tables, txids = (col(c, n) for c in ("streams", "event_ids", "tenants", "tables", "txids"))
    prefix, suffix = kw.get("prefix", b""), kw.get("suffix", b"")
    maxlen = kw.get("maxlen")
    exactly_once = kw.get("exactly_once", True)

    def text(v: Any) -> Any:
        return "" if v is None else v

    def as_bytes(v: Any) -> bytes:
        return v if isinstance(v, bytes) else text(v).encode()

    cmds: list[tuple[Any, ...]] = [(b"MULTI",)] if exactly_once else []
    for i in range(n):
        trim = (b"MAXLEN", b"~", maxlen) if maxlen is not None else ()
        key = b"|".join(as_bytes(c[i]) for c in (tenants, tables, txids, ids))  # model.idempotency_key
        cmds.append((b"XADD", text(streams[i]), *trim, b"*", b"df-event", prefix + kw["payloads"][i] + suffix,
                     b"event_id", text(ids[i]), b"idempotency_key", key))
    d = len(kw.get("dlq_payloads", ()))
    for s, p, e in zip(col("dlq_streams", d), col("dlq_payloads", d), col("dlq_ids", d), strict=True):
        cmds.append((b"XADD", text(s), b"*", b"df-dlq", p, b"event_id", text(e)))
    key, value = kw["checkpoint_key"], text(kw["checkpoint_value"])
    cmds.append((b"SET", key, value))
    if exactly_once:
        cmds += [(b"EXEC",), (b"WATCH", key), (b"GET", key)]
    return resp_py.encode_commands(cmds)


def request(n: int, *, seed: int = 0, static: bool = True, **extra: Any) -> dict[str, Any]:
    rng = random.Random(seed)
    kw: dict[str, Any] = {
        "payloads": [b'{"event_id":"e%d","after":{"name":"Zo\xc3\xab \xf0\x9f\x9a\x80"}}' % i for i in range(n)],
        "streams": "cdc:events" if static else [f"cdc:app.t{rng.randrange(4)}" for _ in range(n)],
        "event_ids": [f"{i:08x}-aaaa-5bbb-8ccc-{rng.randrange(1 << 48):012x}" for i in range(n)],
        "tenants": [rng.choice(("acme", None, "", "mandant-ä")) for _ in range(n)],
        "tables": "app.users",
        "txids": [rng.choice(("0-1-42", "", "3e11fa47-71ca-11e1-9e33-c80aa9429562:23")) for _ in range(n)],
        "checkpoint_key": "{cdc}:deltaforge:checkpoint:pipe:s1",
        "checkpoint_value": b'{"file":"binlog.000001","pos":4,"owner":"x","commit":7}',
    }
    kw.update(extra)
    return kw


CASES: dict[str, dict[str, Any]] = {
    "empty batch": request(0),
    "one event": request(1),
    "static stream": request(50),
    "template streams": request(50, static=False, seed=1),
    "debezium": request(20, prefix=DEBEZIUM.prefix, suffix=DEBEZIUM.suffix),
    "at least once": request(20, exactly_once=False),
    "at least once, empty": request(0, exactly_once=False),
    "maxlen": request(5, maxlen=1_000_000),
    "maxlen 0": request(3, maxlen=0),
    "dead letters": request(3, dlq_streams=["cdc:events:dlq", "другой:dlq"], dlq_payloads=[b'{"e":1}', b""],
                            dlq_ids=["e1", ""]),
    "dead letters only": request(0, dlq_streams="cdc:events:dlq", dlq_payloads=[b"{}"] * 3, dlq_ids=None),
    "empty strings everywhere": request(4, streams="", event_ids="", tenants="", tables="", txids="",
                                        payloads=[b""] * 4, checkpoint_value=b""),
    "bytes columns": request(3, streams=b"cdc:b", event_ids=[b"a", b"b", b"c"], tables=[b"t\xc3\xa9"] * 3),
    "non-ascii": request(10, streams="поток:{тег}", tables="app.tëst", txids="0-1-✓",
                         checkpoint_key="ключ", checkpoint_value="värde 🚀"),
    "large payloads": request(3, payloads=[b"x" * 1_000_000, b"\xc3\xa9" * 300_000, b"\r\n\x00" * 70_000]),
    "many events": request(5000, static=False, seed=2),
    "tuples": request(2, payloads=(b"{}", b"[]"), event_ids=("a", "b")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_both_implementations_write_the_wire_format_of_before(name: str) -> None:
    kw = CASES[name]
    expected = old_wire(kw)
    assert streamcommit_py.encode_commit(**kw) == expected
    assert compiled.encode_commit(**kw) == expected


def test_identical_on_random_inputs() -> None:
    rng = random.Random(99)

    def text() -> Any:
        kind = rng.randrange(5)
        if kind == 0:
            return None
        if kind == 1:
            return rng.randbytes(rng.randrange(0, 40))
        return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0xA0, 0x2FFF), 0x1F600)))
                       for _ in range(rng.randrange(0, 30)))

    def column(n: int) -> Any:
        return text() if rng.random() < 0.3 else [text() for _ in range(n)]

    for _ in range(300):
        n, d = rng.randrange(0, 30), rng.randrange(0, 3)
        kw = {"payloads": [rng.randbytes(rng.randrange(0, 500)) for _ in range(n)],
              "streams": column(n), "event_ids": column(n), "tenants": column(n), "tables": column(n),
              "txids": column(n), "prefix": rng.choice((b"", DEBEZIUM.prefix)), "suffix": rng.choice((b"", b"}")),
              "maxlen": rng.choice((None, 0, 7, 10**12)), "dlq_streams": column(d),
              "dlq_payloads": [rng.randbytes(rng.randrange(0, 50)) for _ in range(d)], "dlq_ids": column(d),
              "checkpoint_key": text() or "k", "checkpoint_value": text(), "exactly_once": rng.random() < 0.7}
        expected = old_wire(kw)
        assert streamcommit_py.encode_commit(**kw) == expected
        assert compiled.encode_commit(**kw) == expected


def test_hiredis_parses_the_request_back_to_its_commands() -> None:
    kw = request(2, dlq_streams=["d"], dlq_payloads=[b"{}"], dlq_ids=[None], maxlen=9)
    reader = hiredis.Reader()
    reader.feed(compiled.encode_commit(**kw))
    got = []
    while (cmd := reader.gets()) is not False:
        got.append(cmd)
    assert [c[0] for c in got] == [b"MULTI", b"XADD", b"XADD", b"XADD", b"SET", b"EXEC", b"WATCH", b"GET"]
    xadd = got[1]
    assert xadd[:6] == [b"XADD", b"cdc:events", b"MAXLEN", b"~", b"9", b"*"]
    assert xadd[6:8] == [b"df-event", kw["payloads"][0]]
    assert xadd[8:] == [b"event_id", kw["event_ids"][0].encode(), b"idempotency_key",
                        "|".join((kw["tenants"][0] or "", "app.users", kw["txids"][0],
                                  kw["event_ids"][0])).encode()]
    assert got[3] == [b"XADD", b"d", b"*", b"df-dlq", b"{}", b"event_id", b""]
    assert got[4] == [b"SET", kw["checkpoint_key"].encode(), kw["checkpoint_value"]]


BAD: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("payloads not a list", {"payloads": b"{}"}, TypeError, "payloads must be a list or tuple, not bytes"),
    ("payload of another type", {"payloads": [b"{}", 1]}, TypeError, "payloads[1] must be bytes, str or None, not int"),
    ("short column", {"event_ids": ["a"]}, ValueError, "event_ids has 1 values for 2 entries"),
    ("scalar of another type", {"streams": 3.5}, TypeError, "streams must be bytes, str or None, not float"),
    ("bytearray", {"tables": [bytearray(b"t"), "t"]}, TypeError, "tables[0] must be bytes, str or None"),
    ("negative maxlen", {"maxlen": -1}, ValueError, "maxlen must be a non-negative int or None, not -1"),
    ("bool maxlen", {"maxlen": True}, ValueError, "maxlen must be a non-negative int or None, not True"),
    ("prefix str", {"prefix": "x"}, TypeError, "prefix and suffix must be bytes"),
    ("checkpoint value int", {"checkpoint_value": 5}, TypeError, "checkpoint_value must be bytes, str or None"),
    ("dlq short", {"dlq_payloads": [b"{}"], "dlq_streams": []}, ValueError, "dlq_streams has 0 values for 1 entries"),
    ("lone surrogate", {"tenants": "\ud800"}, UnicodeEncodeError, "surrogate"),
]


@pytest.mark.parametrize("mod", IMPLS, ids=["cython", "python"])
@pytest.mark.parametrize(("case", "change", "exc", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_the_same_error(mod: Any, case: str, change: dict[str, Any], exc: type[Exception],
                                         message: str) -> None:
    kw = {**request(2), **change}
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]")):
        mod.encode_commit(**kw)


# ------------------------------------------------------------------------------------------ reply scan


def success_reply(entries: int, value: bytes, exactly_once: bool = True) -> bytes:
    ids = b"".join(b"$%d\r\n%d-%d\r\n" % (len(b"%d-%d" % (1714564800123, i)), 1714564800123, i)
                   for i in range(entries))
    if not exactly_once:
        return ids + b"+OK\r\n"
    return (b"+OK\r\n" + b"+QUEUED\r\n" * (entries + 1) + b"*%d\r\n" % (entries + 1) + ids + b"+OK\r\n"
            + b"+OK\r\n" + b"$%d\r\n%b\r\n" % (len(value), value))


def hiredis_replies(data: bytes) -> list[Any] | None:
    """All replies in ``data``, or None when it ends inside one."""
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (r := reader.gets()) is not False:
        out.append(r)
    return None if reader.has_data() else out


def is_success(replies: list[Any] | None, entries: int, value: bytes, exactly_once: bool) -> bool:
    if replies is None:
        return False
    if not exactly_once:
        return (len(replies) == entries + 1 and all(isinstance(r, bytes) for r in replies[:-1])
                and replies[-1] == b"OK")
    if len(replies) != entries + 5:
        return False
    exec_reply = replies[entries + 2]
    return (replies[0] == b"OK" and all(r == b"QUEUED" for r in replies[1 : entries + 2])
            and isinstance(exec_reply, list) and len(exec_reply) == entries + 1
            and all(isinstance(r, bytes) for r in exec_reply[:-1]) and exec_reply[-1] == b"OK"
            and replies[entries + 3] == b"OK" and replies[entries + 4] == value)


def both_scan(data: bytes, entries: int, value: bytes | None, exactly_once: bool) -> int:
    a = compiled.scan_commit_reply(data, entries, value, exactly_once)
    b = streamcommit_py.scan_commit_reply(data, entries, value, exactly_once)
    assert a == b, (data, entries, value, exactly_once)
    return int(a)


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly_once", "at_least_once"])
@pytest.mark.parametrize("entries", [0, 1, 3, 12])
def test_every_prefix_of_the_success_reply_asks_for_more(entries: int, exactly_once: bool) -> None:
    value = b'{"pos":4,"owner":"\xc3\xa9"}'
    data = success_reply(entries, value, exactly_once)
    expected = value if exactly_once else None
    for i in range(len(data)):
        assert both_scan(data[:i], entries, expected, exactly_once) == 0
    assert both_scan(data, entries, expected, exactly_once) == len(data)
    assert is_success(hiredis_replies(data), entries, value, exactly_once)
    assert both_scan(data + b"+", entries, expected, exactly_once) == -1  # trailing bytes: desync


# replies Redis gives when something went wrong, each swapped for one success reply in turn
FAULTS = [b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
          b"-EXECABORT Transaction discarded because of previous errors.\r\n", b"*-1\r\n", b"$-1\r\n",
          b"-READONLY You can't write against a read only replica.\r\n", b"+OK\r\n", b"$3\r\nabc\r\n",
          b":1\r\n", b"*0\r\n"]


def split_replies(data: bytes) -> list[bytes]:
    """The top-level replies of ``data`` as raw bytes, and those inside the EXEC array."""
    out = []
    p = 0
    while p < len(data):
        reader = hiredis.Reader()
        for q in range(p + 1, len(data) + 1):
            reader.feed(data[q - 1 : q])
            if reader.gets() is not False:
                break
        out.append(data[p:q])
        p = q
    return out


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly_once", "at_least_once"])
def test_a_fault_anywhere_deviates_and_hiredis_agrees(exactly_once: bool) -> None:
    entries, value = 3, b"v1"
    expected = value if exactly_once else None
    good = success_reply(entries, value, exactly_once)
    parts = split_replies(good)
    if exactly_once:  # look inside the EXEC array too
        exec_at = entries + 2
        head, inner = parts[exec_at][:4], split_replies(parts[exec_at][4:])
        parts = [*parts[:exec_at], head, *inner, *parts[exec_at + 1:]]
    assert b"".join(parts) == good
    for i in range(len(parts)):
        for fault in FAULTS:
            if fault == parts[i] or (fault.startswith(b"$3") and parts[i].startswith(b"$15")):
                continue  # not a fault there (another entry id is still an entry id)
            data = b"".join([*parts[:i], fault, *parts[i + 1:]])
            verdict = both_scan(data, entries, expected, exactly_once)
            assert verdict in (0, -1), (i, fault)
            if fault.startswith((b"-", b"*-1", b"$-1")):  # an error or a nil: the exact path must see it
                assert not is_success(hiredis_replies(data), entries, value, exactly_once)
    # another value in GET: someone overwrote the checkpoint right after our EXEC
    if exactly_once:
        assert both_scan(success_reply(entries, b"v2"), entries, value, True) == -1


def test_random_mutations_never_pass_for_success_unless_hiredis_agrees() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        entries = rng.randrange(0, 6)
        exactly_once = rng.random() < 0.7
        value = rng.choice((b"v", b"", b"\r\n\xff"))
        data = bytearray(success_reply(entries, value, exactly_once))
        for _ in range(rng.randrange(0, 3)):
            op = rng.randrange(3)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(at, len(data) - 1)] = rng.choice(b"$*+-:\r\n0123456789xQ")
            elif op == 1:
                data[at:at] = rng.choice((b"\r\n", b"1", b"+OK\r\n", b"$"))
            elif data:
                del data[at : at + rng.randrange(1, 4)]
        raw = bytes(data)
        verdict = both_scan(raw, entries, value if exactly_once else None, exactly_once)
        try:
            replies = hiredis_replies(raw)
        except hiredis.ProtocolError:
            replies = None
        if verdict > 0:
            assert verdict == len(raw)
            assert is_success(replies, entries, value, exactly_once), raw


@pytest.mark.parametrize("mod", IMPLS, ids=["cython", "python"])
def test_scan_rejects_bad_arguments(mod: Any) -> None:
    with pytest.raises(TypeError, match="data must be bytes, not bytearray"):
        mod.scan_commit_reply(bytearray(b"+OK\r\n"), 0, b"", True)
    with pytest.raises(TypeError, match="expected must be bytes in exactly-once mode, not NoneType"):
        mod.scan_commit_reply(b"+OK\r\n", 0, None, True)
    with pytest.raises(ValueError, match="entries must be >= 0, not -1"):
        mod.scan_commit_reply(b"+OK\r\n", -1, b"", True)


def test_accel_loads_the_expected_implementation() -> None:
    forced_pure = os.environ.get("DELTAFORGE_NO_EXT", "") not in ("", "0")
    expected = "python" if forced_pure else "cython"
    assert _accel.streamcommit.IMPLEMENTATION == expected
    assert _accel.IMPLEMENTATIONS["streamcommit"] == expected
    assert compiled.IMPLEMENTATION == "cython"
    assert streamcommit_py.IMPLEMENTATION == "python"


def test_an_event_block_passes_its_bytes_as_payloads_and_ids() -> None:
    """Both twins take an EventBlock's lines and ids in place and write what the list form writes."""
    from deltaforge.model import Event, EventBlock, Transaction
    from deltaforge.sink import streamcommit_py

    compiled = importlib.import_module("deltaforge._core.streamcommit")
    events = [Event(event_id=f"{i:08d}-0000-5000-8000-00000000000{i % 10}", tenant_id="t", table="a.b", op="c",
                    after={"v": "é" * i}, transaction=Transaction(id=f"x{i}", seq=0, end=True)) for i in range(7)]
    block = EventBlock.from_events(events)
    assert block.ids_are_uuids()
    kw: dict[str, Any] = dict(checkpoint_key="k", checkpoint_value=b"v")
    for impl in (streamcommit_py, compiled):
        listed = impl.encode_commit(block.lines(), "s", [e.event_id for e in events], "t", block.tables, block.txids,
                                    **kw)
        assert impl.encode_commit(block, "s", block, "t", block.tables, block.txids, **kw) == listed
        with pytest.raises(ValueError, match="values for"):
            impl.encode_commit(block, "s", block[:3], "t", block.tables, block.txids, **kw)
