"""``deltaforge bench``: the regression check, the stream rate, the workload, and one tiny run.

No test asserts a throughput figure (wall-clock performance is not testable on a shared
machine); they assert the logic and the shapes the CI check and the README rely on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from deltaforge.bench import (
    check_ratios,
    compute_ratios,
    load_baseline,
    median_ratios,
    resolve_settings,
)
from deltaforge.benchkit import (
    BenchEnv,
    BenchError,
    parse_mix,
    seed_config,
    stream_rate,
    write_backlog,
    write_big_transaction,
)
from deltaforge.benchkit.workload import OLTP_TX_WEIGHTS, count_binlog_events, position_key

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
BASELINE = {"tolerance": 0.25, "ratios": {"drain_vs_naive_py": 2.0, "decode_vs_mysql_replication": 4.0}}


# --------------------------------------------------------------------------- the check


def test_check_passes_at_and_above_the_floor() -> None:
    ok, rows = check_ratios({"drain_vs_naive_py": 1.5, "decode_vs_mysql_replication": 9.0}, BASELINE)
    assert ok
    assert [(r.name, r.floor, r.status) for r in rows] == [
        ("drain_vs_naive_py", 1.5, "ok"), ("decode_vs_mysql_replication", 3.0, "ok")]


def test_check_fails_below_the_floor() -> None:
    # a 1.5x slowdown of ours: 2.0 -> 1.33, under the floor 1.5
    ok, rows = check_ratios({"drain_vs_naive_py": 1.33, "decode_vs_mysql_replication": 4.1}, BASELINE)
    assert not ok
    assert {r.name: r.status for r in rows} == {"drain_vs_naive_py": "REGRESSION",
                                                 "decode_vs_mysql_replication": "ok"}


def test_check_fails_on_a_missing_ratio_unless_optional_and_skipped() -> None:
    ok, rows = check_ratios({"drain_vs_naive_py": 2.0}, BASELINE)
    assert not ok
    assert rows[1].status == "MISSING" and rows[1].value is None
    base = {"tolerance": 0.1, "ratios": {"drain_vs_naive_py": 2.0, "drain_vs_naive_node": 0.3}}
    ok, rows = check_ratios({"drain_vs_naive_py": 2.0}, base, skipped={"naive_node": "node not installed"})
    assert ok and rows[1].status == "skipped"
    ok, rows = check_ratios({"drain_vs_naive_py": 2.0}, base, skipped={})
    assert not ok and rows[1].status == "MISSING"


def test_per_ratio_tolerance() -> None:
    base = {**BASELINE, "tolerances": {"decode_vs_mysql_replication": 0.5}}
    ok, rows = check_ratios({"drain_vs_naive_py": 2.0, "decode_vs_mysql_replication": 2.1}, base)
    assert ok and rows[1].floor == 2.0


def test_load_baseline_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="does not exist"):
        load_baseline(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"ratios": {"x": -1}}')
    with pytest.raises(BenchError, match="positive numbers"):
        load_baseline(bad)
    bad.write_text('{"ratios": {"x": 1}, "tolerance": 2}')
    with pytest.raises(BenchError, match="tolerance"):
        load_baseline(bad)
    assert "\n" not in str(BenchError("a", "b"))


def test_shipped_baseline_is_valid() -> None:
    data = load_baseline(ROOT / "bench" / "baseline.json")
    assert {"drain_vs_naive_py", "decode_vs_mysql_replication", "drain_vs_naive_node",
            "drain_noproc_vs_naive_node"} <= set(data["ratios"])
    assert data["how_to_update"] and data["measured_on"]


def test_ratios_pair_runs_of_the_same_round() -> None:
    drain = {
        "ours_w0": {"runs": [{"round": 0, "events_per_s": 30.0}, {"round": 1, "events_per_s": 10.0},
                             {"round": 2, "events_per_s": 40.0}]},
        "naive_py": {"runs": [{"round": 0, "events_per_s": 10.0}, {"round": 1, "events_per_s": 5.0},
                              {"round": 2, "events_per_s": 10.0}]},
        "ours_noproc_w0": None,
    }
    stages = {"decode_rows_per_s": 90.0, "decode_rows_per_s_mysql_replication": 30.0}
    ratios = compute_ratios(drain, stages, ["0", "1"])
    assert ratios == {"drain_vs_naive_py": 3.0, "decode_vs_mysql_replication": 3.0}
    # the cluster sink against the single node, the same pipeline in the same round
    drain["ours_cluster"] = {"runs": [{"round": 0, "events_per_s": 27.0}, {"round": 1, "events_per_s": 11.0},
                                      {"round": 2, "events_per_s": 36.0}]}
    assert compute_ratios(drain, None, ["0", "1"])["drain_cluster_vs_single"] == 0.9
    drain["ours_cluster_spread"] = {"runs": [{"round": r, "events_per_s": v} for r, v in enumerate((15.0, 5.0, 20.0))]}
    assert compute_ratios(drain, None, ["0", "1"])["drain_cluster_spread_vs_single"] == 0.5
    assert median_ratios([{"ratios": {"a": 1.0}}, {"ratios": {"a": 3.0, "b": 2.0}}, {"ratios": {"a": 2.0}}]) == {
        "a": 2.0, "b": 2.0}


def test_quick_settings_scale_down_but_explicit_values_win() -> None:
    s = resolve_settings(quick=True, rows=None, rounds=1, mix="insert=1", latency_rate=None, latency_seconds=None,
                         big_tx_rows=None, stages_rows=None, phases="drain,memory", node=None)
    assert s.rows < 300_000 and s.rounds == 1 and s.big_tx_rows < 1_000_000
    assert s.node, "--quick keeps the Node peer: drain_vs_naive_node is the ratio that matters"
    assert s.workload == "oltp"
    assert s.mix == {"insert": 1, "update": 0, "delete": 0}
    assert s.phases == ("drain", "memory")
    assert any(x.startswith("rows:") for x in s.scaled_down)
    assert not any(x.startswith("rounds:") for x in s.scaled_down)
    with pytest.raises(BenchError, match="--phases"):
        resolve_settings(quick=False, rows=None, rounds=None, mix=None, latency_rate=None, latency_seconds=None,
                         big_tx_rows=None, stages_rows=None, phases="drain,warp", node=None)


@pytest.mark.parametrize("text", ["insert", "insert=x", "upsert=3", "insert=0,update=0", "delete=-1"])
def test_bad_mix_is_a_one_line_error(text: str) -> None:
    with pytest.raises(BenchError, match="--mix"):
        parse_mix(text)


# --------------------------------------------------------------------------- stream_rate


def test_stream_rate_from_entry_ids(redis_client) -> None:  # type: ignore[no-untyped-def]
    assert stream_rate(redis_client, "s") == (0, 0.0)
    redis_client.xadd("s", {"f": "v"}, id="1000-0")
    assert stream_rate(redis_client, "s") == (1, 0.0)
    redis_client.xadd("s", {"f": "v"}, id="1000-1")
    redis_client.xadd("s", {"f": "v"}, id="1500-0")
    redis_client.xadd("s", {"f": "v"}, id="3000-0")
    # 3 entries after the first, over 2000 ms
    assert stream_rate(redis_client, "s") == (4, 1.5)


def test_stream_rate_on_auto_ids(redis_client) -> None:  # type: ignore[no-untyped-def]
    pipe = redis_client.pipeline(transaction=False)
    for i in range(500):
        pipe.xadd("auto", {"i": i})
    pipe.execute()
    n, rate = stream_rate(redis_client, "auto")
    assert n == 500 and rate > 0


# --------------------------------------------------------------------------- workload


@pytest.fixture
def env(mariadb, redis_server) -> BenchEnv:  # type: ignore[no-untyped-def]
    mariadb.execute("CREATE DATABASE IF NOT EXISTS app")
    return BenchEnv(mysql_dsn=mariadb.dsn(db="app"), mysql_admin_dsn=f"mysql://root@127.0.0.1:{mariadb.port}/app",
                    redis_uri=redis_server.uri)


def _binlog_rows(mariadb, start: str, end: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Row changes on app.* in [start, end) as the binlog holds them."""
    file, pos = start.rsplit(":", 1)
    end_file, end_pos = end.rsplit(":", 1)
    stream = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": mariadb.port, "user": "root", "password": ""},
        server_id=4242, blocking=False, resume_stream=True, log_file=file, log_pos=int(pos),
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent], only_schemas=["app"])
    counts = {"insert": 0, "update": 0, "delete": 0}
    kind = {WriteRowsEvent: "insert", UpdateRowsEvent: "update", DeleteRowsEvent: "delete"}
    try:
        for ev in stream:
            if (stream.log_file, stream.log_pos) > (end_file, int(end_pos)):
                break
            counts[kind[type(ev)]] += len(ev.rows)
    finally:
        stream.close()
    return counts


