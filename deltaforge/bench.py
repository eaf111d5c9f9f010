"""``deltaforge bench``: the engine's numbers, next to the peers', on one binlog, in one run.

Phases (each with a progress bar, then one results table):

1. **workload**: a backlog of ``--rows`` row changes on the seed's four tables
   (:func:`~deltaforge.benchkit.workload.write_backlog`, ``--workload oltp`` by default or
   ``bulk``), written before anything drains it; its binlog events are counted.
2. **drain**: ``deltaforge run`` subprocesses on the seed pipeline (with and without its JS
   processor, every topology in the engine's ``TOPOLOGIES``) and the peers ``bench/naive.py``
   and ``bench/naive_node.js``, interleaved, ``--rounds`` times; medians.
3. **stages**: decode / JS / encode+XADD each alone on the same rows.
4. **latency**: commit -> stream entry -> cache key deleted at ``--latency-rate`` rows/s.
5. **memory**: peak RSS of the engine's processes during the drains and while draining one
   ``--big-tx-rows`` transaction.
6. **consistency**: writers, readers filling the cache through three protocols (plain, double
   delete, LeaseCache) with the fill race provoked, and one ``deltaforge worker`` per protocol; the
   stale keys each leaves and its staleness window; then the worker's keys/s against the seed's
   Node worker (:mod:`deltaforge.benchkit.consistency`).

Ratios are ours / peer *within one round* (adjacent runs on the same binlog), medians over
rounds: machine noise cancels in them, so they are what ``--check`` compares with
``bench/baseline.json``: a ratio below ``baseline * (1 - tolerance)`` is a REGRESSION and
the command exits 1. ``--update-baseline`` writes the current ratios (or the medians of
``--from-json`` files) as the new baseline.

Hazards: on servers passed with ``--mysql-dsn``/``--redis-uri`` the bench writes to
database ``app`` and FLUSHALLs Redis. Servers it started are always removed (``finally``,
Ctrl-C included); engine subprocesses are SIGTERMed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from deltaforge.benchkit.env import BenchEnv, BenchError
from deltaforge.cli_errors import friendly_errors

PHASES = ("drain", "stages", "latency", "memory", "consistency")
DEFAULT_TOLERANCE = 0.25
#: ratios the check needs unless their peer was skipped for a stated reason
OPTIONAL_RATIOS = ("drain_vs_naive_node", "drain_noproc_vs_naive_node")
HOW_TO_UPDATE = (
    "after a deliberate change: run `deltaforge bench --quick --json run<N>.json` 3 to 5 times on the "
    "reference machine, then `deltaforge bench --update-baseline bench/baseline.json --from-json run1.json "
    "--from-json run2.json ...` (medians of the runs) and commit the file with the reason in the message"
)


@dataclass
class Settings:
    """What one invocation measures (after ``--quick`` scaled it down)."""

    rows: int = 300_000
    rounds: int = 3
    workload: str = "oltp"
    mix: dict[str, int] = field(default_factory=lambda: {"insert": 50, "update": 40, "delete": 10})
    seed: int = 1
    stages_rows: int | None = 100_000
    latency_rate: int = 2000
    latency_seconds: float = 10.0
    big_tx_rows: int = 1_000_000
    consistency_seconds: float = 20.0
    worker_events: int = 20_000
    node: bool = True
    noproc: bool = True
    phases: tuple[str, ...] = PHASES
    quick: bool = False
    scaled_down: list[str] = field(default_factory=list)


def resolve_settings(*, quick: bool, rows: int | None, rounds: int | None, mix: str | None,
                     latency_rate: int | None, latency_seconds: float | None, big_tx_rows: int | None,
                     stages_rows: int | None, phases: str | None, node: bool | None, seed: int = 1,
                     workload: str | None = None, consistency_seconds: float | None = None) -> Settings:
    """Defaults, then ``--quick``'s scaled-down values, then whatever was passed explicitly."""
    from deltaforge.benchkit.workload import WORKLOADS, parse_mix

    s = Settings(seed=seed, quick=quick)
    if workload is not None:
        if workload not in WORKLOADS:
            raise BenchError(f"--workload {workload!r} is unknown", f"choose one of {', '.join(WORKLOADS)}")
        s.workload = workload
    if quick:
        # The Node peer stays: drain_vs_naive_node is the ratio that matters.
        # OLTP rows cost the readers ~2x bulk rows: 30,000 keeps the whole run near 3 minutes on 2 cores.
        quick_values: dict[str, Any] = {"rows": 30_000, "rounds": 5, "stages_rows": 10_000,
                                        "latency_seconds": 5.0, "big_tx_rows": 100_000,
                                        "consistency_seconds": 8.0}
        for name, value in quick_values.items():
            default = getattr(s, name)
            setattr(s, name, value)
            if value != default:
                s.scaled_down.append(f"{name}: {_fmt_setting(default)} -> {_fmt_setting(value)}")
    for name, value in (("rows", rows), ("rounds", rounds), ("latency_rate", latency_rate),
                        ("latency_seconds", latency_seconds), ("big_tx_rows", big_tx_rows),
                        ("stages_rows", stages_rows), ("node", node),
                        ("consistency_seconds", consistency_seconds)):
        if value is not None:
            setattr(s, name, value)
            s.scaled_down = [x for x in s.scaled_down if not x.startswith(f"{name}:")]
    if mix:
        s.mix = parse_mix(mix)
    if phases:
        wanted = tuple(p.strip() for p in phases.split(",") if p.strip())
        bad = [p for p in wanted if p not in PHASES]
        if bad:
            raise BenchError(f"--phases: unknown phase {bad[0]!r}", f"choose from {', '.join(PHASES)}")
        s.phases = wanted
    if s.rows < 100:
        raise BenchError(f"--rows {s.rows} is too small to time", "pass --rows 1000 or more")
    if s.rounds < 1:
        raise BenchError(f"--rounds {s.rounds}: at least one round is needed", "pass --rounds 1 or more")
    if s.big_tx_rows < 1:
        raise BenchError(f"--big-tx-rows {s.big_tx_rows}: at least one row is needed", "pass --big-tx-rows 1000")
    if s.latency_rate < 1 or s.latency_seconds <= 0:
        raise BenchError("--latency-rate and --latency-seconds must be positive", "e.g. --latency-rate 2000")
    return s


