"""The consistency phase: does the cache end up equal to the database, for each fill protocol?

The race every invalidation-only cache has (docs/cache-protocol.md): a reader misses, reads the
old row, a writer commits, the invalidation deletes the (absent) key, and the reader's delayed SET
lands: stale with no TTL to end it. :func:`measure_consistency` provokes it on purpose and counts
what each protocol leaves behind:

- ``plain``: ``GET``; on a miss ``SELECT``, wait, ``SET`` (what most services do), invalidated by
  ``deltaforge worker``;
- ``double_delete``: the same fills, the worker with ``--double-delete-ms``;
- ``lease``: :class:`deltaforge.cache.LeaseCache` (the lease lives in the key; the worker's UNLINK
  revokes it), the same worker as ``plain``.

The three run at once on the same writes, each on its own cache (Redis db ``base+1..3`` of the
stream's server, ``--cache-uri``), each with its own ``deltaforge worker`` and consumer group:

- the engine (``deltaforge run`` on the seed's pipeline, default topology) reads the binlog;
- a writer thread here commits single-row ``UPDATE``s of random hot rows of ``app.users``
  (``name``) and ``app.products`` (``title``) at ``rate`` rows/s, paced like the latency phase;
- a reader subprocess (not threads here: the GIL would delay the timestamps taken here) runs
  ``readers`` threads per protocol, ``reads_per_s`` per protocol in all, each filling
  ``user:<id>`` / ``product:<id>`` with the column's value and sleeping a random
  ``0..fill_delay_ms`` between the database read and the cache write;
- a subscriber thread timestamps keyspace notifications of set and deleted keys per cache db.

When the writer stops, the readers stop (their fills in flight land), every worker drains (and
the double delete fires), then every cached key is compared with the database: ``stale_keys`` per
protocol. The staleness window of a protocol is commit -> the key's next deletion in its cache,
for the commits of keys that held a value (or a lease) when the commit was sent: how long a reader
could be served the old value. A fill that lands after the invalidation (the race) is not in the
window: it is what ``stale_keys`` counts, and its staleness has no bound but the row's next change.

:func:`measure_worker_rate` is the worker's keys/s against the seed's Node worker on one stream of
``events`` entries of ``keys_per_event`` keys, every key holding a lease marker (so every delete
also revokes a lease): each worker is started, SIGSTOPped once blocked on its XREADGROUP, the
stream is written, and the clock runs from SIGCONT to the group's last ack.

Hazards:
- FLUSHALL at the start of each measurement; ``notify-keyspace-events`` is changed for the run
  and restored in ``finally``. A Redis that refuses CONFIG SET gets no staleness window (reported).
- The cache dbs are numbers ``base+1..base+3`` modulo 16 of the stream's server: a server with
  ``databases`` < 4 fails the run with the setting to change.
- Every subprocess (engine, three workers, the reader process, the Node worker) is stopped in
  ``finally``; SIGKILL if it hangs.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from deltaforge.benchkit.env import BenchError, guarded, key_events, run_failed
from deltaforge.benchkit.latency import STREAM, BenchProcess, percentiles
from deltaforge.benchkit.workload import engine_environ, prepare_schema, seed_yaml
from deltaforge.dsn import parse_redis_uri

if TYPE_CHECKING:
    from deltaforge.benchkit.env import BenchEnv

log = logging.getLogger("deltaforge.bench")

PROTOCOLS = ("plain", "double_delete", "lease")
LABELS = {"plain": "plain GET/SET", "double_delete": "plain + double delete", "lease": "LeaseCache"}
#: the hot rows' cache keys and the column each one caches
TABLES = {"user": ("app.users", "name"), "product": ("app.products", "title")}
_READY_TIMEOUT_S = 60.0
_DRAIN_TIMEOUT_S = 30.0
_WARM_UP_WRITES = 20
#: a cached value that still differs from its row this long after the row's last commit was missed
#: by the invalidation (what the live line counts; the end state needs no such margin)
_MISSED_AFTER_S = 0.5


@dataclass
class ConsistencySettings:
    """What one consistency run does (``bench --quick`` shortens ``seconds``)."""

    rate: int = 2000
    seconds: float = 20.0
    hot_rows: int = 300
    reads_per_s: int = 200
    readers: int = 16
    fill_delay_ms: float = 100.0
    double_delete_ms: int = 50
    lease_ms: int = 2000
    workers: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the readers


def _reader_process(mysql_kw: dict[str, Any], cache_uris: dict[str, str], keys: list[str],
                    settings: dict[str, Any], stop: Any, results: Any) -> None:
    """Entry point of the reader subprocess: ``readers`` threads per protocol until ``stop``."""
    import pymysql
    import redis

    from deltaforge.cache import LeaseCache

    per_thread_s = settings["readers"] / max(settings["reads_per_s"], 1)
    max_delay = settings["fill_delay_ms"] / 1000.0
    stats: dict[str, dict[str, int]] = {p: {"reads": 0, "hits": 0, "fills": 0} for p in cache_uris}
    lock = threading.Lock()
    errors: list[str] = []

    def select(conn: Any, key: str) -> bytes | None:
        prefix, _, rid = key.partition(":")
        table, column = TABLES[prefix]
        with conn.cursor() as cur:
            cur.execute(f"SELECT {column} FROM {table} WHERE id = %s", (int(rid),))
            row = cur.fetchone()
        return None if row is None else str(row[0]).encode()

    def loop(protocol: str, client: Any, lease: Any, seed: int) -> None:
        rng = random.Random(seed)
        conn = pymysql.connect(**mysql_kw, autocommit=True)  # every read sees the latest commit
        reads = hits = fills = 0
        try:
            next_at = time.monotonic() + rng.random() * per_thread_s
            while not stop.is_set():
                now = time.monotonic()
                if next_at > now:
                    time.sleep(next_at - now)
                next_at = max(next_at + per_thread_s, time.monotonic() - per_thread_s)
                key = rng.choice(keys)
                delay = rng.random() * max_delay
                reads += 1
                if lease is not None:
                    def load(key: str = key, delay: float = delay) -> bytes | None:
                        value = select(conn, key)
                        time.sleep(delay)  # the window between the read and the fill
                        return value
                    lease.get(key, load)
                    continue
                if client.get(key) is not None:
                    hits += 1
                    continue
                value = select(conn, key)
                time.sleep(delay)
                if value is not None:
                    client.set(key, value)
                    fills += 1
        except Exception as e:  # noqa: BLE001 - reported to the bench, which fails the run
            errors.append(f"{protocol} reader: {type(e).__name__}: {e}")
            stop.set()
        finally:
            conn.close()
            with lock:
                s = stats[protocol]
                s["reads"] += reads
                s["hits"] += hits
                s["fills"] += fills

    threads: list[threading.Thread] = []
    leases: dict[str, Any] = {}
    clients: list[Any] = []
    for n, (protocol, uri) in enumerate(cache_uris.items()):
        client = redis.Redis.from_url(uri, socket_timeout=30)
        clients.append(client)
        lease = None
        if protocol == "lease":
            lease = LeaseCache(client, lease_ms=settings["lease_ms"])
            leases[protocol] = lease
        for i in range(settings["readers"]):
            threads.append(threading.Thread(target=loop, args=(protocol, client, lease, n * 1000 + i),
                                            name=f"reader-{protocol}-{i}", daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for protocol, lease in leases.items():
        ls = lease.stats
        stats[protocol].update(hits=ls.hits + ls.negative_hits, fills=ls.fills, refused=ls.refused,
                               read_through=ls.read_through, waits=ls.waits)
    for c in clients:
        c.close()
    results.put({"stats": stats, "errors": errors})


# --------------------------------------------------------------------------- the run


class _Run:
    """One round's writer (and the subscriber, shared by the rounds) and what they observed."""

    def __init__(self, env: BenchEnv, s: ConsistencySettings, keys: list[str],
                 events: dict[int, dict[str, list[tuple[float, bool]]]], stop: threading.Event,
                 errors: list[BaseException], seed: int) -> None:
        self.env = env
        self.s = s
        self.keys = keys
        self.stop = stop
        self.errors = errors
        self.seed = seed
        self.tag = f"c{os.getpid()}x{int(time.time())}r{seed}"
        #: key -> [(time before the autocommitted UPDATE was sent, time it returned)], in order
        self.commits: dict[str, list[tuple[float, float]]] = {}
        self.written = 0
        #: cache db -> key -> [(time, True for a SET / False for a deletion)], in arrival order
        self.events = events

    def guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        return guarded(fn, self.errors, self.stop)

    def writer(self) -> None:
        s = self.s
        total = max(1, round(s.rate * s.seconds))
        rng = random.Random(self.seed)
        conn = self.env.mysql()
        conn.autocommit(True)  # one round trip per write: the writer must keep up with the rate
        try:
            cur = conn.cursor()
            t0 = time.monotonic()
            give_up = t0 + 2 * total / s.rate + 5.0
            for i in range(total):
                if self.stop.is_set() or time.monotonic() > give_up:
                    break
                delay = t0 + i / s.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                key = rng.choice(self.keys)
                prefix, _, rid = key.partition(":")
                table, column = TABLES[prefix]
                before = time.time()
                cur.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", (f"{self.tag}-{i}", int(rid)))
                self.commits.setdefault(key, []).append((before, time.time()))
                self.written = i + 1
        finally:
            conn.close()

    def windows(self, db: int) -> list[float]:
        """Commit -> deletion in ``db`` (ms), for each commit of a key that held a value (or a lease)
        when the commit was sent: how long a reader could be served the old value."""
        out: list[float] = []
        events = self.events.get(db, {})
        for key, commits in self.commits.items():
            seen = events.get(key)
            if not seen:
                continue
            times = [t for t, _ in seen]
            for before, after in commits:
                i = bisect.bisect_left(times, before)
                if i == 0 or not seen[i - 1][1]:
                    continue  # absent at the commit: nothing stale to remove
                j = next((j for j in range(i, len(seen)) if not seen[j][1]), None)
                if j is not None:
                    out.append(max(0.0, seen[j][0] - after) * 1000.0)
        return out


