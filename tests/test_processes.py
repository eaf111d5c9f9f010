"""The multi-process topology's lifecycle (``deltaforge run --workers N``), against real servers.

- Killing any one child (reader, a worker, the writer) with SIGKILL mid-stream makes the
  supervisor restart the run from the checkpoint: every row lands exactly once, in order.
- Killing the supervisor with SIGKILL leaves no process and no shared-memory segment behind:
  the children notice their supervisor is gone and exit, and the rings are unlinked.
- The children name their stage (the kernel's process name).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import binlog_end, start_engine, stop_engine, stream_events, wait_for, write_config
from tests.test_e2e import _SLOW_SOME, _make_items

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _children(pid: int) -> dict[str, int]:
    """The engine's stage processes by kernel name (df-reader, df-worker 1, ..., df-writer); each
    also shows its stage in its command line (``deltaforge: worker 1``), as ps and top show it."""
    found = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids = [int(c) for c in f.read().split()]
        for child in kids:
            try:
                with open(f"/proc/{child}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{child}/cmdline", "rb") as fb:
                    title = fb.read().split(b"\0")[0].decode()
            except OSError:
                continue
            if name.startswith("df-"):
                assert title == "deltaforge: " + name.removeprefix("df-"), (name, title)
                found[name] = child
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purpose
        return f.read().split(") ", 1)[1][0] != "Z"


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


def _backlog(mariadb: MariaDBServer, db: str, rows: int) -> list[int]:
    _make_items(mariadb, db)
    statements, ids = [], list(range(1, rows + 1))
    for k in range(0, rows, 25):
        chunk = ids[k:k + 25]
        statements.append(f"INSERT INTO {db}.items VALUES " + ",".join(f"({i},'v{i}',{i})" for i in chunk))
    mariadb.execute(*statements)
    return ids


@pytest.mark.parametrize("victim", ["df-reader", "df-worker 2", "df-writer"])
def test_killing_any_child_loses_and_duplicates_nothing(tmp_path: Path, mariadb: MariaDBServer,
                                                        redis_server: RedisServer, redis_client, fresh_db: str,
                                                        victim: str) -> None:
    start = binlog_end(mariadb)
    expected = _backlog(mariadb, fresh_db, 6000)
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=start,
                       batch="  batch:\n    max_events: 50\n    max_ms: 5\n", processors=_SLOW_SOME)
    engine = start_engine(cfg, "--workers", "3")
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= 500, timeout=60, what="500 entries")
        kids = _children(engine.proc.pid)
        assert set(kids) == {"df-reader", "df-worker 1", "df-worker 2", "df-worker 3", "df-writer"}, kids
        os.kill(kids[victim], signal.SIGKILL)
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= len(expected), timeout=120, what="every row")
        assert engine.poll() is None, engine.output
    finally:
        code, out = stop_engine(engine, signal.SIGTERM)
    assert code == 0, out
    assert f"the {victim.removeprefix('df-')} process died (signal 9)" in out and "restarting from the checkpoint" in out
    ids = [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")]
    assert ids == expected


def test_a_killed_supervisor_leaves_no_process_and_no_segment(tmp_path: Path, mariadb: MariaDBServer,
                                                              redis_server: RedisServer, redis_client,
                                                              fresh_db: str) -> None:
    start = binlog_end(mariadb)
    expected = _backlog(mariadb, fresh_db, 3000)
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=start,
                       batch="  batch:\n    max_events: 50\n    max_ms: 5\n", processors=_SLOW_SOME)
    before = _segments()
    engine = start_engine(cfg, "--workers", "2")
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= 200, timeout=60, what="200 entries")
        kids = _children(engine.proc.pid)
        assert len(kids) == 4, kids
        ours = _segments() - before
        assert len(ours) == 4  # reader -> each of 2 workers, each worker -> writer
    finally:
        stop_engine(engine, signal.SIGKILL)
    wait_for(lambda: not any(_alive(p) for p in kids.values()), timeout=90, what="the children to exit")
    wait_for(lambda: not (_segments() & ours), timeout=30, what="the rings to be unlinked")
    # and what was committed is a prefix of the binlog, once: a restart completes it
    engine = start_engine(cfg, "--workers", "2")
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= len(expected), timeout=120, what="every row")
    finally:
        code, out = stop_engine(engine, signal.SIGTERM)
    assert code == 0, out
    assert [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")] == expected


def _value(metrics: str, line_start: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith(line_start))
    return float(line.rsplit(" ", 1)[1])


def test_metrics_health_ready_and_progress_across_processes(tmp_path: Path, mariadb: MariaDBServer,
                                                            redis_server: RedisServer, redis_client,
                                                            fresh_db: str) -> None:
    """The supervisor serves every process's figures: counters, the four histograms (the V8 call
    observed in the workers, the commit in the writer), ring fill and per-process memory; /health
    and /ready answer; the progress line names each stage's CPU share."""
    import re
    import urllib.error
    import urllib.request

    from deltaforge.testing import free_port

    start = binlog_end(mariadb)
    expected = _backlog(mariadb, fresh_db, 2000)
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=start,
                       batch="  batch:\n    max_events: 50\n    max_ms: 5\n", processors=_SLOW_SOME)
    port = free_port()

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    engine = start_engine(cfg, "--workers", "2", "--metrics-port", str(port), "--progress-every", "0.5")
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= len(expected), timeout=120, what="every row")
        wait_for(lambda: f'deltaforge_batch_events_sum{{pipeline="e2e"}} {len(expected)}.0' in get("/metrics")[1],
                 timeout=10, what="the writer's figures")
        def counts_agree() -> bool:
            text = get("/metrics")[1]
            return _value(text, 'deltaforge_v8_call_seconds_count{pipeline="e2e"}') == _value(
                text, 'deltaforge_commit_seconds_count{pipeline="e2e"}')

        wait_for(counts_agree, timeout=10, what="the workers' figures")
        wait_for(lambda: "cpu: " in engine.output, timeout=10, what="a progress line with CPU shares")
        status, metrics = get("/metrics")
        assert status == 200
        assert get("/health")[0] == 200
        ready = get("/ready")
        assert ready[0] == 200 and ready[1].startswith("ok: streaming"), ready
    finally:
        code, out = stop_engine(engine, signal.SIGTERM)
    assert code == 0, out

    def value(line_start: str) -> float:
        return _value(metrics, line_start)

    batches = value('deltaforge_batches_committed_total{pipeline="e2e"}')
    assert batches >= 2000 / 50
    assert value('deltaforge_commit_seconds_count{pipeline="e2e"}') == batches
    assert value('deltaforge_batch_events_sum{pipeline="e2e"}') == len(expected)
    assert value('deltaforge_v8_call_seconds_count{pipeline="e2e"}') == batches  # every batch, both workers
    assert value('deltaforge_v8_call_seconds_sum{pipeline="e2e"}') > 0
    for ring in ("reader->worker 1", "reader->worker 2", "worker 1->writer", "worker 2->writer"):
        assert 0.0 <= value(f'deltaforge_ring_fill_ratio{{pipeline="e2e",ring="{ring}"}}') <= 1.0
    for proc in ("supervisor", "reader", "worker 1", "worker 2", "writer"):
        assert value(f'deltaforge_process_resident_memory_bytes{{pipeline="e2e",process="{proc}"}}') > 10 << 20
    lines = [x for x in out.splitlines() if "committed" in x and "cpu: " in x]
    assert lines, out
    assert re.search(r"cpu: supervisor \d+%, reader \d+%, worker 1 \d+%, worker 2 \d+%, writer \d+%", lines[-1]), lines
