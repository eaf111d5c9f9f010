"""Helpers for end-to-end tests: pipeline configs, engine subprocesses, reading the stream back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from deltaforge.testing import MariaDBServer, RedisServer

SEED = Path(__file__).resolve().parents[1] / "conf" / "pipeline.yaml"

#: the ``--workers`` values every end-to-end test runs with (DESIGN.md §2): 0 runs every stage in one
#: process; N >= 1 a supervisor, a reader, N V8 worker processes and a writer over shared-memory rings
#: (a pipeline without processors skips the workers: reader -> writer, whatever N).
TOPOLOGIES = ["0", "1", "3"]
#: for the slow scenarios (several seconds per run): in-process, and the widest process topology
#: (workers finish out of order), which also covers what "1" does; "1" stays on the cheap ones
TOPOLOGIES_SLOW = ["0", "3"]

#: a processor that tags every event ``seen``: with it, a pipeline's batches cross the V8 worker
#: processes of ``--workers N`` (without processors the reader feeds the writer directly)
TAG_PROCESSOR = """  processors:
    - type: javascript
      id: tag
      inline: |
        function processBatch(events) {
          for (const e of events) e.tags = ['seen'];
          return events;
        }
"""


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


class Engine:
    """A ``deltaforge run`` subprocess whose output is collected by a thread (so pipes never fill).

    ``extra`` must name the topology (``"--workers", N``): which one runs is the test's choice,
    never the CLI's default."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None,
                 global_args: tuple[str, ...] = ()) -> None:
        if "--workers" not in extra:
            raise TypeError("Engine: pass --workers explicitly (see tests.e2e.TOPOLOGIES)")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deltaforge", *global_args, "run", str(config), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 30.0) -> Engine:
        """Until the pipeline is positioned on the binlog (its "reading from" log line)."""
        wait_for(lambda: "reading from" in self.output or self.proc.poll() is not None, timeout, "engine start")
        return self

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float = 60.0) -> tuple[int, str]:
        self.proc.wait(timeout)
        self._reader.join(5)
        return self.proc.returncode, self.output

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode, self.output


def start_engine(config: Path, *extra: str, env: dict[str, str] | None = None, ready: bool = True) -> Engine:
    engine = Engine(config, *extra, env=env)
    return engine.wait_ready() if ready else engine


def start_supervisor(config: Path, workers: str) -> tuple[Any, threading.Thread]:
    """The pipeline of ``config`` run by a :class:`Supervisor` in a thread of this process (its stages
    in this process too with ``workers`` "0", else in child processes that load ``config``)."""
    from deltaforge.config import load_config
    from deltaforge.runtime.supervisor import Supervisor

    sup = Supervisor(load_config(config), workers=int(workers), config_path=str(config))
    thread = threading.Thread(target=sup.run, daemon=True)
    thread.start()
    return sup, thread


def stop_engine(engine: Engine, sig: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, str]:
    return engine.stop(sig, timeout)


def stream_events(client: Any, stream: str) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"df-event"]) for _, fields in client.xrange(stream)]


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