def _subscriber(pubsub: Any, events: dict[int, dict[str, list[tuple[float, bool]]]], stop: threading.Event,
                errors: list[BaseException]) -> None:
    try:
        while not stop.is_set():
            msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is None:
                continue
            now = time.time()
            channel = msg["channel"]  # b"__keyevent@3__:del"
            db = int(channel.split(b"@", 1)[1].split(b"_", 1)[0])
            events.setdefault(db, {}).setdefault(msg["data"].decode(), []).append((now, channel.endswith(b":set")))
    except BaseException as e:  # noqa: BLE001 - re-raised by the main thread
        errors.append(e)
        stop.set()


def _snapshot(env: BenchEnv, hot: dict[str, list[int]]) -> dict[str, bytes]:
    """Every hot key's value as the database holds it now."""
    conn = env.mysql()
    out: dict[str, bytes] = {}
    try:
        with conn.cursor() as cur:
            for prefix, ids in hot.items():
                table, column = TABLES[prefix]
                cur.execute(f"SELECT id, {column} FROM {table} WHERE id IN ({','.join(map(str, ids))})")
                out.update({f"{prefix}:{rid}": str(value).encode() for rid, value in cur.fetchall()})
        conn.commit()
    finally:
        conn.close()
    return out


def _compare(client: Any, truth: dict[str, bytes]) -> dict[str, int]:
    """Cached hot keys against ``truth``: how many are cached, stale, or hold a protocol marker."""
    from deltaforge.cache import RESERVED_PREFIX

    keys = list(truth)
    values = client.mget(keys)
    cached = stale = markers = 0
    for key, value in zip(keys, values, strict=True):
        if value is None:
            continue
        if value.startswith(RESERVED_PREFIX):
            markers += 1
            continue
        cached += 1
        if value != truth[key]:
            stale += 1
    return {"cached": cached, "stale": stale, "markers": markers}