def _fmt_setting(value: Any) -> str:
    if value is None:
        return "all"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# --------------------------------------------------------------------------- ratios and the check


def _paired_ratio(drain: dict[str, Any], ours: str, peer: str) -> float | None:
    """Median over rounds of ours / peer in the same round (adjacent runs: noise cancels)."""
    a, b = drain.get(ours), drain.get(peer)
    if not a or not b:
        return None
    by_round = {x["round"]: x["events_per_s"] for x in b["runs"] if x.get("events_per_s")}
    pairs = [x["events_per_s"] / by_round[x["round"]] for x in a["runs"] if x["round"] in by_round]
    if not pairs:
        return None
    return round(statistics.median(pairs), 3)


def compute_ratios(drain: dict[str, Any] | None, stages: dict[str, Any] | None,
                   topologies: list[str]) -> dict[str, float]:
    """The ratios the baseline holds; the first topology gets the plain names."""
    out: dict[str, float] = {}
    if drain and topologies:
        r = _paired_ratio(drain, "ours_cluster", f"ours_w{topologies[0]}")
        if r is not None:
            out["drain_cluster_vs_single"] = r  # the same pipeline into a 3-master cluster / one node
        r = _paired_ratio(drain, "ours_cluster_spread", f"ours_w{topologies[0]}")
        if r is not None:
            out["drain_cluster_spread_vs_single"] = r  # one stream per table over the masters / one node
    if drain:
        for i, t in enumerate(topologies):
            suffix = "" if i == 0 else f"_w{t}"
            for ours, label in ((f"ours_w{t}", "drain"), (f"ours_noproc_w{t}", "drain_noproc")):
                for peer in ("naive_py", "naive_node"):
                    r = _paired_ratio(drain, ours, peer)
                    if r is not None:
                        out[f"{label}{suffix}_vs_{peer}"] = r
    if stages:
        # per-pass ratios (the two decoders ran back to back), median over the passes
        pairs = [r["decode_rows_per_s"] / r["decode_rows_per_s_mysql_replication"]
                 for r in stages.get("runs") or [stages]
                 if r.get("decode_rows_per_s") and r.get("decode_rows_per_s_mysql_replication")]
        if pairs:
            out["decode_vs_mysql_replication"] = round(statistics.median(pairs), 3)
    return out


@dataclass
class CheckRow:
    name: str
    value: float | None
    baseline: float
    floor: float
    status: str
    """``ok`` | ``REGRESSION`` | ``MISSING`` | ``skipped`` (optional ratio, peer absent)"""


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a baseline file; one-line BenchError on any problem."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"baseline file {p} does not exist",
                         "pass bench/baseline.json, or create one with --update-baseline") from None
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read baseline file {p}: {e}", "restore it from git or rewrite it with "
                         "--update-baseline") from None
    ratios = data.get("ratios") if isinstance(data, dict) else None
    if not isinstance(ratios, dict) or not ratios or not all(
            isinstance(v, (int, float)) and v > 0 for v in ratios.values()):
        raise BenchError(f"{p}: 'ratios' must map names to positive numbers",
                         'write {"tolerance": 0.25, "ratios": {"drain_vs_naive_py": 1.2}}')
    tol = data.get("tolerance", DEFAULT_TOLERANCE)
    if not isinstance(tol, (int, float)) or not 0 <= tol < 1:
        raise BenchError(f"{p}: 'tolerance' {tol!r} must be a number in [0, 1)", "e.g. 0.25 for 25% below")
    return data


