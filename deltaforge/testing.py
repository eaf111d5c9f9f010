"""Throwaway MariaDB and Redis servers on free loopback ports, for tests, the demo and the bench.

Each server lives in its own temporary directory, is started from the installed
binaries (``mariadbd``/``mariadb-install-db``, ``redis-server``) and is removed on
``stop()``. They never touch the machine's own services on 3306/6379.

The MariaDB server has everything DeltaForge needs: binlog on, ``ROW`` format,
``FULL`` row image, ``FULL`` row metadata, GTIDs (MariaDB always has them), and a
replication user ``deltaforge``/``deltaforge`` with the grants of README §"Your own
MySQL/MariaDB".
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
        install = require_binary(("mariadb-install-db", "mysql_install_db"), "mariadb-server")
        server = require_binary(("mariadbd", "mysqld"), "mariadb-server")
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
        self._launch(server, timeout)
        self.execute(
            f"CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}'",
            f"GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{REPL_USER}'@'%'",
        )
        return self

    def _launch(self, server: str, timeout: float, port: int | None = None) -> None:
        assert self.dir is not None
        self.port = port or free_port()
        err = self.dir / "error.log"
        args = [
            server, "--no-defaults", f"--datadir={self.dir / 'data'}", f"--socket={self.dir / 'mysql.sock'}",
            f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", f"--log-error={err}",
            f"--pid-file={self.dir / 'mariadbd.pid'}",
            f"--log-bin={self.dir / 'data' / 'binlog'}", "--binlog-format=ROW", "--binlog-row-image=FULL",
            f"--binlog-row-metadata={self.row_metadata}", f"--server-id={self.server_id}",
            "--skip-name-resolve", "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=96M",
            "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0", "--max-connections=200",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
            "--default-time-zone=+00:00", "--max-allowed-packet=256M", *self.extra_args,
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

    def restart(self, timeout: float = 60.0, *, same_port: bool = True, down_for: float = 0.0) -> None:
        """Stop and start again (a server going away and coming back)."""
        port = self.port if same_port else None
        self._kill(signal.SIGTERM)
        time.sleep(down_for)
        self._launch(require_binary(("mariadbd", "mysqld"), "mariadb-server"), timeout, port)

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


class RedisServer:
    """A private redis-server with persistence off."""

    def __init__(self, *, password: str | None = None) -> None:
        self.password = password
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> RedisServer:
        binary = require_binary(("redis-server",), "redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix="deltaforge-redis-"))
        self.port = free_port()
        log = self.dir / "redis.log"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--logfile", str(log), "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait_port(self.port, self.proc, "redis-server", log, timeout)
        return self

    def client(self, **kw: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kw)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
