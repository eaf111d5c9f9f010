"""``deltaforge demo``: the seed's cache-invalidation pipeline on throwaway local servers.

Starts a private MariaDB and Redis (installed binaries, temp dirs, free loopback
ports), creates the seed's tables, runs ``conf/pipeline.yaml`` unchanged and an
invalidation worker, applies a short scripted set of writes (the seed's
``UPDATE app.users SET email = 'alice.new@example.com' WHERE id = 1`` among them)
and shows each stream entry and each invalidation as it happens. Everything is
removed on exit or Ctrl-C.

``deltaforge demo --consistency`` shows the fill race instead (docs/cache-protocol.md): the
bench's consistency phase (:mod:`deltaforge.benchkit.consistency`) on the same kind of throwaway
servers, with a live line per second of the stale keys each fill protocol holds, then the
final comparison of every cached key with the database.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click
import orjson

from deltaforge.cli_errors import friendly_errors

SCHEMA = [
    "CREATE DATABASE IF NOT EXISTS app",
    """CREATE TABLE app.users (
        id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
        email VARCHAR(255) NOT NULL UNIQUE,
        name VARCHAR(100) NOT NULL,
        status ENUM('active','suspended') NOT NULL DEFAULT 'active',
        created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
        updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3)
    ) DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE app.products (
        id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
        category_id INT UNSIGNED NOT NULL,
        sku VARCHAR(32) NOT NULL,
        title VARCHAR(200) NOT NULL,
        price DECIMAL(10,2) NOT NULL,
        description TEXT
    ) DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE app.orders (
        id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
        user_id BIGINT UNSIGNED NOT NULL,
        total DECIMAL(12,2) NOT NULL,
        state ENUM('new','paid','shipped','cancelled') NOT NULL DEFAULT 'new',
        placed_at DATETIME(6) NOT NULL
    ) DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE app.inventory (
        id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
        product_id BIGINT UNSIGNED NOT NULL UNIQUE,
        warehouse CHAR(3) NOT NULL,
        quantity INT NOT NULL
    ) DEFAULT CHARSET=utf8mb4""",
    "INSERT INTO app.users (id, email, name) VALUES (1, 'alice@example.com', 'Alice'), (2, 'bob@example.com', 'Bob')",
    "INSERT INTO app.products (id, category_id, sku, title, price) VALUES (10, 3, 'KB-01', 'Keyboard', 49.90)",
    "INSERT INTO app.inventory (product_id, warehouse, quantity) VALUES (10, 'AMS', 120)",
]

#: (what it shows, SQL statements run in one transaction)
SCRIPT: list[tuple[str, list[str]]] = [
    ("the seed's update: Alice changes her email",
     ["UPDATE app.users SET email = 'alice.new@example.com' WHERE id = 1"]),
    ("a new user signs up", ["INSERT INTO app.users (id, email, name) VALUES (3, 'carol@example.com', 'Carol')"]),
    ("Bob orders a keyboard (order + stock in one transaction)",
     ["INSERT INTO app.orders (id, user_id, total, placed_at) VALUES (100, 2, 49.90, NOW(6))",
      "UPDATE app.inventory SET quantity = quantity - 1 WHERE product_id = 10"]),
    ("the keyboard gets cheaper", ["UPDATE app.products SET price = 44.90 WHERE id = 10"]),
    ("Bob cancels: the order row is deleted", ["DELETE FROM app.orders WHERE id = 100"]),
]

#: cache entries an application would hold; the demo fills them so deletions are visible
CACHE = [
    "user:1", "user:email:alice@example.com", "user:1:orders", "user:1:profile",
    "user:2", "user:email:bob@example.com", "user:2:orders", "user:2:profile",
    "product:10", "product:10:details", "category:3:products", "inventory:10", "product:10:stock", "order:100",
]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _default_config() -> Path:
    here = Path(__file__).resolve().parent.parent / "conf" / "pipeline.yaml"
    return here if here.exists() else Path("conf/pipeline.yaml")


def _say(text: str, color: str | None = None) -> None:
    click.echo(click.style(text, fg=color) if color else text)


def _tail_stream(client: Any, stream: str, stop: threading.Event) -> None:
    last = "0-0"
    while not stop.is_set():
        try:
            reply = client.xread({stream: last}, count=100, block=200)
        except Exception:  # noqa: BLE001 - the demo's viewer must never kill the demo
            time.sleep(0.2)
            continue
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                event = orjson.loads(fields[b"df-event"])
                record = event.get("after") or event.get("before") or {}
                _say(f"  stream  {last}  {event['op']} {event['table']} id={record.get('id')}  "
                     f"tx={event['transaction']['id']} keys={record.get('_cache_keys')}", "cyan")


@click.command("demo")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Pipeline YAML (default: conf/pipeline.yaml of this checkout).")
@click.option("--keep-running", is_flag=True, help="After the script, keep streaming until Ctrl-C.")
@click.option("--consistency", is_flag=True,
              help="Show the cache fill race live: plain fills, double delete and LeaseCache side by side.")
@click.option("--seconds", type=click.FloatRange(min=1), default=15.0, show_default=True,
              help="With --consistency: how long the writers run.")
@friendly_errors
def demo_command(config_path: str | None, keep_running: bool, consistency: bool, seconds: float) -> None:
    """Run the seed's cache-invalidation pipeline end to end on throwaway servers."""
    if consistency:
        _consistency_demo(seconds)
        return
    from deltaforge.config import load_config
    from deltaforge.runtime.supervisor import Supervisor
    from deltaforge.testing import MariaDBServer, RedisServer
    from deltaforge.worker import InvalidationWorker

    path = Path(config_path) if config_path else _default_config()
    # Ctrl-C and SIGTERM both unwind through the `finally` below, which removes the servers. (SIGINT
    # may arrive ignored from a non-interactive parent shell; the servers run in sessions of their
    # own, so a demo killed without cleanup would leave them running.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    mysql = MariaDBServer()
    redis_srv = RedisServer()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    supervisor: Supervisor | None = None
    try:
        _say("starting a throwaway MariaDB and Redis ...", "yellow")
        mysql.start()
        redis_srv.start()
        _say(f"  MariaDB on 127.0.0.1:{mysql.port}, Redis on 127.0.0.1:{redis_srv.port} (temp dirs, removed on exit)")
        mysql.execute(*SCHEMA)
        os.environ["MYSQL_DSN"] = mysql.dsn(db="app")
        os.environ["REDIS_URI"] = redis_srv.uri
        cfg = load_config(path)
        stream = cfg.spec.sinks[0].config.stream
        _say(f"pipeline {cfg.metadata.name} from {path}: {', '.join(cfg.spec.source.config.tables)} -> {stream}",
             "yellow")

        supervisor = Supervisor(cfg)
        threads.append(threading.Thread(target=supervisor.run, name="pipeline", daemon=True))
        worker = InvalidationWorker(redis_srv.uri, stream=stream, group="cache-workers", consumer="demo-worker",
                                    count=100, block_ms=200, double_delete_ms=0, claim_idle_ms=60000)
        threads.append(threading.Thread(target=worker.run, args=(stop,), name="worker", daemon=True))
        client = redis_srv.client()
        threads.append(threading.Thread(target=_tail_stream, args=(client, stream, stop), daemon=True))
        for t in threads:
            t.start()
        time.sleep(1.0)  # let the pipeline connect and position itself at the binlog's end

        conn = mysql.connect(user="root", database="app")
        for title, statements in SCRIPT:
            client.mset({key: "cached" for key in CACHE})
            _say(f"\n== {title}", "green")
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                for sql in statements:
                    _say(f"  sql     {sql}")
                    cur.execute(sql)
                cur.execute("COMMIT")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and supervisor.stats.events_in < _expected(title):
                time.sleep(0.05)
            time.sleep(0.6)
            left = [k for k in CACHE if client.exists(k)]
            gone = [k for k in CACHE if k not in left]
            _say(f"  cache   deleted: {', '.join(gone) or '-'}", "magenta")
        conn.close()
        _say(f"\n{supervisor.stats.events_in} changes streamed, checkpoint at {supervisor.stats.position}", "yellow")
        if keep_running:
            _say("streaming; write to app.* in the database above, Ctrl-C to stop", "yellow")
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        _say("\ninterrupted", "yellow")
    finally:
        stop.set()
        if supervisor is not None:
            supervisor.stop.set()
        for t in threads:
            t.join(timeout=5)
        redis_srv.stop()
        mysql.stop()
        _say("servers stopped and removed", "yellow")


