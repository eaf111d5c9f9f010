"""Drain-rate benchmark: how fast a pre-written binlog backlog reaches the Redis stream.

    python bench/drain.py --rows 100000 [--rounds 3] [--json out.json]
                          [--profile prof.out] [--py-spy stacks.txt]

What it does, on throwaway servers (:mod:`deltaforge.testing`; nothing touches
the machine's own MariaDB/Redis):

1. creates the seed's tables (:data:`deltaforge.demo.SCHEMA`), pre-seeds 2000 rows
   per table, records ``SHOW MASTER STATUS``, then writes a backlog of exactly
   ``--rows`` row changes: ~50% inserts, ~42% updates, ~8% deletes over
   orders/inventory/users/products, transactions of 1..5 rows (70%), 6..50 (27%)
   and 200..2000 (3%), each of 1..3 multi-row statements;
2. drains that same binlog range, interleaved and repeated ``--rounds`` times
   (order rotated every round, FLUSHALL before every run):

   ``ours``          the seed pipeline ``conf/pipeline.yaml`` in-process
                     (:class:`~deltaforge.runtime.pipeline.Supervisor` in a thread),
                     ``start`` overridden to the recorded position;
   ``ours-noproc``   the same without the JavaScript processor;
   ``naive``         ``bench/naive.py`` in a subprocess (mysql-replication ->
                     json.dumps -> redis-py pipeline of 100);

   Rates are rows / (last commit - first commit) for the engine (the first batch
   is excluded from the count because its commit starts the clock) and the
   script's own figure for naive (first row event -> last flush). Connection
   set-up and V8 start are not in the rates; ``wall_s`` includes them;
3. optionally profiles one more engine run with cProfile (``--profile``) and/or
   py-spy (``--py-spy``, raw collapsed stacks of this process during the drain
   only) and prints the time per pipeline stage in µs per event.

Hazards: the host has 2 cores shared by the reader, V8's thread, mariadbd and
redis-server (and whatever else runs): figures are medians and the JSON keeps
every run plus the load average, so noise is visible. cProfile roughly doubles
the cost of Python-heavy stages; read its per-stage figures as shares, not rates.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import json
import os
import pstats
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import msgspec

ROOT = Path(__file__).resolve().parent.parent
TABLES = ["app.users", "app.products", "app.orders", "app.inventory"]
SEED_ROWS = 2000
FIRST_ID = 1000

# --------------------------------------------------------------------------- backlog


class Backlog:
    """Writes realistic transactions; every statement's row count is checked, so the
    binlog holds exactly the number of row changes asked for."""

    WEIGHTS: ClassVar[dict[str, int]] = {"app.orders": 35, "app.inventory": 25, "app.users": 20, "app.products": 20}

    def __init__(self, conn: Any, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        self.next_id = dict.fromkeys(self.WEIGHTS, FIRST_ID)
        self.live: dict[str, list[int]] = {t: [] for t in self.WEIGHTS}
        self.version = 0
        self.tables = list(self.WEIGHTS)
        self.weights = list(self.WEIGHTS.values())
        self.stats = {"insert": 0, "update": 0, "delete": 0, "transactions": 0, "statements": 0}

    # -- row images
    def _row(self, table: str, i: int) -> tuple[Any, ...]:
        rng = self.rng
        if table == "app.users":
            return (i, f"user{i}@example.com", f"User {i}")
        if table == "app.products":
            return (i, rng.randint(1, 40), f"SKU-{i}", f"Product {i} {rng.choice(('red', 'blue', 'XL', 'pro'))}",
                    f"{rng.uniform(1, 900):.2f}", "lorem ipsum dolor sit amet " * rng.randint(0, 8) or None)
        if table == "app.orders":
            placed = dt.datetime(2024, 5, 1) + dt.timedelta(seconds=rng.randint(0, 10**7),
                                                            microseconds=rng.randint(0, 999999))
            return (i, rng.randint(FIRST_ID, FIRST_ID + SEED_ROWS), f"{rng.uniform(5, 2000):.2f}",
                    rng.choice(("new", "paid")), placed)
        return (i, 10_000_000 + i, rng.choice(("AMS", "FRA", "DUB")), rng.randint(0, 500))

    _INSERT: ClassVar[dict[str, str]] = {
        "app.users": "INSERT INTO app.users (id, email, name) VALUES (%s, %s, %s)",
        "app.products": "INSERT INTO app.products (id, category_id, sku, title, price, description) "
                        "VALUES (%s, %s, %s, %s, %s, %s)",
        "app.orders": "INSERT INTO app.orders (id, user_id, total, state, placed_at) VALUES (%s, %s, %s, %s, %s)",
        "app.inventory": "INSERT INTO app.inventory (id, product_id, warehouse, quantity) VALUES (%s, %s, %s, %s)",
    }

    def _update_sql(self, table: str, ids: str) -> str:
        # Every UPDATE changes every row it matches (a version counter), so rowcount == rows logged.
        v = self.version
        if table == "app.users":
            if self.rng.random() < 0.3:
                return f"UPDATE app.users SET email = CONCAT('user', id, '.v{v}@example.com') WHERE id IN ({ids})"
            return (f"UPDATE app.users SET name = CONCAT('User ', id, ' v{v}'), "
                    f"status = IF(status = 'active', 'suspended', 'active') WHERE id IN ({ids})")
        if table == "app.products":
            return f"UPDATE app.products SET price = price + 0.01, title = CONCAT('Product ', id, ' v{v}') WHERE id IN ({ids})"
        if table == "app.orders":
            return (f"UPDATE app.orders SET state = ELT(1 + ({v} % 4), 'new', 'paid', 'shipped', 'cancelled'), "
                    f"total = total + 1 WHERE id IN ({ids})")
        return f"UPDATE app.inventory SET quantity = quantity - 1 WHERE id IN ({ids})"

    def _pick(self, table: str, n: int, remove: bool) -> str:
        live = self.live[table]
        idx = sorted(self.rng.sample(range(len(live)), n), reverse=True)
        ids = [live[i] for i in idx]
        if remove:
            for i in idx:  # descending: swap-pop keeps the lower indices valid
                live[i] = live[-1]
                live.pop()
        return ",".join(map(str, ids))

    def statement(self, cur: Any, table: str, kind: str, n: int) -> None:
        if kind == "insert":
            start = self.next_id[table]
            self.next_id[table] = start + n
            cur.executemany(self._INSERT[table], [self._row(table, i) for i in range(start, start + n)])
            self.live[table].extend(range(start, start + n))
        else:
            self.version += 1
            ids = self._pick(table, n, remove=kind == "delete")
            sql = f"DELETE FROM {table} WHERE id IN ({ids})" if kind == "delete" else self._update_sql(table, ids)
            cur.execute(sql)
        if cur.rowcount != n:
            raise RuntimeError(f"{kind} on {table} changed {cur.rowcount} rows, expected {n}")
        self.stats[kind] += n
        self.stats["statements"] += 1

    def seed(self) -> None:
        with self.conn.cursor() as cur:
            for table in self.tables:
                self.statement(cur, table, "insert", SEED_ROWS)
        self.conn.commit()
        self.stats = dict.fromkeys(self.stats, 0)

    def write(self, rows: int) -> None:
        rng = self.rng
        left = rows
        with self.conn.cursor() as cur:
            while left > 0:
                r = rng.random()
                size = rng.randint(1, 5) if r < 0.70 else rng.randint(6, 50) if r < 0.97 else rng.randint(200, 2000)
                size = min(size, left)
                parts = min(size, rng.choice((1, 1, 2, 3)))
                cuts = sorted(rng.sample(range(1, size), parts - 1)) if parts > 1 else []
                for a, b in zip([0, *cuts], [*cuts, size], strict=True):
                    n = b - a
                    table = rng.choices(self.tables, self.weights)[0]
                    k = rng.random()
                    kind = "insert" if k < 0.50 else "update" if k < 0.92 else "delete"
                    if kind != "insert" and len(self.live[table]) < n + SEED_ROWS // 2:
                        kind = "insert"
                    self.statement(cur, table, kind, n)
                self.conn.commit()
                self.stats["transactions"] += 1
                left -= size


# --------------------------------------------------------------------------- runs


def _make_stats() -> Any:
    from deltaforge.runtime.pipeline import Stats

    class BenchStats(Stats):
        first_batch_events = 0

        def record(self, batch_in: Any, batch_out: Any) -> None:
            if self.first_commit is None:
                self.first_batch_events = len(batch_in.events)
            super().record(batch_in, batch_out)

    return BenchStats()


def engine_config(start: str, processors: bool) -> Any:
    from deltaforge.config import load_config

    cfg = load_config(ROOT / "conf" / "pipeline.yaml")
    rep = msgspec.structs.replace
    src = rep(cfg.spec.source, config=rep(cfg.spec.source.config, start=start))
    spec = rep(cfg.spec, source=src, processors=list(cfg.spec.processors) if processors else [])
    return rep(cfg, spec=spec)


def run_engine(cfg: Any, rows: int, redis_client: Any, *, timeout: float = 600.0,
               profile: cProfile.Profile | None = None, pyspy_out: str | None = None) -> dict[str, Any]:
    """Drain the backlog with the engine; returns the figures of this run."""
    from deltaforge.runtime.pipeline import Supervisor

    sup = Supervisor(cfg)
    sup.stats = _make_stats()
    errors: list[BaseException] = []
    stream = cfg.spec.sinks[0].config.stream

    def target() -> None:
        try:
            sup.run()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    spy = None
    if pyspy_out:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--rate", "200", "--native",
                                "--format", "raw", "-o", pyspy_out],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let it attach before the drain starts
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if profile is not None:
        # cProfile sees only its own thread: run the pipeline here, watch from a thread.
        def watch() -> None:
            while sup.stats.events_in < rows and not errors and time.perf_counter() - t0 < timeout:
                time.sleep(0.01)
            sup.stop.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        profile.enable()
        try:
            target()
        finally:
            profile.disable()
        watcher.join()
    else:
        th = threading.Thread(target=target, name="pipeline", daemon=True)
        th.start()
        while sup.stats.events_in < rows and not errors and th.is_alive() and time.perf_counter() - t0 < timeout:
            time.sleep(0.01)
        sup.stop.set()
        th.join(60)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode not in (0, -signal.SIGINT) and not Path(pyspy_out or "").exists():
            print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
    if errors:
        raise errors[0]
    st = sup.stats
    if st.events_in < rows:
        raise RuntimeError(f"engine drained only {st.events_in} of {rows} rows in {timeout:.0f}s")
    span = (st.last_commit or 0) - (st.first_commit or 0)
    counted = st.events_in - st.first_batch_events
    xlen = int(redis_client.xlen(stream))
    return {
        "events": st.events_in, "batches": st.batches, "stream_entries": xlen,
        "seconds": round(span, 3), "events_per_s": round(counted / span, 1) if span > 0 else 0.0,
        "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
        "cpu_us_per_event": round(cpu / st.events_in * 1e6, 1),
    }


def run_naive(mysql_dsn: str, redis_uri: str, start: str, rows: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    usage0 = os.times()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "naive.py"), "--mysql-dsn", mysql_dsn, "--redis-uri", redis_uri,
         "--start", start, "--tables", ",".join(TABLES), "--count", str(rows), "--stream", "naive"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    wall = time.perf_counter() - t0
    usage1 = os.times()
    if out.returncode != 0:
        raise RuntimeError(f"bench/naive.py failed ({out.returncode}): {out.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    cpu = (usage1.children_user - usage0.children_user) + (usage1.children_system - usage0.children_system)
    res.update(wall_s=round(wall, 3), cpu_s=round(cpu, 3),
               cpu_us_per_event=round(cpu / max(res["events"], 1) * 1e6, 1))
    return res


# --------------------------------------------------------------------------- profile analysis

#: (stage, how to find it) for cProfile: ("ct"|"tt", file suffix, function name[, caller name])
_STAGES: list[tuple[str, str, str, str, str | None]] = [
    ("read: mysql-replication fetchone (socket + framing + table maps)", "ct", "binlogstream.py", "fetchone", None),
    ("read: readiness checks (_buffered)", "ct", "binlog.py", "_buffered", "batches"),
    ("idle: waiting for data at the end of the backlog (_wait_readable)", "ct", "binlog.py", "_wait_readable", None),
    ("decode rows (rowdecode.decode_rows)", "ct", "rowdecode.py", "decode_rows", None),
    ("event ids (derive_event_id)", "ct", "model.py", "derive_event_id", None),
    ("event construction + batching (batches() self time)", "tt", "binlog.py", "batches", None),
    ("schema per table map (_schema_for)", "ct", "binlog.py", "_schema_for", None),
    ("JSON encode to V8 (msgspec)", "ct", "~", "<method 'encode' of 'msgspec.json.Encoder' objects>", "process"),
    ("bytes->str for V8", "ct", "~", "<method 'decode' of 'bytes' objects>", "process"),
    ("V8 call (mini-racer marshalling + JSON.parse + processBatch + stringify)", "ct", "js.py", "_call", None),
    ("JSON decode from V8 (msgspec)", "ct", "~", "<method 'decode' of 'msgspec.json.Decoder' objects>", "process"),
    ("rebuild events after JS (_rebuild)", "ct", "js.py", "_rebuild", None),
    ("envelope encode (native JSON)", "ct", "envelope.py", "_encode_native", None),
    ("stream name render", "ct", "envelope.py", "render_batch", None),
    ("idempotency keys", "ct", "model.py", "idempotency_key", None),
    ("XADD command tuples (genexpr in write)", "tt", "redis_stream.py", "<genexpr>", None),
    ("RESP encode (encode_commands; when compiled its time is in sink write's self time)", "ct",
     "resp_py.py", "encode_commands", "write"),
    ("sink write self time (bookkeeping; compiled RESP encode)", "tt", "redis_stream.py", "write", None),
    ("Redis round trip (send + read replies + checks)", "ct", "redis_stream.py", "_commit_with_retry", None),
    ("stats record", "ct", "pipeline.py", "record", None),
    ("setup: open sinks, connect source, start V8 (once)", "ct", "sinkset.py", "open", None),
    ("setup: open sinks, connect source, start V8 (once)", "ct", "binlog.py", "open_source", None),
    ("setup: open sinks, connect source, start V8 (once)", "ct", "js.py", "__init__", "run"),
]


def _find(stats: dict[Any, Any], file_suffix: str, func: str) -> list[Any]:
    return [k for k in stats if k[2] == func and (k[0] == file_suffix or k[0].endswith(file_suffix))]


def profile_stages(prof: cProfile.Profile, rows: int) -> dict[str, Any]:
    """Per-stage time from a cProfile run, in µs per event (cProfile overhead included)."""
    st = pstats.Stats(prof)
    raw: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for name, kind, file, func, caller in _STAGES:
        total = out.get(name, 0.0)
        for key in _find(raw, file, func):
            _cc, _nc, tt, ct, callers = raw[key]
            if caller is None:
                total += ct if kind == "ct" else tt
            else:
                for ckey, cval in callers.items():
                    if ckey[2] == caller:
                        total += cval[3] if kind == "ct" else cval[2]
        out[name] = total
    run_keys = _find(raw, "pipeline.py", "run")
    total = max((raw[k][3] for k in run_keys), default=0.0)
    stage = {k: round(v / rows * 1e6, 2) for k, v in out.items()}
    accounted = sum(out.values())
    stage["other (loop glue, C-level struct inits, gc)"] = round((total - accounted) / rows * 1e6, 2)
    fixed = sum(v for k, v in out.items() if k.startswith(("idle:", "setup:")))
    return {"total_us_per_event": round(total / rows * 1e6, 2),
            "busy_us_per_event": round((total - fixed) / rows * 1e6, 2), "stages_us_per_event": stage}


def print_profile_top(prof: cProfile.Profile, n: int = 25) -> None:
    for key in ("cumulative", "tottime"):
        print(f"\n--- cProfile top {n} by {key} ---")
        st = pstats.Stats(prof, stream=sys.stdout)
        st.sort_stats(key).print_stats(n)


#: py-spy stage classification: the first rule whose markers all occur in the sample's stack wins
#: (most specific first: socket reads happen both in the reader and in the Redis sink).
_SPY_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("setup: connections (incl. TLS context), V8 start", ("Connection.connect",)),
    ("setup: connections (incl. TLS context), V8 start", ("open_source",)),
    ("setup: connections (incl. TLS context), V8 start", ("SinkSet.open",)),
    ("setup: connections (incl. TLS context), V8 start", ("ProcessorChain.__init__",)),
    ("sink: Redis round trip (send + wait + parse replies)", ("_commit_with_retry",)),
    ("sink: envelope encode", ("envelope.py",)),
    ("sink: other (idempotency keys, command tuples, RESP)", ("redis_stream.py",)),
    ("js: rebuild events", ("_rebuild",)),
    ("js: V8 call (wait for V8 thread + marshalling)", ("_call (deltaforge/process/js.py",)),
    ("js: JSON encode/decode + other", ("process/js.py",)),
    ("read: decode rows", ("rowdecode.py",)),
    ("read: event ids", ("derive_event_id",)),
    ("read: schema per table map", ("_schema_for",)),
    ("idle: wait for data", ("_wait_readable",)),
    ("read: readiness checks", ("_buffered",)),
    ("read: table map parse (mysql-replication)", ("TableMapEvent", )),
    ("read: table map parse (mysql-replication)", ("row_event.py:8",)),
    ("read: socket recv", ("_fetch", "recv")),
    ("read: mysql-replication/pymysql framing", ("_fetch",)),
    ("read: event construction + batching", ("batches (deltaforge/source/binlog.py",)),
    ("stats", ("record (deltaforge/runtime/pipeline.py",)),
]


def pyspy_stages(path: str) -> dict[str, Any]:
    """Share of the pipeline thread's samples per stage, from py-spy's raw collapsed stacks."""
    counts: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if "(deltaforge/runtime/pipeline.py" not in stack:
            continue
        k = int(n)
        total += k
        label = next((lab for lab, marks in _SPY_RULES if all(m in stack for m in marks)), "other")
        counts[label] = counts.get(label, 0) + k
    shares = {k: round(100.0 * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}
    return {"samples": total, "share_pct": shares}


# --------------------------------------------------------------------------- experiments


@contextlib.contextmanager
def tablemap_cache() -> Any:
    """EXPERIMENT (bench only): reuse mysql-replication's parse of a table map whose bytes were seen before.

    The server re-sends each table's map before every rows event; with FULL row metadata
    the library's parse (columns, optional metadata, charset sync) is the reader's single
    biggest cost. Identical bytes (table id included) parse identically, so the parsed
    attributes are copied from the first instance; the per-packet fields are still set by
    ``BinLogEvent.__init__``.
    """
    from pymysqlreplication.event import BinLogEvent
    from pymysqlreplication.row_event import TableMapEvent

    original = TableMapEvent.__init__
    cache: dict[bytes, dict[str, Any]] = {}

    def init(self: Any, from_packet: Any, event_size: int, table_map: Any, ctl_connection: Any, **kw: Any) -> None:
        p = from_packet.packet
        key = bytes(p._data[p._position:p._position + event_size])
        hit = cache.get(key)
        if hit is None:
            original(self, from_packet, event_size, table_map, ctl_connection, **kw)
            if len(cache) > 4096:
                cache.clear()
            cache[key] = dict(self.__dict__)
            return
        self.__dict__.update(hit)
        BinLogEvent.__init__(self, from_packet, event_size, table_map, ctl_connection, **kw)
        self._processed = hit["_processed"]
        if self._processed:
            table_map[self.table_id] = self.table_obj

    TableMapEvent.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        TableMapEvent.__init__ = original  # type: ignore[method-assign]


#: extra runs (not in the default set): name -> (config tweak, context manager factory)
def experiment_config(kind: str, start: str) -> Any:
    cfg = engine_config(start, True)
    if kind == "ours-b1000":
        rep = msgspec.structs.replace
        cfg = rep(cfg, spec=rep(cfg.spec, batch=rep(cfg.spec.batch, max_events=1000)))
    return cfg


def v8_micro(cfg: Any, n_batches: int = 20) -> dict[str, Any]:
    """Time the JS stage's parts on real batches of the backlog (µs per event, medians of 5 passes)."""
    from deltaforge.process.js import JsProcessor, _decode_out, _encode
    from deltaforge.source.binlog import open_source

    stop = threading.Event()
    source = open_source(cfg, stop, None)
    batches = []
    try:
        for batch in source.batches():
            if batch.events:
                batches.append(batch)
            if len(batches) >= n_batches:
                break
    finally:
        source.close()
    events = sum(len(b.events) for b in batches)
    spec = cfg.spec.processors[0]
    seed = JsProcessor(spec, 0)
    identity = JsProcessor(msgspec.structs.replace(spec, code="function processBatch(events) { return events; }"), 0)
    empty = JsProcessor(msgspec.structs.replace(spec, code="function processBatch(events) { return null; }"), 0)
    payloads = [_encode(b.events).decode() for b in batches]

    def timed(fn: Any) -> float:
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for i, b in enumerate(batches):
                fn(i, b)
            runs.append(time.perf_counter() - t)
        return round(statistics.median(runs) / events * 1e6, 2)

    results = [seed._call(p, b) for p, b in zip(payloads, batches, strict=True)]
    outs = [_decode_out(r) for r in results]
    figures = {
        "events": events, "batches": len(batches),
        "encode_to_json_str": timed(lambda i, b: _encode(b.events).decode()),
        "v8_call_fixed_cost (processBatch returns null on a 2-byte input)": timed(lambda i, b: empty._call("[]", b)),
        "v8_call_parse_only (returns null)": timed(lambda i, b: empty._call(payloads[i], b)),
        "v8_call_identity (parse + slim + stringify)": timed(lambda i, b: identity._call(payloads[i], b)),
        "v8_call_seed": timed(lambda i, b: seed._call(payloads[i], b)),
        "decode_from_json": timed(lambda i, b: _decode_out(results[i])),
        "rebuild": timed(lambda i, b: seed._rebuild(b, outs[i])),
        "whole_process_seed": timed(lambda i, b: seed.process(b)),
        "payload_bytes_per_event": round(sum(len(p) for p in payloads) / events, 1),
        "result_bytes_per_event": round(sum(len(r) for r in results) / events, 1),
    }
    for proc in (seed, identity, empty):
        proc.close()
    return figures


