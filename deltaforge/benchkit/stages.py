"""The engine's stages, each timed in isolation on the backlog range: where the drain's time goes.

:func:`measure_stages` returns rows/s or events/s for

* ``decode_rows_per_s``: ours, :class:`~deltaforge.source.binlog.BinlogSource` over
  ``[backlog.start, +rows)`` with the seed's config minus processors, no sink. It includes
  transport and framing (``_core/framing.pyx``), the table-map parse (once per distinct map),
  our row decoder and each event's native JSON (``_core/eventbuf.pyx``) in the batches;
* ``decode_rows_per_s_mysql_replication``: ``BinLogStreamReader`` over the same range with
  only the four tables' row events, touching ``ev.rows`` (the library's own row decoding
  into dicts; its table-map parse is not cached). The two are the same job, each with its
  own output objects: an honest comparison of readers, not of bare decoders;
* ``js_events_per_s``: the seed's processor (:class:`ProcessorChain`, ``process()`` as a
  whole: encode to JSON, V8, decode, rebuild) over the decoded batches;
* ``sink_events_per_s``: :class:`RedisStreamSink` ``write()`` (envelope encode, RESP,
  MULTI/XADD.../SET/EXEC round trip, exactly-once) of the processed batches, to a bench
  stream deleted afterwards.

With the backlog's :class:`~deltaforge.benchkit.workload.BinlogEvents` given, both readers are
also reported in binlog events/s (``decode_binlog_events_per_s``, ``..._mysql_replication``):
the events between the reader's positions at its first and last timed unit (GTID, TABLE_MAP,
ANNOTATE_ROWS, ROWS, XID... all of them: a reader pays for each), over the same seconds.

Each clock starts when the stage's first unit of work arrives or begins (connection set-up
and the V8 start are outside it). For the two readers the first batch/rows event starts the
clock and is not counted, like the drain's first-to-last-entry rate.

Hazards:
- Every decoded batch is held in memory for the next stages (about 1-2 KB per event);
  pass ``rows`` to bound it on a large backlog. The JS stage replaces its input batches by
  their outputs as it goes, so the peak is one copy.
- A backlog range holding fewer than ``rows`` row changes of the four tables would leave
  the readers waiting: both stop at the range's end (``stop`` after a silence, a
  non-blocking dump) and a short count raises :class:`BenchError`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec

from deltaforge.benchkit.env import BenchError
from deltaforge.benchkit.workload import BinlogEvents, position_key
from deltaforge.dsn import parse_mysql_dsn

if TYPE_CHECKING:
    from deltaforge.benchkit.env import BenchEnv
    from deltaforge.benchkit.workload import Backlog
    from deltaforge.model import Batch

#: a reader's timed span: its position at the first and at the last timed unit, and the seconds between
Span = tuple[tuple[str, int], tuple[str, int], float]
#: the sink stage's stream (the checkpoint key derives from it, so the seed's is untouched)
SINK_STREAM = "bench:stages:sink"
#: a reader that sees no new row for this long has reached the end of the range
_IDLE_S = 10.0
#: replica ids of the stage readers: distinct from the engine's and the peers' (991, 992)
_OURS_SERVER_ID = 993
_LIB_SERVER_ID = 994


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def decode_ours(env: BenchEnv, backlog: Backlog, rows: int) -> tuple[float, list[Batch], int, Span]:
    """(rows/s, the batches read, rows read, the timed span) for BinlogSource over the range."""
    from deltaforge.benchkit.workload import seed_config
    from deltaforge.source.binlog import open_source

    cfg = seed_config(env, backlog.start, processors=False)
    rep = msgspec.structs.replace
    # Its own replica id: the seed's default id could collide with a pipeline still running.
    cfg = rep(cfg, spec=rep(cfg.spec, source=rep(cfg.spec.source,
                                                 config=rep(cfg.spec.source.config, server_id=_OURS_SERVER_ID))))
    stop = threading.Event()
    source = open_source(cfg, stop, None)
    kept: list[Batch] = []
    seen = 0
    first = 0
    t0 = t1 = 0.0
    p0 = p1 = (backlog.start.rsplit(":", 1)[0], int(backlog.start.rsplit(":", 1)[1]))
    last_row = time.monotonic()

    def watchdog() -> None:
        # batches() waits for more data at the end of the range; end it once nothing new comes.
        while not stop.wait(0.5):
            if time.monotonic() - last_row > _IDLE_S:
                stop.set()

    dog = threading.Thread(target=watchdog, name="bench-decode-watchdog", daemon=True)
    dog.start()
    gen = source.batches()
    try:
        for batch in gen:
            n = len(batch.events)
            if not n:
                continue
            now = time.perf_counter()
            last_row = time.monotonic()
            if not kept:
                t0, first = now, n
                p0 = (batch.end.file, batch.end.pos)
            t1 = now
            p1 = (batch.end.file, batch.end.pos)
            kept.append(batch)
            seen += n
            if seen >= rows:
                break
    finally:
        stop.set()
        gen.close()  # type: ignore[attr-defined]  # leaves the table-map cache of this thread switched off for the next reader
        source.close()
        dog.join()
    if seen < rows:
        raise BenchError(f"the backlog range from {backlog.start} held {seen} row changes, expected {rows}",
                         "write the backlog right before measuring (nothing may purge or rotate past it)")
    return _rate(seen - first, t1 - t0), kept, seen, (p0, p1, t1 - t0)


def decode_mysql_replication(env: BenchEnv, backlog: Backlog, rows: int) -> tuple[float, int, Span]:
    """(rows/s, rows read, the timed span) for mysql-replication's BinLogStreamReader with its own row decoding."""
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    from deltaforge.benchkit.peers import TABLES

    tables = getattr(backlog, "tables", None) or TABLES
    dsn = parse_mysql_dsn(env.mysql_dsn, "--mysql-dsn")
    file, pos = backlog.start.rsplit(":", 1)
    stream = BinLogStreamReader(
        connection_settings={"host": dsn.host, "port": dsn.port, "user": dsn.user, "password": dsn.password,
                             "connect_timeout": 10},
        server_id=_LIB_SERVER_ID, blocking=False, resume_stream=True, log_file=file, log_pos=int(pos),
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
        only_schemas=sorted({t.split(".", 1)[0] for t in tables}),
        only_tables=sorted({t.split(".", 1)[1] for t in tables}),
    )
    seen = 0
    first = 0
    t0 = t1 = 0.0
    p0 = p1 = (file, int(pos))
    try:
        for ev in stream:
            n = len(ev.rows)  # the library decodes every row of the event into dicts here
            now = time.perf_counter()
            if not seen:
                t0, first = now, n
                p0 = (stream.log_file, stream.log_pos)
            t1 = now
            p1 = (stream.log_file, stream.log_pos)
            seen += n
            if seen >= rows:
                break
    finally:
        stream.close()
    if seen < rows:
        raise BenchError(f"mysql-replication read {seen} row changes from {backlog.start}, expected {rows}",
                         "write the backlog right before measuring (nothing may purge or rotate past it)")
    return _rate(seen - first, t1 - t0), seen, (p0, p1, t1 - t0)


