"""Throwaway MariaDB and Redis servers on free loopback ports, for tests, the demo and the bench.

Each server lives in its own temporary directory, is started from the installed
binaries (``mariadbd``/``mariadb-install-db``, ``redis-server``) and is removed on
``stop()``. They never touch the machine's own services on 3306/6379.

The MariaDB server has everything DeltaForge needs: binlog on, ``ROW`` format,
``FULL`` row image, ``FULL`` row metadata, GTIDs (MariaDB always has them), and a
replication user ``deltaforge``/``deltaforge`` with the grants of README §"Your own
MySQL/MariaDB".

Failover and rollback scenarios (DESIGN.md §5, issue 7):

* :class:`MariaDBReplica` is a second ``mariadbd`` replicating from a primary by GTID
  (``master_use_gtid=slave_pos``, ``log_slave_updates``, binlog settings identical to the
  primary's, its own ``server_id``, same GTID domain). It replicates the primary's whole
  binlog from its first file, so the ``deltaforge`` user arrives by replication: the
  primary's binlogs must not have been purged. Binlog file NUMBERS are per server: use
  :meth:`MariaDBServer.flush_binlogs` to put the two servers on different numbers, as
  real topologies are. :meth:`MariaDBReplica.promote` turns it into a writable primary.
* Both servers can :meth:`~MariaDBServer.shutdown` and :meth:`~MariaDBServer.boot` again
  on the same port with their data (a MariaDB restart).
* :class:`RedisServer` keeps its RDB file under its own directory, never saves on its
  own (``save ""``) and has no AOF unless asked: :meth:`~RedisServer.snapshot` saves and
  copies the RDB aside, :meth:`~RedisServer.crash_restart` SIGKILLs and starts again on
  the same port from a chosen snapshot (Redis "coming back older"), and
  :meth:`~RedisServer.freeze`/:meth:`~RedisServer.thaw` SIGSTOP/SIGCONT it.

Hazard: restarting on the same port can in principle lose a race against another process
that picked the freed port meanwhile; the start then fails loudly (never a silent wrong
server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deltaforge.errors import DeltaForgeError

REPL_USER = "deltaforge"
REPL_PASSWORD = "deltaforge"


class MissingBinaryError(DeltaForgeError):
    exit_code = 5


def require_binary(candidates: tuple[str, ...], package: str) -> str:
    for name in candidates:
        for path in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if path and os.access(path, os.X_OK):
                return path
    raise MissingBinaryError(
        f"{candidates[0]} is not installed",
        f"apt-get install -y {package} (or run the README's setup command)",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise DeltaForgeError(f"{what} exited with {proc.returncode} while starting: {tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise DeltaForgeError(f"{what} did not open port {port} within {timeout:.0f}s (log: {log})")


class TLSFiles:
    """A private CA and a server certificate it signed for 127.0.0.1 (and only that: ``localhost``
    is the wrong host), a client certificate from the same CA, and a second, unrelated CA (the
    wrong CA). PEM files in ``dir``, made with the openssl command line."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.ca, self.other_ca = dir / "ca.pem", dir / "other-ca.pem"
        self.server_cert, self.server_key = dir / "server.pem", dir / "server-key.pem"
        self.client_cert, self.client_key = dir / "client.pem", dir / "client-key.pem"
        #: a client certificate the server does not trust (signed by the other CA)
        self.stranger_cert, self.stranger_key = dir / "stranger.pem", dir / "stranger-key.pem"

    @classmethod
    def make(cls, dir: Path) -> TLSFiles:
        openssl = require_binary(("openssl",), "openssl")
        dir.mkdir(parents=True, exist_ok=True)
        t = cls(dir)

        def run(*args: str) -> None:
            res = subprocess.run([openssl, *args], capture_output=True, text=True, cwd=dir)
            if res.returncode != 0:
                raise DeltaForgeError(f"openssl {args[0]} failed: {res.stderr.strip()[-500:]}")

        for name, subject in (("ca", "DeltaForge test CA"), ("other-ca", "Some other CA")):
            run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={subject}",
                "-keyout", f"{name}-key.pem", "-out", f"{name}.pem")
        (dir / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        for name, cn, ca, ext in (("server", "127.0.0.1", "ca", ("-extfile", "san.ext")),
                                  ("client", "deltaforge", "ca", ()), ("stranger", "deltaforge", "other-ca", ())):
            run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}-key.pem",
                "-out", f"{name}.csr")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.pem", *ext)
        return t

    def server_args(self, *, require: bool = True) -> tuple[str, ...]:
        """mariadbd options: TLS with these files; ``require``: refuse plain connections."""
        args = (f"--ssl-ca={self.ca}", f"--ssl-cert={self.server_cert}", f"--ssl-key={self.server_key}")
        return (*args, "--require-secure-transport=ON") if require else args


