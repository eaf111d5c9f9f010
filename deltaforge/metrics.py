"""``/metrics`` (Prometheus, through prometheus-client), ``/health`` and ``/ready``.

Served from a daemon thread, on 127.0.0.1 unless ``--metrics-bind`` says otherwise. A scrape renders what :class:`~deltaforge.runtime.stats.Stats`
already holds (the children of the multi-process topology report into the supervisor's), plus
what the supervisor reads at scrape time: each ring's fill and each process's resident memory
and CPU. A scrape costs the stages nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deltaforge.errors import ConfigError

#: path -> () -> (status, body)
Routes = dict[str, Callable[[], tuple[int, str]]]


class PipelineCollector:
    """A prometheus-client collector over one pipeline's :class:`Stats`."""

    def __init__(self, stats: Any, pipeline: str) -> None:
        self.stats = stats
        self.pipeline = pipeline

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        from deltaforge.runtime.stats import HISTOGRAMS, cpu_seconds
        from deltaforge.sink.trim import TRIM_METRICS

        st, p = self.stats, [self.pipeline]

        def gauge(name: str, doc: str, value: float) -> Any:
            g = GaugeMetricFamily(name, doc, labels=["pipeline"])
            g.add_metric(p, value)
            return g

        def counter(name: str, doc: str, value: float) -> Any:
            c = CounterMetricFamily(name, doc, labels=["pipeline"])
            c.add_metric(p, value)
            return c

        yield gauge("deltaforge_up", "1 while the pipeline is connected and streaming", 1 if st.state == "running" else 0)
        yield counter("deltaforge_events_read", "Row events read from the binlog and committed", st.events_in)
        yield counter("deltaforge_events_committed", "Events committed to the stream (after the processors)",
                      st.events_out)
        yield counter("deltaforge_batches_committed", "Batches committed", st.batches)
        yield gauge("deltaforge_lag_ms", "Source commit time of the newest committed event to its commit in the sinks",
                    st.lag_ms)
        yield gauge("deltaforge_last_commit_timestamp_seconds", "Unix time of the last commit", st.last_commit or 0)
        yield counter("deltaforge_dlq_entries", "Events (or undecodable rows events) sent to the dead-letter streams",
                      st.dead_letters)
        yield counter("deltaforge_restarts", "Pipeline restarts from the checkpoint after a retriable error",
                      st.restarts)
        if st.position is not None:
            g = GaugeMetricFamily("deltaforge_binlog_position", "Binlog position of the last committed batch",
                                  labels=["pipeline", "file"])
            g.add_metric([self.pipeline, st.position.file], st.position.pos)
            yield g
        for name, (doc, bounds) in HISTOGRAMS.items():
            h = st.hists.by_name[name]
            cumulative, buckets = 0, []
            for bound, n in zip((*bounds, float("inf")), h.counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            hist = HistogramMetricFamily(f"deltaforge_{name}", doc, labels=["pipeline"])
            hist.add_metric(p, buckets, h.sum)
            yield hist
        rings = st.rings()
        if rings:
            g = GaugeMetricFamily("deltaforge_ring_fill_ratio", "Share of a shared-memory ring in use (1: the "
                                  "consumer is the bottleneck)", labels=["pipeline", "ring"])
            for ring, fill in rings:
                g.add_metric([self.pipeline, ring], fill)
            yield g
        procs = st.processes()
        if procs:
            rss = GaugeMetricFamily("deltaforge_process_resident_memory_bytes", "Resident memory of each engine "
                                    "process", labels=["pipeline", "process"])
            cpu = CounterMetricFamily("deltaforge_process_cpu_seconds", "CPU time of each engine process",
                                      labels=["pipeline", "process"])
            for role, pid in procs:
                kib = _rss_kib(pid)
                if kib is not None:
                    rss.add_metric([self.pipeline, role], kib * 1024)
                secs = cpu_seconds(pid)
                if secs is not None:
                    cpu.add_metric([self.pipeline, role], secs)
            yield rss
            yield cpu
        for name, kind, doc, labels, rows in TRIM_METRICS.families(self.pipeline):
            fam = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc, labels=list(labels))
            for key, value in rows:
                fam.add_metric(list(key), value)
            yield fam


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def render(stats: Any, pipeline: str) -> str:
    """The Prometheus text exposition of one pipeline's figures."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(stats, pipeline))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def pipeline_routes(stats: Any, pipeline: str) -> Routes:
    """``/metrics``, ``/health`` (liveness) and ``/ready`` (readiness) of one pipeline."""
    return {"/metrics": lambda: (200, render(stats, pipeline)), "/health": stats.health, "/ready": stats.ready}


def serve_http(routes: Routes, port: int, name: str = "metrics", bind: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``routes`` on ``bind``:``port`` (0 = any free port; see ``server.server_port``).
    Loopback by default: the figures name tables, streams and hosts."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404)
                return
            status, text = route()
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            pass

    try:
        server = ThreadingHTTPServer((bind, port), Handler)
    except OSError as e:
        raise ConfigError("--metrics-port", f"cannot listen on {bind}:{port}: {e.strerror or e}",
                          "pick a free port, an address of this host for --metrics-bind, or leave "
                          "--metrics-port out") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"deltaforge-{name}", daemon=True).start()
    return server