def check_ratios(current: dict[str, float], baseline: dict[str, Any],
                 skipped: dict[str, str] | None = None) -> tuple[bool, list[CheckRow]]:
    """Compare ``current`` with ``baseline``; returns (passed, rows).

    A ratio below ``baseline * (1 - tolerance)`` fails. A ratio the baseline has but this
    run lacks fails (MISSING), unless it is optional (:data:`OPTIONAL_RATIOS` or the file's
    ``optional`` list) and this run skipped its peer (``skipped``: peer -> reason).
    Per-ratio tolerances may be given in ``tolerances``.
    """
    tol_default = float(baseline.get("tolerance", DEFAULT_TOLERANCE))
    tols = baseline.get("tolerances") or {}
    optional = set(OPTIONAL_RATIOS) | set(baseline.get("optional") or ())
    skipped = skipped or {}
    rows: list[CheckRow] = []
    ok = True
    for name, base in baseline["ratios"].items():
        tol = float(tols.get(name, tol_default))
        floor = round(base * (1 - tol), 3)
        value = current.get(name)
        if value is None:
            peer = name.rsplit("_vs_", 1)[-1]
            if name in optional and peer in skipped:
                status = "skipped"
            else:
                status = "MISSING"
                ok = False
        elif value < floor:
            status = "REGRESSION"
            ok = False
        else:
            status = "ok"
        rows.append(CheckRow(name, value, float(base), floor, status))
    return ok, rows


def baseline_document(ratios: dict[str, float], machine: dict[str, Any], runs: int,
                      tolerance: float = DEFAULT_TOLERANCE, mode: str = "--quick",
                      workload: str = "oltp") -> dict[str, Any]:
    return {
        "tolerance": tolerance,
        "ratios": {k: round(v, 2) for k, v in sorted(ratios.items())},
        "optional": list(OPTIONAL_RATIOS),
        "measured_on": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
            "mode": mode, "workload": workload, "runs": runs, "method": "median of each ratio over the runs",
            **{k: machine.get(k) for k in ("cores", "cpu_model", "python", "mariadb", "redis", "v8", "deltaforge",
                                            "resp_implementation")},
        },
        "how_to_update": HOW_TO_UPDATE,
    }


def median_ratios(documents: list[dict[str, Any]]) -> dict[str, float]:
    """Per-ratio medians over several ``--json`` outputs (ratios absent from a run are skipped)."""
    names = sorted({k for d in documents for k in (d.get("ratios") or {})})
    return {n: round(statistics.median([d["ratios"][n] for d in documents if n in (d.get("ratios") or {})]), 3)
            for n in names}


# --------------------------------------------------------------------------- machine description


def describe_machine(env: BenchEnv | None) -> dict[str, Any]:
    import importlib.metadata as md

    import deltaforge
    from deltaforge._accel import IMPLEMENTATION

    info: dict[str, Any] = {
        "cores": os.cpu_count(), "cpu_model": _cpu_model(), "python": platform.python_version(),
        "platform": platform.platform(), "deltaforge": deltaforge.__version__,
        "resp_implementation": IMPLEMENTATION,
    }
    for pkg, key in (("mini-racer", "mini_racer"), ("mysql-replication", "mysql_replication"),
                     ("redis", "redis_py"), ("hiredis", "hiredis"), ("msgspec", "msgspec"), ("orjson", "orjson")):
        try:
            info[key] = md.version(pkg)
        except md.PackageNotFoundError:
            info[key] = None
    try:
        from py_mini_racer import MiniRacer

        mr = MiniRacer()
        v = mr.v8_version  # a str attribute in mini-racer 0.14, a method in older releases
        info["v8"] = v() if callable(v) else str(v)
        mr.close()
    except Exception as e:  # noqa: BLE001 - a description, never a reason to fail the bench
        info["v8"] = f"unknown ({type(e).__name__})"
    from deltaforge import _accel

    info["rowdecode_implementation"] = _accel.ROWDECODE_IMPLEMENTATION
    if env is not None:
        try:
            conn = env.mysql()
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                info["mariadb"] = cur.fetchone()[0]
            conn.close()
        except Exception as e:  # noqa: BLE001
            info["mariadb"] = f"unknown ({e})"
        try:
            client = env.redis()
            info["redis"] = client.info("server").get("redis_version")
            client.close()
        except Exception as e:  # noqa: BLE001
            info["redis"] = f"unknown ({e})"
    info["load1_at_start"] = round(os.getloadavg()[0], 2)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def check_env(env: BenchEnv) -> None:
    """Both servers answer (one line naming the option to fix when not)."""
    import redis

    from deltaforge.dsn import redact

    client = env.redis()
    try:
        client.ping()
    except redis.RedisError as e:
        raise BenchError(f"cannot reach Redis at {redact(env.redis_uri)}: {e}",
                         "check --redis-uri (host:port, password)") from None
    finally:
        client.close()
    env.mysql().close()


# --------------------------------------------------------------------------- the run


