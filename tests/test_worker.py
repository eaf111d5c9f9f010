"""The invalidation worker against a real Redis: ``deltaforge worker`` and the seed's Node worker.

Stream entries are written by hand in the engine's wire format (DESIGN.md §4):
``XADD cache:invalidations * df-event <payload> event_id <id> idempotency_key <key>``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

import deltaforge.testing
from deltaforge.testing import RedisServer
from deltaforge.worker import InvalidationWorker, parse_payload, worker_command
from tests.nodeworker import start_node_worker

pytestmark = pytest.mark.integration

STREAM = "cache:invalidations"
GROUP = "cache-workers"
USER_KEYS = ["user:1", "user:email:alice.new@example.com", "user:email:alice@example.com",
             "user:1:orders", "user:1:profile"]


# --- helpers -------------------------------------------------------------------------------------


def native_event(table: str, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
                 keys: list[str], strategy: str = "batched") -> dict[str, Any]:
    """An event as the seed's processor leaves it: keys in after, or in before for deletes."""
    image = after if after is not None else before
    assert image is not None
    image["_cache_keys"] = keys
    image["_invalidation_strategy"] = strategy
    db, tbl = table.split(".")
    now_ms = int(time.time() * 1000)
    return {
        "event_id": str(uuid.uuid4()), "tenant_id": "acme", "table": table, "op": op,
        "before": before, "after": after, "ts_ms": now_ms,
        "source": {"connector": "mysql", "name": "cache-invalidation", "server_id": 1, "db": db,
                   "table": tbl, "file": "binlog.000001", "pos": 4242, "row": 0, "gtid": "0-1-7",
                   "ts_ms": now_ms},
        "transaction": {"id": "0-1-7", "seq": 0, "end": True},
        "tags": ["cache:invalidate", f"strategy:{strategy}", f"keys:{len(keys)}"],
    }


def users_update() -> dict[str, Any]:
    """UPDATE app.users SET email = 'alice.new@example.com' WHERE id = 1, after the seed's processor."""
    return native_event("app.users", "u", {"id": 1, "email": "alice@example.com", "name": "Alice"},
                        {"id": 1, "email": "alice.new@example.com", "name": "Alice"}, list(USER_KEYS))


def xadd_event(r: Any, event: dict[str, Any] | bytes, stream: str = STREAM, entry_id: str = "*") -> bytes:
    payload = event if isinstance(event, bytes) else orjson.dumps(event)
    event_id = event["event_id"] if isinstance(event, dict) else "x"
    # field order matters: df-event first, so that fields[1] is the payload
    added: bytes = r.xadd(stream, {"df-event": payload, "event_id": event_id,
                                   "idempotency_key": f"acme|app.users|0-1-7|{event_id}"}, id=entry_id)
    return added


def set_keys(r: Any, keys: list[str]) -> None:
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.set(k, "cached")
    pipe.execute()


def existing(r: Any, keys: list[str]) -> list[str]:
    return [k for k in keys if r.exists(k)]


def pending(r: Any, stream: str = STREAM, group: str = GROUP) -> int:
    return int(r.xpending(stream, group)["pending"])


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def make_worker(redis_server: RedisServer, redis_client: Any) -> Iterator[Callable[..., InvalidationWorker]]:
    workers: list[InvalidationWorker] = []

    def factory(**kw: Any) -> InvalidationWorker:
        kw.setdefault("block_ms", 50)
        kw.setdefault("consumer", f"py-{len(workers)}")
        kw.setdefault("out", io.StringIO())
        w = InvalidationWorker(kw.pop("uri", redis_server.uri), **kw)
        workers.append(w)
        return w

    yield factory
    for w in workers:
        w.close()


