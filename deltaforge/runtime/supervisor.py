"""The pipeline's lifecycle, owned by one object (gunicorn's arbiter in spirit): :class:`Supervisor`.

* SIGINT/SIGTERM set ``stop`` (handlers only set flags): the reader stops at the next
  transaction boundary, the batches already read are processed and committed, exit 0. A second
  signal exits at once: commits are atomic, so nothing partial can land.
* A retriable error (server went away, Redis LOADING, ...) restarts the pipeline from the
  checkpoint with exponential backoff; after ``max_restarts`` failures in a row without
  progress, or on any other error, the run ends non-zero with the error's one-line message.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from types import FrameType
from typing import Any

from deltaforge.errors import DeltaForgeError, FencedError
from deltaforge.runtime.channels import WakeEvent
from deltaforge.runtime.pipeline import Pipeline
from deltaforge.runtime.ringformat import RING_BYTES
from deltaforge.runtime.stats import Stats

log = logging.getLogger("deltaforge.pipeline")


class Supervisor:
    """Owns the pipeline's lifecycle: signals, restarts with backoff, exit status."""

    def __init__(self, cfg: Any, *, max_restarts: int = 8, backoff_max_s: float = 30.0, workers: int = 0,
                 config_path: str | None = None, **stages: Any) -> None:
        """``workers``: 0 runs every stage in this process (:class:`Pipeline`), N >= 1 the
        multi-process topology (:class:`~deltaforge.runtime.processes.ProcessPipeline`), whose
        children load the pipeline from ``config_path``. ``stages``: :class:`Pipeline`'s
        ``open_source``/``open_sinks``/``open_chain`` (tests)."""
        self.cfg = cfg
        self.workers = workers
        self.config_path = config_path
        self._stages = stages
        #: set by SIGINT/SIGTERM (or by an embedding caller); wakes the reader's select at once
        self.stop: threading.Event = WakeEvent()
        self.stats = Stats()
        self.max_restarts = max_restarts
        self.backoff_max_s = backoff_max_s
        self._signals = 0
        #: size of each ring of the multi-process topology
        self.ring_bytes = RING_BYTES
        #: the current (or last) run of the stages
        self.pipeline: Any = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Handlers only set flags; the second signal is the operator insisting.
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"second signal: exiting now without committing anything partial\n")
            self._kill_children()
            os._exit(130)
        self.stop.set()

    def _kill_children(self) -> None:
        """SIGKILL and reap the stage processes of the current run (none with --workers 0): "at
        once" means the whole engine; a stage left alone could still commit the batch in flight."""
        children = getattr(self.pipeline, "children", None) or {}
        for proc in list(children.values()):
            pid = getattr(proc, "pid", None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (OSError, ChildProcessError):
                pass

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def run(self) -> int:
        """Run until stopped; returns the process exit code. Raises the fatal DeltaForgeError."""
        failures = 0
        while not self.stop.is_set():
            before = self.stats.events_in, self.stats.batches
            try:
                if self.workers:
                    from deltaforge.runtime.processes import ProcessPipeline

                    if self.config_path is None:
                        raise DeltaForgeError("the multi-process topology needs the pipeline's YAML path",
                                              "pass config_path to Supervisor (deltaforge run does)")
                    self.pipeline = ProcessPipeline(self.cfg, self.config_path, self.workers, self.stop, self.stats,
                                                    ring_bytes=self.ring_bytes)
                else:
                    self.pipeline = Pipeline(self.cfg, self.stop, self.stats, **self._stages)
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
