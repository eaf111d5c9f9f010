"""The pipeline's figures: counters, histograms, progress lines, ``/health`` and ``/ready``.

One :class:`Stats` lives in the process that supervises the run. In the in-process topology the
stages update it directly; in the multi-process topology each child keeps its own
:class:`Histograms` and sends what it observed since its last report (bucket counts, not
samples) through its result pipe, and the supervisor adds them in (:meth:`Histograms.add`).
``deltaforge.metrics`` renders all of it through prometheus-client.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from typing import Any

from deltaforge.model import Batch, Position

log = logging.getLogger("deltaforge.pipeline")

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: name -> (help, upper bounds); rendered as ``deltaforge_<name>`` histograms
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "lag_seconds": ("Source commit time of a batch's newest event to its commit in the sinks (the source's "
                    "clock has 1 s resolution)", (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)),
    "batch_events": ("Row events per committed batch", (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)),
    "v8_call_seconds": ("Time of one batch through the JavaScript processor chain", _SECONDS),
    "commit_seconds": ("Round trip of one batch's commit to the sinks (MULTI/XADD.../EXEC)", _SECONDS),
}


class Histogram:
    """Bucket counts of one histogram (Prometheus semantics: bucket i counts values <= bound i)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class Histograms:
    """The pipeline's histograms (:data:`HISTOGRAMS`), observed in one process."""

    def __init__(self) -> None:
        self.by_name = {name: Histogram(bounds) for name, (_, bounds) in HISTOGRAMS.items()}

    def observe(self, name: str, value: float) -> None:
        self.by_name[name].observe(value)

    def empty(self) -> bool:
        """Nothing observed since the last take."""
        return not any(any(h.counts) for h in self.by_name.values())

    def take(self) -> dict[str, tuple[list[int], float]]:
        """What was observed since the last take (for the supervisor), and start again."""
        out = {}
        for name, h in self.by_name.items():
            if h.sum or any(h.counts):
                out[name] = (h.counts, h.sum)
                self.by_name[name] = Histogram(h.bounds)
        return out

    def add(self, taken: dict[str, tuple[list[int], float]]) -> None:
        """Add what another process took."""
        for name, (counts, total) in taken.items():
            h = self.by_name[name]
            h.counts = [a + b for a, b in zip(h.counts, counts, strict=True)]
            h.sum += total


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, tid: int | None = None, *, reaped_children: bool = False) -> float | None:
    """User + system CPU seconds of a process (or of one of its threads), with ``reaped_children``
    those of its children it has waited for too; None if it is gone."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17 (1-based)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


class StageClock:
    """Each stage's share of one core since the last reading (the progress line's ``cpu:`` part):
    the stage that sits near 100% is the one that bounds the pipeline."""

    def __init__(self) -> None:
        #: stage name -> (pid, thread id or None for the whole process)
        self.stages: dict[str, tuple[int, int | None]] = {}
        self._last: dict[str, float] = {}
        self._at = time.monotonic()

    def shares(self) -> dict[str, float]:
        now = time.monotonic()
        span = now - self._at
        out: dict[str, float] = {}
        for name, (pid, tid) in list(self.stages.items()):
            cpu = cpu_seconds(pid, tid)
            if cpu is None:
                continue
            before = self._last.get(name)
            self._last[name] = cpu
            if before is not None and span > 0:
                out[name] = max(0.0, (cpu - before) / span)
        self._at = now
        return out


def log_dead_letters(batch: Batch) -> int:
    """Log each dead letter of a batch just committed (call it after the commit only: a replay
    after a crash re-isolates a record but never re-commits it, so each is logged once); returns
    how many there were."""
    for d in batch.dead:
        log.warning("dead letter from %s: %s at %s:%s%s: %s",
                    f"processor {d.processor}" if d.processor else "the row decoder", d.table, d.file,
                    d.pos, f" row {d.row}" if d.row is not None else "", d.error)
    return len(batch.dead)


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
        #: starting | running | restarting | stopped (for /health and /ready)
        self.state = "starting"
        self.restarts = 0
        self.last_error = ""
        self.hists = Histograms()
        #: the stages' processes or threads, for the progress line's CPU shares
        self.clock = StageClock()
        #: () -> [(ring name, fill 0..1)] and () -> [(process role, pid)] of the current run
        self.rings: Any = list
        self.processes: Any = list
        self._report_at = time.monotonic()
        self._reported = 0
        #: seconds between progress lines (``deltaforge run --progress-every``)
        self.progress_every_s = 10.0

    def progress_line(self) -> None:
        """Log the progress line (events, rate, position, lag, each stage's CPU share) when
        ``progress_every_s`` has passed since the last one."""
        now = time.monotonic()
        if now - self._report_at < self.progress_every_s:
            return
        rate = (self.events_in - self._reported) / (now - self._report_at)
        shares = self.clock.shares()
        cpu = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
        log.info("committed %d events (%.0f/s), position %s, lag %d ms%s", self.events_in, rate, self.position,
                 self.lag_ms, f"; cpu: {cpu}" if cpu else "")
        self._report_at, self._reported = now, self.events_in

    def prometheus(self, pipeline: str) -> str:
        """The Prometheus text exposition of these figures (``/metrics``)."""
        from deltaforge.metrics import render

        return render(self, pipeline)

    def health(self) -> tuple[int, str]:
        """``/health`` (liveness): 200 while the engine runs or retries (starting, streaming,
        restarting from the checkpoint), 503 once it has stopped; the body says which."""
        detail = f" ({self.last_error})" if self.last_error and self.state != "running" else ""
        if self.state == "stopped":
            return 503, f"stopped{detail}\n"
        what = "streaming" if self.state == "running" else self.state
        return 200, f"ok: {what}, position {self.position}, lag {self.lag_ms} ms{detail}\n"

    def ready(self) -> tuple[int, str]:
        """``/ready`` (readiness): 200 only while every stage is up and streaming; 503 while
        starting, restarting (with the last error) or stopped."""
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
        self.dead_letters += log_dead_letters(batch_out)
        self.hists.observe("batch_events", len(batch_in.events))
        if batch_in.events:
            self.lag_ms = max(0, int(now * 1000) - batch_in.events[-1].ts_ms)
            self.hists.observe("lag_seconds", self.lag_ms / 1000)