def _hot_rows(env: BenchEnv, n: int) -> dict[str, list[int]]:
    conn = env.mysql()
    try:
        hot: dict[str, list[int]] = {}
        with conn.cursor() as cur:
            for prefix, (table, _column) in TABLES.items():
                cur.execute(f"SELECT id FROM {table} ORDER BY id LIMIT %s", (n,))
                hot[prefix] = [int(r[0]) for r in cur.fetchall()]
        conn.commit()
    finally:
        conn.close()
    if any(not ids for ids in hot.values()):
        raise BenchError("the seed's tables have no rows to update", "run the bench's workload set-up first")
    return hot


def _cache_uris(redis_uri: str) -> dict[str, tuple[int, str]]:
    """protocol -> (db, URI of that db on the stream's server)."""
    base = parse_redis_uri(redis_uri, "--redis-uri").db
    head, sep, query = redis_uri.partition("?")
    scheme, _, rest = head.partition("://")
    host = rest.split("/", 1)[0]
    out = {}
    for n, protocol in enumerate(PROTOCOLS, start=1):
        db = (base + n) % 16
        out[protocol] = (db, f"{scheme}://{host}/{db}" + (f"?{query}" if sep else ""))
    return out


def _group_drained(admin: Any, group: str, last_id: bytes) -> bool:
    with contextlib.suppress(Exception):
        for g in admin.xinfo_groups(STREAM):
            name = g.get("name")
            if name in (group, group.encode()):
                return g.get("pending") == 0 and g.get("last-delivered-id") == last_id
    return False


