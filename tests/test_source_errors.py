"""The source side under operator mistakes and server trouble, against real servers.

- password rotation: a login refused on reconnect stops the engine with the fix;
- a sink frozen longer than the server's net_write_timeout: the reader does not spiral.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import (
    TOPOLOGIES,
    TOPOLOGIES_SLOW,
    Engine,
    binlog_end,
    stream_events,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

ROT_USER = "df_rotated"
OLD_PASSWORD = "Rot-Old-Pass-31"
NEW_PASSWORD = "Rot-New-Pass-47"


@pytest.fixture
def rotated_user(mariadb: MariaDBServer) -> Iterator[str]:
    """A replication user of this test only: the session's user keeps its password."""
    mariadb.execute(
        f"DROP USER IF EXISTS '{ROT_USER}'@'%'",
        f"CREATE USER '{ROT_USER}'@'%' IDENTIFIED BY '{OLD_PASSWORD}'",
        f"GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{ROT_USER}'@'%'",
    )
    yield ROT_USER
    mariadb.execute(f"DROP USER IF EXISTS '{ROT_USER}'@'%'")


def _dump_threads(mariadb: MariaDBServer, user: str) -> list[int]:
    rows = mariadb.execute(
        f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{user}' AND COMMAND LIKE 'Binlog Dump%'")
    return [int(r[0]) for r in rows]


def _run_until_reconnect_fails(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                redis_client: Any, db: str, user: str, change: str, workers: str) -> tuple[int, str]:
    """An engine streaming as ``user`` (DSN from $ROTATED_DSN); then ``change`` runs on the server and
    the engine's binlog dump connection is KILLed, so the engine must reconnect."""
    mariadb.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{db}.t"], start=binlog_end(mariadb))
    # the DSN comes from the environment, as in the seed's pipeline
    cfg.write_text(cfg.read_text().replace(f"dsn: {mariadb.dsn()}", "dsn: ${ROTATED_DSN}"))
    engine = Engine(cfg, "--workers", workers, env={"ROTATED_DSN": mariadb.dsn(user, OLD_PASSWORD)}).wait_ready()
    try:
        mariadb.execute(f"INSERT INTO {db}.t VALUES (1)")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 1, what="the first row")
        wait_for(lambda: _dump_threads(mariadb, user), what="the engine's binlog dump thread")
        mariadb.execute(change)
        for thread in _dump_threads(mariadb, user):
            mariadb.execute(f"KILL {thread}")
        code, out = engine.wait(timeout=120)  # generous: the first restart waits for its backoff
    finally:
        engine.stop(signal.SIGKILL)
    assert [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")] == [1]
    assert OLD_PASSWORD not in out and NEW_PASSWORD not in out
    return code, out


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_password_rotation_stops_the_engine_with_the_fix(tmp_path: Path, mariadb: MariaDBServer,
                                                         redis_server: RedisServer, redis_client: Any,
                                                         fresh_db: str, rotated_user: str, workers: str) -> None:
    code, out = _run_until_reconnect_fails(
        tmp_path, mariadb, redis_server, redis_client, fresh_db, rotated_user,
        f"ALTER USER '{rotated_user}'@'%' IDENTIFIED BY '{NEW_PASSWORD}'", workers)
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: MySQL refused the login while connecting to MySQL: (1045) Access denied "
                           f"for user '{rotated_user}'"), out
    assert "$ROTATED_DSN (spec.source.config.dsn)" in last and "not retried" in last
    # the lost connection was retried once; the refused login never
    assert not any("Access denied" in line and "restarting" in line for line in out.splitlines()), out


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_revoked_replication_grant_stops_the_engine_with_the_grant(tmp_path: Path, mariadb: MariaDBServer,
                                                                   redis_server: RedisServer, redis_client: Any,
                                                                   fresh_db: str, rotated_user: str,
                                                                   workers: str) -> None:
    code, out = _run_until_reconnect_fails(
        tmp_path, mariadb, redis_server, redis_client, fresh_db, rotated_user,
        f"REVOKE REPLICATION SLAVE ON *.* FROM '{rotated_user}'@'%'", workers)
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: MySQL denied a privilege while reading the binlog: (1227) "), out
    assert f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{rotated_user}'@" in last
    assert not any("(1227)" in line and "restarting" in line for line in out.splitlines()), out


