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
from tests.e2e import (
    SEED,
    TAG_PROCESSOR,
    TOPOLOGIES,
    Engine,
    binlog_end,
    stream_events,
    wait_for,
    write_config,
)
from tests.test_processes import _alive, _children

pytestmark = pytest.mark.integration


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltaforge", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_config_error_is_one_line_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SEED.read_text().replace("max_events: 100", "max_event: 100"))
    # the config fails to load before any topology starts
    res = _cli("run", str(bad), "--workers", "0",
               env={"MYSQL_DSN": "mysql://u:pw@127.0.0.1:1/app", "REDIS_URI": "redis://127.0.0.1:1"})
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
    for workers in TOPOLOGIES:  # the preflight of `run` differs by topology (the JS check runs apart with N >= 1)
        res = _cli("run", str(SEED), "--workers", workers, env=env)
        assert res.returncode == 3 and "hunter2-wrong" not in res.stdout + res.stderr, workers


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_json_logs_and_clean_sigterm(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                     redis_client: Any, fresh_db: str, workers: str) -> None:
    mariadb.execute(f"CREATE TABLE {fresh_db}.t (id INT PRIMARY KEY)")
    # an optional sink whose user may not XADD: the sink stage (the writer process with --workers N) logs a warning
    redis_client.execute_command("ACL", "SETUSER", "jsonopt", "on", ">Opt-Secret-93", "~*", "+@all", "-xadd")
    opt = f"""    - type: redis
      config:
        id: opt
        uri: redis://jsonopt:Opt-Secret-93@127.0.0.1:{redis_server.port}/0
        stream: cdc:opt
        required: false
"""
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.t"], start=binlog_end(mariadb),
                       processors=TAG_PROCESSOR, sinks_extra=opt)
    engine = Engine(cfg, "--workers", workers, global_args=("--log-format", "json")).wait_ready()
    try:
        mariadb.execute(f"INSERT INTO {fresh_db}.t VALUES (1)")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 1, what="one entry")
        wait_for(lambda: "sink opt failed" in engine.output, what="the optional sink's warning")
    finally:
        code, err = engine.stop(signal.SIGTERM)
        redis_client.execute_command("ACL", "DELUSER", "jsonopt")
    assert code == 0, err
    # every log line is one JSON object, whichever process wrote it (the preflight's report is not a log)
    logs = [line for line in err.splitlines() if not line.startswith(("ok   ", "warn ", "FAIL "))]
    assert all(line.startswith("{") for line in logs), err
    records = [json.loads(line) for line in logs]
    assert records and all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any("reading from" in r["msg"] for r in records)
    assert [r["level"] for r in records if "sink opt failed" in r["msg"]] == ["warning"]
    assert "Opt-Secret-93" not in err
    assert "deltaforge:deltaforge@" not in err  # the DSN's password never appears
    assert mariadb.dsn().split("@")[0].split(":")[-1] + "@" not in err


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_second_signal_exits_at_once_without_committing(tmp_path: Path, mariadb: MariaDBServer,
                                                       redis_server: RedisServer, redis_client: Any,
                                                       fresh_db: str, workers: str) -> None:
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
    engine = Engine(cfg, "--workers", workers).wait_ready()
    stages = int(workers) + 2 if workers != "0" else 0  # reader, workers, writer
    wait_for(lambda: len(_children(engine.proc.pid)) == stages, what="the stage processes")
    kids = _children(engine.proc.pid)
    mariadb.execute(f"INSERT INTO {fresh_db}.t VALUES (1)")
    time.sleep(1.5)  # the batch is inside processBatch now
    try:
        engine.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert engine.poll() is None, "the first signal must wait for the batch in flight"
        # The batch in flight spins for 20 s; stop() SIGKILLs after 15 s (code -9), so 130 means the
        # second signal ended the process by itself, without waiting for the batch.
        code, out = engine.stop(signal.SIGTERM, timeout=15)
        assert code == 130, out
        assert "second signal" in out
        # at once means the whole engine: no stage process may carry on and commit the batch later
        wait_for(lambda: not any(_alive(p) for p in kids.values()), 5, "the stage processes to exit")
        assert stream_events(redis_client, "cdc:e2e") == []
    finally:
        for pid in kids.values():  # (only if the assertions above failed)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_metrics_and_health_endpoint(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                     redis_client: Any, fresh_db: str, workers: str) -> None:
    import urllib.error
    import urllib.request

    from deltaforge.testing import free_port

    mariadb.execute(f"CREATE TABLE {fresh_db}.t (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.t"], start=binlog_end(mariadb))
    port = free_port()
    engine = Engine(cfg, "--workers", workers, "--metrics-port", str(port)).wait_ready()
    try:
        mariadb.execute(f"INSERT INTO {fresh_db}.t VALUES (1),(2)")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 2, what="2 entries")
        # the counters follow the commits (relayed by the supervisor from the writer process with --workers N)
        wait_for(lambda: b'deltaforge_events_committed_total{pipeline="e2e"} 2.0' in urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=5).read(), what="the commits counted in /metrics")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.status == 200 and health.read().startswith(b"ok: streaming")
    finally:
        code, out = engine.stop()
    assert code == 0, out
    assert 'deltaforge_events_committed_total{pipeline="e2e"} 2.0' in metrics
    assert 'deltaforge_up{pipeline="e2e"} 1.0' in metrics
