"""In-process topology: reader -> processors -> sinks in one process (DESIGN.md §2, ``--workers 0``).

The stages exchange :class:`~deltaforge.model.Batch` objects only, so the
multi-process topology rewires the same stage code over shared-memory rings.

Lifecycle contract (owned by :class:`Supervisor`):

* The resume position is read from the sinks (minimum over every checkpoint,
  see :mod:`deltaforge.sink.sinkset`); without any, ``spec.source.config.start``
  applies and is written to the sinks before the first event is read.
* SIGINT/SIGTERM set ``stop``: the reader stops at the next transaction boundary,
  the batches already read are processed and committed, exit 0. A second signal
  exits at once: commits are atomic, so nothing partial can land.
* A retriable error (server went away, Redis LOADING, ...) restarts the pipeline
  from the checkpoint with exponential backoff; after ``max_restarts`` failures in
  a row without progress, or on any other error, the run ends non-zero with the
  error's one-line message.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import signal
import threading
import time
from types import FrameType
from typing import Any

from deltaforge.errors import DeltaForgeError, FencedError
from deltaforge.model import Batch, Position

#: batches read ahead of the processor/sink stage: bounds memory, lets decoding overlap V8 and Redis waits
READ_AHEAD = 2
_END = object()


class AnyStop:
    """Stop flag that is set when any of its events is (the supervisor's stop, or this run's halt)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)

log = logging.getLogger("deltaforge.pipeline")


class Stats:
    """Counters for progress lines (and the bench)."""

    def __init__(self) -> None:
        self.batches = 0
        self.events_in = 0
        self.events_out = 0
        #: dead letters committed (counted once per record, whatever the number of sinks)
        self.dead_letters = 0
        self.position: Position | None = None
        self.first_commit: float | None = None
        self.last_commit: float | None = None
        self.lag_ms = 0
        #: checkpoint value each sink last committed: a restart must find it unchanged (fencing)
        self.sink_values: dict[str, bytes] = {}
        #: starting | running | restarting | stopped (for /health)
        self.state = "starting"
        self.restarts = 0
        self.last_error = ""

    def prometheus(self, pipeline: str) -> str:
        """Prometheus text exposition of the counters (``/metrics``)."""
        label = f'{{pipeline="{pipeline}"}}'
        pos = self.position
        lines = [
            "# HELP deltaforge_up 1 while the pipeline is connected and streaming",
            "# TYPE deltaforge_up gauge",
            f"deltaforge_up{label} {1 if self.state == 'running' else 0}",
            "# TYPE deltaforge_events_read_total counter",
            f"deltaforge_events_read_total{label} {self.events_in}",
            "# TYPE deltaforge_events_committed_total counter",
            f"deltaforge_events_committed_total{label} {self.events_out}",
            "# TYPE deltaforge_batches_committed_total counter",
            f"deltaforge_batches_committed_total{label} {self.batches}",
            "# HELP deltaforge_lag_ms source commit time of the newest committed event to its commit in the sinks",
            "# TYPE deltaforge_lag_ms gauge",
            f"deltaforge_lag_ms{label} {self.lag_ms}",
            "# TYPE deltaforge_last_commit_timestamp_seconds gauge",
            f"deltaforge_last_commit_timestamp_seconds{label} {self.last_commit or 0:.3f}",
            "# HELP deltaforge_dlq_entries_total events (or undecodable rows events) sent to the dead-letter streams",
            "# TYPE deltaforge_dlq_entries_total counter",
            f"deltaforge_dlq_entries_total{label} {self.dead_letters}",
            "# TYPE deltaforge_restarts_total counter",
            f"deltaforge_restarts_total{label} {self.restarts}",
        ]
        if pos is not None:
            lines += ["# TYPE deltaforge_binlog_position gauge",
                      f'deltaforge_binlog_position{{pipeline="{pipeline}",file="{pos.file}"}} {pos.pos}']
        from deltaforge.sink.trim import TRIM_METRICS  # the sinks' trim counters (process-wide)

        lines += TRIM_METRICS.prometheus(pipeline)
        return "\n".join(lines) + "\n"

    def health(self) -> tuple[int, str]:
        """``/health``: 200 while streaming, 503 while starting, restarting or stopped."""
        if self.state == "running":
            return 200, f"ok: streaming, position {self.position}, lag {self.lag_ms} ms\n"
        detail = f" ({self.last_error})" if self.last_error else ""
        return 503, f"{self.state}{detail}\n"

    def record(self, batch_in: Batch, batch_out: Batch) -> None:
        now = time.time()
        if self.first_commit is None:
            self.first_commit = now
        self.last_commit = now
        self.batches += 1
        self.events_in += len(batch_in.events)
        self.events_out += len(batch_out.events)
        self.position = batch_in.end
        for d in batch_out.dead:
            # once per committed record: a replay after a crash re-isolates it but never re-commits it
            self.dead_letters += 1
            log.warning("dead letter from %s: %s at %s:%s%s: %s",
                        f"processor {d.processor}" if d.processor else "the row decoder", d.table, d.file,
                        d.pos, f" row {d.row}" if d.row is not None else "", d.error)
        if batch_in.events:
            self.lag_ms = max(0, int(now * 1000) - batch_in.events[-1].ts_ms)


