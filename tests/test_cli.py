"""The command line as an operator meets it: exit codes, one-line errors, signals, JSON logs, no secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import SEED, Engine, binlog_end, stream_events, wait_for, write_config

pytestmark = pytest.mark.integration


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltaforge", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_config_error_is_one_line_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SEED.read_text().replace("max_events: 100", "max_event: 100"))
    res = _cli("run", str(bad), env={"MYSQL_DSN": "mysql://u:pw@127.0.0.1:1/app", "REDIS_URI": "redis://127.0.0.1:1"})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: spec.batch.max_event")
    assert "did you mean max_events" in lines[0]
    assert "Traceback" not in res.stderr


def test_unset_env_var_names_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MYSQL_DSN", "REDIS_URI")}
    res = subprocess.run([sys.executable, "-m", "deltaforge", "check", str(SEED)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 2
    assert "MYSQL_DSN" in res.stderr and "spec.source.config.dsn" in res.stderr


def test_preflight_failure_never_prints_the_password(mariadb: MariaDBServer, redis_server: RedisServer) -> None:
    env = {"MYSQL_DSN": f"mysql://deltaforge:hunter2-wrong@127.0.0.1:{mariadb.port}/app",
           "REDIS_URI": redis_server.uri}
    res = _cli("check", str(SEED), env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 3, out
    assert "FAIL" in out and "fix:" in out
    assert "hunter2-wrong" not in out
    res = _cli("run", str(SEED), env=env)
    assert res.returncode == 3 and "hunter2-wrong" not in res.stdout + res.stderr


def test_json_logs_and_clean_sigterm(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                     redis_client: Any, fresh_db: str) -> None:
    mariadb.execute(f"CREATE TABLE {fresh_db}.t (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.t"], start=binlog_end(mariadb))
    engine = Engine(cfg, global_args=("--log-format", "json")).wait_ready()
    try:
        mariadb.execute(f"INSERT INTO {fresh_db}.t VALUES (1)")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 1, what="one entry")
    finally:
        code, err = engine.stop(signal.SIGTERM)
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any("reading from" in r["msg"] for r in records)
    assert "deltaforge:deltaforge@" not in err  # the DSN's password never appears
    assert mariadb.dsn().split("@")[0].split(":")[-1] + "@" not in err


def test_second_signal_exits_at_once_without_committing(tmp_path: Path, mariadb: MariaDBServer,
                                                       redis_server: RedisServer, redis_client: Any,
                                                       fresh_db: str) -> None:
    mariadb.execute(f"CREATE TABLE {fresh_db}.t (id INT PRIMARY KEY)")
    slow = """  processors:
    - type: javascript
      id: slow
      inline: |
        function processBatch(events) {
          const until = Date.now() + 20000;
          while (Date.now() < until) {}
          return events;
        }
      limits:
        timeout_ms: 60000
"""
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.t"], start=binlog_end(mariadb),
                       processors=slow)
    engine = Engine(cfg).wait_ready()
    mariadb.execute(f"INSERT INTO {fresh_db}.t VALUES (1)")
    time.sleep(1.5)  # the batch is inside processBatch now
    engine.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert engine.poll() is None, "the first signal must wait for the batch in flight"
    # The batch in flight spins for 20 s; stop() SIGKILLs after 15 s (code -9), so 130 means the
    # second signal ended the process by itself, without waiting for the batch.
    code, out = engine.stop(signal.SIGTERM, timeout=15)
    assert code == 130, out
    assert "second signal" in out
    assert stream_events(redis_client, "cdc:e2e") == []


def test_metrics_and_health_endpoint(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                     redis_client: Any, fresh_db: str) -> None:
    import urllib.error
    import urllib.request

    from deltaforge.testing import free_port

    mariadb.execute(f"CREATE TABLE {fresh_db}.t (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.t"], start=binlog_end(mariadb))
    port = free_port()
    engine = Engine(cfg, "--metrics-port", str(port)).wait_ready()
    try:
        mariadb.execute(f"INSERT INTO {fresh_db}.t VALUES (1),(2)")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 2, what="2 entries")
        wait_for(lambda: b"deltaforge_events_committed_total" in urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=5).read(), what="metrics")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.status == 200 and health.read().startswith(b"ok: streaming")
    finally:
        code, out = engine.stop()
    assert code == 0, out
    assert 'deltaforge_events_committed_total{pipeline="e2e"} 2.0' in metrics
    assert 'deltaforge_up{pipeline="e2e"} 1.0' in metrics