def _events_rate(events: BinlogEvents | None, span: Span) -> float | None:
    """Binlog events/s over a reader's timed span, or None without the backlog's event list."""
    if events is None:
        return None
    p0, p1, seconds = span
    return _rate(events.between(position_key(p0), position_key(p1)), seconds)


def js_stage(env: BenchEnv, backlog: Backlog, batches: list[Batch]) -> float:
    """events/s of the seed's processor chain; replaces ``batches`` in place by the processed batches."""
    from deltaforge.benchkit.workload import seed_config
    from deltaforge.process.js import ProcessorChain

    cfg = seed_config(env, backlog.start)
    events = sum(len(b.events) for b in batches)
    with ProcessorChain(list(cfg.spec.processors), cfg.metadata.name) as chain:
        if batches:
            # One warm-up call outside the clock: V8 compiles the user's code lazily on first use.
            chain.process(batches[0])
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            batches[i] = chain.process(batch)
        seconds = time.perf_counter() - t0
    return _rate(events, seconds)


def sink_stage(env: BenchEnv, backlog: Backlog, batches: list[Batch]) -> float:
    """events/s of RedisStreamSink.write (exactly-once) of ``batches`` into a bench stream, cleaned after."""
    from deltaforge.benchkit.workload import seed_config
    from deltaforge.sink.redis_stream import RedisStreamSink

    cfg = seed_config(env, backlog.start, stream=SINK_STREAM)
    spec = cfg.spec.sinks[0]
    sink = RedisStreamSink(spec.config, cfg.metadata.name, cfg.metadata.tenant, "spec.sinks[0].config")
    client = env.redis()
    try:
        client.delete(SINK_STREAM, sink.checkpoint_key)
        sink.open()
        events = sum(len(b.events) for b in batches)
        t0 = time.perf_counter()
        for batch in batches:
            sink.write(batch)
        seconds = time.perf_counter() - t0
        written = int(client.xlen(SINK_STREAM))
        if written != events:
            raise BenchError(f"the sink stage left {written} entries in {SINK_STREAM}, expected {events}",
                             "a batch was skipped as already committed: the bench stream was not empty")
    finally:
        with contextlib.suppress(Exception):
            sink.close()
        with contextlib.suppress(Exception):
            client.delete(SINK_STREAM, sink.checkpoint_key)
        client.close()
    return _rate(events, seconds)


def measure_stages(env: BenchEnv, backlog: Backlog, rows: int | None = None,
                   events: BinlogEvents | None = None) -> dict[str, Any]:
    """Each stage alone on the first ``rows`` (default: all) row changes of the backlog.

    Returns ``decode_rows_per_s``, ``decode_rows_per_s_mysql_replication``, ``js_events_per_s``,
    ``sink_events_per_s`` and ``rows`` (the row changes each figure is over); with ``events``
    (the backlog's binlog events) also ``decode_binlog_events_per_s`` and
    ``decode_binlog_events_per_s_mysql_replication``.
    """
    want = backlog.rows if rows is None else min(rows, backlog.rows)
    if want <= 0:
        raise BenchError("measure_stages needs a backlog of at least one row change", "pass --rows 1000 or more")
    decode, batches, seen, span = decode_ours(env, backlog, want)
    lib, lib_seen, lib_span = decode_mysql_replication(env, backlog, want)
    js = js_stage(env, backlog, batches)
    sink = sink_stage(env, backlog, batches)
    return {
        "decode_rows_per_s": decode,
        "decode_rows_per_s_mysql_replication": lib,
        "js_events_per_s": js,
        "sink_events_per_s": sink,
        "rows": seen,
        "rows_mysql_replication": lib_seen,
        **({} if events is None else {
            "decode_binlog_events_per_s": _events_rate(events, span),
            "decode_binlog_events_per_s_mysql_replication": _events_rate(events, lib_span),
        }),
    }
