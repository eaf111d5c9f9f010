"""Multi-process topology (DESIGN.md §2, ``--workers N``, N >= 1): reader -> workers -> writer.

One run: the supervisor process prepares the start (the sinks' resume point, the start written
to sinks that have none, the fencing values), creates the shared-memory rings, and starts the
stages as child processes (``spawn``: no V8 or thread state is inherited):

- **reader** (1): the binlog reader; each batch goes, as a frame (``runtime.frames``), into the
  ring of worker ``seq % N`` (or straight into the writer's ring without processors);
- **workers** (N): each runs the processor chain in its own V8 and forwards its output into
  its ring to the writer;
- **writer** (1): reads the next batch by sequence number from ring ``seq % N`` (so the stream's
  order is binlog order, whatever order the workers finish in) and commits it exactly once.

What is not data travels in the same rings, in sequence: ``END`` and ``ERROR`` go into the ring
of the sequence number after the last batch, so the writer meets them exactly where the reader
stopped and commits everything before them first. Children report progress and their final
error (as a record) to the supervisor through a pipe; a second pipe per child carries "stop"
(and its end-of-file tells a child its supervisor is gone: it stops too, so no orphan stays).
A child that dies without a word fails the run with a retriable error: the supervisor restarts
from the checkpoint. The rings are unlinked at the end of the run; if the supervisor itself is
killed, Python's resource tracker unlinks them once every child has exited.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from deltaforge.errors import DeltaForgeError, SourceUnavailable
from deltaforge.model import Position
from deltaforge.runtime.frames import (
    Kind,
    decode_batch,
    decode_error,
    encode_batch,
    encode_error,
    get_frame,
    put_frame,
)
from deltaforge.runtime.ringformat import RING_BYTES
from deltaforge.runtime.stats import Stats

log = logging.getLogger("deltaforge.pipeline")

#: how long a stopping run waits for its children before killing them
STOP_DEADLINE_S = 30.0
#: how often a worker sends its histograms to the supervisor (the writer: with its progress)
REPORT_S = 1.0


# ----------------------------------------------------------------------------- in the children


def _child_setup(stop_r: Connection, role: str) -> threading.Event:
    """Common start of a child: the supervisor's log settings (``DELTAFORGE_CHILD_LOG``, set in the
    environment a spawned child inherits), signals coordinated by the supervisor; ``stop`` is set
    when the supervisor says so or goes away (its end of the stop pipe closes)."""
    from deltaforge.log import setup_logging
    from deltaforge.runtime.channels import WakeEvent

    fmt, _, level = os.environ.get("DELTAFORGE_CHILD_LOG", "text:INFO").partition(":")
    setup_logging(fmt, level or "INFO")

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import setproctitle

    # the command line ps and top show ("deltaforge: worker 2"), and the kernel's 15-byte name
    # (ps -o comm, killall): "df-worker 2"
    setproctitle.setproctitle(f"deltaforge: {role}")
    setproctitle.setthreadtitle(f"df-{role}"[:15])
    from deltaforge.runtime.commands import tune_gc

    tune_gc()
    stop = WakeEvent()

    def watch() -> None:
        try:
            while True:  # "stop" (maybe more than once): finish in order, the supervisor waits for us
                stop_r.recv_bytes()
                stop.set()
        except (EOFError, OSError):
            pass
        # the supervisor is gone (before or after it said stop): stop, and if the stages cannot
        # finish in order (a worker whose reader died too), go anyway; a restart re-reads from
        # the checkpoint
        stop.set()
        time.sleep(STOP_DEADLINE_S)
        os._exit(1)

    threading.Thread(target=watch, name="deltaforge-stop-watch", daemon=True).start()
    return stop


def _load(config_path: str) -> Any:
    from deltaforge.config import load_config

    return load_config(config_path)


def _report_error(result: Connection, err: BaseException) -> None:
    with contextlib.suppress(Exception):
        result.send(("error", encode_error(err)))


def reader_main(config_path: str, resume: Position, rings: list[str], downstream: list[str], stop_r: Connection,
                result: Connection) -> None:
    from deltaforge._accel import ring as ring_mod
    from deltaforge.runtime.channels import AnyStop
    from deltaforge.source.binlog import open_source

    stop = _child_setup(stop_r, "reader")
    outs = [ring_mod.Ring.attach(n) for n in rings]
    watch = list(outs)
    last = 0
    source = None
    try:
        cfg = _load(config_path)
        source = open_source(cfg, AnyStop(stop), resume)  # type: ignore[arg-type]
        # A record waits in a ring until its stage has passed it on (workers and writer release
        # it after their work), so a ring that is not empty is a stage still busy.
        watch = outs + [ring_mod.Ring.attach(n) for n in downstream]
        source.downstream_busy = lambda: any(r.fill() > 0 for r in watch)
        for batch in source.batches():
            head, data = encode_batch(batch)
            put_frame(outs[batch.seq % len(outs)], Kind.BATCH, head, data)
            last = batch.seq
        _finish(outs, last, Kind.END, b"")
        result.send(("done",))
    except BaseException as e:  # noqa: BLE001 - every failure becomes a record, in sequence
        with contextlib.suppress(Exception):
            _finish(outs, last, Kind.ERROR, encode_error(e))
        _report_error(result, e)
    finally:
        if source is not None:
            source.close()
        for r in watch:
            r.close()


def _finish(outs: list[Any], last: int, kind: int, payload: bytes) -> None:
    """After batch ``last``: ``kind`` where the writer expects batch ``last + 1``, END everywhere
    else (every worker must learn that nothing more comes)."""
    due = (last + 1) % len(outs)
    put_frame(outs[due], kind, payload, timeout=30)
    for i, ring in enumerate(outs):
        if i != due:
            ring.put(Kind.END, b"", timeout=30)


def worker_main(config_path: str, index: int, ring_in: str, ring_out: str, stop_r: Connection,
                result: Connection) -> None:
    from deltaforge._accel import ring as ring_mod
    from deltaforge.process.js import ProcessorChain
    from deltaforge.runtime.stats import Histograms

    _child_setup(stop_r, f"worker {index}")
    inbox, outbox = ring_mod.Ring.attach(ring_in), ring_mod.Ring.attach(ring_out)
    chain = None
    hists = Histograms()
    reported = time.perf_counter()
    try:
        cfg = _load(config_path)
        chain = ProcessorChain(list(cfg.spec.processors), cfg.metadata.name)
        while True:
            # idle with figures not yet sent: they reach /metrics after REPORT_S, not at the next
            # batch; idle with nothing to send: sleep until a batch comes (no periodic wake-up)
            got = get_frame(inbox, timeout=None if hists.empty() else REPORT_S)
            if got is None:
                result.send(("metrics", hists.take(), {}))
                continue
            kind, view = got
            if kind != Kind.BATCH:  # END or ERROR: pass it on, in sequence, and finish
                put_frame(outbox, kind, bytes(view))
                del view
                break
            batch = decode_batch(view)
            del view
            t0 = time.perf_counter()
            out = chain.process(batch)
            now = time.perf_counter()
            hists.observe("v8_call_seconds", now - t0)
            head, data = encode_batch(out, events_in=len(batch.events))
            put_frame(outbox, Kind.BATCH, head, data)
            inbox.release()  # only now: the reader reads a record still in the ring as "worker busy"
            if now - reported >= REPORT_S:
                result.send(("metrics", hists.take(), {}))
                reported = now
        result.send(("metrics", hists.take(), {}))
        result.send(("done",))
    except BaseException as e:  # noqa: BLE001 - the writer meets it where this batch was due
        with contextlib.suppress(Exception):
            put_frame(outbox, Kind.ERROR, encode_error(e), timeout=5)
        _report_error(result, e)
    finally:
        if chain is not None:
            chain.close()
        inbox.close()
        outbox.close()


def writer_main(config_path: str, expect: dict[str, bytes], rings: list[str], stop_r: Connection,
                result: Connection) -> None:
    from deltaforge._accel import ring as ring_mod
    from deltaforge.runtime.channels import IDLE_PROBE_S
    from deltaforge.runtime.pipeline import _open_redis_sinks
    from deltaforge.runtime.stats import Histograms, log_dead_letters

    _child_setup(stop_r, "writer")
    ins = [ring_mod.Ring.attach(n) for n in rings]
    sinks = None
    hists = Histograms()
    counts = [0, 0, 0, 0]  # events in, events out, batches, dead letters since the last report
    last = None  # the last batch committed
    try:
        cfg = _load(config_path)
        sinks = _open_redis_sinks(cfg)
        sinks.open(expect)
        seq = 1
        reported = time.perf_counter()
        while True:
            ring = ins[seq % len(ins)]
            # figures not yet sent: report after 0.2 s idle; then wake once a second to let the sinks
            # check that Redis has not closed their connection (a rollback must not wait for a change)
            got = get_frame(ring, timeout=0.2 if counts[2] else IDLE_PROBE_S)
            if got is None:
                if counts[2]:
                    _progress(result, counts, last, sinks, hists)
                    counts = [0, 0, 0, 0]
                else:
                    sinks.probe_idle()
                continue
            kind, view = got
            if kind == Kind.END:
                break
            if kind == Kind.ERROR:
                raise decode_error(view)
            batch, events_in = decode_batch(view, with_input=True)
            del view
            if batch.seq != seq:
                raise DeltaForgeError(f"the writer expected batch {seq} and got {batch.seq}",
                                      "this is a DeltaForge bug; the run restarts from the checkpoint")
            t0 = time.perf_counter()
            sinks.write(batch)
            ring.release()  # only now: the reader reads a record still in the ring as "writer busy"
            now = time.perf_counter()
            hists.observe("commit_seconds", now - t0)
            hists.observe("batch_events", events_in)
            if len(batch.events):
                hists.observe("lag_seconds", max(0.0, time.time() - batch.events[-1].ts_ms / 1000))
            seq += 1
            counts[0] += events_in
            counts[1] += len(batch.events)
            counts[2] += 1
            counts[3] += log_dead_letters(batch)
            last = batch
            if now - reported >= 0.2:
                _progress(result, counts, batch, sinks, hists)
                counts = [0, 0, 0, 0]
                reported = now
        _progress(result, counts, last, sinks, hists)
        result.send(("done",))
    except BaseException as e:  # noqa: BLE001 - reported to the supervisor
        if sinks is not None:
            with contextlib.suppress(Exception):
                _progress(result, counts, last, sinks, hists)
        _report_error(result, e)
    finally:
        if sinks is not None:
            sinks.close()
        for r in ins:
            r.close()


def _values(sinks: Any) -> dict[str, bytes]:
    return {s.id: s.last_value for s in sinks.sinks if s.last_value is not None}


def _progress(result: Connection, counts: list[int], batch: Any, sinks: Any, hists: Any) -> None:
    from deltaforge.sink.trim import TRIM_METRICS

    end = batch.end if batch is not None else None
    ts = batch.events[-1].ts_ms if batch is not None and len(batch.events) else None
    result.send(("progress", *counts, end, ts, _values(sinks)))
    result.send(("metrics", hists.take(), TRIM_METRICS.take()))


# ----------------------------------------------------------------------------- in the supervisor


class ProcessPipeline:
    """One run of the multi-process topology, from the checkpoint until stop or an error."""

    def __init__(self, cfg: Any, config_path: str, workers: int, stop: threading.Event, stats: Stats,
                 ring_bytes: int = RING_BYTES) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.workers = workers if cfg.spec.processors else 0
        self.stop = stop
        self.stats = stats
        self.ring_bytes = ring_bytes
        #: this run's children, by role (for tests and introspection)
        self.children: dict[str, Any] = {}

    def _prepare(self) -> tuple[Position, dict[str, bytes]]:
        """The reader's start (written to every sink without a checkpoint) and the fencing values."""
        from deltaforge.runtime.pipeline import _open_binlog, _open_redis_sinks

        sinks = _open_redis_sinks(self.cfg)
        try:
            resume = sinks.open(self.stats.sink_values)
            source = _open_binlog(self.cfg, self.stop, resume)
            try:
                start = source.start_position
            finally:
                source.close()
            sinks.persist_start(start)
            return start, _values(sinks)
        finally:
            sinks.close()

    def run(self) -> None:
        from deltaforge._accel import ring as ring_mod

        start, values = self._prepare()
        self.stats.sink_values.update(values)
        from deltaforge.log import SETTINGS

        ctx = multiprocessing.get_context("spawn")
        os.environ["DELTAFORGE_CHILD_LOG"] = ":".join(SETTINGS)  # the children log like this process
        n = max(1, self.workers)
        rings: list[Any] = []
        stops: list[Connection] = []
        results: dict[Any, str] = {}
        procs: dict[str, Any] = {}
        try:
            to_workers = [ring_mod.Ring.create(self.ring_bytes) for _ in range(self.workers)]
            to_writer = [ring_mod.Ring.create(self.ring_bytes) for _ in range(n)]
            rings = to_workers + to_writer

            def spawn(role: str, target: Any, *args: Any) -> None:
                stop_r, stop_w = ctx.Pipe(duplex=False)
                res_r, res_w = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=target, args=(self.config_path, *args, stop_r, res_w),
                                   name=f"deltaforge-{role}", daemon=False)
                proc.start()
                stop_r.close()
                res_w.close()
                stops.append(stop_w)
                results[res_r] = role
                procs[role] = proc

            spawn("writer", writer_main, dict(self.stats.sink_values), [r.name for r in to_writer])
            for i in range(self.workers):
                spawn(f"worker {i + 1}", worker_main, i + 1, to_workers[i].name, to_writer[i].name)
            spawn("reader", reader_main, start, [r.name for r in (to_workers or to_writer)],
                  [r.name for r in to_writer] if to_workers else [])
            self.children = procs
            st = self.stats
            order = ["reader", *(f"worker {i + 1}" for i in range(self.workers)), "writer"]  # data's way
            st.clock.stages = {"supervisor": (os.getpid(), None), **{role: (procs[role].pid, None) for role in order}}
            names = ([f"reader->worker {i + 1}" for i in range(self.workers)]
                     + [f"worker {i + 1}->writer" for i in range(self.workers)] if self.workers else ["reader->writer"])

            def fills() -> list[tuple[str, float]]:
                out = []
                for name, ring in zip(names, rings, strict=True):
                    with contextlib.suppress(Exception):  # (closed under a scrape at the end of a run)
                        out.append((name, ring.fill()))
                return out

            st.rings = fills
            st.processes = lambda: [("supervisor", os.getpid()), *((role, procs[role].pid) for role in order)]
            st.state = "running"
            log.info("pipeline %s: reading from %s, %d worker process(es)", self.cfg.metadata.name, start,
                     self.workers)
            self._supervise(procs, results, stops)
        except BaseException:
            # a failed run: a producer blocked on a full ring, or a consumer on an empty one, must
            # not wait for a side that is gone
            for r in rings:
                with contextlib.suppress(Exception):
                    r.close_reader()
                    r.close_writer()
            raise
        finally:
            self.stats.rings = self.stats.processes = list
            self._stop_children(procs, stops)
            self._drain(results)
            for r in rings:
                r.close()

    def _supervise(self, procs: dict[str, Any], results: dict[Any, str], stops: list[Connection]) -> None:
        from deltaforge.runtime.channels import AnyStop

        stopper = AnyStop(self.stop)
        wake = stopper.wake_fileno()
        stop_sent = False
        done: set[str] = set()
        sentinels = {p.sentinel: role for role, p in procs.items()}
        error: DeltaForgeError | None = None
        msg: Any
        try:
            while "writer" not in done:
                self.stats.progress_line()
                if self.stop.is_set() and not stop_sent:
                    for w in stops:
                        with contextlib.suppress(OSError):
                            w.send_bytes(b"s")
                    stop_sent = True
                waitables: list[Any] = [*results, *sentinels]
                if wake is not None and not stop_sent:
                    waitables.append(wake)
                ready: Any
                for ready in wait(waitables, timeout=1.0):
                    if ready in results:
                        role = results[ready]
                        try:
                            msg = ready.recv()
                        except (EOFError, OSError):
                            del results[ready]
                            continue
                        if msg[0] == "progress":
                            self._progress(msg)
                        elif msg[0] == "metrics":
                            self._metrics(msg)
                        elif msg[0] == "values":
                            self.stats.sink_values.update(msg[1])
                        elif msg[0] == "done":
                            done.add(role)
                        elif msg[0] == "error":
                            err = decode_error(msg[1])
                            # the writer's error is the run's: it met the others' errors in sequence
                            if role == "writer" or error is None:
                                error = err
                            if role == "writer":
                                raise err
                    elif ready in sentinels:
                        role = sentinels.pop(ready)
                        proc = procs[role]
                        proc.join(5)  # (reaps it: its exit code is known from here on)
                        if role not in done and error is None:
                            # drain what it said before it went (its error record, if any)
                            for conn, r in list(results.items()):
                                if r == role:
                                    with contextlib.suppress(EOFError, OSError):
                                        while conn.poll(0):
                                            msg = conn.recv()
                                            if msg[0] == "error":
                                                error = decode_error(msg[1])
                                            elif msg[0] == "progress":
                                                self._progress(msg)
                                            elif msg[0] == "metrics":
                                                self._metrics(msg)
                                            elif msg[0] == "done":
                                                done.add(role)
                            if role not in done and error is None:
                                code = proc.exitcode
                                how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                                raise SourceUnavailable(f"the {role} process died ({how})",
                                                        "the pipeline restarts from its checkpoint")
                        if error is not None and role == "writer":
                            raise error
            if error is not None:
                raise error
        finally:
            stopper.close()

    def _drain(self, results: dict[Any, str]) -> None:
        """The counters and fencing values the children sent before they exited."""
        for conn in results:
            with contextlib.suppress(EOFError, OSError):
                while conn.poll(0):
                    msg = conn.recv()
                    if msg[0] == "progress":
                        self._progress(msg)
                    elif msg[0] == "metrics":
                        self._metrics(msg)
            with contextlib.suppress(OSError):
                conn.close()

    def _progress(self, msg: tuple[Any, ...]) -> None:
        _, events_in, events_out, batches, dead, end, ts, values = msg
        st = self.stats
        now = time.time()
        if batches:
            st.first_commit = st.first_commit or now
            st.last_commit = now
        st.events_in += events_in
        st.events_out += events_out
        st.batches += batches
        st.dead_letters += dead
        if end is not None:
            st.position = end
        if ts is not None:
            st.lag_ms = max(0, int(now * 1000) - ts)
        st.sink_values.update(values)

    def _metrics(self, msg: tuple[Any, ...]) -> None:
        from deltaforge.sink.trim import TRIM_METRICS

        _, hists, trims = msg
        self.stats.hists.add(hists)
        TRIM_METRICS.add(trims)

    def _stop_children(self, procs: dict[str, Any], stops: list[Connection]) -> None:
        for w in stops:
            with contextlib.suppress(OSError):
                w.send_bytes(b"s")
        deadline = time.monotonic() + STOP_DEADLINE_S
        for proc in procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in procs.values():
            if proc.is_alive():
                log.warning("%s did not stop within %.0fs: killed", proc.name, STOP_DEADLINE_S)
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.join(5)
        for w in stops:
            with contextlib.suppress(OSError):
                w.close()
