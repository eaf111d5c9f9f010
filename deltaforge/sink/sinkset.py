"""All sinks of a pipeline behind one commit policy (``spec.commit_policy``).

Resume (DESIGN.md §5): the pipeline restarts from the *minimum* over every
checkpoint that exists, optional sinks included (an optional sink that was down
gets its gap back at the next start). Each sink then skips what its own
checkpoint covers, so the replay between the minimum and a sink's checkpoint
never duplicates. A sink without a checkpoint (just added, or its key renamed)
starts at that resume point. Only when no sink has a checkpoint does the
source's ``start`` apply, and then the start position is written to every sink
(:meth:`SinkSet.persist_start`) before the first event is read, so a crash before
the first commit cannot move it forward.

Write policy, per batch, sinks in configuration order:

- ``required``: a required sink failing raises; a non-required one is logged
  and *disabled until restart* (writing later batches to it would leave a gap
  behind its checkpoint, i.e. loss).
- ``all``: any failure raises.
- ``quorum``: failing sinks are disabled; raise when fewer than ``quorum``
  (default: a majority) succeeded.

:class:`FencedError` always raises: another instance owns the pipeline.
"""

from __future__ import annotations

import logging
from typing import Any

from deltaforge.errors import DeltaForgeError, FencedError, SinkError
from deltaforge.model import Batch, Position, min_position
from deltaforge.sink.redis_stream import RedisStreamSink

log = logging.getLogger("deltaforge.sink")


#: retry budget of a sink that does not gate the checkpoint (commit_policy required, required: false)
OPTIONAL_SINK_RETRY_S = 5.0


class SinkSet:
    def __init__(self, sinks: list[RedisStreamSink], policy: Any) -> None:
        if not sinks:
            raise SinkError("the pipeline has no sinks", "add at least one entry under spec.sinks")
        self.sinks = sinks
        self.mode: str = getattr(policy, "mode", "required")
        quorum = getattr(policy, "quorum", None)
        self.quorum: int = int(quorum) if quorum else len(sinks) // 2 + 1
        if self.mode not in ("required", "all", "quorum"):
            raise SinkError(f"unknown commit_policy.mode {self.mode!r}", "use required, all or quorum")
        if self.mode == "quorum" and not 1 <= self.quorum <= len(sinks):
            raise SinkError(
                f"commit_policy.quorum is {self.quorum} but the pipeline has {len(sinks)} sinks",
                f"set spec.commit_policy.quorum between 1 and {len(sinks)}",
            )
        #: sink ids disabled after a failure (until restart)
        self.disabled: dict[str, DeltaForgeError] = {}
        # A sink the pipeline can go on without must not stall it for the full retry budget.
        for sink in sinks:
            if self.mode == "required" and not sink.required and any(s.required for s in sinks):
                sink.retry_deadline = min(sink.retry_deadline, OPTIONAL_SINK_RETRY_S)

    def open(self, expect: dict[str, bytes] | None = None) -> Position | None:
        """Open every sink; return where the source resumes (None: use the source's ``start``).

        ``expect`` maps sink ids to the checkpoint values this process last committed (restarts).
        """
        opened = 0
        for sink in self.sinks:
            try:
                sink.open((expect or {}).get(sink.id))
                opened += 1
            except FencedError:
                self.close()
                raise
            except DeltaForgeError as e:
                if self.mode == "all" or (self.mode == "required" and sink.required):
                    self.close()
                    raise
                log.warning("sink %s is disabled until restart: %s", sink.id, e)
                self.disabled[sink.id] = e
                sink.close()
        if self.mode == "quorum" and opened < self.quorum:
            self.close()
            causes = "; ".join(f"{k}: {e}" for k, e in self.disabled.items())
            raise SinkError(f"only {opened} of {len(self.sinks)} sinks could be opened, "
                            f"commit_policy.quorum needs {self.quorum} ({causes})",
                            "fix the failing sinks, or lower spec.commit_policy.quorum")
        opened_sinks = [s for s in self.sinks if s.id not in self.disabled]
        positions = [s.checkpoint for s in opened_sinks if s.checkpoint is not None]
        resume = min_position(positions)
        if resume is not None:
            for sink in opened_sinks:
                if sink.checkpoint is None:
                    log.info("sink %s has no checkpoint: it starts at the pipeline's resume position %s",
                             sink.id, resume)
        return resume

    def persist_start(self, start: Position) -> None:
        """Write ``start`` as the checkpoint of every open sink that has none, before reading begins."""
        for sink in self.sinks:
            if sink.id in self.disabled or sink.checkpoint is not None:
                continue
            try:
                sink.write(Batch(seq=0, events=[], keys=[], end=start))
            except FencedError:
                raise
            except DeltaForgeError as e:
                if self.mode == "all" or (self.mode == "required" and sink.required):
                    raise
                self.disabled[sink.id] = e
                sink.close()
                log.warning("sink %s failed and is disabled until restart: %s", sink.id, e)

    def write(self, batch: Batch) -> None:
        ok = 0
        failures: list[tuple[RedisStreamSink, DeltaForgeError]] = []
        for sink in self.sinks:
            if sink.id in self.disabled:
                continue
            try:
                sink.write(batch)
                ok += 1
            except FencedError:
                raise
            except DeltaForgeError as e:
                if self.mode == "all" or (self.mode == "required" and sink.required):
                    raise
                failures.append((sink, e))
                self.disabled[sink.id] = e
                sink.close()
                log.warning("sink %s failed and is disabled until restart: %s", sink.id, e)
        if self.mode == "quorum" and ok < self.quorum:
            causes = "; ".join(f"{s.id}: {e}" for s, e in failures) or "sinks disabled earlier"
            raise SinkError(
                f"only {ok} of {len(self.sinks)} sinks committed batch {batch.seq}, "
                f"commit_policy.quorum needs {self.quorum} ({causes})",
                "fix the failing sinks, or lower spec.commit_policy.quorum",
            )

    def probe_idle(self) -> None:
        """While no batch comes: let each enabled sink check a connection Redis closed (see
        ``RedisStreamSink.probe_idle``); a rollback found there raises as a write would."""
        for sink in self.sinks:
            if sink.id not in self.disabled:
                sink.probe_idle()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
