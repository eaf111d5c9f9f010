"""The bench's peers, stage timings and latency run, on a tiny backlog (no figure is asserted).

What is checked is that each measurement measures what it says: the peers deliver exactly
the backlog's row changes to their stream, every stage reports a positive rate over the
rows asked for, and the latency run matches its writes to stream entries and deletions.
"""

from __future__ import annotations

import orjson
import pytest

from deltaforge.benchkit import peers
from deltaforge.benchkit.env import BenchEnv
from deltaforge.benchkit.latency import measure_latency, percentiles
from deltaforge.benchkit.peers import bench_dir, ensure_node_deps, run_naive_node, run_naive_py
from deltaforge.benchkit.stages import SINK_STREAM, measure_stages
from deltaforge.benchkit.workload import Backlog, count_binlog_events, write_backlog

pytestmark = [pytest.mark.integration, pytest.mark.bench]

ROWS = 600


@pytest.fixture(scope="module")
def env(mariadb, redis_server) -> BenchEnv:  # type: ignore[no-untyped-def]
    mariadb.execute("CREATE DATABASE IF NOT EXISTS app")
    return BenchEnv(mysql_dsn=mariadb.dsn(db="app"), mysql_admin_dsn=f"mysql://root@127.0.0.1:{mariadb.port}/app",
                    redis_uri=redis_server.uri)


@pytest.fixture(scope="module")
def backlog(env: BenchEnv) -> Backlog:
    # a large transaction included, split by the reader into several batches
    return write_backlog(env, ROWS, seed=7, big_tx_rows=150, workload="bulk")


def _payloads(env: BenchEnv, stream: str) -> list[dict]:
    client = env.redis()
    try:
        return [orjson.loads(fields[b"df-event"]) for _id, fields in client.xrange(stream)]
    finally:
        client.close()


def test_naive_py_delivers_exactly_the_backlog(env: BenchEnv, backlog: Backlog) -> None:
    env.flush_redis()
    res = run_naive_py(env, backlog, stream="t:naive:py")
    assert res is not None
    assert res["events"] == ROWS
    assert res["events_per_s"] > 0 and res["own_events_per_s"] > 0
    assert res["cpu_s"] > 0
    events = _payloads(env, "t:naive:py")
    assert len(events) == ROWS
    ops = {e["op"] for e in events}
    assert ops <= {"c", "u", "d"} and "c" in ops
    assert {e["table"] for e in events} <= {"app.users", "app.products", "app.orders", "app.inventory"}


def test_naive_node_delivers_exactly_the_backlog(env: BenchEnv, backlog: Backlog) -> None:
    # Node is part of the test environment (README setup); its absence must fail, not skip.
    bench = bench_dir()
    assert bench is not None
    assert ensure_node_deps(bench) is None
    env.flush_redis()
    res = run_naive_node(env, backlog, stream="t:naive:node")
    assert res is not None
    assert res["events"] == ROWS
    assert res["events_per_s"] > 0 and res["own_events_per_s"] > 0
    assert res["cpu_s"] > 0
    node = _payloads(env, "t:naive:node")
    assert len(node) == ROWS
    # same binlog, same order: the Node peer's rows match the Python peer's one for one
    py = run_naive_py(env, backlog, stream="t:naive:py2")
    assert py is not None
    python = _payloads(env, "t:naive:py2")
    assert [(e["table"], e["op"]) for e in node] == [(e["table"], e["op"]) for e in python]
    for n, p in zip(node, python, strict=True):
        row_n, row_p = n["after"] or n["before"], p["after"] or p["before"]
        assert row_n["id"] == row_p["id"]
        if n["op"] == "u":
            assert isinstance(n["before"], dict) and isinstance(n["after"], dict)


def test_measure_stages_positive_for_every_stage(env: BenchEnv, backlog: Backlog) -> None:
    env.flush_redis()
    res = measure_stages(env, backlog)
    for key in ("decode_rows_per_s", "decode_rows_per_s_mysql_replication", "js_events_per_s",
                "sink_events_per_s"):
        assert res[key] > 0, key
    assert res["rows"] == ROWS and res["rows_mysql_replication"] == ROWS
    client = env.redis()
    try:
        assert not client.exists(SINK_STREAM)  # the sink stage cleans up after itself
    finally:
        client.close()


def test_stage_readers_in_binlog_events_per_s(env: BenchEnv, backlog: Backlog) -> None:
    events = count_binlog_events(env, backlog.start, backlog.end)
    res = measure_stages(env, backlog, events=events)
    # every binlog event of the timed range counts (GTID, TABLE_MAP, XID...), not only the rows
    assert res["decode_binlog_events_per_s"] > 0 and res["decode_binlog_events_per_s_mysql_replication"] > 0
    # the two rates share one timed span, so they differ because the counts do (no timing asserted)
    assert events.total == sum(events.by_type.values()) != res["rows"]
    assert events.by_type["Table_map"] >= events.by_type["Gtid"] > 0


def test_measure_stages_on_part_of_the_backlog(env: BenchEnv, backlog: Backlog) -> None:
    res = measure_stages(env, backlog, rows=100)
    # readers stop at the first batch / rows event reaching the count: whole transactions only
    assert 100 <= res["rows"] <= ROWS
    assert 100 <= res["rows_mysql_replication"] <= ROWS
    assert res["js_events_per_s"] > 0 and res["sink_events_per_s"] > 0


def test_measure_latency_matches_writes(env: BenchEnv) -> None:
    client = env.redis()
    try:
        before = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    finally:
        client.close()
    seen: list[float] = []
    res = measure_latency(env, rate=200, seconds=2.0, progress=seen.append)
    assert res["rows"] > 0
    assert res["matched_stream"] == res["rows"]
    assert res["matched_deleted"] == res["rows"]
    for key in ("stream_ms", "deleted_ms"):
        p = res[key]
        assert 0 <= p["p50"] <= p["p99"] <= p["max"], (key, p)
    assert res["rate"] > 0
    # UNLINK (what the worker sends) is published on the "del" channel
    assert res["deletion_channels"].get("del", 0) >= res["rows"]
    assert res["exit_codes"] == {"deltaforge worker": 0, "deltaforge run": 0}
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    client = env.redis()
    try:
        assert client.config_get("notify-keyspace-events")["notify-keyspace-events"] == before
    finally:
        client.close()


def test_node_peer_without_node_is_skipped_with_the_reason(env: BenchEnv, backlog: Backlog, tmp_path,
                                                           monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: neither node nor npm is found
    peers.skip_reasons.clear()
    assert run_naive_node(env, backlog) is None
    assert peers.skip_reasons["naive_node"] == "node not installed (apt-get install -y nodejs npm)"


def test_percentiles_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p99": 99.0, "max": 100.0}
    assert percentiles([3.0]) == {"p50": 3.0, "p99": 3.0, "max": 3.0}
    assert percentiles([]) is None