def test_backlog_holds_exactly_n_row_changes(env: BenchEnv, mariadb) -> None:  # type: ignore[no-untyped-def]
    backlog = write_backlog(env, 1234, seed=7, big_tx_rows=300, workload="bulk")
    c = backlog.counts
    assert backlog.rows == 1234 == c["insert"] + c["update"] + c["delete"]
    assert c["big_tx_rows"] == 300 and c["transactions"] > 30
    assert c["update"] > 0 and c["delete"] > 0
    assert _binlog_rows(mariadb, backlog.start, backlog.end) == {k: c[k] for k in ("insert", "update", "delete")}


def test_backlog_mix_and_repeat_on_existing_tables(env: BenchEnv, mariadb) -> None:  # type: ignore[no-untyped-def]
    backlog = write_backlog(env, 500, seed=3, mix=parse_mix("insert=0,update=1"))
    assert backlog.counts["update"] == 500 and backlog.counts["insert"] == backlog.counts["delete"] == 0
    assert _binlog_rows(mariadb, backlog.start, backlog.end) == {"insert": 0, "update": 500, "delete": 0}


def test_oltp_backlog_has_the_promised_shape(env: BenchEnv, mariadb) -> None:  # type: ignore[no-untyped-def]
    backlog = write_backlog(env, 1500, seed=5)  # oltp is the default
    c = backlog.counts
    assert backlog.workload == "oltp" and c["big_tx_rows"] == 0
    assert c["insert"] + c["update"] + c["delete"] == 1500 == c["statements"]
    # Read back from the binlog: every ROWS event holds one row, 1..12 of them per transaction.
    file, pos = backlog.start.rsplit(":", 1)
    stream = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": mariadb.port, "user": "root", "password": ""},
        server_id=4243, blocking=False, resume_stream=True, log_file=file, log_pos=int(pos),
        only_events=[GtidEvent, MariadbGtidEvent, XidEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent])
    per_tx: list[int] = []
    ops = {WriteRowsEvent: 0, UpdateRowsEvent: 0, DeleteRowsEvent: 0}
    tables: set[str] = set()
    open_tx = None
    try:
        for ev in stream:
            if position_key((stream.log_file, stream.log_pos)) > position_key(backlog.end):
                break
            if isinstance(ev, (GtidEvent, MariadbGtidEvent)):
                open_tx = 0
            elif isinstance(ev, XidEvent):
                assert open_tx is not None
                per_tx.append(open_tx)
                open_tx = None
            else:
                assert len(ev.rows) == 1, "one row per statement"
                assert open_tx is not None
                open_tx += 1
                ops[type(ev)] += 1
                tables.add(f"{ev.schema}.{ev.table}")
    finally:
        stream.close()
    assert sum(per_tx) == 1500 and len(per_tx) == c["transactions"]
    assert min(per_tx) >= 1 and max(per_tx) <= len(OLTP_TX_WEIGHTS) == 12
    assert len(set(per_tx)) >= 6, "transaction sizes vary"
    assert 2.5 <= 1500 / len(per_tx) <= 6, "about 4 statements per transaction, like an application's"
    assert (ops[WriteRowsEvent], ops[UpdateRowsEvent], ops[DeleteRowsEvent]) == (c["insert"], c["update"],
                                                                                 c["delete"])
    assert ops[WriteRowsEvent] > ops[UpdateRowsEvent] > ops[DeleteRowsEvent] > 0  # the 50/40/10 mix
    assert tables == {"app.users", "app.products", "app.orders", "app.inventory"}
    # The event count the bench reports per binlog event: one TABLE_MAP per statement, GTID + XID per tx.
    events = count_binlog_events(env, backlog.start, backlog.end)
    assert events.by_type["Table_map"] == 1500
    assert events.by_type["Gtid"] == events.by_type["Xid"] == len(per_tx)
    assert events.total == sum(events.by_type.values()) >= 1500 * 2 + 2 * len(per_tx)
    assert events.between(position_key(backlog.start), position_key(backlog.end)) == events.total
    assert events.between(events.ends[9], events.ends[-1]) == events.total - 10


