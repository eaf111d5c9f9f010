"""The pipeline's counters: progress lines, ``/metrics`` and ``/health``, and the bench."""

from __future__ import annotations

import logging
import time

from deltaforge.model import Batch, Position

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