def _wait_drained(admin: Any, groups: list[str], expected_entries: int, workers: list[BenchProcess]) -> None:
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise BenchError(f"{w.name} exited with {w.proc.returncode}: {w.tail()}",
                                 "run `deltaforge worker` by hand against the same servers to see why")
        last: Any = admin.xrevrange(STREAM, count=1)
        if last and int(admin.xlen(STREAM)) >= expected_entries and all(
                _group_drained(admin, g, last[0][0]) for g in groups):
            return
        time.sleep(0.05)
    raise BenchError(f"the engine and the workers did not process {expected_entries} entries within "
                     f"{_DRAIN_TIMEOUT_S:.0f}s of the last write",
                     "check the engine's and the workers' logs (rerun with --debug)")


def measure_consistency(env: BenchEnv, s: ConsistencySettings | None = None,
                        progress: Callable[[dict[str, Any]], None] | None = None,
                        side_by_side: bool = False, live_stale: bool = False) -> dict[str, Any]:
    """Run the three protocols on the same write load; see the module doc.

    By default one protocol at a time (a round each: one worker, one protocol's readers, the same
    writes from the same seed), so that each sees what production sees: one engine and one worker
    on the machine. ``side_by_side`` runs them in one round, three workers at once (the demo).

    ``progress(state)`` is called about once a second with ``{"round", "protocols", "elapsed",
    "seconds", "written", "missed"}`` and once at the end with ``"done": True``. ``missed`` is
    None unless ``live_stale``: then ``{protocol: stale keys whose row's last commit is older than
    0.5 s}``, a database and cache read per second in this process (it would delay the
    subscriber's timestamps, so the bench leaves it off). Returns the settings and, per protocol,
    ``stale_keys``, ``cached_keys``, ``window_ms`` (p50/p99/max), ``window_samples``, the readers'
    counters, ``written``/``write_rate`` and ``cores`` (CPU per process during the writes).
    """
    import pymysql  # noqa: F401 - the reader process needs it; fail here, in the caller's words

    from deltaforge.benchkit.drain import default_topology

    s = s or ConsistencySettings()
    if s.rate < 1 or s.seconds <= 0 or s.hot_rows < 1 or s.readers < 1 or s.reads_per_s < 1:
        raise BenchError("consistency: rate, seconds, hot rows, readers and reads/s must be positive",
                         "e.g. --latency-rate 2000")
    workers = s.workers or default_topology()
    prepare_schema(env)
    hot = _hot_rows(env, s.hot_rows)
    keys = [f"{p}:{i}" for p, ids in hot.items() for i in ids]
    env.flush_redis()
    caches = _cache_uris(env.redis_uri)
    rounds = [list(PROTOCOLS)] if side_by_side else [[p] for p in PROTOCOLS]
    admin = env.redis()
    stop = threading.Event()
    errors: list[BaseException] = []
    events: dict[int, dict[str, list[tuple[float, bool]]]] = {}
    engine: BenchProcess | None = None
    subscriber: threading.Thread | None = None
    protocols: dict[str, Any] = {}
    codes: dict[str, int] = {}
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    with contextlib.suppress(redis.RedisError):  # CONFIG refused: the default, 16, is assumed
        databases = int(str(admin.config_get("databases").get("databases", 16)))
        if databases < 4:
            raise BenchError(f"the bench's Redis has {databases} databases; the consistency phase uses 4 "
                             "(the stream and one cache per protocol)", "set `databases 16` in redis.conf (the default)")
    # key events: generic (del) and string (set), for the caches' dbs
    notify = key_events(admin, "Eg$", [f"__keyevent@{db}__:{kind}" for db, _uri in caches.values()
                                       for kind in ("del", "set")], "staleness window")
    with contextlib.closing(admin), tempfile.TemporaryDirectory(prefix="deltaforge-consistency-") as tmp, \
            notify as key_notes:
        cfg_path = Path(tmp) / "pipeline.yaml"
        cfg_path.write_text(seed_yaml("latest"))
        child_env = {**engine_environ(env), "PYTHONUNBUFFERED": "1"}
        pubsub = key_notes.pubsub
        try:
            engine = BenchProcess("deltaforge run", [sys.executable, "-m", "deltaforge", "run", str(cfg_path),
                                                     "--workers", workers], child_env, "reading from")
            engine.wait_ready(_READY_TIMEOUT_S)
            if pubsub is not None:
                subscriber = threading.Thread(target=_subscriber, args=(pubsub, events, stop, errors),
                                              name="bench-consistency-keyspace", daemon=True)
                subscriber.start()
            for n, round_protocols in enumerate(rounds):
                run = _Run(env, s, keys, events, stop, errors, seed=7)  # the same writes every round
                results, round_codes = _round(env, s, run, engine, caches, round_protocols, hot, child_env,
                                              admin, progress, n, len(rounds), live_stale)
                protocols.update(results)
                codes.update(round_codes)
                if errors:
                    break
        finally:
            stop.set()
            if subscriber is not None:
                subscriber.join(5)
            if engine is not None:
                codes[engine.name] = engine.stop()
            sys.setswitchinterval(switch)
    run_failed("consistency", errors)
    for p in protocols.values():
        if pubsub is None:
            p["window_ms"], p["window_samples"] = None, 0
    result = {
        "settings": asdict(s) | {"workers": workers},
        "side_by_side": side_by_side,
        "written": sum(p["written"] for p in protocols.values()) if not side_by_side
        else next(iter(protocols.values()))["written"],
        "keys": len(keys),
        "protocols": protocols,
        "window_note": key_notes.note,
        "exit_codes": codes,
    }
    if progress is not None:
        progress({"done": True, **result})
    return result