class Pipeline:
    """One run of the stages, from the checkpoint until stop or an error."""

    def __init__(self, cfg: Any, stop: threading.Event, stats: Stats | None = None) -> None:
        self.cfg = cfg
        self.stop = stop
        self.stats = stats or Stats()

    def run(self) -> None:
        from deltaforge.process.js import ProcessorChain
        from deltaforge.sink.redis_stream import RedisStreamSink
        from deltaforge.sink.sinkset import SinkSet
        from deltaforge.source.binlog import open_source

        cfg = self.cfg
        name = cfg.metadata.name
        sinks = SinkSet(
            [RedisStreamSink(s.config, name, cfg.metadata.tenant, f"spec.sinks[{i}]")
             for i, s in enumerate(cfg.spec.sinks)],
            cfg.spec.commit_policy,
        )
        chain = None
        source = None
        reader: threading.Thread | None = None
        writer: threading.Thread | None = None
        halt = threading.Event()  # ends this run's reader (errors in this thread)
        try:
            resume = sinks.open(self.stats.sink_values)
            chain = ProcessorChain(list(cfg.spec.processors), name) if cfg.spec.processors else None
            source = open_source(cfg, AnyStop(self.stop, halt), resume)  # type: ignore[arg-type]
            if source.start_position is not None:
                sinks.persist_start(source.start_position)
            self.stats.state = "running"
            log.info("pipeline %s: reading from %s%s", name, source.start_position,
                     " (checkpoint)" if resume else f" (start: {cfg.spec.source.config.start})")
            # Three stages, three threads: the reader decodes, this thread runs V8, the writer talks to
            # Redis. V8 and socket waits release the GIL, so the stages overlap; one thread per stage
            # keeps batches in order, and the small queues bound memory.
            from_reader: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
            to_writer: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
            failure: list[BaseException] = []
            reader = threading.Thread(target=_read_batches, args=(source, from_reader, halt),
                                      name="deltaforge-reader", daemon=True)
            writer = threading.Thread(target=_write_batches, args=(sinks, to_writer, halt, self.stats, failure),
                                      name="deltaforge-writer", daemon=True)
            reader.start()
            writer.start()
            while True:
                if failure:
                    raise failure[0]
                try:
                    batch = from_reader.get(timeout=0.2)
                except queue.Empty:
                    continue
                if batch is _END:
                    break
                if isinstance(batch, BaseException):
                    # the reader failed after handing out what was complete: commit that first
                    _put(to_writer, _END, halt)
                    writer.join()
                    raise batch
                out = chain.process(batch) if chain is not None else batch
                _put(to_writer, (batch, out), halt)
            _put(to_writer, _END, halt)
            writer.join()
            if failure:
                raise failure[0]
        finally:
            halt.set()
            for thread in (writer, reader):
                if thread is not None:
                    thread.join(timeout=10)
            for sink in sinks.sinks:
                if sink.last_value is not None:
                    self.stats.sink_values[sink.id] = sink.last_value
            if source is not None:
                source.close()
            if chain is not None:
                chain.close()
            sinks.close()


