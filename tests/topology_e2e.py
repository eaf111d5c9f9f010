"""What the least-privilege and TLS topology tests share: a pipeline whose processor names cache
keys, the engine run until a condition, and ``deltaforge worker`` processes invalidating them.

``forbidden``: text that must not appear in the engine's or a worker's output (``NOPERM`` for
the ACL tests, ``retrying`` for TLS); a traceback never may.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from deltaforge.testing import MariaDBServer
from deltaforge.testing_topologies import RedisCluster
from tests.e2e import Engine, binlog_end, stream_events, wait_for, write_config

GROUP = "cache-workers"


def keys_processor(prefix: str) -> str:
    """Each row's cache keys: one exact key and one pattern (the worker UNLINKs the first per slot
    and SCANs every master for the second)."""
    return f"""  processors:
    - type: javascript
      id: keys
      inline: |
        function processBatch(events) {{
          for (const e of events) {{
            const row = e.after || e.before;
            row._cache_keys = ['{prefix}:' + e.table + ':' + row.id, '{prefix}p:' + e.table + ':' + row.id + ':*'];
          }}
          return events;
        }}
"""


def cache_keys(prefix: str, table: str, rows: Iterable[int]) -> list[str]:
    """The keys the processor names for ``rows`` of ``table``, what its pattern matches included."""
    keys: list[str] = []
    for i in rows:
        keys += [f"{prefix}:{table}:{i}", f"{prefix}p:{table}:{i}:a", f"{prefix}p:{table}:{i}:b"]
    return keys


def topology_config(tmp_path: Path, mariadb: MariaDBServer, topology: Any, tables: list[str], *, name: str,
                    stream: str, uri: str | None = None, processors: str = "") -> Path:
    """The e2e pipeline into ``topology``, its sink URI replaced by ``uri`` when given."""
    cfg = write_config(tmp_path, mariadb, topology, tables, name=name, stream=stream, start=binlog_end(mariadb),
                       processors=processors)
    text = cfg.read_text()
    assert f"uri: {topology.uri}\n" in text
    cfg.write_text(text.replace(f"uri: {topology.uri}\n", f"uri: '{uri or topology.uri}'\n"))
    return cfg


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltaforge", *args], capture_output=True, text=True, timeout=120)


def insert_rows(mariadb: MariaDBServer, tables: list[str], rows: Iterable[int]) -> None:
    """One autocommitted row at a time, the tables interleaved."""
    mariadb.execute(*[f"INSERT INTO {t} VALUES ({i})" for i in rows for t in tables])


def stream_ids(client: Any, stream: str) -> list[int]:
    return [e["after"]["id"] for e in stream_events(client, stream)]


def _clean(out: str, forbidden: tuple[str, ...]) -> bool:
    return "Traceback" not in out and not any(text in out for text in forbidden)


def run_engine_until(cfg: Path, done: Any, what: str, forbidden: tuple[str, ...]) -> str:
    """``deltaforge run`` (its preflight included) until ``done()``; stopped with SIGTERM, it must exit 0."""
    engine = Engine(cfg, "--workers", "0").wait_ready(60)
    try:
        assert engine.poll() is None, engine.output
        try:
            wait_for(lambda: done() or engine.poll() is not None, 60, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; engine output (tail):\n{engine.output[-3000:]}") from None
    finally:
        code, out = engine.stop()
    assert code == 0 and _clean(out, forbidden), out
    return out


class WorkerProcess:
    """``deltaforge worker`` on one stream, its URI in REDIS_URI (as a deployment passes it)."""

    def __init__(self, tmp_path: Path, uri: str, stream: str, consumer: str) -> None:
        self.out = tmp_path / f"worker-{stream.replace(':', '_')}.log"
        self._file = self.out.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deltaforge", "worker", "--stream", stream, "--group", GROUP,
             "--consumer", consumer, "--block-ms", "100", "--claim-idle-ms", "0"],
            stdout=self._file, stderr=subprocess.STDOUT, text=True, env={**os.environ, "REDIS_URI": uri})

    @property
    def output(self) -> str:
        return self.out.read_text()

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._file.close()
        return self.proc.returncode, self.output


def invalidate(tmp_path: Path, client: Any, uri: str, streams: dict[str, str], keys: list[str], keep: list[str],
               *, consumer: str, forbidden: tuple[str, ...]) -> None:
    """One ``deltaforge worker`` per stream (stream -> its table) until every key in ``keys`` is gone and
    nothing is pending; each stops with exit 0, one line per event, and ``keep`` untouched."""
    workers = {stream: WorkerProcess(tmp_path, uri, stream, consumer) for stream in streams}

    def drained() -> bool:
        if any(w.proc.poll() is not None for w in workers.values()):
            return True  # a worker stopped on an error: the asserts below show it
        try:
            return (not any(client.exists(k) for k in keys)
                    and all(client.xpending(s, GROUP)["pending"] == 0 for s in streams))
        except redis.ResponseError:  # NOGROUP: not created yet
            return False

    try:
        wait_for(drained, 60, "every cache key invalidated, nothing pending")
    finally:
        results = {stream: w.stop() for stream, w in workers.items()}
    for stream, (code, out) in results.items():
        assert code == 0 and _clean(out, forbidden), out
        assert out.count(f"Invalidated 2 keys for {streams[stream]}\n") == client.xlen(stream), out
    assert [k for k in keys if client.exists(k)] == []
    assert [k for k in keep if client.exists(k)] == keep


def spread_tables(cluster: RedisCluster, db: str, n: int) -> list[str]:
    """``n`` table names whose streams ``cdc:<db>.<name>`` live on ``n`` different masters."""
    found: dict[int, str] = {}
    for name in (f"t{i}" for i in range(200)):
        found.setdefault(cluster.master_of_key(f"cdc:{db}.{name}").port, name)
        if len(found) == n:
            return [f"{db}.{t}" for t in found.values()]
    raise AssertionError(f"no {n} table names of {db} spread over {n} masters")