def _round(env: BenchEnv, s: ConsistencySettings, run: _Run, engine: BenchProcess,
           caches: dict[str, tuple[int, str]], round_protocols: list[str], hot: dict[str, list[int]],
           child_env: dict[str, str], admin: Any, progress: Callable[[dict[str, Any]], None] | None,
           n: int, rounds: int, live_stale: bool) -> tuple[dict[str, Any], dict[str, int]]:
    """One round: a worker per protocol, the readers of those protocols, ``s.seconds`` of writes,
    then the drain and the comparison. Returns per-protocol results and the workers' exit codes."""
    from deltaforge.dsn import parse_mysql_dsn

    procs: list[BenchProcess] = []
    groups: list[str] = []
    reader: Any = None
    reader_stop: Any = None
    reader_result: dict[str, Any] = {}
    codes: dict[str, int] = {}
    try:
        for protocol in round_protocols:
            group = f"consistency-{protocol}"
            groups.append(group)
            # created here at the stream's end: the worker handles this round's entries only
            admin.xgroup_create(STREAM, group, id="$", mkstream=True)
            cmd = [sys.executable, "-m", "deltaforge", "worker", "--redis-uri", env.redis_uri,
                   "--cache-uri", caches[protocol][1], "--stream", STREAM, "--group", group,
                   "--block-ms", "500", "--stats-interval", "3600"]
            if protocol == "double_delete":
                cmd += ["--double-delete-ms", str(s.double_delete_ms)]
            procs.append(BenchProcess(f"deltaforge worker ({protocol})", cmd, child_env, None))
        # warm-up: V8's first batch, the workers' first round trips; not steady state
        before = int(admin.xlen(STREAM))
        _warm_up(env, hot)
        _wait_drained(admin, groups, before + _WARM_UP_WRITES, procs)
        start_entries = int(admin.xlen(STREAM))
        d = parse_mysql_dsn(env.mysql_admin_dsn, "--mysql-admin-dsn")
        mysql_kw = {"host": d.host, "port": d.port, "user": d.user, "password": d.password,
                    "database": "app", "charset": "utf8mb4", **d.tls_kwargs()}
        ctx = multiprocessing.get_context("spawn")
        reader_stop, reader_out = ctx.Event(), ctx.Queue()
        reader = ctx.Process(target=_reader_process, name="deltaforge-bench-readers",
                             args=(mysql_kw, {p: caches[p][1] for p in round_protocols}, run.keys,
                                   {"readers": s.readers, "reads_per_s": s.reads_per_s,
                                    "fill_delay_ms": s.fill_delay_ms, "lease_ms": s.lease_ms},
                                   reader_stop, reader_out), daemon=True)
        reader.start()
        writer = threading.Thread(target=run.guard(run.writer), name="bench-consistency-writer", daemon=True)
        watched = _watched(env, [engine, *procs], reader.pid)
        cpu0 = _cpu(watched)
        t0 = time.monotonic()
        writer.start()
        clients = {p: _client(caches[p][1]) for p in round_protocols}
        try:
            while writer.is_alive():
                writer.join(1.0)
                if progress is not None and writer.is_alive():
                    progress({"round": n, "rounds": rounds, "protocols": round_protocols,
                              "elapsed": time.monotonic() - t0, "seconds": s.seconds, "written": run.written,
                              "missed": _missed(env, hot, run, clients) if live_stale else None})
        finally:
            for c in clients.values():
                c.close()
        writer_s = time.monotonic() - t0
        cpu1 = _cpu(watched)
        cores = {name: round((b - a) / writer_s, 2) for name in watched
                 if (a := cpu0.get(name)) is not None and (b := cpu1.get(name)) is not None}
        # the readers' fills in flight land, then every invalidation and double delete
        reader_stop.set()
        reader.join(30)
        with contextlib.suppress(Exception):
            reader_result = reader_out.get(timeout=5)
        if reader_result.get("errors"):
            raise BenchError(f"the consistency readers failed: {reader_result['errors'][0]}",
                             "check the servers; rerun with --debug")
        if run.errors:
            return {}, codes
        _wait_drained(admin, groups, start_entries + run.written, procs)
        time.sleep(s.double_delete_ms / 1000.0 + 0.2)  # the second deletes are scheduled, then run
        truth = _snapshot(env, hot)
        results: dict[str, Any] = {}
        for protocol in round_protocols:
            db, uri = caches[protocol]
            c = _client(uri)
            try:
                compared = _compare(c, truth)
            finally:
                c.close()
            windows = run.windows(db)
            results[protocol] = {
                "label": LABELS[protocol],
                "stale_keys": compared["stale"],
                "cached_keys": compared["cached"],
                "markers_left": compared["markers"],
                "window_ms": percentiles(windows),
                "window_samples": len(windows),
                "readers": reader_result.get("stats", {}).get(protocol, {}),
                "written": run.written,
                "write_rate": round(run.written / max(writer_s, 1e-9), 1),
                "cores": cores,
            }
        return results, codes
    finally:
        if reader_stop is not None:
            reader_stop.set()
        if reader is not None:
            reader.join(10)
            if reader.is_alive():
                reader.kill()
                reader.join()
        for p in procs:
            codes[p.name] = p.stop()


