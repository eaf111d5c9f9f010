"""Exactly once, tried as an operator would break it (issue 7): each test runs ``deltaforge run``, in every
topology (``--workers`` 0, 1 and 3).

Every scenario here lost rows silently before checkpoints compared by GTID, carried a
lineage, and resumed from every sink's checkpoint:

* a sink added to the config while the pipeline was down;
* an optional sink that failed, then came back after a restart;
* a fresh pipeline killed before its first commit (``start: latest`` must not move);
* a checkpoint whose binlog was purged (one-line error, nothing committed);
* Redis restarted from an older snapshot under a running engine (it re-delivers);
* a failover to a replica whose binlog files are numbered lower.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from deltaforge.model import derive_gtid_event_id
from deltaforge.testing import MariaDBReplica, MariaDBServer, RedisServer
from tests.e2e import (
    TAG_PROCESSOR,
    TOPOLOGIES,
    Engine,
    binlog_end,
    stream_events,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


def _table(mariadb: MariaDBServer, db: str) -> str:
    mariadb.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY, v VARCHAR(40))")
    return f"{db}.t"


def _insert(mariadb: MariaDBServer, table: str, ids: range) -> None:
    mariadb.execute(*(f"INSERT INTO {table} VALUES ({i}, 'v{i}')" for i in ids))


def _ids(client: Any, stream: str) -> list[int]:
    return [e["after"]["id"] for e in stream_events(client, stream)]


def _sink(sid: str, uri: str, stream: str, extra: str = "") -> str:
    return f"""    - type: redis
      config:
        id: {sid}
        uri: {uri}
        stream: {stream}
{extra}"""


def _run_until(cfg: Path, workers: str, predicate: Any, what: str) -> tuple[int, str]:
    engine = Engine(cfg, "--workers", workers).wait_ready()
    try:
        wait_for(predicate, 60, what)
    finally:
        code, out = engine.stop()
    return code, out


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_a_sink_added_while_the_pipeline_was_down_loses_nothing(
        tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer, redis_client: Any, fresh_db: str, workers: str) -> None:
    table = _table(mariadb, fresh_db)
    one = write_config(tmp_path, mariadb, redis_server, [table], name="added")
    engine = Engine(one, "--workers", workers).wait_ready()
    _insert(mariadb, table, range(1, 6))
    wait_for(lambda: redis_client.xlen("cdc:e2e") == 5, what="5 entries")
    code, out = engine.stop()
    assert code == 0, out
    _insert(mariadb, table, range(6, 11))  # while the pipeline is down
    two = write_config(tmp_path, mariadb, redis_server, [table], name="added",
                       sinks_extra=_sink("audit", redis_server.uri, "cdc:audit"))
    code, out = _run_until(two, workers, lambda: redis_client.xlen("cdc:e2e") >= 10 and redis_client.xlen("cdc:audit") >= 5,
                           "the rows written while down, in both sinks")
    assert code == 0, out
    assert _ids(redis_client, "cdc:e2e") == list(range(1, 11))
    assert _ids(redis_client, "cdc:audit") == list(range(6, 11))  # from the pipeline's resume position
    assert "sink audit has no checkpoint: it starts at the pipeline's resume position" in out


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_an_optional_sink_that_failed_gets_its_gap_back(
        tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer, redis_client: Any, fresh_db: str, workers: str) -> None:
    table = _table(mariadb, fresh_db)
    redis_client.execute_command("ACL", "SETUSER", "optsink", "on", ">optpw", "~*", "+@all")
    uri = f"redis://optsink:optpw@127.0.0.1:{redis_server.port}/0"
    cfg = write_config(tmp_path, mariadb, redis_server, [table], name="optional",
                       sinks_extra=_sink("opt", uri, "cdc:opt", "        required: false\n"))
    engine = Engine(cfg, "--workers", workers).wait_ready()
    try:
        _insert(mariadb, table, range(1, 4))
        wait_for(lambda: redis_client.xlen("cdc:opt") == 3, what="3 entries in the optional sink")
        redis_client.execute_command("ACL", "SETUSER", "optsink", "-@all")  # the optional sink now fails
        _insert(mariadb, table, range(4, 9))
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 8, what="8 entries in the required sink")
        wait_for(lambda: "sink opt failed and is disabled until restart" in engine.output, what="opt disabled")
    finally:
        code, out = engine.stop()
        redis_client.execute_command("ACL", "SETUSER", "optsink", "+@all")
    assert code == 0, out
    code, out = _run_until(cfg, workers, lambda: redis_client.xlen("cdc:opt") >= 8, "the optional sink's gap")
    assert code == 0, out
    assert _ids(redis_client, "cdc:opt") == list(range(1, 9))
    assert _ids(redis_client, "cdc:e2e") == list(range(1, 9))  # the replay skipped what it held
    redis_client.execute_command("ACL", "DELUSER", "optsink")


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_a_crash_before_the_first_commit_does_not_move_the_start(
        tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer, redis_client: Any, fresh_db: str, workers: str) -> None:
    table = _table(mariadb, fresh_db)
    cfg = write_config(tmp_path, mariadb, redis_server, [table], name="fresh", start="latest")
    engine = Engine(cfg, "--workers", workers).wait_ready()
    code, _ = engine.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    _insert(mariadb, table, range(1, 4))  # after the first start's `latest`, before the second's
    code, out = _run_until(cfg, workers, lambda: redis_client.xlen("cdc:e2e") >= 3, "the rows written between the starts")
    assert code == 0, out
    assert _ids(redis_client, "cdc:e2e") == [1, 2, 3]


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_a_purged_checkpoint_is_a_one_line_error(tmp_path: Path, redis_server: RedisServer,
                                                 redis_client: Any, workers: str) -> None:
    own = MariaDBServer().start()  # PURGE would pull the binlog from under the other tests
    try:
        own.execute("CREATE DATABASE p", "CREATE TABLE p.t (id INT PRIMARY KEY, v VARCHAR(40))")
        cfg = write_config(tmp_path, own, redis_server, ["p.t"], name="purged")
        code, out = _run_until(cfg, workers, lambda: True, "start")
        assert code == 0, out
        _insert(own, "p.t", range(1, 4))  # never read: the pipeline is down
        own.execute("FLUSH BINARY LOGS", "FLUSH BINARY LOGS")
        current = own.execute("SHOW MASTER STATUS")[0][0]

        def purged() -> bool:  # the server keeps a file until its InnoDB checkpoint passed it
            own.execute(f"PURGE BINARY LOGS TO '{current}'")
            return bool(own.execute("SHOW BINARY LOGS")[0][0] == current)

        wait_for(purged, 30, "the purge")
        engine = Engine(cfg, "--workers", workers)
        code, out = engine.wait(60)
        assert code != 0
        line = [ln for ln in out.splitlines() if "purged" in ln]
        assert line and "no longer has" in line[-1] and "fix:" in line[-1], out
        assert "Traceback" not in out
        assert redis_client.xlen("cdc:e2e") == 0
    finally:
        own.stop()


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_failover_to_a_replica_with_lower_binlog_numbers_loses_nothing(
        tmp_path: Path, mariadb_primary: MariaDBServer, mariadb_replica: MariaDBReplica, redis_server: RedisServer,
        redis_client: Any, workers: str) -> None:
    primary, replica = mariadb_primary, mariadb_replica
    primary.execute("CREATE DATABASE app", "CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(40))")
    assert primary.binlog_file > replica.binlog_file  # binlog.000006 against binlog.000002
    cfg = write_config(tmp_path, primary, redis_server, ["app.t"], name="failover", processors=TAG_PROCESSOR)
    cfg.write_text(cfg.read_text().replace(f"dsn: {primary.dsn()}", "dsn: ${MYSQL_DSN}"))
    engine = Engine(cfg, "--workers", workers, env={"MYSQL_DSN": primary.dsn()}).wait_ready()
    _insert(primary, "app.t", range(1, 51))
    wait_for(lambda: redis_client.xlen("cdc:e2e") == 50, what="50 entries from the primary")
    code, out = engine.stop()
    assert code == 0, out
    _insert(primary, "app.t", range(51, 61))  # while the pipeline is down: reach the replica by replication
    replica.wait_caught_up()
    replica.promote()
    _insert(replica, "app.t", range(61, 161))  # written on the new primary, in its own binlog files
    engine = Engine(cfg, "--workers", workers, env={"MYSQL_DSN": replica.dsn()}).wait_ready()
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= 160, what="all 160 rows")
        time.sleep(0.5)  # a duplicate would land right behind
    finally:
        code, out = engine.stop()
    assert code == 0, out
    events = stream_events(redis_client, "cdc:e2e")
    assert [e["after"]["id"] for e in events] == list(range(1, 161))
    assert "the source server changed" in out and "resuming by GTID" in out
    # ids come from (GTID, row index): the rows that crossed over by replication keep their primary's GTIDs
    assert all(e["event_id"] == derive_gtid_event_id(e["transaction"]["id"], e["transaction"]["seq"])
               for e in events)
    assert {e["transaction"]["id"].split("-")[1] for e in events} == {"1", "2"}
    assert all(e["tags"] == ["seen"] for e in events)


@pytest.mark.parametrize("then", ["new rows", "nothing"])
@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_redis_restarted_from_an_older_snapshot_is_redelivered(
        tmp_path: Path, mariadb: MariaDBServer, redis_own: RedisServer, fresh_db: str, workers: str,
        then: str) -> None:
    """Redis comes back without its last 40 entries and their checkpoints. With new rows coming, the
    next commit finds the rollback; with nothing more written, the idle writer's probe finds the
    closed connection and re-delivers at once (before, it waited for the next change)."""
    table = _table(mariadb, fresh_db)
    client = redis_own.client()
    cfg = write_config(tmp_path, mariadb, redis_own, [table], name="rollback", processors=TAG_PROCESSOR)
    engine = Engine(cfg, "--workers", workers).wait_ready()
    last = 80 if then == "new rows" else 60
    try:
        _insert(mariadb, table, range(1, 21))
        wait_for(lambda: client.xlen("cdc:e2e") == 20, what="20 entries")
        snapshot = redis_own.snapshot()
        _insert(mariadb, table, range(21, 61))
        wait_for(lambda: client.xlen("cdc:e2e") == 60, what="60 entries")
        client.close()
        redis_own.crash_restart(snapshot)  # entries 21..60 and their checkpoints are gone
        client = redis_own.client()
        if then == "new rows":
            _insert(mariadb, table, range(61, 81))
        wait_for(lambda: client.xlen("cdc:e2e") >= last, 90, what=f"the lost entries re-delivered ({then} after)")
        time.sleep(0.5)
        assert engine.poll() is None, engine.output  # it rode through
    finally:
        code, out = engine.stop()
    assert code == 0, out
    assert _ids(client, "cdc:e2e") == list(range(1, last + 1))
    assert all(e["tags"] == ["seen"] for e in stream_events(client, "cdc:e2e"))
    assert "rolled back" in out and "re-delivering from" in out
    if then == "nothing":
        assert "closed the idle connection" in out
    client.close()


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_redis_rolled_back_to_before_a_takeover_is_redelivered_not_fenced(
        tmp_path: Path, mariadb: MariaDBServer, redis_own: RedisServer, fresh_db: str, workers: str) -> None:
    """Run A commits and stops; run B (a new owner) takes over and commits; Redis then restarts from a
    snapshot taken under A: B re-delivers from A's checkpoint (its predecessor's) instead of stopping fenced."""
    table = _table(mariadb, fresh_db)
    client = redis_own.client()
    cfg = write_config(tmp_path, mariadb, redis_own, [table], name="takeover", start=binlog_end(mariadb))
    _insert(mariadb, table, range(1, 11))
    code, out = _run_until(cfg, workers, lambda: client.xlen("cdc:e2e") >= 10, "A's 10 entries")  # A
    assert code == 0, out
    snapshot = redis_own.snapshot()  # A's last checkpoint and its entries
    engine = Engine(cfg, "--workers", workers).wait_ready()  # B
    try:
        _insert(mariadb, table, range(11, 31))
        wait_for(lambda: client.xlen("cdc:e2e") == 30, what="B's 20 entries")
        client.close()
        redis_own.crash_restart(snapshot)
        client = redis_own.client()
        assert client.xlen("cdc:e2e") == 10
        _insert(mariadb, table, range(31, 41))
        wait_for(lambda: client.xlen("cdc:e2e") >= 40, 90, what="B's lost entries re-delivered, then the new ones")
        time.sleep(0.5)
        assert engine.poll() is None, engine.output  # not fenced
    finally:
        code, out = engine.stop()
    assert code == 0, out
    assert _ids(client, "cdc:e2e") == list(range(1, 41))
    assert "rolled back" in out and "re-delivering from" in out and "another instance" not in out
    client.close()
