"""Drain runs: the engine, run the way users run it, catching up on a pre-written backlog.

:func:`run_engine` writes the seed's YAML (``start:`` set to the backlog's first position,
optionally without the processor) to a temp file, starts
``python -m deltaforge run <yaml> --workers N`` with ``MYSQL_DSN``/``REDIS_URI`` set, polls
``XLEN`` until the stream holds the backlog's row count, then SIGTERMs the engine (it stops
at a transaction boundary and exits 0). While it polls it samples the peak RSS of the
engine's process tree (:class:`~deltaforge.benchkit.memory.PeakRss`). Its CPU time is read
per process at the first stream entry and when the stream is complete: ``cpu_us_per_event``
(total) and ``cpu_per_process`` (root first) are CPU per event once streaming, start-up
excluded like the rate's; ``cpu_s`` is the whole run's CPU, start-up included.

The rate is :func:`~deltaforge.benchkit.env.stream_rate`: entries / (last entry's ms - first
entry's ms), i.e. committed events per second once the engine is streaming. Start-up
(interpreter, preflight, V8, connections) is outside it; ``wall_s`` includes it.

:func:`drain_phase` interleaves every runner (each engine topology with and without the
processor, then the peers) and repeats them ``rounds`` times, rotating the order every
round and ``FLUSHALL``-ing before each run, and reports medians: on a shared 2-core
machine absolute rates move 10-50% between minutes, ratios within one round far less.

Hazards: the poll interval (50 ms) bounds ``wall_s``'s resolution, not the rate's. An
engine that exits early, or stalls for :data:`STALL_S`, fails the run with the last line
of its stderr.
"""

from __future__ import annotations

import functools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deltaforge.benchkit.env import BenchEnv, BenchError, stream_rate
from deltaforge.benchkit.memory import PeakRss, process_cpu
from deltaforge.benchkit.workload import Backlog, engine_environ, seed_yaml

#: an engine whose stream has not grown for this long is stuck
STALL_S = 120.0
POLL_S = 0.05
ENGINE_STREAM = "cache:invalidations"
#: the cluster runner's template without a hash tag: one stream per table, spread over the slots
SPREAD_STREAM = "cdc:${table}"


def topologies() -> list[str]:
    """``--workers`` values the engine supports: its own ``TOPOLOGIES`` constant when it has one
    (so new topologies join the bench by themselves), else the in-process one only."""
    try:
        from deltaforge.runtime import commands
    except ImportError:
        return ["0"]
    return [str(t) for t in getattr(commands, "TOPOLOGIES", ("0",))]


def default_topology() -> str:
    """The ``--workers`` value ``deltaforge run`` uses when given none (the latency and memory
    phases measure what an operator gets by default)."""
    try:
        from deltaforge.runtime import commands
    except ImportError:
        return "0"
    return str(getattr(commands, "DEFAULT_WORKERS", "0"))


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1][:500]