def _watched(env: BenchEnv, procs: list[BenchProcess], reader_pid: int | None) -> dict[str, tuple[int, bool]]:
    """Name -> (pid, with its descendants?) of every process whose CPU the run reports."""
    out = {p.name: (p.proc.pid, True) for p in procs}  # the engine's stages are its children
    if reader_pid is not None:
        out["readers (bench)"] = (reader_pid, False)
    out["writer + subscriber (bench)"] = (os.getpid(), False)  # its children are all listed apart
    for name in ("mariadb", "redis"):
        proc = getattr(env.servers.get(name), "proc", None)
        if proc is not None:
            out[name] = (proc.pid, False)
    return out


def _cpu(watched: dict[str, tuple[int, bool]]) -> dict[str, float | None]:
    from deltaforge.benchkit.memory import tree_cpu_seconds
    from deltaforge.runtime.stats import cpu_seconds

    return {name: tree_cpu_seconds(pid) if tree else cpu_seconds(pid) for name, (pid, tree) in watched.items()}


def _client(uri: str) -> Any:
    import redis

    return redis.Redis.from_url(uri, socket_timeout=30)


def _missed(env: BenchEnv, hot: dict[str, list[int]], run: _Run, clients: dict[str, Any]) -> dict[str, int]:
    """Per protocol: cached values that differ from their row although its last commit is older
    than ``_MISSED_AFTER_S`` (the invalidation has long run: this value was filled stale)."""
    from deltaforge.cache import RESERVED_PREFIX

    truth = _snapshot(env, hot)
    settled = time.time() - _MISSED_AFTER_S
    keys = [k for k in truth if not run.commits.get(k) or run.commits[k][-1][1] < settled]
    out = {}
    for protocol, c in clients.items():
        values = c.mget(keys)
        out[protocol] = sum(1 for k, v in zip(keys, values, strict=True)
                            if v is not None and not v.startswith(RESERVED_PREFIX) and v != truth[k])
    return out


