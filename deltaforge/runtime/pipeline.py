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

Idle waits block in the kernel, never poll: the stages hand batches over through
:class:`_Channel` (condition waits, woken by an item or by this run's ``halt``), and the
reader selects on the binlog socket plus :meth:`AnyStop.wake_fileno`, a socket that the stop
and halt events write to when set (:class:`WakeEvent`). An idle engine wakes only for the
server's heartbeats.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

from deltaforge.errors import DeltaForgeError, FencedError
from deltaforge.model import Batch, Position

#: batches read ahead of the processor/sink stage: bounds memory, lets decoding overlap V8 and Redis waits
READ_AHEAD = 2
_END = object()
#: what a channel's get returns once the run is halted and nothing is left in it
_HALTED = object()


class WakeEvent(threading.Event):
    """A ``threading.Event`` whose ``set()`` also runs wake-up hooks, so the threads waiting on it
    can block in the kernel (a select, a condition wait) instead of polling ``is_set()``.

    Hazard: hooks run in the thread that calls ``set()``, which for the supervisor's stop is a
    signal handler. A hook on such an event must not take a lock the interrupted code may hold
    (AnyStop's hook only writes one byte to a non-blocking socket).
    """

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[Callable[[], None]] = []

    def add_hook(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)
        if self.is_set():
            hook()

    def remove_hook(self, hook: Callable[[], None]) -> None:
        if hook in self._hooks:
            self._hooks.remove(hook)

    def set(self) -> None:
        super().set()
        for hook in tuple(self._hooks):
            hook()


class AnyStop:
    """Stop flag that is set when any of its events is (the supervisor's stop, or this run's halt).

    When every event is a :class:`WakeEvent`, :meth:`wake_fileno` is a descriptor that turns
    readable once any of them is set (the reader adds it to its select); otherwise it is None
    and waiters poll :meth:`is_set`. Close it once its waiters are gone.
    """

    def __init__(self, *events: threading.Event) -> None:
        self.events = events
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        #: set once any event is (hooked events only: they call _wake; the reader asks per transaction)
        self._flag = False
        self._hooked = bool(events) and all(isinstance(e, WakeEvent) for e in events)
        if self._hooked:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            for e in events:
                e.add_hook(self._wake)  # type: ignore[attr-defined]
            # (after the hooks: an event set in between is seen by one or the other)
            self._flag = any(e.is_set() for e in events)

    def is_set(self) -> bool:
        if self._flag:
            return True
        if self._hooked:
            return False
        return any(e.is_set() for e in self.events)

    def wake_fileno(self) -> int | None:
        return self._wake_r.fileno() if self._wake_r is not None else None

    def _wake(self) -> None:
        self._flag = True
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"!")  # never drained: the events stay set for this object's lifetime
            except OSError:
                pass  # buffer full (already readable) or closed

    def close(self) -> None:
        for e in self.events:
            if isinstance(e, WakeEvent):
                e.remove_hook(self._wake)
        r, w = self._wake_r, self._wake_w
        self._wake_r = self._wake_w = None
        for sock in (w, r):
            if sock is not None:
                sock.close()


