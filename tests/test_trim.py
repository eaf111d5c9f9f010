"""Safe trimming (``max_len``, ``max_len_hard``) against a real Redis, and what the workers make of it.

Issue 7, item 6: ``XADD MAXLEN ~`` used to trim entries a consumer group had not acknowledged and the
worker dropped the trimmed pending entries silently (450 of 500 cache keys never invalidated).
Now ``max_len`` never trims past a group's oldest unacknowledged entry; ``max_len_hard`` cuts, but
counts, logs and marks the cut with a gap entry that both workers survive and ``deltaforge worker``
reports; trimmed pending entries are reported by the worker, never dropped silently.

Only the scenario through the engine runs in each topology; the others drive a sink and the
invalidation workers directly, with no engine.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from deltaforge.config import RedisSinkConfig
from deltaforge.model import Batch
from deltaforge.runtime.stats import Stats
from deltaforge.sink.redis_stream import RedisStreamSink
from deltaforge.sink.trim import GAP_FIELD, TRIM_METRICS
from deltaforge.testing import MariaDBServer, RedisServer
from deltaforge.worker import InvalidationWorker
from tests.e2e import TOPOLOGIES_SLOW, binlog_end, start_supervisor, wait_for, write_config
from tests.nodeworker import start_node_worker
from tests.test_config import edit, error, load
from tests.test_sink import make_batch, raw
from tests.test_worker import existing, set_keys

pytestmark = pytest.mark.integration

GROUP = "cache-workers"
_names = itertools.count(1)


# ----------------------------------------------------------------------------- helpers


def pipeline_name() -> str:
    """A pipeline name of its own per test: the trim counters are process-wide."""
    return f"trim{next(_names)}"


def make_sink(server: RedisServer, stream: str, pipeline: str, **kw: Any) -> RedisStreamSink:
    c = RedisSinkConfig(id=kw.pop("id", "s1"), uri=kw.pop("uri", server.uri), stream=stream, **kw)
    sink = RedisStreamSink(c, pipeline, "acme", "spec.sinks[0]")
    sink.retry_initial, sink.retry_max, sink.retry_deadline = 0.02, 0.2, 10.0
    return sink


def keyed_batch(n: int, b: int, **kw: Any) -> tuple[Batch, list[str]]:
    """Batch ``b`` of ``n`` events, each carrying one cache key as the seed's processor leaves it."""
    batch = make_batch(n, b, **kw)
    keys = []
    for e in batch.events:
        assert e.after is not None
        key = f"row:{b}:{e.after['id']}"
        e.after["_cache_keys"] = [key]
        keys.append(key)
    return batch, keys


def only_explicit_trims(sink: RedisStreamSink) -> None:
    """No trim after commits: the test calls ``flush()`` itself, so the counts are exact."""
    assert sink.trimmer is not None
    # infinite, not just long: a new stream's last trim is at monotonic 0, and uptime may exceed any finite wait
    sink.trimmer.min_interval_s = sink.trimmer.every_s = float("inf")


def make_worker(server: RedisServer, stream: str, **kw: Any) -> InvalidationWorker:
    kw.setdefault("block_ms", 50)
    kw.setdefault("claim_idle_ms", 0)
    return InvalidationWorker(server.uri, stream, GROUP, kw.pop("consumer", "py-0"), out=io.StringIO(), **kw)


def drain(worker: InvalidationWorker) -> int:
    handled = 0
    while n := worker.process_once():
        handled += n
    return handled


def id_key(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq)


def pending(r: Any, stream: str) -> int:
    return int(r.xpending(stream, GROUP)["pending"])


# ----------------------------------------------------------------------------- max_len (soft)