class RunningWorker:
    """``InvalidationWorker.run`` in a thread, as an embedding application would run it."""

    def __init__(self, worker: InvalidationWorker) -> None:
        self.worker = worker
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self.stop)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread by join()
            self.error = e

    def join(self, timeout: float = 10.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


def out_text(worker: InvalidationWorker) -> str:
    assert isinstance(worker._out, io.StringIO)
    return worker._out.getvalue()


# --- the Python worker ---------------------------------------------------------------------------


def test_update_deletes_the_five_keys_acks_and_logs_like_the_seed(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker()
    xadd_event(redis_client, users_update())
    set_keys(redis_client, [*USER_KEYS, "user:2", "product:1"])

    assert worker.process_once() == 1

    assert existing(redis_client, USER_KEYS) == []
    assert existing(redis_client, ["user:2", "product:1"]) == ["user:2", "product:1"]
    assert pending(redis_client) == 0
    assert out_text(worker) == "Invalidated 5 keys for app.users\n"
    assert worker.metrics.events == 1 and worker.metrics.keys == 5
    for figure in ("stream", "binlog"):
        p50, p99 = worker.metrics.lag_percentiles(figure)
        assert p50 is not None and p99 is not None and 0 <= p50 <= p99


def test_delete_event_takes_keys_from_before(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker()
    keys = ["product:7", "product:7:details", "category:3:products"]
    xadd_event(redis_client, native_event("app.products", "d", {"id": 7, "category_id": 3}, None,
                                          keys, "immediate"))
    set_keys(redis_client, keys)

    assert worker.process_once() == 1

    assert existing(redis_client, keys) == []
    assert pending(redis_client) == 0
    assert out_text(worker) == "Invalidated 3 keys for app.products\n"


def test_batch_of_events_one_line_each_and_nothing_left_pending(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker(count=100)
    all_keys = []
    for i in range(1, 31):
        keys = [f"order:{i}", "user:9:orders"]  # the shared key is deleted once per batch, counted per event
        all_keys += keys
        xadd_event(redis_client, native_event("app.orders", "c", None, {"id": i, "user_id": 9}, keys))
    set_keys(redis_client, all_keys)

    assert worker.process_once() == 30

    assert existing(redis_client, all_keys) == []
    assert pending(redis_client) == 0
    assert out_text(worker).splitlines() == ["Invalidated 2 keys for app.orders"] * 30
    assert worker.metrics.keys == 60


def test_event_without_keys_is_acked_and_not_logged(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker()
    xadd_event(redis_client, native_event("app.users", "u", {"id": None}, {"id": None}, []))

    assert worker.process_once() == 1

    assert pending(redis_client) == 0
    assert out_text(worker) == ""


def test_pattern_keys_go_through_scan(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker()
    matching = [f"product:7:page:{i}" for i in range(2500)]  # more than one SCAN page
    others = ["product:8:page:1", "product:70", "product:7"]
    set_keys(redis_client, [*matching, *others])
    xadd_event(redis_client, native_event("app.products", "u", {"id": 7}, {"id": 7},
                                          ["product:7:*", "product:7"]))

    assert worker.process_once() == 1

    assert redis_client.keys("product:7:*") == []
    assert existing(redis_client, others) == ["product:8:page:1", "product:70"]
    assert out_text(worker) == "Invalidated 2 keys for app.products\n"
    assert pending(redis_client) == 0


def test_a_catch_all_pattern_spares_the_stream(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker()
    set_keys(redis_client, ["a", "b:1", "c:2:3"])
    xadd_event(redis_client, native_event("app.users", "u", {"id": 1}, {"id": 1}, ["*"]))

    assert worker.process_once() == 1

    assert redis_client.keys("*") == [STREAM.encode()]
    assert pending(redis_client) == 0


def test_debezium_and_cloudevents_envelopes(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker()
    native = native_event("app.inventory", "u", {"product_id": 5}, {"product_id": 5},
                          ["inventory:5", "product:5:stock"], "immediate")
    xadd_event(redis_client, {"schema": None, "payload": native, "event_id": native["event_id"]})
    cloud = native_event("app.users", "d", {"id": 4}, None, ["user:4", "user:4:profile"])
    ce = {"specversion": "1.0", "id": cloud["event_id"], "source": "/deltaforge/cache-invalidation",
          "type": "deltaforge.change", "subject": "app.users", "time": "2024-05-01T10:00:00Z",
          "datacontenttype": "application/json", "event_id": cloud["event_id"],
          "data": {"before": cloud["before"], "after": None, "op": "d"}}
    xadd_event(redis_client, ce)
    keys = ["inventory:5", "product:5:stock", "user:4", "user:4:profile"]
    set_keys(redis_client, keys)

    assert worker.process_once() == 2

    assert existing(redis_client, keys) == []
    assert out_text(worker) == "Invalidated 2 keys for app.inventory\nInvalidated 2 keys for app.users\n"
    assert parse_payload(orjson.dumps(ce)).ts_ms == 1714557600000.0


@pytest.mark.parametrize("kind", ["native", "debezium", "cloudevents"])
def test_parses_what_the_engines_envelope_encoder_writes(kind: str) -> None:
    from deltaforge.model import Event, Source, Transaction
    from deltaforge.sink.envelope import Envelope

    event = Event(event_id="e1", tenant_id="acme", table="app.users", op="d",
                  before={"id": 1, "email": "a@x", "_cache_keys": ["user:1", "user:1:*"]}, after=None,
                  ts_ms=1714564800123,
                  source=Source("mysql", "cache-invalidation", 1, "app", "users", "binlog.000001", 4, 0, None,
                                1714564800123),
                  transaction=Transaction("t1", 0, True), tags=["cache:invalidate"])
    [payload] = Envelope(kind, "cache-invalidation").encode([event])

    parsed = parse_payload(payload)

    assert (parsed.table, parsed.keys, parsed.ts_ms) == ("app.users", ["user:1", "user:1:*"], 1714564800123)


def test_payload_read_from_first_field_when_not_named_df_event(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker()
    redis_client.xadd(STREAM, {"payload": orjson.dumps(users_update()), "event_id": "e1"})
    set_keys(redis_client, USER_KEYS)

    assert worker.process_once() == 1

    assert existing(redis_client, USER_KEYS) == []
    assert out_text(worker) == "Invalidated 5 keys for app.users\n"


def test_poison_entries_are_logged_with_their_id_and_acked(make_worker: Any, redis_client: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker()
    bad_json = xadd_event(redis_client, b'{"table": "app.users", "after": {')
    not_an_object = xadd_event(redis_client, b"[1, 2, 3]")
    bad_keys = xadd_event(redis_client, b'{"table": "app.users", "after": {"_cache_keys": "user:1"}}')
    xadd_event(redis_client, users_update())
    set_keys(redis_client, USER_KEYS)

    with caplog.at_level(logging.WARNING, logger="deltaforge.worker"):
        assert worker.process_once() == 4

    assert existing(redis_client, USER_KEYS) == []
    assert pending(redis_client) == 0
    assert out_text(worker) == "Invalidated 5 keys for app.users\n"
    assert worker.metrics.poison == 3
    poison_lines = [r.getMessage() for r in caplog.records if "poison entry" in r.getMessage()]
    assert len(poison_lines) == 3
    for entry_id, line in zip((bad_json, not_an_object, bad_keys), poison_lines, strict=True):
        assert entry_id.decode() in line
        assert "acked and skipped" in line


def test_double_delete_removes_a_key_refilled_after_the_first_delete(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker(double_delete_ms=300)
    running = RunningWorker(worker)
    try:
        set_keys(redis_client, USER_KEYS)
        xadd_event(redis_client, users_update())
        wait_until(lambda: not existing(redis_client, USER_KEYS), what="first delete")
        # A reader that read the old row before the commit fills the cache after the first delete.
        set_keys(redis_client, ["user:1"])
        assert redis_client.exists("user:1")
        wait_until(lambda: not redis_client.exists("user:1"), what="second delete")
        assert worker.metrics.second_deletes >= 1
        assert pending(redis_client) == 0
    finally:
        running.join()
    assert out_text(worker) == "Invalidated 5 keys for app.users\n"  # one line per event, not per delete


def test_dead_consumers_entries_are_reclaimed_after_claim_idle(make_worker: Any, redis_client: Any) -> None:
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    old_keys = ["order:1", "order:2"]
    fresh_keys = ["order:3"]
    for k in old_keys:
        xadd_event(redis_client, native_event("app.orders", "u", {"id": 0}, {"id": 0}, [k]))
    redis_client.xreadgroup(GROUP, "dead-1", {STREAM: ">"}, count=10)  # read, never acked
    time.sleep(0.4)
    xadd_event(redis_client, native_event("app.orders", "u", {"id": 3}, {"id": 3}, fresh_keys))
    redis_client.xreadgroup(GROUP, "dead-2", {STREAM: ">"}, count=10)  # idle for less than claim_idle_ms
    set_keys(redis_client, old_keys + fresh_keys)
    worker = make_worker(claim_idle_ms=300)

    assert worker.process_once() == 2

    assert existing(redis_client, old_keys) == []
    assert existing(redis_client, fresh_keys) == fresh_keys  # a live consumer's entry is not stolen
    consumers = {c["name"]: c["pending"] for c in redis_client.xpending(STREAM, GROUP)["consumers"]}
    assert consumers == {b"dead-2": 1}
    assert worker.metrics.reclaimed == 2
    assert out_text(worker) == "Invalidated 1 keys for app.orders\n" * 2


def test_own_unacked_entries_are_processed_first_after_a_restart(make_worker: Any, redis_client: Any) -> None:
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    xadd_event(redis_client, users_update())
    redis_client.xreadgroup(GROUP, "worker-a", {STREAM: ">"}, count=10)  # crashed before the ack
    set_keys(redis_client, USER_KEYS)
    worker = make_worker(consumer="worker-a", claim_idle_ms=0)

    assert worker.process_once() == 1

    assert existing(redis_client, USER_KEYS) == []
    assert pending(redis_client) == 0


def test_run_in_a_thread_stops_on_the_event(make_worker: Any, redis_client: Any) -> None:
    worker = make_worker(block_ms=100)
    running = RunningWorker(worker)
    try:
        for i in range(3):
            set_keys(redis_client, [f"user:{i}"])
            xadd_event(redis_client, native_event("app.users", "c", None, {"id": i}, [f"user:{i}"]))
        wait_until(lambda: worker.metrics.events == 3, what="3 events handled")
    finally:
        running.join(timeout=5)
    assert existing(redis_client, ["user:0", "user:1", "user:2"]) == []
    assert out_text(worker) == "Invalidated 1 keys for app.users\n" * 3


def test_survives_a_redis_restart(make_worker: Any, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer().start()
    port = server.port
    worker = make_worker(uri=server.uri, block_ms=100)
    try:
        with caplog.at_level(logging.INFO, logger="deltaforge.worker"):
            running = RunningWorker(worker)
            r = server.client()
            wait_until(lambda: r.exists(STREAM), what="group created")
            server.stop()  # no persistence: the stream and the group are gone
            wait_until(lambda: worker.metrics.reconnects >= 1, what="a retry")
            monkeypatch.setattr(deltaforge.testing, "free_port", lambda: port)
            server = RedisServer().start()
            r = server.client()
            set_keys(r, USER_KEYS)
            wait_until(lambda: r.exists(STREAM), what="group created again")
            xadd_event(r, users_update())
            wait_until(lambda: not existing(r, USER_KEYS), what="keys deleted after the restart")
            running.join()
        assert "unavailable" in caplog.text and "retrying" in caplog.text
        assert "Traceback" not in caplog.text
        assert out_text(worker) == "Invalidated 5 keys for app.users\n"
    finally:
        server.stop()


# --- the cache on another Redis (--cache-uri) and the lag figures --------------------------------


def test_a_separate_cache_redis_gets_the_deletes_and_the_streams_redis_keeps_its_keys(
        make_worker: Any, redis_client: Any, redis_own: RedisServer) -> None:
    cache = redis_own.client()
    worker = make_worker(cache_uri=redis_own.uri)
    assert worker._cache is not worker._redis
    pages = ["product:7:a", "product:7:b"]
    # On another server a key named like the stream is a cache key: a pattern deletes it there.
    set_keys(cache, [*USER_KEYS, *pages, STREAM, "user:2"])
    set_keys(redis_client, [*USER_KEYS, *pages])  # same names on the stream's Redis: not the cache
    xadd_event(redis_client, users_update())
    xadd_event(redis_client, native_event("app.products", "u", {"id": 7}, {"id": 7}, ["product:7:*", "cache:*"]))

    assert worker.process_once() == 2

    assert cache.keys("*") == [b"user:2"]
    assert existing(redis_client, [*USER_KEYS, *pages]) == [*USER_KEYS, *pages]
    assert redis_client.type(STREAM) == b"stream" and pending(redis_client) == 0
    assert out_text(worker) == "Invalidated 5 keys for app.users\nInvalidated 2 keys for app.products\n"
    cache.close()


def test_the_cache_on_another_db_of_the_streams_server(make_worker: Any, redis_server: RedisServer,
                                                       redis_client: Any) -> None:
    db3 = redis_server.client(db=3)
    worker = make_worker(cache_uri=redis_server.uri.rsplit("/", 1)[0] + "/3")
    set_keys(db3, [*USER_KEYS, STREAM])  # in db 3 a key of the stream's name is a cache key
    set_keys(redis_client, USER_KEYS)
    xadd_event(redis_client, users_update())
    xadd_event(redis_client, native_event("app.users", "u", {"id": 1}, {"id": 1}, ["*"]))

    assert worker.process_once() == 2

    assert db3.keys("*") == []
    assert existing(redis_client, USER_KEYS) == USER_KEYS
    assert redis_client.type(STREAM) == b"stream" and pending(redis_client) == 0
    db3.close()


def test_equal_uris_share_one_client_and_only_the_streams_db_spares_the_stream(
        make_worker: Any, redis_server: RedisServer) -> None:
    uri = redis_server.uri
    for same in (None, uri):
        worker = make_worker(cache_uri=same)
        assert worker._cache is worker._redis and worker._spare_stream
    other_spelling = make_worker(cache_uri=uri.replace("127.0.0.1", "localhost"))
    assert other_spelling._cache is not other_spelling._redis and other_spelling._spare_stream
    assert not make_worker(cache_uri=uri.rsplit("/", 1)[0] + "/1")._spare_stream


def test_a_stalled_cache_is_retried_and_the_batch_handled_again(make_worker: Any, redis_client: Any,
                                                                 redis_own: RedisServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    cache = redis_own.client()
    worker = make_worker(cache_uri=f"{redis_own.uri}?socket_timeout=0.3", block_ms=100)
    with caplog.at_level(logging.INFO, logger="deltaforge.worker"):
        running = RunningWorker(worker)
        try:
            set_keys(cache, ["order:1", "order:2"])
            xadd_event(redis_client, native_event("app.orders", "u", {"id": 1}, {"id": 1}, ["order:1"]))
            wait_until(lambda: not cache.exists("order:1"), what="the first delete")
            with redis_own.frozen_for_a_while():
                xadd_event(redis_client, native_event("app.orders", "u", {"id": 2}, {"id": 2}, ["order:2"]))
                wait_until(lambda: worker.metrics.reconnects >= 1, what="a retry")
                assert pending(redis_client) == 1  # read, not acked: its delete has not run
            wait_until(lambda: pending(redis_client) == 0, what="the batch handled again")
        finally:
            running.join()
    assert not cache.exists("order:2")
    assert f"the cache Redis at {redis_own.uri}?socket_timeout=0.3 unavailable (Timeout" in caplog.text
    assert "retrying" in caplog.text
    assert "Traceback" not in caplog.text
    assert out_text(worker) == "Invalidated 1 keys for app.orders\n" * 2
    cache.close()


def _samples(text: str, name: str) -> dict[str, float]:
    """``{le: cumulative count}`` of one histogram in a Prometheus text exposition, plus sum and count."""
    found = {m.group(1): float(m.group(2))
             for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.MULTILINE)}
    for part in ("sum", "count"):
        m = re.search(rf"^{name}_{part} (\S+)$", text, re.MULTILINE)
        assert m is not None, f"no {name}_{part} in /metrics"
        found[part] = float(m.group(1))
    return found


def test_lag_histograms_on_metrics_from_the_entry_id_and_the_binlog_timestamp(
        make_worker: Any, redis_client: Any) -> None:
    from deltaforge.worker import serve_metrics

    worker = make_worker()
    server = serve_metrics(worker.metrics, 0)
    now_ms = int(time.time() * 1000)
    keys = [f"user:{i}" for i in range(3)]
    set_keys(redis_client, keys)
    for i, key in enumerate(keys):
        event = native_event("app.users", "u", {"id": i}, {"id": i}, [key])
        event["ts_ms"] = event["source"]["ts_ms"] = now_ms - 3000  # committed 3 s ago
        xadd_event(redis_client, event, entry_id=f"{now_ms - 1500}-{i}")  # XADDed 1.5 s ago

    assert worker.process_once() == 3
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()

    assert "deltaforge_worker_events_total 3.0" in text
    assert "# TYPE deltaforge_worker_stream_lag_seconds histogram" in text
    stream, binlog = (_samples(text, f"deltaforge_worker_{f}_lag_seconds") for f in ("stream", "binlog"))
    for hist, floor in ((stream, 1.5), (binlog, 3.0)):
        assert hist["count"] == hist["+Inf"] == 3  # one sample per event with keys
        assert hist["sum"] >= 3 * floor
    # the lags only grow after the XADD: every sample is above the bucket below 1.5 s (3 s)
    assert stream["1.0"] == 0 and binlog["2.0"] == 0
    batch = _samples(text, "deltaforge_worker_batch_seconds")
    assert batch["count"] == 1  # one delete round trip for the batch
    m = re.search(r"lag: stream p50 ([\d.]+) ms p99 ([\d.]+) ms, binlog p50 (\d+) ms p99 (\d+) ms "
                  r"\(1 s resolution\)", worker.metrics.summary())
    assert m is not None, worker.metrics.summary()
    assert 1500 <= float(m.group(1)) <= float(m.group(2)) and 3000 <= int(m.group(3)) <= int(m.group(4))


# --- the command ---------------------------------------------------------------------------------


def test_cli_rejects_a_bad_uri_in_one_line() -> None:
    result = CliRunner().invoke(worker_command, ["--redis-uri", "http://localhost:6379"])
    assert result.exit_code == 2
    assert "REDIS_URI" in result.output and "redis://" in result.output
    assert "Traceback" not in result.output


def test_cli_reports_wrong_credentials_in_one_line() -> None:
    with RedisServer(password="s3cret") as server:
        uri = f"redis://:wrong@127.0.0.1:{server.port}/0"
        result = CliRunner().invoke(worker_command, ["--redis-uri", uri, "--block-ms", "50"])
    assert result.exit_code == 1
    assert "refused the credentials" in result.output
    assert "wrong" not in result.output  # the password is redacted
    assert "Traceback" not in result.output


def test_cli_names_the_cache_uri_when_its_password_is_wrong(redis_server: RedisServer) -> None:
    with RedisServer(password="s3cret") as cache:
        result = CliRunner().invoke(worker_command, ["--redis-uri", redis_server.uri, "--block-ms", "50",
                                                     "--cache-uri", f"redis://:wrong@127.0.0.1:{cache.port}/0"])
    assert result.exit_code == 1
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "the cache Redis at" in line and "refused the credentials" in line
    assert "--cache-uri (CACHE_REDIS_URI)" in line and "REDIS_URI)" not in line.replace("CACHE_REDIS_URI)", "")
    assert "wrong" not in result.output  # the password is redacted
    assert "Traceback" not in result.output


@pytest.mark.parametrize("how", ["option", "env"])
def test_cli_cache_uri_from_the_option_or_the_environment(redis_server: RedisServer, redis_client: Any,
                                                          redis_own: RedisServer, how: str) -> None:
    cache = redis_own.client()
    set_keys(cache, USER_KEYS)
    set_keys(redis_client, USER_KEYS)
    xadd_event(redis_client, users_update())
    env = {**os.environ, "REDIS_URI": redis_server.uri}
    args = ["--block-ms", "100"]
    if how == "env":
        env["CACHE_REDIS_URI"] = redis_own.uri
    else:
        env.pop("CACHE_REDIS_URI", None)
        args += ["--cache-uri", redis_own.uri]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from deltaforge.worker import worker_command; worker_command()", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "Invalidated 5 keys for app.users\n"
        assert existing(cache, USER_KEYS) == []
        assert existing(redis_client, USER_KEYS) == USER_KEYS
        wait_until(lambda: pending(redis_client) == 0, what="ack")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert f"cache {redis_own.uri}" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cache.close()


def test_cli_subprocess_processes_then_exits_0_on_sigterm(redis_server: RedisServer, redis_client: Any) -> None:
    xadd_event(redis_client, users_update())
    set_keys(redis_client, USER_KEYS)
    env = {**os.environ, "REDIS_URI": redis_server.uri}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from deltaforge.worker import worker_command; worker_command()",
         "--block-ms", "100", "--metrics-port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "Invalidated 5 keys for app.users\n"
        assert existing(redis_client, USER_KEYS) == []
        assert wait_until(lambda: pending(redis_client) == 0, what="ack")
        metrics_url = None
        for line in proc.stderr:
            m = re.search(r"metrics on (http://\S+)", line)
            if m:
                metrics_url = m.group(1)
                break
        assert metrics_url is not None
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        assert "deltaforge_worker_events_total 1.0" in text
        for figure in ("stream", "binlog"):
            assert f'deltaforge_worker_{figure}_lag_seconds_bucket{{le="+Inf"}} 1.0' in text
        assert "deltaforge_worker_batch_seconds_count 1.0" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        rest = proc.stderr.read()
        assert "stopped" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the seed's Node worker, exactly as written ----------------------------------------------------


def test_seed_node_worker_invalidates_the_five_keys(redis_server: RedisServer, redis_client: Any) -> None:
    node = start_node_worker(redis_server.uri)
    try:
        node.wait_for_line("Starting cache invalidation worker: worker-")
        set_keys(redis_client, [*USER_KEYS, "user:2"])
        xadd_event(redis_client, users_update())

        assert node.wait_for_line("Invalidated") == "Invalidated 5 keys for app.users"
        assert existing(redis_client, USER_KEYS) == []
        assert existing(redis_client, ["user:2"]) == ["user:2"]
        wait_until(lambda: pending(redis_client) == 0, what="the seed worker's XACK")

        # delete events carry the keys in `before`; patterns go through SCAN
        set_keys(redis_client, ["product:7", "product:7:a", "product:7:b"])
        xadd_event(redis_client, native_event("app.products", "d", {"id": 7}, None,
                                              ["product:7", "product:7:*"], "immediate"))
        assert node.wait_for_line("Invalidated") == "Invalidated 2 keys for app.products"
        assert redis_client.keys("product:7*") == []
    finally:
        node.stop()
    assert not any("Worker error" in line for line in node.lines)


def test_seed_node_worker_and_python_worker_share_the_group(make_worker: Any, redis_server: RedisServer,
                                                            redis_client: Any) -> None:
    node = start_node_worker(redis_server.uri)
    worker = make_worker(block_ms=100)
    running = RunningWorker(worker)
    try:
        node.wait_for_line("Starting cache invalidation worker")
        keys = [f"order:{i}" for i in range(40)]
        set_keys(redis_client, keys)
        for k in keys:
            xadd_event(redis_client, native_event("app.orders", "u", {"id": 1}, {"id": 1}, [k]))
        wait_until(lambda: not existing(redis_client, keys), what="all 40 keys deleted")
        wait_until(lambda: pending(redis_client) == 0, what="all entries acked")
    finally:
        running.join()
        node.stop()
    group = redis_client.xinfo_groups(STREAM)[0]
    assert group["entries-read"] == 40
    node_lines = [line for line in node.lines if line.startswith("Invalidated")]
    assert len(node_lines) + worker.metrics.events == 40