class _Channel:
    """Bounded FIFO between two stage threads: ``put``/``get`` wait on a condition (no timeout)
    until there is room/an item, or the run is halted.

    Halt does not discard anything: ``get`` returns the items left before ``_HALTED``, and
    ``put`` succeeds while there is room (the same order of events as the former 0.2 s polls).
    """

    def __init__(self, maxsize: int, halt: WakeEvent) -> None:
        self._items: deque[Any] = deque()
        self._maxsize = maxsize
        self._cond = threading.Condition(threading.Lock())
        self._halt = halt
        #: condition waits that returned (tests count them: an idle channel never wakes)
        self.wakeups = 0
        halt.add_hook(self._wake_all)

    def _wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def put(self, item: Any) -> bool:
        """Append ``item``; False (item dropped) if the run is halted while the channel is full."""
        with self._cond:
            while len(self._items) >= self._maxsize:
                if self._halt.is_set():
                    return False
                self._cond.wait()
                self.wakeups += 1
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self) -> Any:
        """The next item, or ``_HALTED`` once the run is halted and the channel is empty."""
        with self._cond:
            while not self._items:
                if self._halt.is_set():
                    return _HALTED
                self._cond.wait()
                self.wakeups += 1
            item = self._items.popleft()
            self._cond.notify_all()
            return item

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
        #: this run's reader and stage channels (for tests and introspection)
        self.source: Any = None
        self.channels: tuple[_Channel, ...] = ()

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
        halt = WakeEvent()  # ends this run's reader and wakes every stage (errors in this thread)
        stopper = AnyStop(self.stop, halt)
        try:
            resume = sinks.open(self.stats.sink_values)
            chain = ProcessorChain(list(cfg.spec.processors), name) if cfg.spec.processors else None
            source = open_source(cfg, stopper, resume)  # type: ignore[arg-type]
            self.source = source
            if source.start_position is not None:
                sinks.persist_start(source.start_position)
            self.stats.state = "running"
            log.info("pipeline %s: reading from %s%s", name, source.start_position,
                     " (checkpoint)" if resume else f" (start: {cfg.spec.source.config.start})")
            # Three stages, three threads: the reader decodes, this thread runs V8, the writer talks to
            # Redis. V8 and socket waits release the GIL, so the stages overlap; one thread per stage
            # keeps batches in order, and the small queues bound memory.
            from_reader = _Channel(READ_AHEAD, halt)
            to_writer = _Channel(READ_AHEAD, halt)
            self.channels = (from_reader, to_writer)
            failure: list[BaseException] = []
            reader = threading.Thread(target=_read_batches, args=(source, from_reader),
                                      name="deltaforge-reader", daemon=True)
            writer = threading.Thread(target=_write_batches, args=(sinks, to_writer, halt, self.stats, failure),
                                      name="deltaforge-writer", daemon=True)
            reader.start()
            writer.start()
            while True:
                if failure:
                    raise failure[0]
                batch = from_reader.get()
                if batch is _END or batch is _HALTED:  # halted: the writer failed (checked below)
                    break
                if isinstance(batch, BaseException):
                    # the reader failed after handing out what was complete: commit that first
                    to_writer.put(_END)
                    writer.join()
                    raise batch
                out = chain.process(batch) if chain is not None else batch
                to_writer.put((batch, out))
            to_writer.put(_END)
            writer.join()
            if failure:
                raise failure[0]
        finally:
            halt.set()
            for thread in (writer, reader):
                if thread is not None:
                    thread.join(timeout=10)
            if reader is None or not reader.is_alive():
                stopper.close()  # else a stuck reader may still select on it: left to the GC
            for sink in sinks.sinks:
                if sink.last_value is not None:
                    self.stats.sink_values[sink.id] = sink.last_value
            if source is not None:
                source.close()
            if chain is not None:
                chain.close()
            sinks.close()


def _read_batches(source: Any, handoff: _Channel) -> None:
    """Reader thread: batches into ``handoff``, then ``_END``; an exception is handed over as an item."""
    try:
        for batch in source.batches():
            if not handoff.put(batch):
                return  # halted: the consumer may be gone
        handoff.put(_END)
    except BaseException as e:  # noqa: BLE001 - re-raised in the pipeline thread
        handoff.put(e)


def _write_batches(sinks: Any, inbox: _Channel, halt: WakeEvent, stats: Stats,
                   failure: list[BaseException]) -> None:
    """Writer thread: commits batches in order; the first error stops the run."""
    last_report = time.monotonic()
    reported = stats.events_in
    try:
        while True:
            item = inbox.get()
            if item is _END or item is _HALTED:
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
        #: set by SIGINT/SIGTERM (or by an embedding caller); wakes the reader's select at once
        self.stop: threading.Event = WakeEvent()
        self.stats = Stats()
        self.max_restarts = max_restarts
        self.backoff_max_s = backoff_max_s
        self._signals = 0
        #: the current (or last) run of the stages
        self.pipeline: Pipeline | None = None

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
                self.pipeline = Pipeline(self.cfg, self.stop, self.stats)
                self.pipeline.run()
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
