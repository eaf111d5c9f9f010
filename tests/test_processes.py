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
import subprocess
from pathlib import Path

import pytest

from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import binlog_end, start_engine, stop_engine, stream_events, wait_for, write_config
from tests.test_e2e import _SLOW_SOME, _make_items

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _children(pid: int) -> dict[str, int]:
    """The engine's child processes by kernel name (df-reader, df-worker 1, ..., df-writer)."""
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,comm="], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        child, _, name = line.strip().partition(" ")
        if name.startswith("df-"):
            found[name.strip()] = int(child)
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