def run_engine(env: BenchEnv, backlog: Backlog, *, processors: bool = True, workers: str = "0",
               stream: str = ENGINE_STREAM, progress: Callable[[int], None] | None = None,
               skip_preflight: bool = False, pyspy_out: str | None = None) -> dict[str, Any]:
    """Drain ``backlog`` with a ``deltaforge run`` subprocess; returns this run's figures.

    ``stream`` may be a template over ``${table}`` (one stream per backlog table, counted
    together). ``pyspy_out``: also sample the engine with py-spy (raw collapsed stacks to that
    file) and add ``pyspy`` (sample shares per stage, :func:`pyspy_shares`) to the result.
    """
    client = env.redis()
    streams = [stream.replace("${table}", t) for t in backlog.tables] if "${" in stream else [stream]
    tmp = Path(tempfile.mkdtemp(prefix="deltaforge-bench-"))
    yaml_path = tmp / "pipeline.yaml"
    yaml_stream = "'" + stream.replace("${", "$${") + "'" if "${" in stream else stream  # $$: no env lookup
    yaml_path.write_text(seed_yaml(backlog.start, processors, yaml_stream), encoding="utf-8")
    log_path = tmp / "engine.log"
    cmd = [sys.executable, "-m", "deltaforge", "run", str(yaml_path), "--workers", workers]
    if skip_preflight:
        cmd.append("--skip-preflight")
    proc: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        for s in streams:  # one by one: on a cluster they may be in different slots
            client.delete(s)
        with log_path.open("wb") as log:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=engine_environ(env),
                                    start_new_session=True)
        rss = PeakRss(proc.pid)
        if pyspy_out:
            spy = _start_pyspy(proc.pid, pyspy_out)
        n = last_n = 0
        last_change = time.monotonic()
        cpu = 0.0
        per_process: list[dict[str, Any]] = []
        first: tuple[int, dict[int, float]] | None = None  # (entries, CPU s per pid) once streaming
        while True:
            rss.sample()
            n = sum(int(client.xlen(s)) for s in streams)
            if first is None and n > 0:
                first = (n, {p["pid"]: p["cpu_s"] for p in process_cpu(proc.pid)})
            if progress is not None and n != last_n:
                progress(n)
            if n >= backlog.rows:
                per_process = process_cpu(proc.pid)
                cpu = sum(p["cpu_s"] for p in per_process)
                rss.sample()
                break
            now = time.monotonic()
            if n != last_n:
                last_n, last_change = n, now
            if proc.poll() is not None:
                raise BenchError(f"the engine exited with {proc.returncode} after {n} of {backlog.rows} events: "
                                 f"{_last_line(log_path)}",
                                 f"run `deltaforge run` on the seed pipeline by hand; its log is {log_path}")
            if now - last_change > STALL_S:
                raise BenchError(f"the engine streamed nothing for {STALL_S:.0f}s ({n} of {backlog.rows} events): "
                                 f"{_last_line(log_path)}", f"see the engine's log {log_path}")
            time.sleep(POLL_S)
        wall = time.perf_counter() - t0
        if spy is not None:
            _stop_pyspy(spy)
        _terminate(proc)
        if proc.returncode not in (0, -signal.SIGTERM):
            raise BenchError(f"the engine exited with {proc.returncode} on SIGTERM: {_last_line(log_path)}",
                             f"see the engine's log {log_path}")
        entries, rate = stream_rate(client, streams)
        if entries != backlog.rows:
            raise BenchError(f"the engine's stream holds {entries} entries for {backlog.rows} row changes",
                             "exactly-once is broken: report this with the engine's log " + str(log_path))
        mem = rss.result()
        result = {
            "workers": workers, "processor": processors, "events": entries,
            "events_per_s": round(rate, 1), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "cpu_us_per_event": round(cpu / entries * 1e6, 1) if entries else 0.0, **mem,
        }
        if first is not None and entries > first[0]:
            # CPU per event once streaming (start-up is outside it, like the rate's), per process
            streamed = entries - first[0]
            result["cpu_per_process"] = [
                {**p, "cpu_us_per_event": round((p["cpu_s"] - first[1].get(p["pid"], 0.0)) / streamed * 1e6, 1)}
                for p in per_process]
            result["cpu_us_per_event"] = round(sum(p["cpu_s"] - first[1].get(p["pid"], 0.0)
                                                   for p in per_process) / streamed * 1e6, 1)
        elif entries:
            # drained before the first sample saw it streaming (a tiny backlog): start-up included
            result["cpu_per_process"] = [{**p, "cpu_us_per_event": round(p["cpu_s"] / entries * 1e6, 1)}
                                         for p in per_process]
            result["cpu_includes_startup"] = True
        if pyspy_out:
            result["pyspy"] = pyspy_shares(pyspy_out)
    finally:
        if spy is not None and spy.poll() is None:
            _stop_pyspy(spy)
        if proc is not None and proc.poll() is None:
            _terminate(proc)
        client.close()
    for p in (yaml_path, log_path):
        p.unlink(missing_ok=True)
    os.rmdir(tmp)
    return result


