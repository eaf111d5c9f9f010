"""Micro-benchmark of the Redis Streams sink's per-batch cost: envelope + RESP encode, send, reply parse.

Indicative figures only (no assertion anywhere): it starts a private Redis
(``deltaforge.testing.RedisServer``), writes synthetic OLTP-like batches through
``RedisStreamSink.write()`` and prints microseconds per batch and per event, plus the
encode-only share (``_encode`` of the commit request, no network). Run it alone on an
idle machine, e.g. ``python bench/sink_micro.py --events 200 --batches 300``.

``--against <commit>`` also runs the sink module of that commit (``git show
<commit>:deltaforge/sink/redis_stream.py``, loaded beside today's helpers, so it only works
while that module's imports still exist) on the same batches, interleaved run by run: a
before/after on the same machine load.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from deltaforge.config import EnvelopeSpec, RedisSinkConfig
from deltaforge.model import Batch, Event, Position, Source, Transaction
from deltaforge.sink.redis_stream import RedisStreamSink
from deltaforge.testing import RedisServer


def make_batch(b: int, n: int) -> Batch:
    events = []
    for s in range(n):
        table = ("app.users", "app.orders", "app.products", "app.inventory")[s % 4]
        db, _, tbl = table.partition(".")
        events.append(Event(
            event_id=f"{b:08x}-{s:04x}-5e1f-8c2d-3a4b5c6d7e8f", tenant_id="acme", table=table, op="u",
            before={"id": s, "email": f"user{s}@example.com", "name": "Zoë Example", "balance": "12.50"},
            after={"id": s, "email": f"user{s}@example.com", "name": "Zoë Example", "balance": "13.75"},
            ts_ms=1_714_564_800_123 + s,
            source=Source(connector="mysql", name="bench", server_id=1, db=db, table=tbl, file="binlog.000001",
                          pos=1000 * b + s, row=0, gtid=f"0-1-{b}", ts_ms=1_714_564_800_000),
            transaction=Transaction(id=f"0-1-{b}", seq=s, end=s == n - 1), tags=None))
    return Batch(seq=b, events=events, keys=[(1, b, s) for s in range(n)],
                 end=Position("binlog.000001", 1000 * (b + 1), gtid=f"0-1-{b}"))


def load_sink_class(commit: str) -> type:
    src = subprocess.run(["git", "show", f"{commit}:deltaforge/sink/redis_stream.py"], capture_output=True,
                         check=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="deltaforge-sinkmicro-")) / "old_redis_stream.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_redis_stream", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RedisStreamSink  # type: ignore[no-any-return]


def run(server: RedisServer, *, events: int, batches: int, envelope: str, delivery: str, stream: str,
        sink_class: type = RedisStreamSink, label: str = "now") -> None:
    cfg = RedisSinkConfig(id="bench", uri=server.uri, stream=stream, envelope=EnvelopeSpec(type=envelope),
                          delivery=delivery)
    sink = sink_class(cfg, "bench", "acme", "spec.sinks[0].config")
    import redis

    redis.Redis.from_url(server.uri).flushall()
    sink.open()
    data = [make_batch(b + 1, events) for b in range(batches)]
    times, cpu = [], []
    for batch in data:
        t0, c0 = time.perf_counter(), time.thread_time()
        sink.write(batch)
        cpu.append(time.thread_time() - c0)
        times.append(time.perf_counter() - t0)
    enc = getattr(sink, "_encode", None)
    enc_us = float("nan")
    if enc is not None:
        t0 = time.perf_counter()
        for batch in data:
            enc(batch.events, batch.dead, batch.end, sink._commit + 1)
        enc_us = (time.perf_counter() - t0) / len(data) * 1e6
    sink.close()
    med = statistics.median(times) * 1e6
    cpu_us = statistics.median(cpu) * 1e6
    print(f"{label:8} {envelope:8} {delivery:13} {stream[:18]:18} n={events:5}: wall {med / events:5.2f} us/event, "
          f"client CPU {cpu_us / events:5.2f} us/event (encode only {enc_us / events:5.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, nargs="+", default=[50, 500, 2000])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--against", metavar="COMMIT", help="also run the sink of this git commit")
    args = ap.parse_args()
    sinks: list[tuple[str, type]] = [("now", RedisStreamSink)]
    if args.against:
        sinks.insert(0, (args.against[:8], load_sink_class(args.against)))
    server = RedisServer().start()
    try:
        for n in args.events:
            for envelope, delivery, stream in (("native", "exactly_once", "cdc:events"),
                                               ("debezium", "exactly_once", "cdc:events"),
                                               ("native", "exactly_once", "cdc:${source.db}.${source.table}"),
                                               ("native", "at_least_once", "cdc:events")):
                for label, sink_class in sinks:
                    run(server, events=n, batches=args.batches, envelope=envelope, delivery=delivery,
                        stream=stream, sink_class=sink_class, label=label)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