class MariaDBServer:
    """A private MariaDB with the binlog configured for CDC."""

    def __init__(self, *, server_id: int = 1, row_metadata: str = "FULL", extra_args: tuple[str, ...] = ()) -> None:
        self.server_id = server_id
        self.row_metadata = row_metadata
        self.extra_args = extra_args
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, user: str = REPL_USER, password: str = REPL_PASSWORD, db: str = "") -> str:
        return f"mysql://{user}:{password}@127.0.0.1:{self.port}/{db}"

    @property
    def root_dsn(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 60.0) -> MariaDBServer:
        self._install()
        try:
            self._launch(require_binary(("mariadbd", "mysqld"), "mariadb-server"), timeout)
            self._after_install()
        except BaseException:
            self.stop()
            raise
        return self

    def _install(self) -> None:
        install = require_binary(("mariadb-install-db", "mysql_install_db"), "mariadb-server")
        self.dir = Path(tempfile.mkdtemp(prefix="deltaforge-mariadb-"))
        data = self.dir / "data"
        log = self.dir / "install.log"
        with log.open("wb") as out:
            rc = subprocess.call(
                [install, "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
                 "--skip-test-db", "--user=root"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        if rc != 0:
            raise DeltaForgeError(f"mariadb-install-db failed ({rc}): {log.read_text(errors='replace')[-2000:]}")

    def _after_install(self) -> None:
        """First start only: what the fresh server needs beyond the install (the replication user)."""
        self.execute(
            f"CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}'",
            f"GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{REPL_USER}'@'%'",
        )

    def _server_args(self) -> list[str]:
        """Server options beyond the datadir/port/socket ones (a replica adds its own)."""
        assert self.dir is not None
        return [
            f"--log-bin={self.dir / 'data' / 'binlog'}", "--binlog-format=ROW", "--binlog-row-image=FULL",
            f"--binlog-row-metadata={self.row_metadata}", f"--server-id={self.server_id}",
            "--skip-name-resolve", "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=96M",
            "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0", "--max-connections=200",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
            "--default-time-zone=+00:00", "--max-allowed-packet=256M", *self.extra_args,
        ]

    def _launch(self, server: str, timeout: float, port: int | None = None) -> None:
        assert self.dir is not None
        self.port = port or free_port()
        err = self.dir / "error.log"
        args = [
            server, "--no-defaults", f"--datadir={self.dir / 'data'}", f"--socket={self.dir / 'mysql.sock'}",
            f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", f"--log-error={err}",
            f"--pid-file={self.dir / 'mariadbd.pid'}", *self._server_args(),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait_port(self.port, self.proc, "mariadbd", err, timeout)
        # The port opens before the server accepts logins; wait for a real query.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def connect(self, **kw: Any) -> Any:
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user=kw.pop("user", "root"),
                               password=kw.pop("password", ""), autocommit=True, charset="utf8mb4", **kw)

    def execute(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run statements as root; returns the rows of the last one."""
        conn = self.connect()
        try:
            rows: list[tuple[Any, ...]] = []
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
                    rows = list(cur.fetchall())
            return rows
        finally:
            conn.close()

    def variable(self, name: str) -> str:
        """A global variable's value (``gtid_binlog_pos``, ``read_only``, ...)."""
        rows = self.execute(f"SELECT @@GLOBAL.{name}")
        return "" if rows[0][0] is None else str(rows[0][0])

    @property
    def binlog_file(self) -> str:
        """The binlog file being written now (SHOW MASTER STATUS)."""
        return str(self.execute("SHOW MASTER STATUS")[0][0])

    @property
    def gtid_binlog_pos(self) -> str:
        """The GTID of the last transaction in this server's binlog, per domain."""
        return self.variable("gtid_binlog_pos")

    def flush_binlogs(self, times: int = 1) -> str:
        """Rotate to a new binlog file ``times`` times (FLUSH BINARY LOGS); returns the current file."""
        for _ in range(times):
            self.execute("FLUSH BINARY LOGS")
        return self.binlog_file

    def restart(self, timeout: float = 60.0, *, same_port: bool = True, down_for: float = 0.0) -> None:
        """Stop and start again (a server going away and coming back)."""
        port = self.port if same_port else None
        self._kill(signal.SIGTERM)
        time.sleep(down_for)
        self._launch(require_binary(("mariadbd", "mysqld"), "mariadb-server"), timeout, port)

    def shutdown(self, *, crash: bool = False) -> None:
        """Stop the server process, keeping its data and port for :meth:`boot` (SIGKILL if ``crash``)."""
        self._kill(signal.SIGKILL if crash else signal.SIGTERM)

    def boot(self, timeout: float = 60.0) -> None:
        """Start a server stopped by :meth:`shutdown` again, on the same port with the same data."""
        if self.dir is None:
            raise DeltaForgeError("boot() needs a server that was started and not removed by stop()")
        if self.proc is not None and self.proc.poll() is None:
            raise DeltaForgeError(f"mariadbd on port {self.port} is still running", "call shutdown() first")
        self._launch(require_binary(("mariadbd", "mysqld"), "mariadb-server"), timeout, self.port)

    def _kill(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self._kill(signal.SIGTERM)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> MariaDBServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MariaDBReplica(MariaDBServer):
    """A second mariadbd replicating from ``primary`` by GTID, read-only until :meth:`promote`.

    Same binlog settings as the primary plus ``log_slave_updates``, so its binlog holds the
    primary's transactions under their original GTIDs (``0-<primary id>-n``), in files
    numbered by this server. Replication starts from the beginning of the primary's binlog
    (empty ``gtid_slave_pos``), which also brings the ``deltaforge`` user.
    """

    def __init__(self, primary: MariaDBServer, *, server_id: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(server_id=server_id or primary.server_id + 1, row_metadata=primary.row_metadata,
                         extra_args=(*primary.extra_args, *extra_args))
        if self.server_id == primary.server_id:
            raise DeltaForgeError(f"a replica needs its own server_id, not the primary's {primary.server_id}")
        self.primary = primary
        self.promoted = False

    def _server_args(self) -> list[str]:
        assert self.dir is not None
        # read-only until promoted, also across shutdown()/boot(); a promoted one boots writable
        return [*super()._server_args(), "--log-slave-updates", f"--relay-log={self.dir / 'data' / 'relay'}",
                *(() if self.promoted else ("--read-only",))]

    def _after_install(self) -> None:
        self.execute(
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={self.primary.port}, "
            f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', MASTER_CONNECT_RETRY=1, "
            "MASTER_USE_GTID=slave_pos",
            "START SLAVE",
        )
        self.wait_caught_up()
        if not self.execute(f"SELECT 1 FROM mysql.user WHERE user = '{REPL_USER}'"):
            raise DeltaForgeError(f"the replica did not receive the user {REPL_USER!r} from the primary",
                                  "start the replica from a primary made by MariaDBServer.start() whose "
                                  "binlogs were not purged")

    def replication_status(self) -> dict[str, Any]:
        """SHOW SLAVE STATUS as a dict (empty when not a replica any more)."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW SLAVE STATUS")
                row = cur.fetchone()
                if row is None:
                    return {}
                return {d[0]: v for d, v in zip(cur.description, row, strict=True)}
        finally:
            conn.close()

    def wait_caught_up(self, timeout: float = 30.0) -> str:
        """Wait until this replica applied everything in the primary's binlog now; returns that GTID position."""
        target = self.primary.gtid_binlog_pos
        if not target:
            return target
        waited = self.execute(f"SELECT MASTER_GTID_WAIT('{target}', {timeout:.1f})")[0][0]
        if int(waited) != 0:
            status = self.replication_status()
            raise DeltaForgeError(
                f"the replica on port {self.port} did not reach GTID {target} within {timeout:.0f}s "
                f"(at {self.variable('gtid_slave_pos')!r}; IO: {status.get('Slave_IO_Running')}, "
                f"SQL: {status.get('Slave_SQL_Running')}, last error: "
                f"{status.get('Last_IO_Error') or status.get('Last_SQL_Error') or 'none'})",
                f"see {self.dir / 'error.log' if self.dir else 'the error log'}")
        return target

    def promote(self) -> None:
        """Fail over to this server: stop replication, forget the primary, accept writes."""
        self.execute("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF")
        self.promoted = True


@contextlib.contextmanager
def tls_redis(cert: Path, key: Path, ca: Path, dir: Path) -> Iterator[int]:
    """A Redis that speaks TLS only (``cert``/``key``, clients not asked for certificates), on a
    free loopback port it yields once the port accepts connections; stopped on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [require_binary(("redis-server",), "redis-server"), "--port", "0", "--tls-port", str(port), "--bind",
         "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--save", "", "--dir", str(dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class RedisServer:
    """A private redis-server: RDB file in its own directory, no automatic saves, no AOF unless asked."""

    RDB = "dump.rdb"

    def __init__(self, *, password: str | None = None, appendonly: bool = False) -> None:
        self.password = password
        self.appendonly = appendonly
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self._snapshots = 0

    @property
    def uri(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def rdb_path(self) -> Path:
        assert self.dir is not None
        return self.dir / self.RDB

    def start(self, timeout: float = 30.0) -> RedisServer:
        self.dir = Path(tempfile.mkdtemp(prefix="deltaforge-redis-"))
        try:
            self._launch(free_port(), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, port: int, timeout: float, *, appendonly: bool | None = None) -> None:
        assert self.dir is not None
        binary = require_binary(("redis-server",), "redis-server")
        self.port = port
        log = self.dir / "redis.log"
        aof = self.appendonly if appendonly is None else appendonly
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if aof else "no",
                "--dir", str(self.dir), "--dbfilename", self.RDB, "--logfile", str(log), "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.frozen = False
        _wait_port(self.port, self.proc, "redis-server", log, timeout)

    def client(self, **kw: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kw)

    def _poll(self, ready: Any, timeout: float, what: str, **client_kw: Any) -> None:
        """Call ``ready(client)`` every 50 ms until it is true; DeltaForgeError naming ``what`` after ``timeout``."""
        client = self.client(**client_kw)
        deadline = time.monotonic() + timeout
        try:
            while not ready(client):
                if time.monotonic() > deadline:
                    raise DeltaForgeError(f"redis-server on port {self.port} did not {what} within {timeout:.0f}s",
                                          f"see {self.dir}/redis.log")
                time.sleep(0.05)
        finally:
            client.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until PING answers PONG (not LOADING: a restarted server reads its RDB first)."""
        import redis

        def pong(client: Any) -> bool:
            try:
                return bool(client.ping())
            except (redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError):
                return False

        self._poll(pong, timeout, "answer PING", socket_timeout=2)

    def snapshot(self) -> Path:
        """SAVE now and copy the RDB aside; returns the copy, for :meth:`crash_restart`."""
        assert self.dir is not None
        client = self.client()
        try:
            client.save()
        finally:
            client.close()
        self._snapshots += 1
        copy = self.dir / f"snapshot-{self._snapshots}.rdb"
        shutil.copyfile(self.rdb_path, copy)
        return copy

    def crash_restart(self, snapshot: Path | None = None, *, down_for: float = 0.0,
                      timeout: float = 30.0) -> None:
        """SIGKILL, put ``snapshot`` back as the RDB (else keep the last SAVE), start on the same port.

        Returns once the server answers PING with its data loaded. Everything written after the
        snapshot is gone, as after a real crash of a Redis that persists by RDB only. With AOF on,
        a restart without ``snapshot`` replays the AOF; with one, the AOF is replaced by the
        snapshot's data (the snapshot is the whole state) and AOF goes on from there.
        """
        if self.dir is None:
            raise DeltaForgeError("crash_restart() needs a started RedisServer")
        self._kill(signal.SIGKILL)
        from_rdb = snapshot is not None and self.appendonly
        if snapshot is not None:
            shutil.copyfile(snapshot, self.rdb_path)
            if self.appendonly:
                shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)
        time.sleep(down_for)
        # With AOF on, Redis ignores the RDB at start: load it with AOF off, then turn AOF on (a rewrite
        # from the loaded data).
        self._launch(self.port, timeout, appendonly=False if from_rdb else None)
        self.wait_ready(timeout)
        if from_rdb:
            self._enable_aof(timeout)

    def _enable_aof(self, timeout: float) -> None:
        def rewritten(client: Any) -> bool:
            info = client.info("persistence")
            return bool(info.get("aof_enabled") == 1 and not info.get("aof_rewrite_in_progress")
                        and not info.get("aof_rewrite_scheduled"))

        client = self.client()
        try:
            client.config_set("appendonly", "yes")
        finally:
            client.close()
        self._poll(rewritten, timeout, "finish its AOF rewrite", decode_responses=True)

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a stalled Redis)."""
        if self.proc is None or self.proc.poll() is not None:
            raise DeltaForgeError("freeze() needs a running RedisServer")
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`: the server answers what queued up meanwhile."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    @contextlib.contextmanager
    def frozen_for_a_while(self) -> Iterator[None]:
        """``with server.frozen_for_a_while(): ...``: frozen inside the block, thawed however it ends."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def _kill(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            if self.frozen:
                self.proc.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
                self.frozen = False
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self._kill(signal.SIGTERM)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- list-based stages


class ListSource:
    """A reader over given batches, for topology tests without servers (Pipeline's ``open_source``).

    It hands out the batches not covered by ``resume`` (what a restart from the checkpoint would
    re-read), then raises ``fail_with`` if given, else waits for ``stop`` like a caught-up reader.
    """

    def __init__(self, batches: list[Any], stop: Any, resume: Any, fail_with: BaseException | None = None) -> None:
        from deltaforge.model import position_le

        self.start_position = resume
        self._stop = stop
        self._batches = [b for b in batches if resume is None or not position_le(b.end, resume)]
        self._fail_with = fail_with

    def batches(self) -> Any:
        for batch in self._batches:
            if self._stop.is_set():
                return
            yield batch
        if self._fail_with is not None:
            raise self._fail_with
        while not self._stop.is_set():
            time.sleep(0.01)

    def close(self) -> None:
        pass


class ListSinks:
    """Sinks that keep what they commit in a list (Pipeline's ``open_sinks``), shared across the
    supervisor's restarts; ``fail`` maps a write number (1-based, over the object's life) to the
    error that write raises instead of committing."""

    id = "list"

    def __init__(self, fail: dict[int, BaseException] | None = None) -> None:
        self.committed: list[Any] = []
        self.position: Any = None
        self.last_value: bytes | None = None
        self.sinks = [self]
        self.writes = 0
        self._fail = dict(fail or {})

    def open(self, expect: Any = None) -> Any:
        return self.position

    def persist_start(self, start: Any) -> None:
        self.position = self.position or start

    def write(self, batch: Any) -> None:
        self.writes += 1
        err = self._fail.pop(self.writes, None)
        if err is not None:
            raise err
        self.committed.append(batch)
        self.position = batch.end

    def close(self) -> None:
        pass