def test_max_len_with_a_lagging_group_trims_nothing_unacked(redis_server: RedisServer, redis_client: Any) -> None:
    stream = "cache:lagging"
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)  # the group exists, its worker is down
    sink = make_sink(redis_server, stream, pipeline_name(), max_len=50)
    sink.open()
    keys: list[str] = []
    for b in range(1, 11):
        batch, k = keyed_batch(50, b)
        sink.write(batch)  # trims run after these commits (every few entries), as in production
        keys += k
    assert sink.trimmer is not None
    sink.trimmer.flush()
    assert redis_client.xlen(stream) == 500  # ten times max_len, and not one unacknowledged entry trimmed
    set_keys(redis_client, keys)

    worker = make_worker(redis_server, stream)
    try:
        assert drain(worker) == 500
    finally:
        worker.close()
    assert existing(redis_client, keys) == []  # every cache key invalidated
    assert worker.metrics.trimmed_pending == 0 and worker.metrics.gaps == 0
    assert pending(redis_client, stream) == 0

    # acknowledged: the next trim shrinks the stream back to about max_len (new entries stay)
    batch, _ = keyed_batch(10, 11)
    sink.write(batch)
    sink.trimmer.flush()
    assert 50 <= redis_client.xlen(stream) < 200
    assert [f[b"event_id"] for _id, f in redis_client.xrange(stream)][-10:] == \
        [e.event_id.encode() for e in batch.events]
    sink.close()


def test_max_len_stops_at_the_oldest_pending_entry(redis_server: RedisServer, redis_client: Any) -> None:
    stream = "cache:partial"
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    redis_client.xgroup_create(stream, "audit", id="$")  # a second group, created later, caught up
    sink = make_sink(redis_server, stream, pipeline_name(), max_len=20)
    only_explicit_trims(sink)
    sink.open()
    for b in range(1, 6):
        sink.write(keyed_batch(100, b)[0])
    redis_client.xreadgroup("audit", "a", {stream: ">"}, count=1000)  # read, never acked: pending
    audit_floor = redis_client.xpending(stream, "audit")["min"]
    # GROUP: 200 read and acked, then 100 read by a consumer that died before acking
    done = redis_client.xreadgroup(GROUP, "w", {stream: ">"}, count=200)[0][1]
    redis_client.xack(stream, GROUP, *[eid for eid, _f in done])
    crashed = redis_client.xreadgroup(GROUP, "dead", {stream: ">"}, count=100)[0][1]
    assert sink.trimmer is not None
    sink.trimmer.flush()
    ids = [eid for eid, _f in redis_client.xrange(stream)]
    assert id_key(ids[0]) <= min(id_key(audit_floor), id_key(crashed[0][0]))  # nothing unacked is gone
    assert len(ids) == 500  # "audit" holds everything after its creation point

    redis_client.xgroup_destroy(stream, "audit")
    sink.trimmer.flush()
    ids = [eid for eid, _f in redis_client.xrange(stream)]
    assert 300 <= len(ids) < 500  # acknowledged entries went (approximately, whole nodes)
    assert crashed[0][0] in ids  # the oldest pending entry of the dead consumer stays
    sink.close()


def test_scan_cap_bounds_the_work_of_one_trim(redis_server: RedisServer, redis_client: Any) -> None:
    """A group in the middle of a long stream: each trim scans at most scan_cap entries, and converges."""
    stream = "cache:capped"
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    sink = make_sink(redis_server, stream, pipeline_name(), max_len=100)
    only_explicit_trims(sink)
    sink.open()
    for b in range(1, 6):
        sink.write(keyed_batch(100, b)[0])
    done = redis_client.xreadgroup(GROUP, "w", {stream: ">"}, count=300)[0][1]
    redis_client.xack(stream, GROUP, *[eid for eid, _f in done])
    assert sink.trimmer is not None
    sink.trimmer.scan_cap = 30
    (r,) = sink.trimmer.flush()
    assert 0 < r.removed <= 30 and r.floor_group == GROUP
    for _ in range(20):
        if not sink.trimmer.flush()[0].removed:
            break
    ids = [eid for eid, _f in redis_client.xrange(stream)]
    assert 200 <= len(ids) < 300  # converged on the group's floor, approximately (whole nodes)
    assert ids[-200:] == [eid for eid, _f in redis_client.xrange(stream, min=b"(" + done[-1][0])]
    sink.close()