def _warm_up(env: BenchEnv, hot: dict[str, list[int]]) -> None:
    conn = env.mysql()
    try:
        with conn.cursor() as cur:
            for i in range(_WARM_UP_WRITES):
                prefix = "user" if i % 2 else "product"
                table, column = TABLES[prefix]
                cur.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s",
                            (f"warm-up-{i}", hot[prefix][i % len(hot[prefix])]))
                conn.commit()
                time.sleep(0.005)
    finally:
        conn.close()


# --------------------------------------------------------------------------- worker rate


def _node_worker_script() -> Path | None:
    from deltaforge.benchkit.peers import bench_dir

    bench = bench_dir()
    if bench is None:
        return None
    script = bench.parent / "tests" / "node" / "cache-invalidation-worker.js"
    return script if script.is_file() else None


def measure_worker_rate(env: BenchEnv, events: int = 20_000, keys_per_event: int = 4,
                        node: bool = True) -> dict[str, Any]:
    """keys/s of ``deltaforge worker`` and of the seed's Node worker on the same stream (module doc)."""
    import orjson

    entries = []
    keys_all: list[str] = []
    now_ms = int(time.time() * 1000)
    for i in range(events):
        keys = [f"rate:{i}:{j}" for j in range(keys_per_event)]
        keys_all += keys
        entries.append(orjson.dumps({"table": "app.users", "op": "u", "before": None, "ts_ms": now_ms,
                                     "after": {"id": i, "_cache_keys": keys}}))
    out: dict[str, Any] = {"events": events, "keys": len(keys_all)}
    runners: list[tuple[str, list[str], dict[str, str]]] = [
        ("deltaforge_worker", [sys.executable, "-m", "deltaforge", "worker", "--redis-uri", env.redis_uri,
                               "--stream", STREAM, "--group", "cache-workers", "--stats-interval", "3600"],
         {**os.environ, "PYTHONUNBUFFERED": "1"}),
    ]
    script = _node_worker_script()
    if node:
        from deltaforge.benchkit.peers import bench_dir, ensure_node_deps

        bench = bench_dir()
        reason = ensure_node_deps(bench) if bench is not None and script is not None else (
            "tests/node/cache-invalidation-worker.js not found (installed without a source checkout)")
        if reason is None and bench is not None and script is not None:
            runners.append(("seed_node_worker", [shutil.which("node") or "node", str(script)],
                            {**os.environ, "REDIS_URI": env.redis_uri,
                             "NODE_PATH": str(bench / "node" / "node_modules")}))
        else:
            out["seed_node_worker_skipped"] = reason
    for name, cmd, child_env in runners:
        out[name] = _time_worker(env, name, cmd, child_env, entries, keys_all)
    ours, seed = out.get("deltaforge_worker"), out.get("seed_node_worker")
    if ours and seed:
        out["ratio"] = round(ours["keys_per_s"] / seed["keys_per_s"], 1)
    return out


