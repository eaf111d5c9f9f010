"""In-process topology: reader -> processors -> sinks in one process (DESIGN.md §2, ``--workers 0``).

The stages exchange :class:`~deltaforge.model.Batch` objects only, so the multi-process
topology rewires the same stage code over shared-memory rings (``deltaforge.runtime.frames``
says what crosses them). Three stages, three threads, two :class:`~deltaforge.runtime.channels.Channel`
hand-offs; the lifecycle around a run (signals, restarts) is :mod:`deltaforge.runtime.supervisor`'s.

The resume position is read from the sinks (minimum over every checkpoint, see
:mod:`deltaforge.sink.sinkset`); without any, ``spec.source.config.start`` applies and is
written to the sinks before the first event is read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from deltaforge.runtime.channels import (
    END,
    HALTED,
    IDLE,
    IDLE_PROBE_S,
    READ_AHEAD,
    AnyStop,
    Channel,
    WakeEvent,
)
from deltaforge.runtime.stats import Stats

log = logging.getLogger("deltaforge.pipeline")


class Pipeline:
    """One run of the stages, from the checkpoint until stop or an error."""

    def __init__(self, cfg: Any, stop: threading.Event, stats: Stats | None = None, *,
                 open_source: Callable[..., Any] | None = None, open_sinks: Callable[[Any], Any] | None = None,
                 open_chain: Callable[[Any], Any] | None = None) -> None:
        """``open_source(cfg, stop, resume)``, ``open_sinks(cfg)`` and ``open_chain(cfg)`` build the
        stages (default: the binlog reader, the Redis sinks, the JavaScript chain or None); tests
        pass :mod:`deltaforge.testing`'s list-based fakes to exercise the topology without servers."""
        self.cfg = cfg
        self.stop = stop
        self.stats = stats or Stats()
        self._open_source = open_source or _open_binlog
        self._open_sinks = open_sinks or _open_redis_sinks
        self._open_chain = open_chain or _open_js_chain
        #: this run's reader and stage channels (for tests and introspection)
        self.source: Any = None
        self.channels: tuple[Channel, ...] = ()

    def run(self) -> None:
        cfg = self.cfg
        name = cfg.metadata.name
        sinks = self._open_sinks(cfg)
        chain = None
        source = None
        reader: threading.Thread | None = None
        writer: threading.Thread | None = None
        halt = WakeEvent()  # ends this run's reader and wakes every stage (errors in this thread)
        stopper = AnyStop(self.stop, halt)
        try:
            resume = sinks.open(self.stats.sink_values)
            chain = self._open_chain(cfg)
            source = self._open_source(cfg, stopper, resume)
            self.source = source
            if source.start_position is not None:
                sinks.persist_start(source.start_position)
            self.stats.state = "running"
            log.info("pipeline %s: reading from %s%s", name, source.start_position,
                     " (checkpoint)" if resume else f" (start: {cfg.spec.source.config.start})")
            # Three stages, three threads: the reader decodes, this thread runs V8, the writer talks to
            # Redis. V8 and socket waits release the GIL, so the stages overlap; one thread per stage
            # keeps batches in order, and the small queues bound memory.
            from_reader = Channel(READ_AHEAD, halt)
            to_writer = Channel(READ_AHEAD, halt)
            self.channels = (from_reader, to_writer)
            failure: list[BaseException] = []
            committed = [0]  # seq of the last batch the writer committed (written by the writer thread only)
            if hasattr(source, "last_seq"):
                # a batch waits while the ones before it are still in a stage (see the source's batching)
                source.downstream_busy = lambda: source.last_seq > committed[0]
            reader = threading.Thread(target=_read_batches, args=(source, from_reader),
                                      name="deltaforge-reader", daemon=True)
            writer = threading.Thread(target=_write_batches, args=(sinks, to_writer, halt, self.stats, failure, committed),
                                      name="deltaforge-writer", daemon=True)
            reader.start()
            writer.start()
            pid = os.getpid()  # each stage's thread, for the progress line's CPU shares
            self.stats.clock.stages = {"reader": (pid, reader.native_id),
                                       "processors" if chain is not None else "hand-off": (pid, threading.get_native_id()),
                                       "writer": (pid, writer.native_id)}
            hists = self.stats.hists
            while True:
                if failure:
                    raise failure[0]
                batch = from_reader.get()
                if batch is END or batch is HALTED:  # halted: the writer failed (checked below)
                    break
                if isinstance(batch, BaseException):
                    # the reader failed after handing out what was complete: commit that first
                    to_writer.put(END)
                    writer.join()
                    raise batch
                if chain is not None:
                    t0 = time.perf_counter()
                    out = chain.process(batch)
                    hists.observe("v8_call_seconds", time.perf_counter() - t0)
                else:
                    out = batch
                to_writer.put((batch, out))
            to_writer.put(END)
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


def _open_binlog(cfg: Any, stop: Any, resume: Any) -> Any:
    from deltaforge.source.binlog import open_source

    return open_source(cfg, stop, resume)


def _open_redis_sinks(cfg: Any) -> Any:
    from deltaforge.sink.sinkset import SinkSet
    from deltaforge.sink.slot_split import make_redis_sink

    return SinkSet([make_redis_sink(s.config, cfg.metadata.name, cfg.metadata.tenant, f"spec.sinks[{i}]")
                    for i, s in enumerate(cfg.spec.sinks)], cfg.spec.commit_policy)


def _open_js_chain(cfg: Any) -> Any:
    from deltaforge.process.js import ProcessorChain

    return ProcessorChain(list(cfg.spec.processors), cfg.metadata.name) if cfg.spec.processors else None


def _read_batches(source: Any, handoff: Channel) -> None:
    """Reader thread: batches into ``handoff``, then ``END``; an exception is handed over as an item."""
    try:
        for batch in source.batches():
            if not handoff.put(batch):
                return  # halted: the consumer may be gone
        handoff.put(END)
    except BaseException as e:  # noqa: BLE001 - re-raised in the pipeline thread
        handoff.put(e)


def _write_batches(sinks: Any, inbox: Channel, halt: WakeEvent, stats: Stats,
                   failure: list[BaseException], committed: list[int]) -> None:
    """Writer thread: commits batches in order; the first error stops the run."""
    hists = stats.hists
    try:
        while True:
            item = inbox.get(timeout=IDLE_PROBE_S)
            if item is IDLE:
                sinks.probe_idle()  # a Redis that rolled back while nothing came: act on it now
                continue
            if item is END or item is HALTED:
                return
            batch, out = item
            t0 = time.perf_counter()
            sinks.write(out)
            hists.observe("commit_seconds", time.perf_counter() - t0)
            committed[0] = batch.seq
            stats.record(batch, out)
            stats.progress_line()
    except BaseException as e:  # noqa: BLE001 - re-raised in the pipeline thread
        failure.append(e)
        halt.set()
