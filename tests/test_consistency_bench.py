"""The consistency phase (deltaforge/benchkit/consistency.py) against real servers.

Short runs: what is asserted is what must hold on any machine, at any speed. LeaseCache leaves no
stale key (its guarantee), every protocol's cache was compared, every worker drained and exited 0,
and the worker-rate measurement deleted every key it timed (it raises otherwise). Whether the plain
protocol goes stale in a short run depends on timing; tests/test_cache.py proves it deterministically.
"""

from __future__ import annotations

import pytest

from deltaforge.benchkit.consistency import (
    PROTOCOLS,
    ConsistencySettings,
    measure_consistency,
    measure_worker_rate,
)
from deltaforge.benchkit.env import BenchEnv

pytestmark = [pytest.mark.integration, pytest.mark.bench]


@pytest.fixture(scope="module")
def env(mariadb, redis_server) -> BenchEnv:  # type: ignore[no-untyped-def]
    mariadb.execute("CREATE DATABASE IF NOT EXISTS app")
    return BenchEnv(mysql_dsn=mariadb.dsn(db="app"), mysql_admin_dsn=f"mysql://root@127.0.0.1:{mariadb.port}/app",
                    redis_uri=redis_server.uri)


def test_consistency_run_compares_every_protocol_and_lease_cache_stays_fresh(env: BenchEnv) -> None:
    client = env.redis()
    try:
        notify_before = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    finally:
        client.close()
    states: list[dict] = []
    s = ConsistencySettings(rate=400, seconds=4.0, hot_rows=50, reads_per_s=200, readers=4, fill_delay_ms=50)
    res = measure_consistency(env, s, progress=states.append)
    assert res["written"] > 0
    assert set(res["protocols"]) == set(PROTOCOLS)
    for name, p in res["protocols"].items():
        assert p["readers"]["reads"] > 0, name
        assert p["cached_keys"] + p["markers_left"] <= res["keys"]
        assert p["stale_keys"] <= p["cached_keys"]
        w = p["window_ms"]
        assert w is not None and 0 <= w["p50"] <= w["p99"] <= w["max"], (name, w)
    lease = res["protocols"]["lease"]
    assert lease["stale_keys"] == 0, lease
    assert lease["cached_keys"] > 0
    assert lease["readers"]["fills"] > 0
    assert all(code == 0 for code in res["exit_codes"].values()), res["exit_codes"]
    assert len(res["exit_codes"]) == 4  # the engine and one worker per protocol
    assert states and states[-1].get("done") is True
    live = [st for st in states if not st.get("done")]
    assert live and all(st["missed"] is None for st in live)
    client = env.redis()
    try:
        assert client.config_get("notify-keyspace-events")["notify-keyspace-events"] == notify_before
    finally:
        client.close()


def test_worker_rate_times_both_workers_on_the_same_stream(env: BenchEnv) -> None:
    res = measure_worker_rate(env, events=2000, keys_per_event=4, node=True)
    assert res["keys"] == 8000
    assert "seed_node_worker_skipped" not in res, res.get("seed_node_worker_skipped")
    for name in ("deltaforge_worker", "seed_node_worker"):
        assert res[name]["keys_per_s"] > 0 and res[name]["seconds"] > 0, res
    assert res["ratio"] > 0
