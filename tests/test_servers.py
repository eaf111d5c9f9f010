"""The throwaway servers themselves: CDC settings, GTID replica + failover, restarts, Redis rollbacks."""

from __future__ import annotations

import pymysql
import pytest
import redis

from deltaforge.testing import REPL_PASSWORD, REPL_USER, MariaDBReplica, MariaDBServer, RedisServer
from tests.conftest import PRIMARY_BINLOG, REPLICA_BINLOG

pytestmark = pytest.mark.integration


def test_mariadb_fixture_has_cdc_binlog_settings(mariadb: MariaDBServer) -> None:
    rows = dict(mariadb.execute(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
        "('log_bin','binlog_format','binlog_row_image','binlog_row_metadata')"))
    assert rows == {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL",
                    "binlog_row_metadata": "FULL"}
    assert mariadb.port != 3306


def test_redis_fixture_is_private(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert client.ping() is True
    assert redis_server.port != 6379


def _seq(gtid: str, domain: str = "0") -> tuple[int, int]:
    """(server_id, seq_no) of ``domain`` in a MariaDB GTID position."""
    for part in gtid.split(","):
        d, server, seq = part.strip().split("-")
        if d == domain:
            return int(server), int(seq)
    raise AssertionError(f"no domain {domain} in {gtid!r}")


def test_replica_follows_the_primary_with_its_own_binlog_numbers(mariadb_primary: MariaDBServer,
                                                                  mariadb_replica: MariaDBReplica) -> None:
    primary, replica = mariadb_primary, mariadb_replica
    assert primary.binlog_file == PRIMARY_BINLOG
    assert replica.binlog_file == REPLICA_BINLOG
    settings = ("log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata")
    assert [replica.variable(v) for v in settings] == [primary.variable(v) for v in settings]
    assert (replica.variable("server_id"), replica.variable("log_slave_updates")) == ("2", "1")
    assert replica.variable("read_only") == "1"
    assert replica.replication_status()["Using_Gtid"] == "Slave_Pos"

    primary.execute("CREATE DATABASE app", "CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(20))",
                    "INSERT INTO app.t VALUES (1, 'from primary')")
    caught = replica.wait_caught_up()
    assert replica.execute("SELECT id, v FROM app.t") == [(1, "from primary")]
    # log_slave_updates: the replica's own binlog holds the primary's transaction under its GTID
    assert replica.gtid_binlog_pos == caught == primary.gtid_binlog_pos
    assert _seq(caught)[0] == 1
    # the replication user came over from the primary and can log in to the replica
    conn = pymysql.connect(host="127.0.0.1", port=replica.port, user=REPL_USER, password=REPL_PASSWORD)
    conn.close()


def test_promoted_replica_continues_the_gtid_sequence(mariadb_primary: MariaDBServer,
                                                      mariadb_replica: MariaDBReplica) -> None:
    primary, replica = mariadb_primary, mariadb_replica
    primary.execute("CREATE DATABASE app", "CREATE TABLE app.t (id INT PRIMARY KEY)",
                    *(f"INSERT INTO app.t VALUES ({i})" for i in range(1, 6)))
    last_on_primary = replica.wait_caught_up()
    primary_server, primary_seq = _seq(last_on_primary)

    replica.promote()
    assert replica.replication_status() == {}
    assert replica.variable("read_only") == "0"
    replica.execute("INSERT INTO app.t VALUES (100)")

    server, seq = _seq(replica.gtid_binlog_pos)
    assert (primary_server, server) == (1, 2)
    assert seq > primary_seq
    events = replica.execute(f"SHOW BINLOG EVENTS IN '{REPLICA_BINLOG}'")
    infos = [(str(e[2]), str(e[5])) for e in events]  # (Event_type, Info)
    at = infos.index(("Gtid", f"BEGIN GTID 0-2-{seq}"))
    tx = infos[at:at + 5]
    assert any(kind == "Table_map" and "(app.t)" in info for kind, info in tx), tx
    assert any(kind.startswith("Write_rows") for kind, _ in tx), tx
    assert primary.binlog_file != replica.binlog_file
    # still the writable primary after a restart
    replica.shutdown()
    replica.boot()
    assert (replica.variable("read_only"), replica.replication_status()) == ("0", {})
    assert replica.execute("SELECT COUNT(*) FROM app.t") == [(6,)]


def test_mariadb_shutdown_and_boot_keep_data_port_and_replication(mariadb_primary: MariaDBServer,
                                                                  mariadb_replica: MariaDBReplica) -> None:
    primary, replica = mariadb_primary, mariadb_replica
    primary.execute("CREATE DATABASE app", "CREATE TABLE app.t (id INT PRIMARY KEY)", "INSERT INTO app.t VALUES (1)")
    replica.wait_caught_up()
    port = primary.port

    primary.shutdown()
    with pytest.raises(pymysql.err.OperationalError):
        primary.execute("SELECT 1")
    primary.boot()
    assert primary.port == port
    assert primary.binlog_file > PRIMARY_BINLOG  # a restart opens a new binlog file
    primary.execute("INSERT INTO app.t VALUES (2)")
    replica.wait_caught_up()  # the replica reconnected by itself
    assert replica.execute("SELECT id FROM app.t ORDER BY id") == [(1,), (2,)]

    replica.shutdown(crash=True)
    primary.execute("INSERT INTO app.t VALUES (3)")
    replica.boot()
    assert replica.variable("read_only") == "1"
    replica.wait_caught_up()
    assert replica.execute("SELECT id FROM app.t ORDER BY id") == [(1,), (2,), (3,)]


def test_redis_runs_from_its_own_rdb_without_aof(redis_own: RedisServer) -> None:
    client = redis_own.client(decode_responses=True)
    assert client.config_get("dir")["dir"] == str(redis_own.dir)
    assert client.config_get("dbfilename")["dbfilename"] == "dump.rdb"
    assert client.config_get("appendonly")["appendonly"] == "no"
    assert client.config_get("save")["save"] == ""


def test_redis_crash_restart_from_an_older_snapshot(redis_own: RedisServer) -> None:
    client = redis_own.client(decode_responses=True)
    client.set("kept", "1")
    client.xadd("s", {"n": "1"})
    snap = redis_own.snapshot()
    client.set("lost", "2")
    client.set("kept", "changed")
    client.xadd("s", {"n": "2"})
    port, pid = redis_own.port, redis_own.proc.pid if redis_own.proc else None

    redis_own.crash_restart(snap)

    assert redis_own.port == port
    assert redis_own.proc is not None and redis_own.proc.pid != pid
    client = redis_own.client(decode_responses=True)
    assert client.get("kept") == "1"
    assert client.get("lost") is None
    assert client.xlen("s") == 1
    # without a snapshot argument the last SAVE is what comes back
    client.set("after", "x")
    redis_own.crash_restart()
    assert redis_own.client().exists("after", "kept") == 1


def test_redis_freeze_and_thaw(redis_own: RedisServer) -> None:
    client = redis_own.client(socket_timeout=0.5)
    client.set("k", "v")
    with redis_own.frozen_for_a_while():
        with pytest.raises(redis.exceptions.TimeoutError):
            client.get("k")
    assert redis_own.client().get("k") == b"v"
    redis_own.freeze()
    proc = redis_own.proc
    redis_own.stop()  # a frozen server still stops (SIGCONT before SIGTERM)
    assert proc is not None and proc.poll() is not None


def test_redis_with_aof_crash_restarts_from_a_snapshot_too() -> None:
    with RedisServer(appendonly=True) as server:
        client = server.client(decode_responses=True)
        client.set("kept", "1")
        snap = server.snapshot()
        client.set("lost", "2")
        server.crash_restart()  # the AOF brings everything back
        assert server.client().exists("kept", "lost") == 2
        server.crash_restart(snap)  # the snapshot is the whole state
        client = server.client(decode_responses=True)
        assert (client.get("kept"), client.get("lost")) == ("1", None)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.set("later", "3")
        server.crash_restart()  # and AOF persistence works again from there
        assert server.client().exists("kept", "lost", "later") == 2
