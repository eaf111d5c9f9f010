"""Redis Streams sink against a real Redis: wire layout, envelopes, exactly-once fencing, retries, policies.

Every test runs with both implementations (compiled and pure twin) of the RESP encoder and
of the commit round trip (``streamcommit``: request encoder and reply scan) through the
``resp_impl`` fixture, which swaps the modules the sink uses.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from typing import Any

import msgspec
import pytest

from deltaforge.config import CommitPolicy, EnvelopeSpec, RedisSinkConfig
from deltaforge.dsn import parse_redis_uri
from deltaforge.errors import ConfigError, FencedError, SinkError, SinkUnavailable
from deltaforge.model import Batch, Event, Position, Source, Transaction, idempotency_key
from deltaforge.sink import redis_stream, resp_py, streamcommit_py
from deltaforge.sink.envelope import StreamTemplate, rfc3339_ms
from deltaforge.sink.redis_conn import RedisConnection
from deltaforge.sink.redis_stream import RedisStreamSink
from deltaforge.sink.sinkset import SinkSet
from deltaforge.testing import RedisServer, free_port, require_binary, tls_redis

pytestmark = pytest.mark.integration


PIPELINE = "pipe"
FILE = "binlog.000001"


@pytest.fixture(params=["cython", "python"], autouse=True)
def resp_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    import importlib

    module = importlib.import_module("deltaforge._core.resp") if request.param == "cython" else resp_py
    monkeypatch.setattr(redis_stream, "resp", module)
    commit = (importlib.import_module("deltaforge._core.streamcommit") if request.param == "cython"
              else streamcommit_py)
    monkeypatch.setattr(redis_stream, "streamcommit", commit)
    assert redis_stream.resp.IMPLEMENTATION == request.param
    assert redis_stream.streamcommit.IMPLEMENTATION == request.param
    return str(request.param)


# ----------------------------------------------------------------------------- helpers


def make_event(tx_pos: int, seq: int, *, table: str = "app.users", op: str = "c", end: bool = False) -> Event:
    db, _, tbl = table.partition(".")
    return Event(
        event_id=f"ev-{tx_pos}-{seq}",
        tenant_id="acme",
        table=table,
        op=op,
        before={"id": seq, "email": "old@x"} if op in ("u", "d") else None,
        after={"id": seq, "email": f"user{seq}@x", "name": "Zoë"} if op != "d" else None,
        ts_ms=1_714_564_800_123 + seq,
        source=Source(connector="mysql", name=PIPELINE, server_id=1, db=db, table=tbl, file=FILE,
                      pos=tx_pos + 10 * seq, row=0, gtid=f"0-1-{tx_pos}", ts_ms=1_714_564_800_000),
        transaction=Transaction(id=f"0-1-{tx_pos}", seq=seq, end=end),
        tags=["t"],
    )


def make_batch(n: int, b: int, *, tables: tuple[str, ...] = ("app.users",), first: int = 0,
               end: Position | None = None) -> Batch:
    """Batch ``b``: one transaction at position 1000*b with rows first..first+n-1."""
    tx = 1000 * b
    events = [make_event(tx, s, table=tables[s % len(tables)], end=s == n - 1) for s in range(first, first + n)]
    keys = [(1, tx, s) for s in range(first, first + n)]
    return Batch(seq=b, events=events, keys=keys, end=end or Position(FILE, 1000 * (b + 1), gtid=f"0-1-{tx}"))


def cfg(server: RedisServer, stream: str = "cdc:events", **kw: Any) -> RedisSinkConfig:
    return RedisSinkConfig(id=kw.pop("id", "s1"), uri=kw.pop("uri", server.uri), stream=stream, **kw)


def make_sink(c: RedisSinkConfig, *, deadline: float = 10.0) -> RedisStreamSink:
    sink = RedisStreamSink(c, PIPELINE, "acme", "spec.sinks[0]")
    sink.retry_initial = 0.02
    sink.retry_max = 0.2
    sink.retry_deadline = deadline
    return sink


def raw(server: RedisServer, *args: Any) -> Any:
    """One command on our own connection: replies exactly as Redis sent them (XRANGE keeps field order)."""
    conn = RedisConnection(parse_redis_uri(server.uri))
    conn.connect()
    try:
        return conn.call(*args)
    finally:
        conn.close()


def entries(server: RedisServer, stream: str) -> list[list[bytes]]:
    return [fields for _id, fields in raw(server, "XRANGE", stream, "-", "+")]


def event_ids(server: RedisServer, stream: str) -> list[str]:
    return [f[3].decode() for f in entries(server, stream)]


def ids_of(*batches: Batch) -> list[str]:
    return [e.event_id for b in batches for e in b.events]


# ----------------------------------------------------------------------------- wire format


def test_xadd_field_layout_and_checkpoint(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    assert sink.open() is None
    batch = make_batch(3, 1)
    sink.write(batch)
    got = entries(redis_server, "cdc:events")
    assert len(got) == 3
    for fields, ev in zip(got, batch.events, strict=True):
        assert fields == [b"df-event", msgspec.json.encode(ev), b"event_id", ev.event_id.encode(),
                          b"idempotency_key", idempotency_key(ev).encode()]
        assert fields[5] == f"acme|app.users|0-1-1000|{ev.event_id}".encode()
        doc = json.loads(fields[1])
        assert list(doc) == ["event_id", "tenant_id", "table", "op", "before", "after", "ts_ms", "source",
                             "transaction", "tags"]
        assert doc["after"]["name"] == "Zoë"
    key = "{pipe}:deltaforge:checkpoint:pipe:s1"
    assert sink.checkpoint_key == key
    ck = json.loads(redis_client.get(key))
    assert (ck["file"], ck["pos"], ck["gtid"], ck["skip_rows"]) == (FILE, 2000, "0-1-1000", 0)
    assert ck["owner"] == sink.owner and ck["commit"] == 1 and ck["sink"] == "s1"
    assert sink.checkpoint == batch.end
    sink.close()


def test_envelopes(redis_server: RedisServer, redis_client: Any) -> None:
    batch = make_batch(2, 1)
    batch.events[1] = make_event(1000, 1, op="d", end=True)
    docs = {}
    for kind in ("native", "debezium", "cloudevents"):
        sink = make_sink(cfg(redis_server, f"env:{kind}", id=kind, envelope=EnvelopeSpec(kind)))
        sink.open()
        sink.write(batch)
        sink.close()
        docs[kind] = [json.loads(f[1]) for f in entries(redis_server, f"env:{kind}")]
    native = docs["native"]
    assert native[0] == json.loads(msgspec.json.encode(batch.events[0]))
    assert docs["debezium"] == [{"schema": None, "payload": n} for n in native]
    ce = docs["cloudevents"][1]
    assert ce == {
        "specversion": "1.0",
        "id": "ev-1000-1",
        "source": "/deltaforge/pipe/app.users",
        "type": "io.deltaforge.change.delete",
        "subject": "app.users",
        "time": "2024-05-01T12:00:00.124Z",
        "datacontenttype": "application/json",
        "data": {"before": {"id": 1, "email": "old@x"}, "after": None, "op": "d"},
        "tenant": "acme",
        "txid": "0-1-1000",
    }
    assert docs["cloudevents"][0]["type"] == "io.deltaforge.change.insert"
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"


def test_stream_template_routes_to_several_streams(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server, "cdc:${source.db}.${source.table}"))
    sink.open()
    batch = make_batch(6, 1, tables=("app.users", "app.orders", "shop.items"))
    sink.write(batch)
    assert event_ids(redis_server, "cdc:app.users") == ["ev-1000-0", "ev-1000-3"]
    assert event_ids(redis_server, "cdc:app.orders") == ["ev-1000-1", "ev-1000-4"]
    assert event_ids(redis_server, "cdc:shop.items") == ["ev-1000-2", "ev-1000-5"]
    # a template has no fixed stream name: the checkpoint is tagged with the pipeline name
    assert sink.checkpoint_key == "{pipe}:deltaforge:checkpoint:pipe:s1"
    assert redis_client.exists(sink.checkpoint_key)
    sink.close()


def test_stream_template_compile_and_hash_tags() -> None:
    t = StreamTemplate("{app}:${op}:${transaction.id}")
    assert t.is_template and t.hash_tag() == "app"
    assert t.render(make_event(7, 0)) == "{app}:c:0-1-7"
    assert StreamTemplate("cdc:${table}").hash_tag() is None
    assert StreamTemplate("{fixed}.events").static == "{fixed}.events"
    with pytest.raises(ConfigError, match=r"spec.sinks\[0\].config.stream: unknown field \$\{source.tbl\}"):
        StreamTemplate("cdc:${source.tbl}", "spec.sinks[0].config.stream")
    c = RedisSinkConfig(id="x", uri="redis://127.0.0.1:1/0", stream="{orders}:${table}")
    assert make_sink(c).checkpoint_key == "{orders}:deltaforge:checkpoint:pipe:x"
    c.checkpoint_key = "my:ckpt"
    assert make_sink(c).checkpoint_key == "my:ckpt"


def test_maxlen_trims_approximately(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server, max_len=10))
    sink.open()
    for b in range(1, 6):
        sink.write(make_batch(200, b))
    length = redis_client.xlen("cdc:events")
    assert 10 <= length < 1000
    sink.close()


# ----------------------------------------------------------------------------- exactly once


def test_second_instance_fences_the_first(redis_server: RedisServer, redis_client: Any) -> None:
    first = make_sink(cfg(redis_server))
    first.open()
    b1, b2, b3 = make_batch(3, 1), make_batch(3, 2), make_batch(3, 3)
    first.write(b1)
    second = make_sink(cfg(redis_server))
    assert second.open() == b1.end
    with pytest.raises(FencedError, match="another instance owns pipeline 'pipe'") as exc:
        first.write(b2)
    assert "checkpoint '{pipe}:deltaforge:checkpoint:pipe:s1'" in str(exc.value)
    assert event_ids(redis_server, "cdc:events") == ids_of(b1)  # nothing of the fenced commit landed
    second.write(b2)
    with pytest.raises(FencedError):
        first.write(b3)  # stays fenced
    second.write(b3)
    assert event_ids(redis_server, "cdc:events") == ids_of(b1, b2, b3)
    assert json.loads(redis_client.get(second.checkpoint_key))["owner"] == second.owner
    second.close()
    first.close()


def test_foreign_write_to_checkpoint_fences(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    sink.open()
    sink.write(make_batch(2, 1))
    redis_client.set(sink.checkpoint_key, b'{"file":"binlog.000009","pos":4}')
    with pytest.raises(FencedError, match="was changed by someone else"):
        sink.write(make_batch(2, 2))
    assert redis_client.xlen("cdc:events") == 2
    sink.close()


def test_two_fresh_instances_first_commit_wins(redis_server: RedisServer, redis_client: Any) -> None:
    a, b = make_sink(cfg(redis_server)), make_sink(cfg(redis_server))
    assert a.open() is None and b.open() is None
    a.write(make_batch(2, 1))
    with pytest.raises(FencedError):
        b.write(make_batch(2, 1))
    assert redis_client.xlen("cdc:events") == 2
    a.close()
    b.close()


def test_resume_returns_committed_position(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    sink.open()
    sink.write(make_batch(2, 1))
    split = make_batch(2, 2, end=Position(FILE, 2000, gtid="0-1-1000", skip_rows=2))
    sink.write(split)
    sink.close()
    again = make_sink(cfg(redis_server))
    assert again.open() == Position(FILE, 2000, gtid="0-1-1000", skip_rows=2)
    assert again.checkpoint == split.end
    again.close()


def test_corrupt_checkpoint_is_reported(redis_server: RedisServer, redis_client: Any) -> None:
    redis_client.set("{pipe}:deltaforge:checkpoint:pipe:s1", "garbage")
    with pytest.raises(SinkError, match=r"is not a DeltaForge checkpoint .*DEL \{pipe\}"):
        make_sink(cfg(redis_server)).open()


def test_empty_batch_commits_checkpoint_only(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    sink.open()
    sink.write(make_batch(2, 1))
    sink.write(Batch(seq=2, events=[], keys=[], end=Position(FILE, 5000)))
    assert redis_client.xlen("cdc:events") == 2
    assert json.loads(redis_client.get(sink.checkpoint_key))["pos"] == 5000
    assert sink.checkpoint == Position(FILE, 5000)
    sink.close()


# ----------------------------------------------------------------------------- failures and retries


def _kill_client(server: RedisServer, name: str) -> int:
    client = server.client()
    try:
        killed = 0
        for c in client.client_list():
            if c.get("name") == name:
                killed += client.client_kill_filter(_id=c["id"])
        return killed
    finally:
        client.close()


def test_client_kill_between_batches(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    sink.open()
    b1, b2 = make_batch(3, 1), make_batch(3, 2)
    sink.write(b1)
    assert _kill_client(redis_server, "deltaforge:pipe:s1") == 1
    sink.write(b2)  # the dead socket is noticed, reconnect, WATCH+GET says "resend"
    assert event_ids(redis_server, "cdc:events") == ids_of(b1, b2)
    sink.close()


def test_client_kill_storm_no_loss_no_duplicates(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    sink.open()
    stop = threading.Event()
    kills = []

    def killer() -> None:
        while not stop.is_set():
            kills.append(_kill_client(redis_server, "deltaforge:pipe:s1"))
            time.sleep(0.003)

    thread = threading.Thread(target=killer)
    thread.start()
    batches: list[Batch] = []
    try:
        # at least 40 batches, and on until the connection was killed a few times
        while len(batches) < 40 or (sum(kills) < 3 and len(batches) < 2000):
            batches.append(make_batch(20, len(batches) + 1))
            sink.write(batches[-1])
    finally:
        stop.set()
        thread.join()
    assert sum(kills) >= 3
    assert event_ids(redis_server, "cdc:events") == ids_of(*batches)
    assert sink.checkpoint == batches[-1].end
    sink.close()


class DropProxy:
    """TCP proxy in front of the real Redis that can cut the connection at a chosen moment."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.drop_request: bytes | None = None  # cut before forwarding a request containing this
        self.drop_reply: bytes | None = None  # cut instead of forwarding a reply containing this
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, "drop_request"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "drop_reply"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, marker_attr: str) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                marker = getattr(self, marker_attr)
                if marker is not None and marker in data:
                    setattr(self, marker_attr, None)
                    self.dropped += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.listener.close()


