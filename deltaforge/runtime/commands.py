"""``deltaforge run`` and ``deltaforge check``."""

from __future__ import annotations

import sys

import click

from deltaforge.cli_errors import friendly_errors

#: ``deltaforge run``'s --workers when none is given: the multi-process topology with one V8
#: worker per spare core. On the 2-core reference machine (one worker) it drained the seed
#: pipeline 1.1-1.4x faster than every stage in one process (the reader, V8 and the writer each
#: get a core's worth instead of sharing one GIL), at ~1.6x the memory (README, Status)
DEFAULT_WORKERS = "auto"
#: the --workers values the bench measures, the default first (its ratios get the plain names)
TOPOLOGIES = (DEFAULT_WORKERS, "0", "1", "2")


def _load(config: str):  # type: ignore[no-untyped-def]
    from deltaforge.config import load_config

    return load_config(config)


@click.command("check")
@click.argument("config", type=click.Path(dir_okay=False))
@friendly_errors
def check_command(config: str) -> None:
    """Validate CONFIG and run the preflight against MySQL and Redis."""
    from deltaforge.preflight import run_preflight

    cfg = _load(config)
    click.echo(f"ok   config: {config} is valid (pipeline {cfg.metadata.name})")
    if not run_preflight(cfg, echo=click.echo):
        sys.exit(3)


@click.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True,
              help="Processor worker processes (reader, workers and writer then run as separate processes); "
                   "0 runs every stage in this process; auto = cores - 1, at least 1.")
@click.option("--ring-mib", default="8", show_default=True,
              help="Size of each shared-memory ring between the processes, in MiB (a power of two); "
                   "bounds the data in flight, not what a batch may hold.")
@click.option("--skip-preflight", is_flag=True, help="Start without checking the servers first.")
@click.option("--progress-every", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds between progress lines (events, rate, position, lag, each stage's CPU share).")
@click.option("--metrics-bind", default="127.0.0.1", show_default=True,
              help="Address /metrics, /health and /ready listen on (0.0.0.0: every interface).")
@click.option("--metrics-port", type=int, default=None,
              help="Serve /metrics (Prometheus) and /health on 127.0.0.1:PORT (0 = any free port).")
@friendly_errors
def run_command(config: str, workers: str, ring_mib: str, skip_preflight: bool, progress_every: float,
                metrics_port: int | None, metrics_bind: str) -> None:
    """Run the pipeline in CONFIG until SIGINT/SIGTERM."""
    from deltaforge.runtime.supervisor import Supervisor

    # Signals first: a SIGTERM during start-up must still mean "stop cleanly".
    supervisor = Supervisor(None)
    supervisor.install_signal_handlers()
    from deltaforge.preflight import run_preflight

    cfg = _load(config)
    supervisor.cfg = cfg
    supervisor.workers = _workers(workers)
    supervisor.ring_bytes = _ring_bytes(ring_mib)
    supervisor.stats.progress_every_s = progress_every
    supervisor.config_path = config
    if not skip_preflight and not run_preflight(cfg, echo=lambda line: click.echo(line, err=True),
                                                js_apart=supervisor.workers > 0):
        click.echo("error: preflight failed; fix the lines marked FAIL above (deltaforge check shows them again)",
                   err=True)
        sys.exit(3)
    if supervisor.stop.is_set():
        sys.exit(0)
    if metrics_port is not None:
        import logging

        from deltaforge.metrics import pipeline_routes, serve_http

        server = serve_http(pipeline_routes(supervisor.stats, cfg.metadata.name), metrics_port, "metrics",
                            bind=metrics_bind)
        logging.getLogger("deltaforge.pipeline").info(
            "metrics on http://%s:%d/metrics, liveness on /health, readiness on /ready", metrics_bind,
            server.server_port)
    tune_gc()
    sys.exit(supervisor.run())


def _workers(text: str) -> int:
    """``--workers``: a count of processes, or ``auto`` (cores - 1, at least 1)."""
    import os

    from deltaforge.errors import ConfigError

    if text.strip().lower() == "auto":
        return max(1, (os.cpu_count() or 2) - 1)
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 64:
        raise ConfigError("--workers", f"{text!r} is not a number of worker processes",
                          "pass 0 (every stage in one process), 1..64, or auto")
    return n


def _ring_bytes(text: str) -> int:
    """``--ring-mib``: a power of two from 1 to 1024 MiB, in bytes."""
    from deltaforge.errors import ConfigError

    try:
        n = int(text)
    except ValueError:
        n = 0
    if not (1 <= n <= 1024 and n & (n - 1) == 0):
        raise ConfigError("--ring-mib", f"{text!r} is not a ring size", "pass a power of two from 1 to 1024 (default 8)")
    return n << 20


def tune_gc() -> None:
    """Keep the cycle collector off the hot path.

    The stages allocate many short-lived containers (row dicts, key tuples, batches) that
    reference counting frees; at the default threshold (700 net new containers) the
    collector ran every few batches and walked them, about 8% of the reader's time in a
    profile. Everything loaded so far (modules, config, V8 wrappers) is frozen out of the
    collector's view, and young collections run 30x less often. Cycles are still collected.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