def test_unknown_workload_is_a_one_line_error(env: BenchEnv) -> None:
    with pytest.raises(BenchError, match="--workload"):
        write_backlog(env, 100, workload="batchy")


def test_big_transaction(env: BenchEnv, mariadb) -> None:  # type: ignore[no-untyped-def]
    big = write_big_transaction(env, 5000)
    assert big.counts["transactions"] == 1
    assert _binlog_rows(mariadb, big.start, big.end) == {"insert": 5000, "update": 0, "delete": 0}


def test_seed_config_variants(env: BenchEnv) -> None:
    cfg = seed_config(env, "binlog.000001:4")
    assert cfg.spec.source.config.start == "binlog.000001:4"
    assert len(cfg.spec.processors) == 1 and cfg.spec.sinks[0].config.stream == "cache:invalidations"
    assert cfg.spec.source.config.dsn == env.mysql_dsn
    bare = seed_config(env, "binlog.000001:4", processors=False, stream="other")
    assert bare.spec.processors == [] and bare.spec.sinks[0].config.stream == "other"


# --------------------------------------------------------------------------- the command


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltaforge", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=ROOT)


def test_bad_server_is_a_one_line_error() -> None:
    out = _bench("--mysql-dsn", "mysql://u:secret@127.0.0.1:1/app", "--redis-uri", "redis://127.0.0.1:1/0")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and "secret" not in out.stderr + out.stdout
    assert out.stderr.strip().startswith("error:") and len(out.stderr.strip().splitlines()) == 1


