"""All sinks of a pipeline behind one commit policy (``spec.commit_policy``).

Resume (DESIGN.md §5): the pipeline restarts from the *minimum* checkpoint over
the sinks that count for the policy (``required``: the sinks with
``required: true``, or every sink when none is; ``all`` and ``quorum``: every
sink). If one of them has no checkpoint the answer is None and the source's
``start`` applies. Each sink then skips what its own checkpoint covers, so the
replay between the minimum and a sink's checkpoint never duplicates.

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

    def _counted(self) -> list[RedisStreamSink]:
        if self.mode == "required":
            required = [s for s in self.sinks if s.required]
            return required or self.sinks
        return self.sinks

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
        counted = [s for s in self._counted() if s.id not in self.disabled]
        positions: list[Position] = []
        for sink in counted:
            if sink.checkpoint is None:
                return None
            positions.append(sink.checkpoint)
        return min_position(positions)

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

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
