"""Where the bench runs: the servers, the connections to them, and the stream-rate reading.

:class:`BenchEnv` is the contract every bench phase codes against: a replication DSN
(what the engine and the peers read the binlog with, database ``app``), an admin DSN
(what the workload writer uses to CREATE and INSERT), and a Redis URI. :func:`open_env`
either starts private servers (:mod:`deltaforge.testing`, temp dirs, free loopback ports,
removed on exit, also on Ctrl-C) or wraps servers the user passed in.

Hazards:
- On the user's own servers the bench creates database ``app`` with the seed's four
  tables when missing and writes hundreds of thousands of rows into it, and ``FLUSHALL``s
  the Redis database between runs. Point it at a scratch database/instance only.
- :func:`stream_rate` trusts the millisecond part of auto-generated stream ids, i.e.
  redis-server's clock at XADD time: it measures commit-to-commit throughput as Redis saw
  it, which is what a consumer sees; it is wrong for streams with explicit ids.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from deltaforge.dsn import parse_mysql_dsn, redact
from deltaforge.errors import DeltaForgeError

#: the database the seed's pipeline reads (conf/pipeline.yaml lists app.*)
BENCH_DB = "app"


class BenchError(DeltaForgeError):
    """The bench cannot run or a run went wrong (one line: cause and fix)."""

    exit_code = 6


@dataclass
class BenchEnv:
    """Connection strings of the servers one bench invocation uses."""

    mysql_dsn: str
    """Replication user, database ``app``: ``mysql://deltaforge:deltaforge@127.0.0.1:PORT/app``."""
    mysql_admin_dsn: str
    """A user that can CREATE/INSERT/UPDATE/DELETE in ``app`` (root on throwaway servers)."""
    redis_uri: str
    #: set by :func:`open_env` when it started the servers (versions, pids for the report)
    servers: dict[str, Any] = field(default_factory=dict)

    def mysql(self, multi_statements: bool = False) -> Any:
        """A new PyMySQL connection as the admin user, ``autocommit=False``, database ``app``
        (``multi_statements``: one query may hold several ``;``-separated statements)."""
        import pymysql
        from pymysql.constants import CLIENT

        d = parse_mysql_dsn(self.mysql_admin_dsn, "--mysql-admin-dsn")
        try:
            conn = pymysql.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                   database=d.database or None, autocommit=False, charset="utf8mb4",
                                   connect_timeout=10, client_flag=CLIENT.MULTI_STATEMENTS if multi_statements else 0,
                                   **d.tls_kwargs())
        except pymysql.err.MySQLError as e:
            raise BenchError(f"cannot connect to MySQL at {redact(self.mysql_admin_dsn)}: {e.args[-1]}",
                             "check --mysql-admin-dsn / --mysql-dsn (user, password, host:port)") from None
        return conn

    def redis(self) -> redis.Redis:
        """A new redis-py client (bytes replies); a ``redis.cluster.RedisCluster`` for a cluster URI."""
        from deltaforge.dsn import parse_redis_uri
        from deltaforge.redisclient import redis_py_client

        return redis_py_client(parse_redis_uri(self.redis_uri, "--redis-uri"), socket_timeout=60)  # type: ignore[no-any-return]

    def flush_redis(self) -> None:
        """``FLUSHALL``: every run starts with no stream and no checkpoint."""
        client = self.redis()
        try:
            client.flushall()
        except redis.RedisError as e:
            raise BenchError(f"FLUSHALL on {redact(self.redis_uri)} failed: {e}",
                             "pass a --redis-uri of a scratch Redis the bench may flush") from None
        finally:
            client.close()


def _with_db(dsn: str, db: str) -> str:
    """``dsn`` with its database path replaced by ``db`` (query string kept)."""
    head, sep, query = dsn.partition("?")
    scheme, _, rest = head.partition("://")
    host_part = rest.split("/", 1)[0]
    return f"{scheme}://{host_part}/{db}" + (f"?{query}" if sep else "")


@contextlib.contextmanager
def open_env(mysql_dsn: str | None = None, mysql_admin_dsn: str | None = None,
             redis_uri: str | None = None) -> Iterator[BenchEnv]:
    """Yield a :class:`BenchEnv`; servers not given are started here and always stopped on exit.

    ``mysql_dsn`` must be a replication-capable user; writes use ``mysql_admin_dsn`` or,
    without it, the same user. Both are pointed at database ``app``.
    """
    from deltaforge.testing import MariaDBServer, RedisServer

    started: list[Any] = []
    try:
        servers: dict[str, Any] = {}
        if mysql_dsn:
            parse_mysql_dsn(mysql_dsn, "--mysql-dsn")
            repl = _with_db(mysql_dsn, BENCH_DB)
            admin = _with_db(mysql_admin_dsn or mysql_dsn, BENCH_DB)
        else:
            db = MariaDBServer()
            started.append(db)
            db.start()
            servers["mariadb"] = db
            # Create the database first so the admin DSN can name it.
            db.execute(f"CREATE DATABASE IF NOT EXISTS {BENCH_DB}")
            repl = db.dsn(db=BENCH_DB)
            admin = f"mysql://root@127.0.0.1:{db.port}/{BENCH_DB}"
        if redis_uri:
            uri = redis_uri
        else:
            rs = RedisServer()
            started.append(rs)
            rs.start()
            servers["redis"] = rs
            uri = rs.uri
        env = BenchEnv(mysql_dsn=repl, mysql_admin_dsn=admin, redis_uri=uri, servers=servers)
        if mysql_dsn:
            _ensure_database(env, mysql_admin_dsn or mysql_dsn)
        yield env
    finally:
        for srv in reversed(started):
            with contextlib.suppress(Exception):
                srv.stop()