class Bench:
    """One invocation: phases in order, figures collected into :attr:`result`."""

    def __init__(self, env: BenchEnv, settings: Settings, console: Any) -> None:
        self.env = env
        self.s = settings
        self.console = console
        self.result: dict[str, Any] = {"settings": asdict(settings), "skipped": {}}

    @contextmanager
    def bar(self, description: str, total: float | None) -> Iterator[Callable[..., None]]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=self.console, transient=False) as progress:
            task = progress.add_task(description, total=total)

            def update(completed: float | None = None, description: str | None = None,
                       advance: float | None = None) -> None:
                kw: dict[str, Any] = {}
                if completed is not None:
                    kw["completed"] = completed
                if advance is not None:
                    kw["advance"] = advance
                if description is not None:
                    kw["description"] = description
                progress.update(task, **kw)

            yield update
            progress.update(task, completed=total if total is not None else 1, total=total or 1)

    def run(self) -> dict[str, Any]:
        from deltaforge.benchkit.workload import count_binlog_events, write_backlog

        s = self.s
        if {"drain", "stages"} & set(s.phases):  # the other phases write their own rows
            with self.bar(f"workload ({s.workload}): writing {s.rows:,} row changes", s.rows) as upd:
                backlog = write_backlog(self.env, s.rows, seed=s.seed, mix=s.mix,
                                        progress=lambda n: upd(completed=n), workload=s.workload)
                upd(description=f"workload ({s.workload}): counting its binlog events")
                self.events = count_binlog_events(self.env, backlog.start, backlog.end)
            backlog.binlog_events = {**self.events.by_type, "total": self.events.total}
            self.backlog = backlog
            self.result["backlog"] = asdict(backlog)
        if "drain" in s.phases:
            self.drain()
        if "stages" in s.phases:
            self.stages()
        if "latency" in s.phases:
            self.latency()
        if "memory" in s.phases:
            self.memory()
        if "consistency" in s.phases:
            self.consistency()
        from deltaforge.benchkit.drain import topologies

        self.result["ratios"] = compute_ratios(self.result.get("drain"), self.result.get("stages"), topologies())
        return self.result

    def drain(self) -> None:
        from deltaforge.benchkit.drain import drain_phase, engine_runners, topologies

        s, env, backlog = self.s, self.env, self.backlog
        state = {"label": ""}
        upd_ref: list[Callable[..., None]] = []

        def on_events(n: int) -> None:
            upd_ref[0](description=f"drain: {state['label']} {n:,}/{backlog.rows:,}")

        runners = engine_runners(env, backlog, noproc=s.noproc, progress=on_events)
        cluster = self._cluster_runner(runners, on_events)
        peers = _peers()
        if peers is None:
            self.result["skipped"]["naive_py"] = "deltaforge.benchkit.peers is not available"
        else:
            runners.append(("naive_py", lambda: peers.run_naive_py(env, backlog)))
            if s.node:
                runners.append(("naive_node", lambda: peers.run_naive_node(env, backlog)))
            else:
                self.result["skipped"]["naive_node"] = "not run (--no-node)"
        total = len(runners) * s.rounds

        def on_start(name: str, r: int) -> None:
            state["label"] = f"round {r + 1}/{s.rounds} {name}"
            upd_ref[0](description=f"drain: {state['label']}")

        def on_run(name: str, r: int, res: dict[str, Any] | None) -> None:
            upd_ref[0](advance=1)

        try:
            with self.bar("drain", total) as upd:
                upd_ref.append(upd)
                summary = drain_phase(env, runners, s.rounds, on_run=on_run, on_start=on_start)
                upd(description=f"drain: {len(runners)} runners x {s.rounds} rounds")
        finally:
            if cluster is not None:
                cluster.stop()
        if peers is not None:
            for peer, reason in getattr(peers, "skip_reasons", {}).items():
                self.result["skipped"][peer] = reason
        self.result["drain"] = summary
        self.result["topologies"] = topologies()

    def _cluster_runner(self, runners: list[Any], on_events: Callable[[int], None]) -> Any:
        """``ours_cluster``: the seed pipeline (default topology) into a 3-master Redis Cluster the bench
        starts (3 replicas too), next to the single node in every round. Only with servers the bench
        started itself (a --redis-uri is one server); returns the cluster to stop, or None."""
        import dataclasses

        from deltaforge.benchkit.drain import (
            ENGINE_STREAM,
            SPREAD_STREAM,
            default_topology,
            run_engine,
        )

        if "redis" not in self.env.servers:
            self.result["skipped"]["ours_cluster"] = "not run with --redis-uri (the bench starts the cluster itself)"
            return None
        from deltaforge.testing_topologies import RedisCluster

        cluster = RedisCluster(masters=3, replicas_per_master=1).start()
        cluster_env = dataclasses.replace(self.env, redis_uri=cluster.uri, servers={})
        def run(stream: str = ENGINE_STREAM) -> dict[str, Any]:
            cluster_env.flush_redis()  # every run from the backlog's start: no checkpoint left by the last
            return run_engine(cluster_env, self.backlog, workers=default_topology(), progress=on_events,
                              stream=stream)

        runners.insert(1, ("ours_cluster", run))
        # a template without a hash tag: one stream per table over the masters, each committing
        # with its own checkpoint (sink/slot_split.py)
        runners.insert(2, ("ours_cluster_spread", lambda: run(SPREAD_STREAM)))
        return cluster

    def stages(self) -> None:
        try:
            from deltaforge.benchkit.stages import measure_stages
        except ImportError as e:
            self.result["skipped"]["stages"] = f"deltaforge.benchkit.stages is not available ({e})"
            return
        rows, rounds = self.s.stages_rows, self.s.rounds
        n = min(rows or self.backlog.rows, self.backlog.rows)
        runs: list[dict[str, Any]] = []
        # Repeated like the drains: one pass of a few seconds moves +-20% on a shared 2-core box.
        with self.bar(f"stages: decode, JS, encode+XADD on {n:,} rows", rounds) as upd:
            for r in range(rounds):
                upd(description=f"stages: round {r + 1}/{rounds}, decode, JS, encode+XADD on {n:,} rows")
                self.env.flush_redis()
                runs.append(measure_stages(self.env, self.backlog, rows=rows, events=self.events))
                upd(advance=1)
        summary: dict[str, Any] = {}
        for key, value in runs[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                summary[key] = round(statistics.median([x[key] for x in runs if x.get(key) is not None]), 1)
            else:
                summary[key] = value
        summary["runs"] = runs
        self.result["stages"] = summary

    def latency(self) -> None:
        try:
            from deltaforge.benchkit.latency import measure_latency
        except ImportError as e:
            self.result["skipped"]["latency"] = f"deltaforge.benchkit.latency is not available ({e})"
            return
        s = self.s
        with self.bar(f"latency: {s.latency_rate:,} rows/s for {s.latency_seconds:g} s", 100) as upd:
            self.env.flush_redis()
            self.result["latency"] = measure_latency(self.env, rate=s.latency_rate, seconds=s.latency_seconds,
                                                     progress=lambda f: upd(completed=round(f * 100, 1)))

    def consistency(self) -> None:
        from deltaforge.benchkit.consistency import (
            ConsistencySettings,
            measure_consistency,
            measure_worker_rate,
        )

        s = self.s
        cs = ConsistencySettings(rate=s.latency_rate, seconds=s.consistency_seconds)
        with self.bar(f"consistency: {cs.rate:,} rows/s for {cs.seconds:g} s per fill protocol", 100) as upd:
            def progress(state: dict[str, Any]) -> None:
                if not state.get("done"):
                    done = (state["round"] + min(state["elapsed"] / cs.seconds, 1.0)) / state["rounds"]
                    upd(completed=round(done * 100, 1),
                        description=f"consistency: {'+'.join(state['protocols'])}, {state['written']:,} writes")
            self.env.flush_redis()
            result = measure_consistency(self.env, cs, progress=progress)
            upd(description=f"consistency: worker keys/s on {s.worker_events:,} entries, ours and the seed's")
            result["worker_rate"] = measure_worker_rate(self.env, events=s.worker_events, node=s.node)
            self.env.flush_redis()
        self.result["consistency"] = result

    def memory(self) -> None:
        from deltaforge.benchkit.drain import default_topology, run_engine
        from deltaforge.benchkit.workload import write_big_transaction

        s, env = self.s, self.env
        mem: dict[str, Any] = {"drain": {}}
        for name, summ in (self.result.get("drain") or {}).items():
            if name.startswith("ours") and summ:
                runs = [r for r in summ.get("runs") or [] if r.get("processes")]
                worst = max(runs, key=lambda r: r.get("unique_mib") or 0) if runs else {}
                mem["drain"][name] = {"peak_rss_mib": summ.get("peak_rss_mib"), "unique_mib": summ.get("unique_mib"),
                                      "processes": summ.get("processes"), "per_process": worst.get("processes", [])}
        with self.bar(f"memory: one {s.big_tx_rows:,}-row transaction", s.big_tx_rows) as upd:
            upd(description=f"memory: writing one {s.big_tx_rows:,}-row transaction")
            big = write_big_transaction(env, s.big_tx_rows)
            upd(description=f"memory: draining the {s.big_tx_rows:,}-row transaction")
            env.flush_redis()
            res = run_engine(env, big, workers=default_topology(), progress=lambda n: upd(completed=n))
            env.flush_redis()  # the big stream holds ~0.5 GB in Redis for 1M rows; free it now
        mem["big_tx"] = {"rows": s.big_tx_rows, "write_s": big.write_s, **res}
        self.result["memory"] = mem


def _per_process(procs: list[dict[str, Any]]) -> str:
    """"supervisor 42, reader 38, ..." (MiB, peak RSS of each process of one run)."""
    return ", ".join(f"{str(p.get('name', '?')).removeprefix('deltaforge: ')} {_n(p.get('peak_rss_mib'), 0)}"
                     for p in procs)


def _peers() -> Any:
    try:
        from deltaforge.benchkit import peers
    except ImportError:
        return None
    return peers


# --------------------------------------------------------------------------- report


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


_RUN_LABELS = {"naive_py": "naive Python (bench/naive.py)", "naive_node": "naive Node (bench/naive_node.js)",
               "ours_cluster": "DeltaForge, seed JS processor, default topology, into a 3-master Redis Cluster",
               "ours_cluster_spread": "the same, stream cdc:${table} spread over the cluster's masters, one "
                                      "checkpoint per stream"}


def _run_label(name: str) -> str:
    if name in _RUN_LABELS:
        return _RUN_LABELS[name]
    if name.startswith("ours_noproc_w"):
        return f"DeltaForge, no processor, --workers {name.removeprefix('ours_noproc_w')}"
    if name.startswith("ours_w"):
        return f"DeltaForge, seed JS processor, --workers {name.removeprefix('ours_w')}"
    return name


def results_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="deltaforge bench", show_lines=False)
    t.add_column("phase")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("detail")
    backlog = result.get("backlog") or {}
    c = backlog.get("counts", {})
    big = f" (one of {_n(c.get('big_tx_rows'))} rows)" if c.get("big_tx_rows") else ""
    if backlog:
        t.add_row("workload", f"row changes ({backlog.get('workload', 'bulk')})", _n(backlog.get("rows")),
                  f"{_n(c.get('insert'))} ins / {_n(c.get('update'))} upd / {_n(c.get('delete'))} del in "
                  f"{_n(c.get('statements'))} statements, {_n(c.get('transactions'))} tx{big}; written in "
                  f"{backlog.get('write_s', 0):.1f} s")
    ev = backlog.get("binlog_events") or {}
    if ev.get("total"):
        kinds = ", ".join(f"{k} {_n(v)}" for k, v in ev.items() if k != "total")
        t.add_row("workload", "binlog events", _n(ev["total"]),
                  f"{ev['total'] / max(backlog.get('rows') or 1, 1):.2f} per row change: {kinds}")
    drain = result.get("drain") or {}
    naive = (drain.get("naive_py") or {}).get("events_per_s")
    for name, s in drain.items():
        if not s:
            continue
        vs = f"; x{s['events_per_s'] / naive:.2f} naive Python" if naive and name != "naive_py" else ""
        cpu = f"; {s['cpu_us_per_event']:.1f} CPU-µs/event" if s.get("cpu_us_per_event") else ""
        if s.get("cpu_per_process"):
            cpu += " (" + ", ".join(f"{p['role']} {p['cpu_us_per_event']:.1f}" for p in s["cpu_per_process"]) + ")"
        t.add_row("drain", f"{_run_label(name)}, events/s", _n(s["events_per_s"]),
                  f"median of {len(s['runs'])}, {_n(s['min'])}..{_n(s['max'])}{cpu}{vs}")
    st = result.get("stages")
    if st:
        t.add_row("stages", "decode rows/s (ours)", _n(st.get("decode_rows_per_s")),
                  f"over {_n(st.get('rows'))} rows, median of {len(st.get('runs') or [st])}")
        t.add_row("stages", "decode rows/s (mysql-replication)", _n(st.get("decode_rows_per_s_mysql_replication")),
                  "BinLogStreamReader with its own row decoding")
        if st.get("decode_binlog_events_per_s"):
            t.add_row("stages", "reader binlog events/s (ours)", _n(st.get("decode_binlog_events_per_s")),
                      "every binlog event of the timed range (GTID, TABLE_MAP, ROWS, XID, ...)")
            t.add_row("stages", "reader binlog events/s (mysql-replication)",
                      _n(st.get("decode_binlog_events_per_s_mysql_replication")), "same range")
        t.add_row("stages", "JS events/s (seed processor)", _n(st.get("js_events_per_s")), "ProcessorChain alone")
        t.add_row("stages", "encode + XADD events/s", _n(st.get("sink_events_per_s")),
                  "RedisStreamSink.write, exactly-once")
    lat = result.get("latency")
    if lat:
        for key, label in (("stream_ms", "commit -> stream entry"), ("deleted_ms", "commit -> cache key deleted")):
            p = lat.get(key)
            if p:
                t.add_row("latency", f"{label}, ms p50 / p99 / max",
                          f"{p['p50']:.1f} / {p['p99']:.1f} / {p['max']:.1f}",
                          f"{_n(lat.get('rows'))} single-row tx at {_n(lat.get('rate'))} rows/s, "
                          f"--workers {lat.get('workers', '0')}")
            else:
                t.add_row("latency", label, "-", str(lat.get(f"{key}_error") or lat.get("note") or "not measured"))
    _consistency_rows(t, result.get("consistency"))
    mem = result.get("memory")
    if mem:
        for name, m in mem.get("drain", {}).items():
            t.add_row("memory", f"peak, drain, {_run_label(name)}", f"{_n(m.get('unique_mib'), 1)} MiB",
                      "all processes at one moment, rings counted once, max over rounds; "
                      f"{_n(m['peak_rss_mib'], 1)} MiB summing each of {m.get('processes')} process(es)' peak RSS"
                      + (f": {_per_process(m['per_process'])}" if m.get("per_process") else ""))
        b = mem.get("big_tx")
        if b:
            t.add_row("memory", f"peak, one {_n(b['rows'])}-row transaction, --workers {b.get('workers')}",
                      f"{_n(b.get('unique_mib'), 1)} MiB",
                      f"drained at {_n(b['events_per_s'])} events/s; all processes at one moment, rings counted once; "
                      f"{_n(b['peak_rss_mib'], 1)} MiB summing each of {len(b.get('processes', []))} "
                      f"process(es)' peak RSS: {_per_process(b.get('processes', []))}")
    for name, value in (result.get("ratios") or {}).items():
        t.add_row("ratio", name, f"{value:.2f}", "ours / peer, median over rounds of same-round pairs"
                  if name.startswith("drain") else "ours / mysql-replication, same rows")
    for what, reason in (result.get("skipped") or {}).items():
        t.add_row("skipped", what, "-", reason)
    return t