def test_reply_lost_after_exec_is_not_resent(redis_server: RedisServer, redis_client: Any) -> None:
    proxy = DropProxy(redis_server.port)
    try:
        sink = make_sink(cfg(redis_server, uri=f"redis://127.0.0.1:{proxy.port}/0"))
        sink.open()
        b1, b2, b3 = make_batch(3, 1), make_batch(3, 2), make_batch(3, 3)
        sink.write(b1)
        proxy.drop_reply = b'"commit":2'  # the GET at the end of b2's round trip: EXEC already ran
        sink.write(b2)
        assert proxy.dropped == 1
        proxy.drop_request = b"EXEC"  # b3 never reaches Redis: must be resent
        sink.write(b3)
        assert proxy.dropped == 2
        assert event_ids(redis_server, "cdc:events") == ids_of(b1, b2, b3)
        assert json.loads(redis_client.get(sink.checkpoint_key))["commit"] == 3
        sink.close()
    finally:
        proxy.close()


class RestartableRedis(RedisServer):
    """A RedisServer that survives a restart with its data (SHUTDOWN SAVE, same dir and port)."""

    def restart(self) -> None:
        conn = RedisConnection(parse_redis_uri(self.uri))
        conn.connect()
        conn.send(b"*2\r\n$8\r\nSHUTDOWN\r\n$4\r\nSAVE\r\n")
        with contextlib.suppress(SinkUnavailable):
            conn.read_replies(1)  # the server closes the connection as it exits
        conn.close()
        assert self.proc is not None and self.dir is not None
        self.proc.wait(10)
        args = [require_binary(("redis-server",), "redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                "no", "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)


def test_redis_restart_mid_run(redis_client: Any) -> None:
    with RestartableRedis() as server:
        sink = make_sink(cfg(server))
        sink.open()
        batches = [make_batch(10, b) for b in range(1, 9)]
        for i, b in enumerate(batches):
            if i == 4:
                server.restart()  # the sink notices on its next round trip and reconnects
            sink.write(b)
        assert event_ids(server, "cdc:events") == ids_of(*batches)
        sink.close()
        again = make_sink(cfg(server))
        assert again.open() == batches[-1].end
        again.close()


def test_unreachable_redis_gives_up_with_sink_unavailable() -> None:
    sink = make_sink(cfg(RedisServer(), uri=f"redis://:pw@127.0.0.1:{free_port()}/0"), deadline=0.3)
    with pytest.raises(SinkUnavailable, match="cannot connect to Redis") as exc:
        sink.open()
    assert exc.value.retriable
    assert "pw" not in str(exc.value).replace("pipe", "")


def test_auth_failures_name_the_fix() -> None:
    with RedisServer(password="s3cret") as server:
        base = f"127.0.0.1:{server.port}/0"
        with pytest.raises(SinkError, match="requires a password") as exc:
            make_sink(cfg(server, uri=f"redis://{base}")).open()
        assert not exc.value.retriable and "password in the sink URI" in str(exc.value)
        with pytest.raises(SinkError, match="username or password was rejected") as exc:
            make_sink(cfg(server, uri=f"redis://:wrongpw@{base}")).open()
        assert "wrongpw" not in str(exc.value) and not isinstance(exc.value, SinkUnavailable)
        with pytest.raises(SinkError, match="rejected"):
            make_sink(cfg(server, uri=f"redis://nobody:s3cret@{base}")).open()
        ok = make_sink(cfg(server, uri=f"redis://:s3cret@{base}"))
        assert ok.open() is None
        ok.write(make_batch(2, 1))
        assert server.client().xlen("cdc:events") == 2
        ok.close()


def test_acl_noperm_hint(redis_server: RedisServer, redis_client: Any) -> None:
    redis_client.execute_command("ACL", "SETUSER", "ro", "on", ">pw", "~*", "+@read", "+auth", "+client")
    try:
        sink = make_sink(cfg(redis_server, uri=f"redis://ro:pw@127.0.0.1:{redis_server.port}/0"))
        with pytest.raises(SinkError, match=r"permission denied.*\+xadd \+xrevrange \+set \+get") as exc:
            sink.open()
            sink.write(make_batch(1, 1))
        assert "pw@" not in str(exc.value)
    finally:
        redis_client.execute_command("ACL", "DELUSER", "ro")


def test_wrongtype_stream_key(redis_server: RedisServer, redis_client: Any) -> None:
    redis_client.set("cdc:events", "not a stream")
    with pytest.raises(SinkError, match=r"key 'cdc:events' .* holds a string, not a stream.*DEL cdc:events"):
        make_sink(cfg(redis_server)).open()
    # template streams are checked on first sight, before anything is sent
    redis_client.set("cdc:app.orders", "x")
    sink = make_sink(cfg(redis_server, "cdc:${table}"))
    sink.open()
    with pytest.raises(SinkError, match=r"'cdc:app.orders' .* holds a string"):
        sink.write(make_batch(2, 1, tables=("app.users", "app.orders")))
    assert not redis_client.exists("cdc:app.users") and not redis_client.exists(sink.checkpoint_key)
    sink.close()


def test_wrongtype_inside_exec_reports_partial_commit(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    sink.open()
    sink.write(make_batch(1, 1))
    redis_client.delete("cdc:events")
    redis_client.set("cdc:events", "x")  # changed after the type check: Redis runs the rest of EXEC
    with pytest.raises(SinkError, match=r"partial commit, XADD to stream 'cdc:events' failed.*WRONGTYPE") as exc:
        sink.write(make_batch(1, 2))
    assert not exc.value.retriable
    sink.close()


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_success_reply_is_checked_on_the_socket_bytes_and_the_rest_by_hiredis(
        redis_server: RedisServer, redis_client: Any, monkeypatch: pytest.MonkeyPatch, delivery: str) -> None:
    # A commit whose reply is the success shape creates no reply objects (read_replies is not
    # called); a reply that deviates is parsed by hiredis and judged reply by reply.
    parsed: list[int] = []
    original = RedisConnection.read_replies

    def counting(self: RedisConnection, n: int) -> list[Any]:
        parsed.append(n)
        return original(self, n)

    monkeypatch.setattr(RedisConnection, "read_replies", counting)
    sink = make_sink(cfg(redis_server, "cdc:${table}", delivery=delivery))
    sink.open()
    parsed.clear()
    sink.write(make_batch(4, 1, tables=("app.users", "app.orders")))  # first sight: TYPE check, then commit
    sink.write(make_batch(4, 2, tables=("app.users", "app.orders")))
    assert parsed == [2]  # only the TYPE check of the two new streams
    assert redis_client.xlen("cdc:app.users") == 4 and redis_client.xlen("cdc:app.orders") == 4
    redis_client.delete("cdc:app.orders")
    redis_client.set("cdc:app.orders", "x")
    with pytest.raises(SinkError, match=r"XADD to stream 'cdc:app.orders' failed.*WRONGTYPE"):
        sink.write(make_batch(4, 3, tables=("app.users", "app.orders")))
    # exactly once: MULTI, 5 QUEUED, EXEC, WATCH, GET; at least once: 4 XADDs and the SET, then the
    # one reply of the SET that puts the previous checkpoint back
    assert parsed[1:] == ([4 + 5] if delivery == "exactly_once" else [4 + 1, 1])
    sink.close()


# ----------------------------------------------------------------------------- at least once


def test_at_least_once_mode(redis_server: RedisServer, redis_client: Any) -> None:
    a = make_sink(cfg(redis_server, delivery="at_least_once"))
    assert a.open() is None
    b1, b2 = make_batch(3, 1), make_batch(3, 2)
    a.write(b1)
    assert event_ids(redis_server, "cdc:events") == ids_of(b1)
    assert json.loads(redis_client.get(a.checkpoint_key))["pos"] == 2000
    other = make_sink(cfg(redis_server, delivery="at_least_once"))
    assert other.open() == b1.end  # no claim, no fencing in this mode
    a.write(b2)
    assert json.loads(redis_client.get(a.checkpoint_key))["pos"] == 3000
    # an XADD failing after the type check: the SET that ran anyway is rolled back
    redis_client.delete("cdc:events")
    redis_client.set("cdc:events", "x")
    with pytest.raises(SinkError, match="WRONGTYPE"):
        a.write(make_batch(3, 3))
    assert json.loads(redis_client.get(a.checkpoint_key))["pos"] == 3000
    assert a.checkpoint == b2.end
    a.close()
    other.close()


# ----------------------------------------------------------------------------- skip and sink sets


def test_per_sink_skip_with_different_checkpoints(redis_server: RedisServer, redis_client: Any) -> None:
    b1, b2, b3 = make_batch(2, 1), make_batch(2, 2), make_batch(4, 3)
    ahead = make_sink(cfg(redis_server, "s:ahead", id="ahead"))
    behind = make_sink(cfg(redis_server, "s:behind", id="behind"))
    ahead.open()
    behind.open()
    for b in (b1, b2):
        ahead.write(b)
    behind.write(b1)
    # ahead also holds the first two rows of b3's transaction (a split transaction)
    ahead.write(make_batch(2, 3, end=Position(FILE, 3000, skip_rows=2)))
    ahead.close()
    behind.close()

    sinks = [make_sink(cfg(redis_server, "s:ahead", id="ahead")), make_sink(cfg(redis_server, "s:behind", id="behind"))]
    sset = SinkSet(sinks, CommitPolicy("all"))
    assert sset.open() == b1.end  # the minimum
    for b in (b2, b3):  # the replay from the minimum
        sset.write(b)
    assert event_ids(redis_server, "s:ahead") == ids_of(b1, b2, b3)
    assert event_ids(redis_server, "s:behind") == ids_of(b1, b2, b3)
    assert sinks[0].checkpoint == sinks[1].checkpoint == b3.end
    sset.close()


def test_sinkset_resume_is_the_minimum_over_every_checkpoint(redis_server: RedisServer, redis_client: Any) -> None:
    """Optional sinks count too (an optional sink that was down gets its gap back); a sink without a
    checkpoint starts at the others' minimum; only when no sink has one does ``start`` apply (None)."""
    req = make_sink(cfg(redis_server, "a", id="req"))
    req.open()
    req.write(make_batch(1, 5))
    req.close()
    opt = make_sink(cfg(redis_server, "b", id="opt", required=False))
    opt.open()
    opt.write(make_batch(1, 2))
    opt.close()
    fresh = make_sink(cfg(redis_server, "c", id="fresh", required=False))

    def sinks(*which: RedisStreamSink) -> list[RedisStreamSink]:
        return [make_sink(s.cfg) for s in which]

    behind, ahead = Position(FILE, 3000, gtid="0-1-2000"), Position(FILE, 6000, gtid="0-1-5000")
    for policy in (CommitPolicy("required"), CommitPolicy("all"), CommitPolicy("quorum", 2)):
        sset = SinkSet(sinks(req, opt, fresh), policy)
        assert sset.open() == behind
        sset.close()
    assert SinkSet(sinks(req, fresh), CommitPolicy("required")).open() == ahead
    assert SinkSet(sinks(opt, fresh), CommitPolicy("required")).open() == behind
    assert SinkSet(sinks(fresh), CommitPolicy("required")).open() is None


def _breakable(server: RedisServer, stream: str, sid: str, required: bool = True) -> RedisStreamSink:
    return make_sink(cfg(server, stream, id=sid, required=required))


def _break(client: Any, stream: str) -> None:
    client.delete(stream)
    client.set(stream, "x")  # the sink's next EXEC fails (WRONGTYPE): a non-retriable SinkError


def test_sinkset_required_policy(redis_server: RedisServer, redis_client: Any) -> None:
    dead = make_sink(cfg(redis_server, "d", id="dead", required=False,
                         uri=f"redis://127.0.0.1:{free_port()}/0"), deadline=0.2)
    main = _breakable(redis_server, "m", "main")
    opt = _breakable(redis_server, "o", "opt", required=False)
    sset = SinkSet([main, dead, opt], CommitPolicy("required"))
    assert sset.open() is None
    assert "dead" in sset.disabled
    sset.write(make_batch(1, 1))
    _break(redis_client, "o")
    sset.write(make_batch(1, 2))  # the optional sink fails: logged and disabled
    assert set(sset.disabled) == {"dead", "opt"}
    sset.write(make_batch(1, 3))
    assert redis_client.xlen("m") == 3
    _break(redis_client, "m")
    with pytest.raises(SinkError, match="partial commit"):
        sset.write(make_batch(1, 4))
    sset.close()


def test_sinkset_all_policy(redis_server: RedisServer, redis_client: Any) -> None:
    a, b = _breakable(redis_server, "a", "a", required=False), _breakable(redis_server, "b", "b", required=False)
    sset = SinkSet([a, b], CommitPolicy("all"))
    sset.open()
    sset.write(make_batch(1, 1))
    _break(redis_client, "b")
    with pytest.raises(SinkError):
        sset.write(make_batch(1, 2))
    sset.close()


def test_sinkset_quorum_policy(redis_server: RedisServer, redis_client: Any) -> None:
    sinks = [_breakable(redis_server, n, n) for n in ("q1", "q2", "q3")]
    sset = SinkSet(sinks, CommitPolicy("quorum", 2))
    sset.open()
    sset.write(make_batch(1, 1))
    _break(redis_client, "q3")
    sset.write(make_batch(1, 2))  # 2 of 3 is enough
    assert set(sset.disabled) == {"q3"}
    _break(redis_client, "q2")
    with pytest.raises(SinkError, match=r"only 1 of 3 sinks committed batch 3, commit_policy.quorum needs 2"):
        sset.write(make_batch(1, 3))
    sset.close()
    with pytest.raises(SinkError, match="quorum"):
        SinkSet(sinks, CommitPolicy("quorum", 4))


def test_fenced_always_raises_in_sinkset(redis_server: RedisServer, redis_client: Any) -> None:
    opt = make_sink(cfg(redis_server, "f", id="f", required=False))
    sset = SinkSet([_breakable(redis_server, "m", "m"), opt], CommitPolicy("required"))
    sset.open()
    sset.write(make_batch(1, 1))
    usurper = make_sink(cfg(redis_server, "f", id="f"))
    usurper.open()
    with pytest.raises(FencedError):
        sset.write(make_batch(1, 2))
    usurper.close()
    sset.close()


def test_tls_rediss(tmp_path: Any) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with tls_redis(cert, key, cert, tmp_path) as port:
        base = f"rediss://127.0.0.1:{port}/0"
        with pytest.raises(SinkError, match=r"TLS handshake .* failed") as exc:
            make_sink(RedisSinkConfig(id="t", uri=base, stream="tls:s")).open()
        assert "ssl_ca_certs" in str(exc.value)
        for b, query in enumerate((f"?ssl_ca_certs={cert}", "?ssl_cert_reqs=none"), start=1):
            sink = make_sink(RedisSinkConfig(id="t", uri=base + query, stream="tls:s"))
            sink.open()
            sink.write(make_batch(2, b))
            sink.close()
        again = make_sink(RedisSinkConfig(id="t", uri=base + "?ssl_cert_reqs=none", stream="tls:s"))
        assert again.open() == make_batch(2, 2).end
        assert len(raw_tls(again)) == 4
        again.close()


def raw_tls(sink: RedisStreamSink) -> Any:
    conn = RedisConnection(sink.uri)
    conn.connect()
    try:
        return conn.call("XRANGE", "tls:s", "-", "+")
    finally:
        conn.close()
