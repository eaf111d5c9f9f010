"""Helpers for end-to-end tests: pipeline configs, engine subprocesses, reading the stream back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from deltaforge.testing import MariaDBServer, RedisServer

SEED = Path(__file__).resolve().parents[1] / "conf" / "pipeline.yaml"


def binlog_end(mariadb: MariaDBServer) -> str:
    file, pos = mariadb.execute("SHOW MASTER STATUS")[0][:2]
    return f"{file}:{pos}"


def write_config(tmp: Path, mariadb: MariaDBServer, redis_server: RedisServer, tables: list[str], *,
                 name: str = "e2e", stream: str = "cdc:e2e", start: str | None = None,
                 batch: str = "", processors: str = "", sinks_extra: str = "", delivery: str = "") -> Path:
    start_line = f"      start: {start}\n" if start else ""
    tables_yaml = "".join(f"        - {t}\n" for t in tables)
    text = f"""apiVersion: deltaforge/v1
kind: Pipeline
metadata:
  name: {name}
  tenant: acme
spec:
  source:
    type: mysql
    config:
      id: src
      dsn: {mariadb.dsn()}
{start_line}      tables:
{tables_yaml}{processors}  sinks:
    - type: redis
      config:
        id: stream
        uri: {redis_server.uri}
        stream: {stream}
{delivery}{sinks_extra}{batch}"""
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def start_engine(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "deltaforge", "run", str(config), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )


def stop_engine(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out


def stream_events(client: Any, stream: str) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"df-event"]) for _, fields in client.xrange(stream)]


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