def _consistency_rows(t: Any, c: dict[str, Any] | None) -> None:
    if not c:
        return
    cs = c.get("settings") or {}
    for name, p in (c.get("protocols") or {}).items():
        cpu = sum((p.get("cores") or {}).values())
        where = (f"{_n(p.get('written'))} writes at {_n(p.get('write_rate'))} rows/s on {_n(c.get('keys'))} keys, "
                 f"fill delay 0..{_n(cs.get('fill_delay_ms'))} ms, {cpu:.2f} cores busy")
        w = p.get("window_ms")
        window = f"{w['p50']:.1f} / {w['p99']:.1f} / {w['max']:.1f}" if w else "-"
        extra = f", double delete after {cs.get('double_delete_ms')} ms" if name == "double_delete" else ""
        r = p.get("readers") or {}
        refused = f", {_n(r.get('refused'))} fills refused" if "refused" in r else ""
        t.add_row("consistency", f"{p['label']}: stale keys / cached", f"{p['stale_keys']} / {p['cached_keys']}",
                  f"{where}{extra}; {_n(r.get('reads'))} reads, {_n(r.get('fills'))} fills{refused}")
        t.add_row("consistency", f"{p['label']}: staleness window, ms p50 / p99 / max", window,
                  f"commit -> key deleted, {_n(p.get('window_samples'))} commits of cached keys"
                  if w else str(c.get("window_note") or "no cached key was invalidated"))
    wr = c.get("worker_rate") or {}
    for name, label in (("deltaforge_worker", "deltaforge worker"), ("seed_node_worker", "seed's Node worker")):
        m = wr.get(name)
        if m:
            t.add_row("consistency", f"{label}: keys/s", _n(m["keys_per_s"]),
                      f"{_n(wr.get('events'))} entries of {_n(wr['keys'] // max(wr['events'], 1))} keys, "
                      f"each key a lease revoked; {m['seconds']:.2f} s")
    if wr.get("ratio") is not None:
        t.add_row("consistency", "deltaforge worker / seed's Node worker", f"{wr['ratio']:.1f}x", "same stream, keys/s")
    elif wr.get("seed_node_worker_skipped"):
        t.add_row("skipped", "seed's Node worker", "-", wr["seed_node_worker_skipped"])