def _terminate(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- the phase


Runner = tuple[str, Callable[[], dict[str, Any] | None]]


def engine_runners(env: BenchEnv, backlog: Backlog, noproc: bool = True,
                   progress: Callable[[int], None] | None = None) -> list[Runner]:
    """``ours_w<N>`` (and ``ours_noproc_w<N>``) for every topology."""
    out: list[Runner] = []
    for t in topologies():
        out.append((f"ours_w{t}", functools.partial(run_engine, env, backlog, workers=t, progress=progress)))
        if noproc:
            out.append((f"ours_noproc_w{t}", functools.partial(run_engine, env, backlog, processors=False,
                                                               workers=t, progress=progress)))
    return out


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else 0.0


def drain_phase(env: BenchEnv, runners: list[Runner], rounds: int,
                on_run: Callable[[str, int, dict[str, Any] | None], None] | None = None,
                on_start: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Run every runner ``rounds`` times, interleaved; returns ``{name: summary}``.

    A runner returning None (a peer that cannot run here) is recorded as skipped once.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in runners}
    skipped: set[str] = set()
    for r in range(rounds):
        k = r % len(runners)
        for name, fn in runners[k:] + runners[:k]:
            if name in skipped:
                continue
            env.flush_redis()
            if on_start is not None:
                on_start(name, r)
            load = os.getloadavg()[0]
            res = fn()
            if res is None:
                skipped.add(name)
            else:
                res = {**res, "round": r, "load1": round(load, 2)}
                runs[name].append(res)
            if on_run is not None:
                on_run(name, r, res)
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        if not rs:
            summary[name] = None
            continue
        rates = [x["events_per_s"] for x in rs]
        s: dict[str, Any] = {
            "events_per_s": median(rates), "min": min(rates), "max": max(rates),
            "runs": rs,
        }
        cpu = [x["cpu_us_per_event"] for x in rs if x.get("cpu_us_per_event")]
        if not cpu:
            cpu = [x["cpu_s"] / x["events"] * 1e6 for x in rs if x.get("cpu_s") and x.get("events")]
        if cpu:
            s["cpu_us_per_event"] = median(cpu)
        per = [x["cpu_per_process"] for x in rs if x.get("cpu_per_process")]
        if per:
            # one entry per process slot (root first), median over the runs that had that many processes
            s["cpu_per_process"] = [
                {"role": per[0][i]["role"],
                 "cpu_us_per_event": median([p[i]["cpu_us_per_event"] for p in per if len(p) > i])}
                for i in range(len(per[0]))]
        if "peak_rss_mib" in rs[0]:
            s["peak_rss_mib"] = max(x["peak_rss_mib"] for x in rs)
            s["unique_mib"] = max(x.get("unique_mib", x["peak_rss_mib"]) for x in rs)
            s["processes"] = max(len(x.get("processes", [])) for x in rs)
        summary[name] = s
    return summary


# --------------------------------------------------------------------------- profiling (py-spy)

#: stage of a py-spy sample: the first rule with a marker in the sample's stack wins
#: (most specific first: the sink and the reader both sit in socket reads)
PYSPY_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("setup (connections, preflight, V8 start)", ("preflight.py", "open_source", "SinkSet.open", "connect (")),
    ("sink: encode + XADD + Redis round trip", ("deltaforge/sink/",)),
    ("processor: V8 call + JSON in/out", ("deltaforge/process/",)),
    ("read: row decoding", ("rowdecode",)),
    ("read: event ids", ("derive_event_id",)),
    ("read: connection, first table maps (mysql-replication, pymysql)", ("pymysqlreplication", "pymysql/")),
    ("read: socket and framing (_core/framing)", ("BinlogSource._fetch", "framing")),
    ("read: batching, events (deltaforge/source)", ("deltaforge/source/",)),
    ("supervisor, queues, stats", ("deltaforge/runtime/",)),
]


def _start_pyspy(pid: int, out: str) -> subprocess.Popen[bytes]:
    import shutil

    exe = shutil.which("py-spy")
    if exe is None:
        raise BenchError("py-spy is not installed", "pip install py-spy (profiling needs it)")
    spy = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "250", "--threads", "--format", "raw",
                            "--nonblocking", "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attach before the drain is under way; the first batches are set-up anyway
    return spy


def _stop_pyspy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def pyspy_shares(path: str) -> dict[str, Any]:
    """Share (%) of py-spy samples per pipeline stage, from raw collapsed stacks."""
    counts: dict[str, int] = {}
    total = 0
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return {"samples": 0, "share_pct": {}}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        total += k
        label = next((lab for lab, marks in PYSPY_RULES if any(m in stack for m in marks)), "other")
        counts[label] = counts.get(label, 0) + k
    shares = {k: round(100.0 * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}
    return {"samples": total, "share_pct": shares}