def _put(q: queue.Queue[Any], item: Any, halt: threading.Event) -> bool:
    """Blocking put that gives up when this run is halted (the consumer may be gone)."""
    while True:
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            if halt.is_set():
                return False


def _read_batches(source: Any, handoff: queue.Queue[Any], halt: threading.Event) -> None:
    """Reader thread: batches into ``handoff``, then ``_END``; an exception is handed over as an item."""
    try:
        for batch in source.batches():
            if not _put(handoff, batch, halt):
                return
        _put(handoff, _END, halt)
    except BaseException as e:  # noqa: BLE001 - re-raised in the pipeline thread
        _put(handoff, e, halt)


def _write_batches(sinks: Any, inbox: queue.Queue[Any], halt: threading.Event, stats: Stats,
                   failure: list[BaseException]) -> None:
    """Writer thread: commits batches in order; the first error stops the run."""
    last_report = time.monotonic()
    reported = stats.events_in
    try:
        while True:
            try:
                item = inbox.get(timeout=0.2)
            except queue.Empty:
                if halt.is_set():
                    return
                continue
            if item is _END:
                return
            batch, out = item
            sinks.write(out)
            stats.record(batch, out)
            now = time.monotonic()
            if now - last_report >= 10.0:
                rate = (stats.events_in - reported) / (now - last_report)
                log.info("committed %d events (%.0f/s), position %s, lag %d ms",
                         stats.events_in, rate, stats.position, stats.lag_ms)
                last_report, reported = now, stats.events_in
    except BaseException as e:  # noqa: BLE001 - re-raised in the pipeline thread
        failure.append(e)
        halt.set()


class Supervisor:
    """Owns the pipeline's lifecycle: signals, restarts with backoff, exit status."""

    def __init__(self, cfg: Any, *, max_restarts: int = 8, backoff_max_s: float = 30.0) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        self.stats = Stats()
        self.max_restarts = max_restarts
        self.backoff_max_s = backoff_max_s
        self._signals = 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Handlers only set flags; the second signal is the operator insisting.
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"second signal: exiting now without committing anything partial\n")
            os._exit(130)
        self.stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def run(self) -> int:
        """Run until stopped; returns the process exit code. Raises the fatal DeltaForgeError."""
        failures = 0
        while not self.stop.is_set():
            before = self.stats.events_in, self.stats.batches
            try:
                Pipeline(self.cfg, self.stop, self.stats).run()
                if self.stop.is_set():
                    break
            except FencedError:
                raise
            except DeltaForgeError as e:
                if not e.retriable:
                    raise
                if (self.stats.events_in, self.stats.batches) != before:
                    failures = 0
                failures += 1
                self.stats.state = "restarting"
                self.stats.restarts += 1
                self.stats.last_error = str(e)
                if failures > self.max_restarts:
                    raise
                delay = min(self.backoff_max_s, 0.5 * 2 ** (failures - 1)) * (0.5 + random.random() / 2)
                log.warning("%s; restarting from the checkpoint in %.1fs (attempt %d of %d)",
                            e, delay, failures, self.max_restarts)
                if self.stop.wait(delay):
                    break
        self.stats.state = "stopped"
        log.info("stopped: %d events committed in %d batches, position %s",
                 self.stats.events_in, self.stats.batches, self.stats.position)
        return 0
