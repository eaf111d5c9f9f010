"""End-to-end latency at a fixed write rate: commit in MariaDB -> stream entry -> cache key deleted.

:func:`measure_latency` runs the real thing as a user would, in subprocesses:
``python -m deltaforge run <seed yaml>`` (conf/pipeline.yaml, ``start: latest``) and
``python -m deltaforge worker``. Then, in this process:

* a writer thread commits single-row transactions ``UPDATE app.users SET name=<marker>``
  at ``rate`` rows/s, paced by a monotonic schedule (write *i* is due at ``t0 + i/rate``;
  a late write goes at once, the schedule does not drift; a machine that cannot keep up
  gets a longer run, capped at twice the planned one). The rows' cache keys ``user:<id>``
  are ``MSET`` a few writes ahead (one round trip per 32 writes; a ``SET`` per write halved
  the rate one client reached) so the worker's deletion is observable. The clock starts
  when ``COMMIT`` returns (``time.time()``);
* a stream reader thread (``XREAD BLOCK`` on ``cache:invalidations``) timestamps each entry
  on arrival and matches it to its write by ``(id, marker)``;
* a subscriber thread timestamps keyspace notifications of deleted keys. Redis publishes
  UNLINK (what the worker sends) as ``del``; ``unlink`` is subscribed too, in case a
  version differs. A write's deletion is the first deletion of ``user:<id>`` at or after
  its commit; the writer cycles over many ids so one id's writes are far apart.

Returns ``{"stream_ms": {"p50","p99","max"}, "deleted_ms": {...}, "rows", "rate", ...}``.

Hazards:
- ``FLUSHALL`` first: a checkpoint left by an earlier phase would make the engine resume
  from it (draining a backlog) instead of starting at the binlog's end.
- ``notify-keyspace-events`` is changed for the run (``Eg``: key-event channel, generic
  commands) and restored in ``finally``. If the server refuses CONFIG SET (ACLs, renamed
  command), deletion latency is reported as None with the reason, the stream latency stands.
- Every timestamp is ``time.time()`` taken in this process, on the same host as the
  servers; the three threads share the GIL, so a timestamp can read late by the time
  another thread holds it (sub-millisecond at the default rate; visible at the max).
- Both subprocesses are stopped with SIGTERM (they exit 0), killed if they hang, in
  ``finally``.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from deltaforge.benchkit.env import BenchError, guarded, key_events, run_failed
from deltaforge.benchkit.workload import engine_environ, prepare_schema, seed_yaml
from deltaforge.dsn import parse_redis_uri

if TYPE_CHECKING:
    from deltaforge.benchkit.env import BenchEnv

log = logging.getLogger("deltaforge.bench")

STREAM = "cache:invalidations"
#: how many distinct users the writer cycles over (a given id is written every ids/rate s)
_MAX_IDS = 5000
_READY_TIMEOUT_S = 60.0
#: after the last write, how long late entries/deletions are still waited for
_DRAIN_S = 10.0
_STOP_TIMEOUT_S = 20.0
#: cache keys set ahead per round trip
_PRESET = 32
#: writes through engine and worker before the clock runs
_WARM_UP_ROWS = 50


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)

    def rank(p: float) -> float:  # nearest rank
        return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]

    return {"p50": round(rank(0.50), 2), "p99": round(rank(0.99), 2), "max": round(s[-1], 2)}


class BenchProcess:
    """A subprocess whose stderr is collected by a thread (its tail goes into errors)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], ready_marker: str | None) -> None:
        self.name = name
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._marker = ready_marker
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,),
                                        name=f"bench-{name}-stderr", daemon=True)
        self._reader.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.append(line.rstrip())
            del self.lines[:-200]
            if self._marker and self._marker in line:
                self.ready.set()

    def tail(self) -> str:
        return self.lines[-1] if self.lines else "(no output)"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} while starting: {self.tail()}",
                                 f"run `{self.name}` by hand against the same servers to see why")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} was not ready within {timeout:.0f}s: {self.tail()}",
                                 "check that MariaDB and Redis are reachable from this host")

    def cpu_s(self) -> float | None:
        """User+system CPU seconds used so far by the process and its live children (the stage
        processes of ``--workers N``); Linux /proc; None elsewhere or once it exited."""
        from deltaforge.benchkit.memory import tree_cpu_seconds

        if self.proc.poll() is not None or not Path(f"/proc/{self.proc.pid}/stat").exists():
            return None
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> int:
        """SIGTERM, wait; SIGKILL if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs of SIGTERM: killed", self.name, _STOP_TIMEOUT_S)
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return int(self.proc.returncode)


class _Run:
    """State shared by the writer, the stream reader and the deletion subscriber."""

    def __init__(self, env: BenchEnv, rate: int, seconds: float,
                 progress: Callable[[float], None] | None) -> None:
        self.env = env
        self.rate = rate
        self.total = max(1, round(rate * seconds))
        self.progress = progress
        self.stop = threading.Event()
        self.tag = f"lat{os.getpid()}x{int(time.time())}"
        #: per committed write: (id, marker, commit time, time its cache key was set)
        self.writes: list[tuple[int, str, float, float]] = []
        self.preset_at = 0.0
        #: marker -> (row id, arrival time in the stream (reader's clock), the entry id's time);
        #: kept for any marker of this run, matched to its write at the end (an entry may
        #: arrive before the writer thread has even noted its commit)
        self.arrived: dict[str, tuple[Any, float, float]] = {}
        #: key -> deletion times, in order
        self.deleted: dict[bytes, list[float]] = {}
        self.deletion_channels: dict[str, int] = {}
        self.first_write = self.last_commit = 0.0
        self.errors: list[BaseException] = []

    # ------------------------------------------------------------------ threads
    def guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        return guarded(fn, self.errors, self.stop)

    def writer(self, ids: list[int]) -> None:
        conn = self.env.mysql()
        r = self.env.redis()
        try:
            cur = conn.cursor()
            t0 = time.monotonic()
            self.first_write = time.time()
            step = max(1, self.total // 100)
            # A machine that cannot reach the rate must not stretch the run without end.
            give_up = t0 + 2 * self.total / self.rate + 5.0
            for i in range(self.total):
                if self.stop.is_set() or time.monotonic() > give_up:
                    break
                if i % _PRESET == 0:
                    # The cache keys of the next few writes in one round trip: a SET per write would
                    # halve the rate one client reaches. Safe because a given id comes back only
                    # every len(ids)/rate seconds, long after its previous deletion.
                    chunk = {f"user:{ids[j % len(ids)]}": b"cached" for j in range(i, min(i + _PRESET, self.total))}
                    r.mset(chunk)
                    self.preset_at = time.time()
                due = t0 + i / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                uid = ids[i % len(ids)]
                marker = f"{self.tag}-{i}"
                cur.execute("UPDATE app.users SET name = %s WHERE id = %s", (marker, uid))
                conn.commit()
                now = time.time()
                self.writes.append((uid, marker, now, self.preset_at))
                self.last_commit = now
                if self.progress is not None and i % step == 0:
                    self.progress(i / self.total)
        finally:
            conn.close()
            r.close()

    def reader(self, last_id: bytes) -> None:
        r = self.env.redis()
        try:
            while not self.stop.is_set():
                resp: Any = r.xread({STREAM: last_id}, count=1000, block=200)
                now = time.time()
                for _stream, entries in resp or []:
                    for eid, fields in entries:
                        last_id = eid
                        raw = fields.get(b"df-event")
                        if raw is None:
                            continue
                        ev = orjson.loads(raw)
                        after = ev.get("after") or {}
                        marker = after.get("name")
                        if (ev.get("table") != "app.users" or not isinstance(marker, str)
                                or not marker.startswith(self.tag) or marker in self.arrived):
                            continue
                        self.arrived[marker] = (after.get("id"), now, float(eid.split(b"-", 1)[0]) / 1000.0)
        finally:
            r.close()

    def subscriber(self, pubsub: Any) -> None:
        while not self.stop.is_set():
            msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is None:
                continue
            now = time.time()
            key = msg["data"]
            self.deleted.setdefault(key, []).append(now)
            ch = msg["channel"].decode().rsplit(":", 1)[-1]
            self.deletion_channels[ch] = self.deletion_channels.get(ch, 0) + 1

    # ------------------------------------------------------------------ results
    def matched(self) -> tuple[list[float], list[float], list[float]]:
        stream, stream_id, deleted = [], [], []
        for uid, marker, commit, preset in self.writes:
            hit = self.arrived.get(marker)
            if hit is not None and hit[0] == uid:  # the marker is unique; the id must agree too
                stream.append((hit[1] - commit) * 1000.0)
                stream_id.append((hit[2] - commit) * 1000.0)
            times = self.deleted.get(f"user:{uid}".encode())
            if times:
                # From the key's SET on, not from the commit: the subscriber may timestamp the
                # deletion before the writer thread, waiting for the GIL, timestamps the commit.
                i = bisect.bisect_left(times, preset)
                if i < len(times):
                    deleted.append((times[i] - commit) * 1000.0)
        return stream, stream_id, deleted

    def complete(self, deletions: bool) -> bool:
        if len(self.arrived) < len(self.writes):
            return False
        if not deletions:
            return True
        _, _, deleted = self.matched()
        return len(deleted) >= len(self.writes)


def _user_ids(env: BenchEnv) -> list[int]:
    conn = env.mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM app.users ORDER BY id LIMIT %s", (_MAX_IDS,))
            ids = [int(row[0]) for row in cur.fetchall()]
        conn.commit()
    finally:
        conn.close()
    return ids


def measure_latency(env: BenchEnv, rate: int = 2000, seconds: float = 10.0,
                    progress: Callable[[float], None] | None = None, workers: str | None = None) -> dict[str, Any]:
    """Commit -> stream entry and commit -> cache key deleted, p50/p99/max in ms, at ``rate`` rows/s,
    with ``deltaforge run --workers workers`` (default: the engine's default topology).

    ``progress(fraction)`` is called from the writer thread (about 100 times), then with 1.0.
    Besides the contract's keys the result holds ``stream_ms_by_entry_id`` (arrival taken
    from the entry id, i.e. redis-server's clock at XADD: no reader-thread delay),
    ``matched_stream``/``matched_deleted``, ``target_rate``, ``deletion_channels`` (which
    notification channel carried the deletions), ``deleted_note`` (why deletions were not
    measured, else None), ``exit_codes`` of the two subprocesses and ``cores``: the CPU each
    used during the run in cores (CPU seconds / wall seconds; Linux only, else None).
    """
    if workers is None:
        from deltaforge.benchkit.drain import default_topology

        workers = default_topology()
    if rate <= 0 or seconds <= 0:
        raise BenchError(f"latency needs a positive rate and duration, found {rate} rows/s for {seconds}s",
                         "pass --latency-rate 2000 (rows/s)")
    prepare_schema(env)  # idempotent: the tables exist and app.users has rows to update
    ids = _user_ids(env)
    if not ids:
        raise BenchError("app.users has no rows to update", "run the bench's workload set-up (prepare_schema) first")
    env.flush_redis()
    db = parse_redis_uri(env.redis_uri, "--redis-uri").db
    run = _Run(env, rate, seconds, progress)
    admin = env.redis()
    procs: list[BenchProcess] = []
    threads: list[threading.Thread] = []
    codes: dict[str, int] = {}
    cores: dict[str, float | None] = {}
    # Three threads here take timestamps: a thread woken by its socket must not wait the default
    # 5 ms for the GIL, or the figures measure the interpreter's scheduling, not the pipeline.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    # keyspace notifications of deletions (UNLINK is published as "del"; "unlink" in case a version differs)
    notify = key_events(admin, "Eg", [f"__keyevent@{db}__:del", f"__keyevent@{db}__:unlink"], "deletion latency")
    with contextlib.closing(admin), tempfile.TemporaryDirectory(prefix="deltaforge-bench-") as tmp, \
            notify as events:
        cfg_path = Path(tmp) / "pipeline.yaml"
        cfg_path.write_text(seed_yaml("latest"))
        child_env = {**engine_environ(env), "PYTHONUNBUFFERED": "1"}
        pubsub = events.pubsub
        try:
            # -- the engine and the worker
            engine = BenchProcess("deltaforge run", [sys.executable, "-m", "deltaforge", "run", str(cfg_path),
                                              "--workers", workers],
                           child_env, "reading from")
            procs.append(engine)
            worker = BenchProcess("deltaforge worker",
                           [sys.executable, "-m", "deltaforge", "worker", "--redis-uri", env.redis_uri,
                            "--stream", STREAM, "--block-ms", "500", "--stats-interval", "3600"],
                           child_env, None)
            procs.append(worker)
            engine.wait_ready(_READY_TIMEOUT_S)
            _wait_group(admin, worker)
            _warm_up(env, admin, ids)
            # -- readers first, then the writer
            if pubsub is not None:
                threads.append(threading.Thread(target=run.guard(lambda: run.subscriber(pubsub)),
                                                name="bench-lat-deletions", daemon=True))
            last: Any = admin.xrevrange(STREAM, count=1)
            last_id: bytes = last[0][0] if last else b"0-0"
            threads.append(threading.Thread(target=run.guard(lambda: run.reader(last_id)),
                                            name="bench-lat-stream", daemon=True))
            for t in threads:
                t.start()
            writer = threading.Thread(target=run.guard(lambda: run.writer(ids)), name="bench-lat-writer",
                                      daemon=True)
            cpu0 = {p.name: p.cpu_s() for p in procs}
            wall0 = time.monotonic()
            writer.start()
            writer.join()
            deadline = time.monotonic() + _DRAIN_S
            while not run.stop.is_set() and time.monotonic() < deadline and not run.complete(pubsub is not None):
                time.sleep(0.05)
            wall = time.monotonic() - wall0
            for p in procs:  # how busy each was: near 1.0 means queueing, not transport, sets the latency
                a, b = cpu0[p.name], p.cpu_s()
                cores[p.name] = round((b - a) / wall, 2) if a is not None and b is not None and wall > 0 else None
        finally:
            run.stop.set()
            for t in threads:
                t.join(5)
            for p in reversed(procs):
                codes[p.name] = p.stop()
            sys.setswitchinterval(switch)
    run_failed("latency", run.errors)
    for name, code in codes.items():
        if code != 0:
            tail = next(p.tail() for p in procs if p.name == name)
            log.warning("%s exited with %d after SIGTERM (expected 0): %s", name, code, tail)
    stream, stream_id, deleted = run.matched()
    if not stream:
        tail = procs[0].tail() if procs else ""
        raise BenchError(f"no write of the latency run reached {STREAM} within {_DRAIN_S:.0f}s (engine: {tail})",
                         "check the engine's log: is it reading the binlog of this server?")
    if progress is not None:
        progress(1.0)
    span = run.last_commit - run.first_write
    return {
        "stream_ms": percentiles(stream),
        "deleted_ms": percentiles(deleted),
        "stream_ms_by_entry_id": percentiles(stream_id),
        "rows": len(run.writes),
        "matched_stream": len(stream),
        "matched_deleted": len(deleted),
        "rate": round(len(run.writes) / span, 1) if span > 0 else 0.0,
        "target_rate": rate,
        "workers": workers,
        "deletion_channels": dict(run.deletion_channels),
        "deleted_note": events.note,
        "exit_codes": codes,
        "cores": cores,
    }


def _wait_group(admin: Any, worker: BenchProcess) -> None:
    """Until the worker has created its consumer group (it then reads from the stream's start)."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        with contextlib.suppress(Exception):
            if any(g.get("name") in (b"cache-workers", "cache-workers") for g in admin.xinfo_groups(STREAM)):
                return
        if worker.proc.poll() is not None:
            raise BenchError(f"deltaforge worker exited with {worker.proc.returncode} while starting: "
                             f"{worker.tail()}", "run `deltaforge worker` by hand to see why")
        if time.monotonic() > deadline:
            raise BenchError(f"deltaforge worker created no consumer group within {_READY_TIMEOUT_S:.0f}s: "
                             f"{worker.tail()}", "check that Redis is reachable from this host")
        time.sleep(0.05)


def _warm_up(env: BenchEnv, admin: Any, ids: list[int]) -> None:
    """A few writes through engine and worker before the clock runs: V8 compiles the processor on its
    first batch and the connections' first round trips are slow; that start-up is not steady-state
    latency. Returns once the worker has consumed them."""
    conn = env.mysql()
    try:
        with conn.cursor() as cur:
            for i in range(_WARM_UP_ROWS):
                cur.execute("UPDATE app.users SET name = %s WHERE id = %s", (f"warm-up-{i}", ids[i % len(ids)]))
                conn.commit()
                time.sleep(0.005)
    finally:
        conn.close()
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = admin.xrevrange(STREAM, count=1)
            group = next(g for g in admin.xinfo_groups(STREAM) if g.get("name") in (b"cache-workers", "cache-workers"))
            if (int(admin.xlen(STREAM)) >= _WARM_UP_ROWS and last and group.get("pending") == 0
                    and group.get("last-delivered-id") == last[0][0]):
                return
        time.sleep(0.05)
    raise BenchError(f"the warm-up writes did not go through engine and worker within {_READY_TIMEOUT_S:.0f}s",
                     "check the engine's log: is it reading the binlog of this server?")