# --------------------------------------------------------------------------- main


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="row changes in the backlog")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", default="ours,ours-noproc,naive",
                    help="comma-separated runs: ours, ours-noproc, naive, and the experiments ours-tmcache "
                         "(table-map parse cache) and ours-b1000 (batch.max_events 1000)")
    ap.add_argument("--v8-micro", action="store_true", help="time the JS stage's parts on real batches")
    ap.add_argument("--json", dest="json_path", default=None, help="write the figures here")
    ap.add_argument("--profile", default=None, help="cProfile one more engine run; dump pstats here")
    ap.add_argument("--py-spy", dest="pyspy", default=None, help="py-spy one more engine run; raw stacks here")
    args = ap.parse_args(argv)

    from deltaforge.demo import SCHEMA
    from deltaforge.testing import MariaDBServer, RedisServer

    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    mysql = MariaDBServer()
    redis_srv = RedisServer()
    result: dict[str, Any] = {"rows": args.rows, "rounds": args.rounds, "runs": {k: [] for k in kinds}}
    try:
        mysql.start()
        redis_srv.start()
        mysql.execute(*SCHEMA)
        os.environ["MYSQL_DSN"] = mysql.dsn(db="app")
        os.environ["REDIS_URI"] = redis_srv.uri
        conn = mysql.connect(user="root", database="app")
        conn.autocommit(False)
        backlog = Backlog(conn, random.Random(args.seed))
        backlog.seed()
        file, pos = mysql.execute("SHOW MASTER STATUS")[0][:2]
        start = f"{file}:{pos}"
        t0 = time.perf_counter()
        backlog.write(args.rows)
        conn.close()
        write_s = time.perf_counter() - t0
        end = mysql.execute("SHOW MASTER STATUS")[0][:2]
        result.update(start=start, end=f"{end[0]}:{end[1]}", backlog=backlog.stats, write_s=round(write_s, 2))
        print(f"backlog: {args.rows} row changes in {backlog.stats['transactions']} transactions "
              f"({backlog.stats}) written in {write_s:.1f}s, binlog {start} .. {end[0]}:{end[1]}", flush=True)

        client = redis_srv.client()
        cfgs = {"ours": engine_config(start, True), "ours-noproc": engine_config(start, False),
                "ours-b1000": experiment_config("ours-b1000", start), "ours-tmcache": engine_config(start, True)}
        for r in range(args.rounds):
            order = kinds[r % len(kinds):] + kinds[: r % len(kinds)]
            for kind in order:
                client.flushall()
                load = os.getloadavg()[0]
                if kind == "naive":
                    res = run_naive(mysql.dsn(), redis_srv.uri, start, args.rows)
                    res["stream_entries"] = int(client.xlen("naive"))
                elif kind == "ours-tmcache":
                    with tablemap_cache():
                        res = run_engine(cfgs[kind], args.rows, client)
                else:
                    res = run_engine(cfgs[kind], args.rows, client)
                res["load1"] = round(load, 2)
                res["round"] = r
                result["runs"][kind].append(res)
                print(f"round {r} {kind:12s} {res['events_per_s']:>10.1f} ev/s  ({res['seconds']}s, "
                      f"wall {res['wall_s']}s, cpu {res['cpu_us_per_event']} µs/ev, "
                      f"entries {res['stream_entries']}, load {load:.2f})", flush=True)

        summary: dict[str, Any] = {}
        for kind, runs in result["runs"].items():
            rates = [x["events_per_s"] for x in runs]
            summary[kind] = {"events_per_s_median": median(rates), "min": min(rates, default=0),
                             "max": max(rates, default=0),
                             "cpu_us_per_event_median": median([x["cpu_us_per_event"] for x in runs])}
        naive = summary.get("naive", {}).get("events_per_s_median") or 0
        for kind in summary:
            summary[kind]["ratio_vs_naive"] = round(summary[kind]["events_per_s_median"] / naive, 2) if naive else None
        result["summary"] = summary
        print(f"\n{'run':14s} {'events/s (median)':>18s} {'min':>10s} {'max':>10s} {'cpu µs/ev':>10s} {'x naive':>8s}")
        for kind, s in summary.items():
            ratio = f"{s['ratio_vs_naive']:.2f}" if s["ratio_vs_naive"] is not None else "-"
            print(f"{kind:14s} {s['events_per_s_median']:>18.1f} {s['min']:>10.1f} {s['max']:>10.1f} "
                  f"{s['cpu_us_per_event_median']:>10.1f} {ratio:>8s}")

        if args.profile:
            client.flushall()
            prof = cProfile.Profile()
            res = run_engine(cfgs["ours"], args.rows, client, profile=prof)
            prof.dump_stats(args.profile)
            stages = profile_stages(prof, args.rows)
            result["cprofile"] = {"run": res, **stages}
            print(f"\ncProfile run: {res['events_per_s']} ev/s under the profiler; "
                  f"{stages['total_us_per_event']} µs/event in Pipeline.run, "
                  f"{stages['busy_us_per_event']} without set-up and the final idle wait")
            for k, v in stages["stages_us_per_event"].items():
                print(f"  {v:>8.2f} µs/ev  {k}")
            print_profile_top(prof)
        if args.v8_micro:
            micro = v8_micro(cfgs["ours"])
            result["v8_micro_us_per_event"] = micro
            print("\nJS stage on real batches (µs/event, median of 5 passes):")
            for k, v in micro.items():
                print(f"  {v:>9}  {k}")
        if args.pyspy:
            if shutil.which("py-spy") is None:
                print("py-spy is not installed (pip install py-spy); skipping", file=sys.stderr)
            else:
                client.flushall()
                res = run_engine(cfgs["ours"], args.rows, client, pyspy_out=args.pyspy)
                spy = pyspy_stages(args.pyspy) if Path(args.pyspy).exists() else {}
                result["pyspy"] = {"run": res, **spy}
                print(f"\npy-spy run: {res['events_per_s']} ev/s while sampled; {spy.get('samples')} samples "
                      "of the pipeline thread")
                for k, v in spy.get("share_pct", {}).items():
                    print(f"  {v:>5.1f}%  {k}")
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(result, indent=2, default=str))
    finally:
        with contextlib.suppress(Exception):
            redis_srv.stop()
        with contextlib.suppress(Exception):
            mysql.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