@contextlib.contextmanager
def _global(mariadb: MariaDBServer, var: str, value: int) -> Iterator[None]:
    old = mariadb.execute(f"SELECT @@GLOBAL.{var}")[0][0]
    mariadb.execute(f"SET GLOBAL {var}={value}")
    try:
        yield
    finally:
        mariadb.execute(f"SET GLOBAL {var}={old}")


# ~12 s a run (an 8 s freeze): in-process, and the multi-process topology, where a full ring blocks the reader
@pytest.mark.parametrize("workers", TOPOLOGIES_SLOW)
def test_sink_frozen_past_net_write_timeout(tmp_path: Path, mariadb: MariaDBServer, fresh_db: str,
                                            workers: str) -> None:
    """Redis SIGSTOPped for ~8 s while MariaDB's net_write_timeout is 2 s and the binlog outgrows the
    socket buffers: the server's dump thread must not drop us (no restart), and every row lands once."""
    mariadb.execute(f"CREATE TABLE {fresh_db}.big (id INT PRIMARY KEY, pad VARCHAR(2000))")
    pad = "x" * 1500
    rows_per_tx, txs = 500, 40  # ~30 MB of binlog: more than the loopback socket buffers hold

    def insert(first_tx: int, count: int) -> None:
        for tx in range(first_tx, first_tx + count):
            base = tx * rows_per_tx
            values = ",".join(f"({base + i},'{pad}')" for i in range(rows_per_tx))
            mariadb.execute(f"INSERT INTO {fresh_db}.big VALUES {values}")

    with RedisServer() as redis_private, _global(mariadb, "net_write_timeout", 2):
        client = redis_private.client()
        cfg = write_config(tmp_path, mariadb, redis_private, [f"{fresh_db}.big"], start=binlog_end(mariadb),
                           name="frozen", stream="cdc:frozen")
        engine = Engine(cfg, "--workers", workers).wait_ready()
        assert redis_private.proc is not None
        pid = redis_private.proc.pid
        try:
            insert(0, 1)
            wait_for(lambda: client.xlen("cdc:frozen") == rows_per_tx, what="the first transaction")
            os.kill(pid, signal.SIGSTOP)
            try:
                insert(1, txs)
                time.sleep(8)  # the freeze itself, not a speed assertion
            finally:
                os.kill(pid, signal.SIGCONT)
            insert(txs + 1, 2)
            total = (txs + 3) * rows_per_tx
            wait_for(lambda: client.xlen("cdc:frozen") >= total, timeout=300, what=f"{total} entries")
            time.sleep(1)  # nothing more may arrive
            assert engine.poll() is None, engine.output
            ids = [e["after"]["id"] for e in stream_events(client, "cdc:frozen")]
        finally:
            code, out = engine.stop()
            client.close()
    assert ids == list(range(total)), f"{len(ids)} entries, {len(set(ids))} distinct"
    assert code == 0, out
    assert "restarting from the checkpoint" not in out, out


# the reader and the preflight alone, no engine: no topology to vary
def test_expired_password_is_fatal_with_the_fix(mariadb: MariaDBServer, fresh_db: str) -> None:
    """MariaDB lets an expired account log in "sandboxed" and fails its first statement (1820):
    the reader and the preflight both stop with the ALTER USER to run, not a retry."""
    from deltaforge.errors import SourceError
    from deltaforge.preflight import check_mysql
    from deltaforge.source.binlog import BinlogSource
    from tests.test_preflight import make_cfg

    user, password = "df_expired", "Exp-Pass-58"
    mariadb.execute(f"CREATE TABLE {fresh_db}.t (id INT PRIMARY KEY)",
                    f"DROP USER IF EXISTS '{user}'@'%'",
                    f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
                    f"GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%'",
                    f"ALTER USER '{user}'@'%' PASSWORD EXPIRE")
    try:
        source = BinlogSource(dsn=mariadb.dsn(user, password), tables=[f"{fresh_db}.t"], pipeline="expired",
                              tenant=None, dsn_where="$X (spec.source.config.dsn)")
        with pytest.raises(SourceError) as info:
            source.open(None)
        source.close()
        assert not info.value.retriable
        assert "has expired" in str(info.value) and f"ALTER USER '{user}'@" in str(info.value)

        results, _ = check_mysql(make_cfg(mariadb.dsn(user, password), [f"{fresh_db}.t"]))
        fails = [r.line() for r in results if not r.ok]
        assert len(fails) == 1 and "has expired" in fails[0] and "ALTER USER" in fails[0], fails
        assert password not in fails[0]
    finally:
        mariadb.execute(f"DROP USER IF EXISTS '{user}'@'%'")