def _consistency_demo(seconds: float) -> None:
    from deltaforge.benchkit.consistency import LABELS, ConsistencySettings, measure_consistency
    from deltaforge.benchkit.env import open_env

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    s = ConsistencySettings(seconds=seconds)
    _say("starting a throwaway MariaDB and Redis ...", "yellow")
    _say(f"writers: {s.rate:,} single-row UPDATEs/s on {s.hot_rows} users and {s.hot_rows} products; readers: "
         f"{s.reads_per_s}/s per protocol, each waiting 0..{s.fill_delay_ms:g} ms between the database read "
         "and the cache write (the race); one `deltaforge worker` per protocol's cache", "yellow")

    def progress(state: dict[str, Any]) -> None:
        if state.get("done"):
            return
        missed = "   ".join(f"{LABELS[p]}: {n}" for p, n in state["missed"].items())
        _say(f"  t={state['elapsed']:4.0f}s  {state['written']:>7,} commits   stale keys now   {missed}",
             "cyan")

    try:
        with open_env() as env:
            _say("engine and workers starting; the writers begin once they are up", "yellow")
            result = measure_consistency(env, s, progress=progress, side_by_side=True, live_stale=True)
    except KeyboardInterrupt:
        _say("\ninterrupted; servers stopped and removed", "yellow")
        return
    _say(f"\nwriters stopped after {result['written']:,} commits; readers stopped, workers drained. "
         "Every cached key against the database:", "yellow")
    for p in result["protocols"].values():
        w = p["window_ms"]
        window = f"p50 {w['p50']:.1f} / p99 {w['p99']:.1f} / max {w['max']:.1f} ms" if w else "not measured"
        colour = "green" if p["stale_keys"] == 0 else "red"
        _say(f"  {p['label']:<24} {p['stale_keys']:>4} stale of {p['cached_keys']:>4} cached keys; "
             f"commit -> delete {window}", colour)
    _say("A stale key stays stale until its row changes again: nothing else removes it without a TTL. "
         "LeaseCache refuses the late fill (docs/cache-protocol.md). The three protocols shared this machine "
         "(three workers, three sets of readers); `deltaforge bench --phases consistency` runs one at a time "
         "for the staleness window. Servers stopped and removed.", "yellow")


_EXPECTED = {title: n for n, (title, _) in enumerate(SCRIPT, start=1)}
_ROWS = [1, 1, 2, 1, 1]


def _expected(title: str) -> int:
    return sum(_ROWS[: _EXPECTED[title]])