def check_table(rows: list[CheckRow], tolerance: float, path: str) -> Any:
    from rich.table import Table

    t = Table(title=f"regression check against {path} (tolerance {tolerance:.0%})")
    for col, just in (("ratio", "left"), ("measured", "right"), ("baseline", "right"), ("floor", "right"),
                      ("", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        style = {"ok": "green", "REGRESSION": "bold red", "MISSING": "bold red"}.get(r.status, "yellow")
        t.add_row(r.name, "-" if r.value is None else f"{r.value:.2f}", f"{r.baseline:.2f}", f"{r.floor:.2f}",
                  f"[{style}]{r.status}[/{style}]")
    return t


# --------------------------------------------------------------------------- command


@click.command("bench")
@click.option("--mysql-dsn", default=None, help="Use this server (a replication-capable user) instead of starting one.")
@click.option("--mysql-admin-dsn", default=None, help="User for the workload's writes (default: --mysql-dsn's).")
@click.option("--redis-uri", default=None, help="Use this Redis (it gets FLUSHALLed) instead of starting one.")
@click.option("--rows", type=int, default=None, help="Row changes in the backlog.  [default: 300000]")
@click.option("--workload", type=click.Choice(["oltp", "bulk"]), default=None,
              help="oltp: single-row statements, 1..12 per transaction; bulk: multi-row statements and "
                   "one large transaction.  [default: oltp]")
@click.option("--mix", default=None, help="insert/update/delete weights.  [default: insert=50,update=40,delete=10]")
@click.option("--rounds", type=int, default=None, help="Interleaved drain rounds; medians.  [default: 3]")
@click.option("--stages-rows", type=int, default=None, help="Rows the stage measurements use (first N of the backlog).  [default: 100000]")
@click.option("--latency-rate", type=int, default=None, help="Rows/s written in the latency phase.  [default: 2000]")
@click.option("--latency-seconds", type=float, default=None, help="Length of the latency phase.  [default: 10]")
@click.option("--consistency-seconds", type=float, default=None,
              help="Length of the consistency phase's writes (at --latency-rate).  [default: 20]")
@click.option("--big-tx-rows", type=int, default=None, help="Rows of the memory phase's transaction.  [default: 1000000]")
@click.option("--node/--no-node", default=None, help="Include the Node peer.  [default: on]")
@click.option("--phases", default=None, help=f"Comma-separated subset of: {', '.join(PHASES)}.")
@click.option("--seed", type=int, default=1, show_default=True, help="Workload random seed.")
@click.option("--quick", is_flag=True, help="CI mode: fewer rows, shorter phases (prints what it scaled down).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write every figure here.")
@click.option("--check", "check_path", type=click.Path(dir_okay=False), default=None,
              help="Compare the ratios with this baseline (bench/baseline.json); exit 1 on a regression.")
@click.option("--update-baseline", "update_path", type=click.Path(dir_okay=False), default=None,
              help="Write the ratios of this run (or the medians of --from-json files) as the new baseline.")
@click.option("--from-json", "from_json", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="With --update-baseline: take the medians of these --json outputs instead of running.")
@friendly_errors
def bench_command(mysql_dsn: str | None, mysql_admin_dsn: str | None, redis_uri: str | None, rows: int | None,
                  workload: str | None, mix: str | None, rounds: int | None, stages_rows: int | None, latency_rate: int | None,
                  latency_seconds: float | None, consistency_seconds: float | None, big_tx_rows: int | None,
                  node: bool | None, phases: str | None, seed: int, quick: bool, json_path: str | None, check_path: str | None, update_path: str | None,
                  from_json: tuple[str, ...]) -> None:
    """Measure drain, stage, latency, memory and cache-consistency figures against the peers."""
    from rich.console import Console

    from deltaforge.benchkit.env import open_env

    # Not a terminal (CI logs): rich would wrap the table at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    # The phases run engine code in this process too (stages); its INFO lines would break
    # the progress bars. Warnings still show.
    logging.getLogger("deltaforge").setLevel(max(logging.WARNING, logging.getLogger("deltaforge").level))
    if from_json:
        if not update_path:
            raise BenchError("--from-json only makes sense with --update-baseline",
                             "add --update-baseline bench/baseline.json")
        docs = [_read_json(p) for p in from_json]
        ratios = median_ratios(docs)
        if not ratios:
            raise BenchError("the --from-json files hold no ratios", "pass files written by `deltaforge bench --json`")
        workloads = {(d.get("settings") or {}).get("workload", "bulk") for d in docs}
        if len(workloads) > 1:
            raise BenchError(f"the --from-json files mix workloads ({', '.join(sorted(workloads))})",
                             "take the medians of runs of one workload")
        _write_baseline(update_path, ratios, docs[0].get("machine") or {}, len(docs), console,
                        "--quick" if all((d.get("settings") or {}).get("quick") for d in docs) else "full",
                        workloads.pop())
        return
    baseline = load_baseline(check_path) if check_path else None  # fail fast on a bad file
    settings = resolve_settings(quick=quick, rows=rows, rounds=rounds, mix=mix, latency_rate=latency_rate,
                                latency_seconds=latency_seconds, big_tx_rows=big_tx_rows, stages_rows=stages_rows,
                                phases=phases, node=node, seed=seed, workload=workload,
                                consistency_seconds=consistency_seconds)
    if settings.scaled_down:
        console.print(f"[yellow]--quick: scaled down {'; '.join(settings.scaled_down)}[/yellow]")
    _sigterm_is_interrupt()
    t0 = time.perf_counter()
    with console.status("starting servers" if not (mysql_dsn and redis_uri) else "connecting"):
        env_cm = open_env(mysql_dsn, mysql_admin_dsn, redis_uri)
        env = env_cm.__enter__()
    try:
        check_env(env)
        machine = describe_machine(env)
        console.print(f"[dim]{machine['cores']} cores, {machine['cpu_model']}; Python {machine['python']}, "
                      f"MariaDB {machine.get('mariadb')}, Redis {machine.get('redis')}, V8 {machine.get('v8')}, "
                      f"RESP {machine['resp_implementation']}[/dim]")
        bench = Bench(env, settings, console)
        bench.result["machine"] = machine
        result = bench.run()
    except BaseException:
        env_cm.__exit__(*sys.exc_info())
        raise
    env_cm.__exit__(None, None, None)
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    console.print(results_table(result))
    console.print(f"[dim]elapsed {result['elapsed_s']:.0f} s[/dim]")
    failed = False
    if baseline is not None:
        ok, rows_ = check_ratios(result["ratios"], baseline, result.get("skipped"))
        result["check"] = {"baseline": str(check_path), "passed": ok, "rows": [asdict(r) for r in rows_]}
        console.print(check_table(rows_, float(baseline.get("tolerance", DEFAULT_TOLERANCE)), str(check_path)))
        failed = not ok
    lease = ((result.get("consistency") or {}).get("protocols") or {}).get("lease")
    if lease and lease["stale_keys"]:
        # Not a speed figure: LeaseCache's guarantee. One stale key is a bug, on any machine.
        console.print(f"[bold red]LeaseCache left {lease['stale_keys']} stale keys: its guarantee is broken"
                      "[/bold red] (report it with the --json output)")
        failed = True
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        console.print(f"figures written to {json_path}")
    if update_path:
        _write_baseline(update_path, result["ratios"], machine, 1, console, "--quick" if settings.quick else "full",
                        settings.workload)
    if failed and baseline is not None and not result["check"]["passed"]:
        console.print("[bold red]throughput regression: a ratio fell below its floor[/bold red] "
                      "(if the slowdown is deliberate, update the baseline: see bench/README.md)")
    if failed:
        sys.exit(1)


def _sigterm_is_interrupt() -> None:
    """SIGTERM (a CI timeout) unwinds like Ctrl-C, so the ``finally`` blocks remove the servers."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _read_json(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read {path}: {e}", "pass files written by `deltaforge bench --json`") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path} is not a bench result", "pass files written by `deltaforge bench --json`")
    return data


def _write_baseline(path: str, ratios: dict[str, float], machine: dict[str, Any], runs: int, console: Any,
                    mode: str, workload: str) -> None:
    tolerance = DEFAULT_TOLERANCE
    p = Path(path)
    if p.exists():
        try:
            tolerance = float(json.loads(p.read_text()).get("tolerance", DEFAULT_TOLERANCE))
        except (OSError, ValueError, AttributeError):
            pass
    doc = baseline_document(ratios, machine, runs, tolerance, mode, workload)
    p.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    console.print(f"baseline written to {path}: " + ", ".join(f"{k}={v}" for k, v in doc["ratios"].items()))