def test_update_baseline_from_json_records_the_workload(tmp_path: Path) -> None:
    runs = []
    for i, (ratio, workload) in enumerate(((2.0, "oltp"), (3.0, "oltp"), (9.0, "oltp"), (1.0, "bulk"))):
        p = tmp_path / f"run{i}.json"
        p.write_text(json.dumps({"settings": {"quick": True, "workload": workload},
                                 "ratios": {"drain_vs_naive_node": ratio}, "machine": {"cores": 2}}))
        runs.append(str(p))
    target = tmp_path / "baseline.json"
    out = _bench("--update-baseline", str(target), *[x for r in runs[:3] for x in ("--from-json", r)])
    assert out.returncode == 0, out.stderr
    doc = json.loads(target.read_text())
    assert doc["ratios"] == {"drain_vs_naive_node": 3.0}  # the median
    assert doc["measured_on"]["workload"] == "oltp" and doc["measured_on"]["mode"] == "--quick"
    assert "drain_noproc_vs_naive_node" in doc["optional"]
    mixed = _bench("--update-baseline", str(target), "--from-json", runs[0], "--from-json", runs[3])
    assert mixed.returncode != 0 and "mix workloads" in mixed.stderr
    assert len(mixed.stderr.strip().splitlines()) == 1


@pytest.mark.bench
def test_tiny_run_json_shape_and_failing_check(tmp_path: Path, mariadb, redis_server) -> None:  # type: ignore[no-untyped-def]
    mariadb.execute("CREATE DATABASE IF NOT EXISTS app")
    baseline = tmp_path / "baseline.json"
    # unreachable ratios: the check must fail with exit 1 and say so
    baseline.write_text(json.dumps({"tolerance": 0.25, "ratios": {"drain_vs_naive_py": 1000.0,
                                                                  "decode_vs_mysql_replication": 0.001}}))
    out_json = tmp_path / "out.json"
    out = _bench("--quick", "--rows", "2000", "--big-tx-rows", "2000", "--latency-seconds", "1", "--rounds", "1",
                 "--stages-rows", "1000", "--mysql-dsn", mariadb.dsn(db="app"),
                 "--mysql-admin-dsn", f"mysql://root@127.0.0.1:{mariadb.port}/app", "--redis-uri", redis_server.uri,
                 "--json", str(out_json), "--check", str(baseline))
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "REGRESSION" in out.stdout and "Traceback" not in out.stderr
    data = json.loads(out_json.read_text())
    assert set(data) >= {"machine", "settings", "backlog", "drain", "stages", "latency", "memory", "ratios", "check"}
    m = data["machine"]
    for key in ("cores", "cpu_model", "python", "mariadb", "redis", "v8", "mini_racer", "deltaforge",
                "resp_implementation"):
        assert m[key], key
    assert data["backlog"]["rows"] == 2000 and data["backlog"]["workload"] == "oltp"
    assert data["backlog"]["binlog_events"]["Table_map"] == 2000  # one statement per row change
    assert set(data["drain"]) >= {"ours_w0", "ours_noproc_w0", "naive_py", "naive_node"}  # Node in --quick too
    per_process = data["drain"]["ours_w0"]["cpu_per_process"]
    # (a 2,000-row drain can fit between two 10 ms CPU ticks once streaming: its share may read 0)
    assert per_process[0]["role"].startswith("deltaforge run") and per_process[0]["cpu_us_per_event"] >= 0
    assert data["drain"]["ours_w0"]["runs"][0]["cpu_s"] > 0
    assert data["stages"]["decode_binlog_events_per_s"] > 0
    assert data["stages"]["decode_binlog_events_per_s_mysql_replication"] > 0
    assert data["drain"]["ours_w0"]["runs"][0]["events"] == 2000
    assert data["drain"]["ours_w0"]["peak_rss_mib"] > 0
    assert set(data["ratios"]) >= {"drain_vs_naive_py", "drain_noproc_vs_naive_py", "decode_vs_mysql_replication",
                                   "drain_vs_naive_node", "drain_noproc_vs_naive_node"}
    assert data["memory"]["big_tx"]["events"] == 2000 and data["memory"]["big_tx"]["peak_rss_mib"] > 0
    for name, m in data["memory"]["drain"].items():  # shared memory counted once: never more than summed RSS
        assert 0 < m["unique_mib"] <= m["peak_rss_mib"], (name, m)
    assert data["check"]["passed"] is False
    assert {r["name"]: r["status"] for r in data["check"]["rows"]} == {
        "drain_vs_naive_py": "REGRESSION", "decode_vs_mysql_replication": "ok"}
    assert "naive_node" not in data["skipped"]
