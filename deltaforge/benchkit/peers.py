"""The peers `deltaforge bench` compares against, run on the same binlog range as the engine.

* :func:`run_naive_py`: ``bench/naive.py``, the loop a Python user writes today
  (mysql-replication ``BinLogStreamReader`` -> ``json.dumps(default=str)`` -> redis-py
  pipeline XADD every 100 events).
* :func:`run_naive_node`: ``bench/naive_node.js``, the same loop in Node
  (@vlasky/zongji -> ``JSON.stringify`` -> ioredis pipeline XADD every 100 events);
  its npm dependencies are installed into ``bench/node/`` on first use.

Both run as subprocesses over ``[backlog.start, +backlog.rows row events)`` and write to
their own stream. Each returns ``{"events", "events_per_s", "cpu_s", ...}``:
``events_per_s`` is the stream's first-to-last-entry rate (:func:`stream_rate`, the figure
the engine's drain is reported with), ``own_events_per_s`` the script's printed figure
(first row event to last flush), ``cpu_s`` the child's user+system CPU time
(``RUSAGE_CHILDREN`` deltas; only reaped children count, so the child is always waited for).

Hazards:
- The scripts live in the source checkout (``bench/`` next to the package). An install
  without a checkout has no peers: the functions return ``None`` and log why.
- ``RUSAGE_CHILDREN`` is process-wide: another child reaped meanwhile (from another thread)
  would be counted too. The bench runs peers one at a time from its main thread.
- The stream is deleted before each run (stale entries would inflate the count); it is left
  in place afterwards for the caller to inspect, and ``flush_redis`` clears it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import deltaforge
from deltaforge.benchkit.env import BenchError, stream_rate

if TYPE_CHECKING:
    from deltaforge.benchkit.env import BenchEnv
    from deltaforge.benchkit.workload import Backlog

log = logging.getLogger("deltaforge.bench")

#: the seed's captured tables, in conf/pipeline.yaml's order
TABLES = ("app.users", "app.products", "app.orders", "app.inventory")
NODE_MISSING = "node not installed (apt-get install -y nodejs npm)"
#: a subprocess peer that has not finished by then is stuck (a 300k backlog takes ~15 s)
PEER_TIMEOUT_S = 900.0
#: why a peer was skipped in this process ("naive_py"/"naive_node" -> reason), for the report
skip_reasons: dict[str, str] = {}
_PASSWORD_IN_URL = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)


def bench_dir() -> Path | None:
    """``bench/`` of the source checkout this package was imported from, or None (installed without one)."""
    d = Path(deltaforge.__file__).resolve().parents[1] / "bench"
    return d if d.is_dir() else None


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_peer(name: str, cmd: list[str], env: BenchEnv, backlog: Backlog, stream: str,
              cwd: Path | None = None, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one peer to completion; returns its figures. Raises BenchError if it fails or falls short."""
    client = env.redis()
    try:
        client.delete(stream)
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=PEER_TIMEOUT_S, check=False,
                                 cwd=cwd, env={**os.environ, **(extra_env or {})})
        except subprocess.TimeoutExpired:
            raise BenchError(f"{name} did not drain {backlog.rows} rows within {PEER_TIMEOUT_S:.0f}s",
                             "check that the backlog range is readable by the replication user") from None
        wall = time.perf_counter() - t0
        cpu = _children_cpu() - cpu0
        if out.returncode != 0:
            last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "(no stderr)"
            tail = _PASSWORD_IN_URL.sub(r"\1***@", last)
            raise BenchError(f"{name} exited with {out.returncode}: {tail}",
                             f"run it by hand: {' '.join(cmd[:2])} ... to see the whole error")
        lines = out.stdout.strip().splitlines()
        try:
            own: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise BenchError(f"{name} printed no result line (stdout: {out.stdout[-200:]!r})",
                             "it must print one JSON line {\"events\", \"seconds\", \"events_per_s\"}") from None
        entries, rate = stream_rate(client, stream)
    finally:
        client.close()
    if entries != backlog.rows:
        raise BenchError(f"{name} left {entries} entries in {stream}, expected {backlog.rows}",
                         "the backlog range holds other changes, or the peer stopped early")
    return {
        "events": entries,
        "events_per_s": round(rate, 1),
        "own_events_per_s": float(own.get("events_per_s", 0.0)),
        "own_seconds": float(own.get("seconds", 0.0)),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_event": round(cpu / max(entries, 1) * 1e6, 1),
        "wall_s": round(wall, 3),
    }


def _skip(peer: str, reason: str) -> dict[str, Any] | None:
    """Record why ``peer`` did not run; returns None (the peer's result) for the caller to return."""
    skip_reasons[peer] = reason
    log.warning("%s peer skipped: %s", peer, reason)
    return None


def _common_args(env: BenchEnv, backlog: Backlog, stream: str) -> list[str]:
    return ["--mysql-dsn", env.mysql_dsn, "--redis-uri", env.redis_uri, "--start", backlog.start,
            "--tables", ",".join(getattr(backlog, "tables", None) or TABLES), "--count", str(backlog.rows), "--stream", stream]


def run_naive_py(env: BenchEnv, backlog: Backlog, stream: str = "naive:py") -> dict[str, Any] | None:
    """Drain the backlog with ``bench/naive.py``; None (logged) without a source checkout."""
    bench = bench_dir()
    script = bench / "naive.py" if bench else None
    if script is None or not script.is_file():
        return _skip("naive_py", "bench/naive.py not found (installed without a source checkout)")
    return _run_peer("bench/naive.py", [sys.executable, str(script), *_common_args(env, backlog, stream)],
                     env, backlog, stream)


def ensure_node_deps(bench: Path) -> str | None:
    """``npm install`` in ``bench/node`` once; returns the reason when Node cannot run, else None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return NODE_MISSING
    node_dir = bench / "node"
    if (node_dir / "node_modules" / "@vlasky" / "zongji").is_dir() and (node_dir / "node_modules" / "ioredis").is_dir():
        return None
    log.info("installing the Node peer's dependencies (npm install in %s)", node_dir)
    try:
        out = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock"], cwd=node_dir,
                             capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return f"npm install in {node_dir} took over 600s (check the network or the npm registry setting)"
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "(no output)"
        return f"npm install in {node_dir} failed: {last}"
    return None


def run_naive_node(env: BenchEnv, backlog: Backlog, stream: str = "naive:node") -> dict[str, Any] | None:
    """Drain the backlog with ``bench/naive_node.js``; None (logged) when Node or the checkout is missing."""
    bench = bench_dir()
    script = bench / "naive_node.js" if bench else None
    if bench is None or script is None or not script.is_file():
        return _skip("naive_node", "bench/naive_node.js not found (installed without a source checkout)")
    reason = ensure_node_deps(bench)
    if reason is not None:
        return _skip("naive_node", reason)
    node = shutil.which("node") or "node"
    return _run_peer("bench/naive_node.js", [node, str(script), *_common_args(env, backlog, stream)],
                     env, backlog, stream)