def _time_worker(env: BenchEnv, name: str, cmd: list[str], child_env: dict[str, str],
                 entries: list[bytes], keys: list[str]) -> dict[str, Any]:
    from deltaforge.cache import LEASE_PREFIX

    env.flush_redis()
    admin = env.redis()
    # stderr to a file: a pipe nobody reads could fill up and stall the worker being timed
    errfile = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errfile, env=child_env)

    def tail() -> str:
        errfile.seek(0)
        lines = errfile.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no output)"

    try:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while int(admin.info("clients").get("blocked_clients", 0)) < 1:  # blocked on its XREADGROUP
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode} while starting: {tail()}",
                                 "run it by hand to see why")
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not block on XREADGROUP within {_READY_TIMEOUT_S:.0f}s",
                                 "check that Redis is reachable")
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)
        pipe = admin.pipeline(transaction=False)
        lease = LEASE_PREFIX + b"0" * 32
        for i in range(0, len(keys), 1000):
            pipe.mset({k: lease for k in keys[i:i + 1000]})
        for payload in entries:
            pipe.xadd(STREAM, {"df-event": payload})
        pipe.execute()
        last: Any = admin.xrevrange(STREAM, count=1)
        last_id: bytes = last[0][0]
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 300
        while not _group_drained(admin, "cache-workers", last_id):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{name} stopped before acknowledging {len(entries)} entries: {tail()}",
                                 "run it by hand to see why")
            time.sleep(0.002)
        seconds = time.perf_counter() - t0
        left = sum(admin.exists(*keys[i:i + 1000]) for i in range(0, len(keys), 1000))
        if left:
            raise BenchError(f"{name} acknowledged every entry but left {left} of {len(keys)} keys",
                             "a worker bug: report it with the bench's JSON")
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        errfile.close()
        admin.close()
    return {"seconds": round(seconds, 3), "keys_per_s": round(len(keys) / seconds, 0),
            "events_per_s": round(len(entries) / seconds, 0)}