def _ensure_database(env: BenchEnv, raw_admin: str) -> None:
    import pymysql

    d = parse_mysql_dsn(raw_admin, "--mysql-admin-dsn")
    try:
        conn = pymysql.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                               autocommit=True, charset="utf8mb4", connect_timeout=10, **d.tls_kwargs())
    except pymysql.err.MySQLError as e:
        raise BenchError(f"cannot connect to MySQL at {redact(raw_admin)}: {e.args[-1]}",
                         "check --mysql-dsn / --mysql-admin-dsn (user, password, host:port)") from None
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {BENCH_DB}")
    except pymysql.err.MySQLError as e:
        raise BenchError(f"cannot create database {BENCH_DB} as {d.user}: {e.args[-1]}",
                         f"GRANT ALL ON {BENCH_DB}.* to that user, or pass --mysql-admin-dsn of one that has it"
                         ) from None
    finally:
        conn.close()


def binlog_position(env: BenchEnv) -> str:
    """``file:pos`` of the server's binlog end (``SHOW MASTER STATUS``)."""
    conn = env.mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
    finally:
        conn.close()
    if not row:
        raise BenchError("SHOW MASTER STATUS returned nothing: the binlog is off",
                         "start the server with log_bin, binlog_format=ROW, binlog_row_image=FULL")
    return f"{row[0]}:{row[1]}"


def stream_rate(redis_client: Any, stream: str | list[str]) -> tuple[int, float]:
    """(entries, events/s from the first to the last entry of ``stream``, or of several streams
    taken together: the earliest first entry to the latest last one).

    Uses the millisecond timestamps of the auto-generated entry ids:
    ``(N - 1) / (last_ms - first_ms) * 1000``. The first entry starts the clock, so it
    is not counted. A span under 1 ms is taken as 1 ms; fewer than 2 entries give 0.0.
    """
    streams = [stream] if isinstance(stream, str) else stream
    n = sum(int(redis_client.xlen(s)) for s in streams)
    if n < 2:
        return n, 0.0
    firsts = [r[0][0] for r in (redis_client.xrange(s, count=1) for s in streams) if r]
    lasts = [r[0][0] for r in (redis_client.xrevrange(s, count=1) for s in streams) if r]
    first_ms = min(_id_ms(i) for i in firsts)
    last_ms = max(_id_ms(i) for i in lasts)
    span = max(last_ms - first_ms, 1)
    return n, (n - 1) / span * 1000.0


def _id_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


@dataclass
class KeyEvents:
    """What :func:`key_events` set up: a subscribed ``pubsub``, or None and the ``note`` why not."""

    pubsub: Any = None
    note: str | None = None


@contextlib.contextmanager
def key_events(admin: redis.Redis, flags: str, channels: list[str], measured: str) -> Iterator[KeyEvents]:
    """``notify-keyspace-events`` set to ``flags`` and ``channels`` subscribed for the block; the
    setting is restored and the subscription closed on exit. A Redis that refuses CONFIG (a managed
    service, an ACL) yields no pubsub and a note that ``measured`` was not measured; the run goes on."""
    events = KeyEvents()
    saved: str | None = None
    try:
        try:
            saved = str(admin.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
            admin.config_set("notify-keyspace-events", flags)
            events.pubsub = admin.pubsub()
            events.pubsub.subscribe(*channels)
        except Exception as e:  # noqa: BLE001 - report and go on without the figure
            events.note = f"keyspace notifications unavailable ({e}); {measured} not measured"
            logging.getLogger("deltaforge.bench").warning("%s", events.note)
            events.pubsub = None
        yield events
    finally:
        if events.pubsub is not None:
            with contextlib.suppress(Exception):
                events.pubsub.close()
        if saved is not None:
            with contextlib.suppress(Exception):
                admin.config_set("notify-keyspace-events", saved)


def run_failed(phase: str, errors: list[BaseException]) -> None:
    """Raise the first error a phase's threads recorded, as the BenchError the command reports."""
    if not errors:
        return
    err = errors[0]
    if isinstance(err, BenchError):
        raise err
    raise BenchError(f"{phase} run failed: {type(err).__name__}: {err}",
                     "check the servers; rerun with --debug for the traceback") from err


def guarded(fn: Callable[[], None], errors: list[BaseException], stop: threading.Event) -> Callable[[], None]:
    """``fn`` for a phase's thread: an exception is recorded in ``errors`` (for :func:`run_failed`)
    and sets ``stop``, so the other threads end too."""
    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by the main thread
            errors.append(e)
            stop.set()
    return run