def test_max_len_without_groups_trims_to_about_max_len_on_template_streams(
        redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(redis_server, "tpl:${table}", pipeline_name(), max_len=30)
    sink.open()
    # the slow log with a threshold of 0 records every command with its arguments
    before = redis_client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
    redis_client.config_set("slowlog-max-len", 10000)
    redis_client.config_set("slowlog-log-slower-than", 0)
    redis_client.slowlog_reset()
    try:
        for b in range(1, 9):
            sink.write(make_batch(100, b, tables=("app.users", "app.orders")))
        logged = redis_client.slowlog_get(10000)
    finally:
        redis_client.config_set("slowlog-log-slower-than", before)
    xadds = [e["command"] for e in logged if e["command"].startswith(b"XADD")]
    assert xadds and not any(b"MAXLEN" in c.upper() for c in xadds)  # the XADDs themselves never trim
    assert sink.trimmer is not None
    sink.trimmer.flush()
    for stream in ("tpl:app.users", "tpl:app.orders"):
        assert 30 <= redis_client.xlen(stream) < 150
    sink.close()


def test_a_failing_trim_never_fails_the_commit(redis_server: RedisServer, redis_client: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # An ACL user allowed to commit but not to run scripts: every trim fails, every commit succeeds.
    user = f"notrim{next(_names)}"
    redis_client.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-evalsha", "-eval",
                                 "-script")
    stream = "cache:notrim"
    pipeline = pipeline_name()
    try:
        sink = make_sink(redis_server, stream, pipeline,
                         uri=redis_server.uri.replace("redis://", f"redis://{user}:pw@"), max_len=10)
        sink.open()
        assert sink.trimmer is not None
        sink.trimmer.retry_first_s = 0.0  # retry at the next commit
        with caplog.at_level(logging.WARNING, logger="deltaforge.sink"):
            for b in range(1, 4):
                sink.write(make_batch(50, b))
                time.sleep(sink.trimmer.min_interval_s)
        assert redis_client.xlen(stream) == 150  # committed, untrimmed
        assert sink.checkpoint is not None and sink.checkpoint.pos == 4000
        failures = [r.getMessage() for r in caplog.records if "trimming" in r.getMessage()]
        assert len(failures) == 3 and all("retrying in" in m and "NOPERM" in m for m in failures)
        assert f'deltaforge_trim_errors_total{{pipeline="{pipeline}",sink="s1"}} 3.0' in Stats().prometheus(pipeline)
        sink.close()
    finally:
        redis_client.execute_command("ACL", "DELUSER", user)


# ----------------------------------------------------------------------------- max_len_hard


def _hard_cut(redis_server: RedisServer, redis_client: Any, stream: str, pipeline: str) -> tuple[list[str], bytes]:
    """500 entries, none acked, max_len 50 / max_len_hard 200: one flush cuts 300 unacked entries."""
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    sink = make_sink(redis_server, stream, pipeline, max_len=50, max_len_hard=200)
    only_explicit_trims(sink)
    sink.open()
    keys: list[str] = []
    for b in range(1, 11):
        batch, k = keyed_batch(50, b)
        sink.write(batch)
        keys += k
    set_keys(redis_client, keys)
    assert sink.trimmer is not None
    (result,) = sink.trimmer.flush()
    sink.close()
    assert (result.forced, result.unacked) == (300, {GROUP: 300})
    assert redis_client.xlen(stream) == 201  # 200 + the gap entry
    gap_id, _fields = redis_client.xrevrange(stream, count=1)[0]
    assert result.gap_id == gap_id.decode()
    return keys, gap_id


def test_hard_cap_counts_logs_and_marks_the_cut(redis_server: RedisServer, redis_client: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    stream = "cache:hard"
    pipeline = pipeline_name()
    with caplog.at_level(logging.WARNING, logger="deltaforge.sink"):
        keys, gap_id = _hard_cut(redis_server, redis_client, stream, pipeline)

    # counted
    assert TRIM_METRICS.unacked_total(pipeline) == 300
    text = Stats().prometheus(pipeline)
    assert f'deltaforge_trimmed_unacked_total{{group="{GROUP}",pipeline="{pipeline}",sink="s1",stream="{stream}"}} 300.0' in text
    assert f'deltaforge_trim_gaps_total{{pipeline="{pipeline}",sink="s1",stream="{stream}"}} 1.0' in text
    # logged: stream, group, how many, the fix
    (line,) = [r.getMessage() for r in caplog.records if "max_len_hard" in r.getMessage() and "cut" in r.getMessage()]
    assert stream in line and f"{GROUP} (300)" in line and "cut 300 entries" in line
    assert "spec.sinks[0].config.max_len_hard" in line and gap_id.decode() in line
    # marked: the gap entry, df-event first (the seed's fields[1]), df-gap beside it
    fields = raw(redis_server, "XRANGE", stream, gap_id, gap_id)[0][1]
    assert fields[0] == b"df-event" and fields[2] == GAP_FIELD.encode()
    gap = orjson.loads(fields[1])["df_gap"]
    first_kept = redis_client.xrange(stream, count=1)[0][0].decode()
    assert gap["entries"] == 300 and gap["unacked"] == {GROUP: 300} and gap["stream"] == stream
    assert id_key(gap["last_id"]) < id_key(first_kept) and (gap["pipeline"], gap["sink"], gap["max_len_hard"]) == (pipeline, "s1", 200)

    # deltaforge worker: reports the gap loudly, invalidates what is left, acks everything
    worker = make_worker(redis_server, stream, count=1000)
    with caplog.at_level(logging.ERROR, logger="deltaforge.worker"):
        try:
            assert drain(worker) == 201
        finally:
            worker.close()
    (report,) = [r for r in caplog.records if r.name == "deltaforge.worker" and r.levelno == logging.ERROR]
    msg = report.getMessage()
    assert stream in msg and gap["first_id"] in msg and gap["last_id"] in msg and "may be stale" in msg
    assert "flush the cache" in msg and "max_len_hard" in msg
    assert (worker.metrics.gaps, worker.metrics.gap_entries) == (1, 300)
    assert "deltaforge_worker_gaps_total 1" in worker.metrics.prometheus()
    assert existing(redis_client, keys[300:]) == []
    assert existing(redis_client, keys[:300]) == keys[:300]  # the lost invalidations: why the gap is loud
    assert pending(redis_client, stream) == 0


def test_a_gap_entry_cut_before_it_was_read_is_carried_into_the_next(redis_server: RedisServer,
                                                                     redis_client: Any) -> None:
    stream = "cache:long-outage"
    pipeline = pipeline_name()
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    sink = make_sink(redis_server, stream, pipeline, max_len=20, max_len_hard=100)
    only_explicit_trims(sink)
    sink.open()
    assert sink.trimmer is not None
    sink.write(keyed_batch(150, 1)[0])
    first_id = redis_client.xrange(stream, count=1)[0][0].decode()
    (first,) = sink.trimmer.flush()
    assert first.unacked == {GROUP: 50} and first.gap_id
    sink.write(keyed_batch(150, 2)[0])
    (second,) = sink.trimmer.flush()  # cuts 100 + 50 data entries and the first gap entry, unread
    assert second.unacked == {GROUP: 150} and second.forced == 151
    assert TRIM_METRICS.unacked_total(pipeline) == 200  # each lost entry counted once
    gaps = [f for _id, f in redis_client.xrange(stream) if GAP_FIELD.encode() in f]
    assert len(gaps) == 1  # the worker will see one gap entry, and it covers the whole outage
    gap = orjson.loads(gaps[0][b"df-event"])["df_gap"]
    assert (gap["first_id"], gap["last_id"]) == (first_id, second.last_lost)
    assert gap["unacked"] == {GROUP: 200} and gap["entries"] == 200

    worker = make_worker(redis_server, stream, count=1000)
    try:
        assert drain(worker) == 101
    finally:
        worker.close()
    assert (worker.metrics.gaps, worker.metrics.gap_entries) == (1, 200)
    sink.close()


def test_pending_entries_cut_by_the_hard_cap_do_not_hold_max_len(redis_server: RedisServer,
                                                                  redis_client: Any) -> None:
    stream = "cache:dead-pending"
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    sink = make_sink(redis_server, stream, pipeline_name(), max_len=50, max_len_hard=200)
    only_explicit_trims(sink)
    sink.open()
    for b in range(1, 11):
        sink.write(keyed_batch(50, b)[0])
    redis_client.xreadgroup(GROUP, "dead", {stream: ">"}, count=100)  # a consumer that died holding 100
    assert sink.trimmer is not None
    (cut,) = sink.trimmer.flush()
    assert cut.unacked == {GROUP: 300}  # 100 pending + 200 never delivered
    assert pending(redis_client, stream) == 100  # their ids stay in the PEL: nobody reclaims them

    worker = make_worker(redis_server, stream, consumer="alive", count=1000)  # no XAUTOCLAIM
    try:
        assert drain(worker) == 201
    finally:
        worker.close()
    sink.write(keyed_batch(10, 11)[0])
    (r,) = sink.trimmer.flush()
    assert r.removed > 0 and 50 <= r.length < 150  # the dead ids of entries already gone hold nothing
    sink.close()


def test_seed_node_worker_survives_the_gap_entry(redis_server: RedisServer, redis_client: Any) -> None:
    stream = "cache:invalidations"  # the seed's worker has its stream and group hard-coded
    _keys, gap_id = _hard_cut(redis_server, redis_client, stream, pipeline_name())
    node = start_node_worker(redis_server.uri)
    try:
        node.wait_for_line("Starting cache invalidation worker")

        def done() -> bool:
            group = redis_client.xinfo_groups(stream)[0]
            return bool(group["last-delivered-id"] == gap_id and group["pending"] == 0)

        wait_for(done, 30, "the Node worker to read and ack the gap entry")
        assert node.poll() is None  # still running
    finally:
        node.stop()
    assert not any("Worker error" in line or "SyntaxError" in line for line in node.lines), node.lines[-5:]
    assert sum(line.startswith("Invalidated 1 keys for app.users") for line in node.lines) == 200


# ----------------------------------------------------------------------------- the worker, trimmed pending entries


def _events_read_then_trimmed(redis_server: RedisServer, redis_client: Any, stream: str,
                              consumer: str) -> tuple[list[str], list[bytes]]:
    """10 entries read by ``consumer`` (never acked), then the 4 oldest trimmed away."""
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    sink = make_sink(redis_server, stream, pipeline_name())
    sink.open()
    batch, keys = keyed_batch(10, 1)
    sink.write(batch)
    sink.close()
    set_keys(redis_client, keys)
    redis_client.xreadgroup(GROUP, consumer, {stream: ">"}, count=10)
    ids = [eid for eid, _f in redis_client.xrange(stream)]
    redis_client.xtrim(stream, maxlen=6, approximate=False)
    return keys, ids


def test_worker_reports_and_acks_pending_entries_trimmed_away(redis_server: RedisServer, redis_client: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    stream = "cache:nil-pending"
    keys, ids = _events_read_then_trimmed(redis_server, redis_client, stream, "worker-a")
    worker = make_worker(redis_server, stream, consumer="worker-a")  # same name: re-reads its own pending
    with caplog.at_level(logging.WARNING, logger="deltaforge.worker"):
        try:
            assert worker.process_once() == 10  # XREADGROUP ... 0 hands back 4 entries without fields
        finally:
            worker.close()
    (line,) = [r.getMessage() for r in caplog.records if "deleted from the stream" in r.getMessage()]
    assert line.startswith("4 pending entries") and f"ids {ids[0].decode()} to {ids[3].decode()}" in line
    assert "XREADGROUP" in line and "NOT invalidated" in line
    assert worker.metrics.trimmed_pending == 4
    assert "deltaforge_worker_trimmed_pending_total 4" in worker.metrics.prometheus()
    assert pending(redis_client, stream) == 0  # acked: they cannot loop
    assert existing(redis_client, keys[4:]) == []
    assert worker._out is not None and worker._out.getvalue().count("Invalidated 1 keys") == 6  # type: ignore[attr-defined]


def test_worker_reports_trimmed_entries_xautoclaim_lists(redis_server: RedisServer, redis_client: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    stream = "cache:nil-claimed"
    keys, ids = _events_read_then_trimmed(redis_server, redis_client, stream, "dead")
    time.sleep(0.05)
    worker = make_worker(redis_server, stream, consumer="alive", claim_idle_ms=20)
    with caplog.at_level(logging.WARNING, logger="deltaforge.worker"):
        try:
            assert worker.process_once() == 6  # the 6 left are reclaimed; the 4 trimmed are reported
        finally:
            worker.close()
    (line,) = [r.getMessage() for r in caplog.records if "deleted from the stream" in r.getMessage()]
    assert "XAUTOCLAIM" in line and f"ids {ids[0].decode()} to {ids[3].decode()}" in line
    assert worker.metrics.trimmed_pending == 4 and worker.metrics.reclaimed == 6
    assert pending(redis_client, stream) == 0
    assert existing(redis_client, keys[4:]) == []


# ----------------------------------------------------------------------------- through the engine


@pytest.mark.parametrize("workers", TOPOLOGIES_SLOW)  # 5-6 s a run with processes
def test_max_len_with_a_lagging_group_through_the_engine(tmp_path: Path, mariadb: MariaDBServer,
                                                         redis_server: RedisServer, redis_client: Any,
                                                         fresh_db: str, workers: str) -> None:
    """The issue's scenario: worker down while 500 rows change, max_len 50; then the worker starts."""
    mariadb.execute(f"CREATE TABLE {fresh_db}.items (id INT PRIMARY KEY, v INT)")
    stream = "cdc:e2e"
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    processors = """  processors:
    - type: javascript
      id: keys
      inline: |
        function processBatch(events) {
          for (const e of events) { (e.after || e.before)._cache_keys = [`item:${(e.after || e.before).id}`]; }
          return events;
        }
"""
    name = pipeline_name()
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], name=name, stream=stream,
                       start=binlog_end(mariadb), processors=processors, sinks_extra="        max_len: 50\n")
    keys = [f"item:{i}" for i in range(1, 561)]
    set_keys(redis_client, keys)
    sup, t = start_supervisor(cfg, workers)  # the trim counters come from the writer's process with --workers N
    try:
        wait_for(lambda: sup.stats.state == "running", 30, "the pipeline to start")
        for tx in range(50):  # 500 rows in 50 transactions, the worker down
            rows = ",".join(f"({i},{i})" for i in range(tx * 10 + 1, tx * 10 + 11))
            mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES {rows}")
        wait_for(lambda: sup.stats.events_out >= 500, 60, "500 events committed")
        metrics = sup.stats.prometheus(name)
        trims = next(line for line in metrics.splitlines() if line.startswith("deltaforge_trims_total{"))
        assert float(trims.rsplit(" ", 1)[1]) >= 1  # trims ran while the group lagged ...
        assert redis_client.xlen(stream) == 500  # ... and removed nothing it had not acknowledged
        assert f'deltaforge_trim_held_entries{{pipeline="{name}",sink="stream",stream="{stream}"}}' in metrics

        worker = make_worker(redis_server, stream, count=100)
        try:
            assert drain(worker) == 500
            assert existing(redis_client, keys[:500]) == []  # every cache key invalidated
            assert worker.metrics.trimmed_pending == 0

            # acknowledged: the stream shrinks back to about max_len with the next commits
            for i in range(501, 561):
                mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES ({i},{i})")
            wait_for(lambda: sup.stats.events_out >= 560, 60, "60 more events committed")
            wait_for(lambda: redis_client.xlen(stream) < 200, 30, "the stream to shrink to about max_len")
            assert redis_client.xlen(stream) >= 50
            drain(worker)
            assert existing(redis_client, keys) == []
        finally:
            worker.close()
    finally:
        sup.stop.set()
        t.join(15)
    assert TRIM_METRICS.unacked_total(name) == 0


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("extra", "fragment"), [
    ("max_len: 100\n        max_len_hard: 100", "must be greater than max_len (100), found 100"),
    ("max_len: 100\n        max_len_hard: 5", "must be greater than max_len (100), found 5"),
    ("max_len_hard: 0", "must be at least 1, found 0"),
])
def test_max_len_hard_validation(extra: str, fragment: str) -> None:
    err = error(edit("required: true", f"required: true\n        {extra}"))
    assert err.path == "spec.sinks[0].config.max_len_hard"
    assert fragment in str(err) and "(fix: " in str(err)


def test_max_len_hard_accepted() -> None:
    c = load(edit("required: true", "required: true\n        max_len: 1000\n        max_len_hard: 100000"))
    assert (c.spec.sinks[0].config.max_len, c.spec.sinks[0].config.max_len_hard) == (1000, 100000)
    c = load(edit("required: true", "required: true\n        max_len_hard: 100000"))
    assert (c.spec.sinks[0].config.max_len, c.spec.sinks[0].config.max_len_hard) == (None, 100000)
