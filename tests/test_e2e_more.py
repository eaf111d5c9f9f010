"""End to end: start positions, several sinks, servers going away under a running engine."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
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


def _table(mariadb: MariaDBServer, db: str) -> str:
    mariadb.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY, v VARCHAR(20))")
    return f"{db}.t"


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_start_earliest_reads_the_whole_binlog(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                              redis_client: Any, fresh_db: str, workers: str) -> None:
    table = _table(mariadb, fresh_db)
    mariadb.execute(f"INSERT INTO {table} VALUES (1,'a'),(2,'b')")
    cfg = write_config(tmp_path, mariadb, redis_server, [table], start="earliest")
    engine = Engine(cfg, "--workers", workers).wait_ready()
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 2, what="2 entries")
    finally:
        code, out = engine.stop()
    assert code == 0, out
    assert [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")] == [1, 2]


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_start_at_a_gtid(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer, redis_client: Any,
                         fresh_db: str, workers: str) -> None:
    table = _table(mariadb, fresh_db)
    mariadb.execute(f"INSERT INTO {table} VALUES (1,'skipped')")
    gtid = mariadb.execute("SELECT @@gtid_binlog_pos")[0][0]
    mariadb.execute(f"INSERT INTO {table} VALUES (2,'wanted')")
    cfg = write_config(tmp_path, mariadb, redis_server, [table], start=str(gtid))
    engine = Engine(cfg, "--workers", workers).wait_ready()
    try:
        wait_for(lambda: redis_client.xlen("cdc:e2e") >= 1, what="1 entry")
    finally:
        code, out = engine.stop()
    assert code == 0, out
    assert [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")] == [2]


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_two_sinks_each_with_its_envelope_and_checkpoint(tmp_path: Path, mariadb: MariaDBServer,
                                                         redis_server: RedisServer, redis_client: Any,
                                                         fresh_db: str, workers: str) -> None:
    table = _table(mariadb, fresh_db)
    second = f"""    - type: redis
      config:
        id: audit
        uri: {redis_server.uri}
        stream: audit:${{source.db}}.${{source.table}}
        envelope:
          type: cloudevents
  commit_policy:
    mode: all
"""
    cfg = write_config(tmp_path, mariadb, redis_server, [table], start=binlog_end(mariadb),
                       sinks_extra="        envelope:\n          type: debezium\n" + second)
    engine = Engine(cfg, "--workers", workers).wait_ready()
    try:
        mariadb.execute(f"INSERT INTO {table} VALUES (1,'a')", f"UPDATE {table} SET v='b' WHERE id=1")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 2 and redis_client.xlen(f"audit:{fresh_db}.t") == 2,
                 what="2 entries in both streams")
    finally:
        code, out = engine.stop()
    assert code == 0, out
    deb = [orjson.loads(f[b"df-event"]) for _, f in redis_client.xrange("cdc:e2e")]
    assert deb[0]["schema"] is None and deb[0]["payload"]["op"] == "c"
    ce = [orjson.loads(f[b"df-event"]) for _, f in redis_client.xrange(f"audit:{fresh_db}.t")]
    assert ce[1]["specversion"] == "1.0" and ce[1]["data"]["after"] == {"id": 1, "v": "b"}
    assert ce[1]["id"] == deb[1]["payload"]["event_id"]
    checkpoints = [k for k in redis_client.keys("*deltaforge:checkpoint:e2e:*")]
    assert len(checkpoints) == 2


@pytest.mark.chaos
@pytest.mark.parametrize("workers", TOPOLOGIES_SLOW)  # a MariaDB of its own, restarted: ~3.5 s a run
def test_mysql_going_away_mid_stream(tmp_path: Path, redis_server: RedisServer, redis_client: Any, workers: str) -> None:
    with MariaDBServer() as own:
        own.execute("CREATE DATABASE d", "CREATE TABLE d.t (id INT PRIMARY KEY, v VARCHAR(20))")
        cfg = write_config(tmp_path, own, redis_server, ["d.t"], start=binlog_end(own))
        engine = Engine(cfg, "--workers", workers).wait_ready()
        try:
            own.execute(*(f"INSERT INTO d.t VALUES ({i},'x')" for i in range(1, 51)))
            wait_for(lambda: redis_client.xlen("cdc:e2e") == 50, what="50 entries")
            own.restart(down_for=1.0)
            own.execute(*(f"INSERT INTO d.t VALUES ({i},'y')" for i in range(51, 101)))
            wait_for(lambda: redis_client.xlen("cdc:e2e") == 100, timeout=60, what="100 entries after the restart")
        finally:
            code, out = engine.stop()
    assert code == 0, out
    assert "restarting from the checkpoint" in out
    assert "Traceback" not in out
    assert [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")] == list(range(1, 101))


@pytest.mark.chaos
@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_redis_going_away_mid_stream(tmp_path: Path, mariadb: MariaDBServer, fresh_db: str, workers: str) -> None:
    table = _table(mariadb, fresh_db)
    with RedisServer() as own:
        client = own.client()
        cfg = write_config(tmp_path, mariadb, own, [table], start=binlog_end(mariadb))
        engine = Engine(cfg, "--workers", workers).wait_ready()
        try:
            mariadb.execute(*(f"INSERT INTO {table} VALUES ({i},'x')" for i in range(1, 31)))
            wait_for(lambda: client.xlen("cdc:e2e") == 30, what="30 entries")
            client.save()  # keep the data across the restart, as a persistent Redis would
            port = own.port
            own.proc.send_signal(signal.SIGKILL)
            own.proc.wait()
            mariadb.execute(*(f"INSERT INTO {table} VALUES ({i},'y')" for i in range(31, 61)))
            own.port = port
            _restart_redis(own, port)
            wait_for(lambda: client.xlen("cdc:e2e") == 60, timeout=60, what="60 entries after the restart")
        finally:
            code, out = engine.stop()
        events = stream_events(client, "cdc:e2e")
    assert code == 0, out
    assert "Traceback" not in out
    assert [e["after"]["id"] for e in events] == list(range(1, 61))


def _restart_redis(server: RedisServer, port: int) -> None:
    import subprocess

    from deltaforge.testing import _wait_port, require_binary

    assert server.dir is not None
    log = server.dir / "redis.log"
    server.proc = subprocess.Popen(
        [require_binary(("redis-server",), "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(server.dir), "--dbfilename", "dump.rdb",
         "--logfile", str(log), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_port(port, server.proc, "redis-server", log, 30)


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_statement_format_change_stops_with_the_fix(tmp_path: Path, mariadb: MariaDBServer,
                                                   redis_server: RedisServer, redis_client: Any,
                                                   fresh_db: str, workers: str) -> None:
    """A change logged as a statement cannot be captured: stop loudly before it, never skip it silently."""
    table = _table(mariadb, fresh_db)
    start = binlog_end(mariadb)
    mariadb.execute(f"INSERT INTO {table} VALUES (1,'row')")
    conn = mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION binlog_format='STATEMENT'")
            cur.execute(f"INSERT INTO {table} VALUES (2,'statement')")
    finally:
        conn.close()
    cfg = write_config(tmp_path, mariadb, redis_server, [table], start=start)
    code, out = Engine(cfg, "--workers", workers).wait(60)
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: a change to a captured table was logged as a statement"), out
    assert "binlog_format=ROW" in last
    assert [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")] == [1]


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_poison_row_stops_after_committing_what_came_before(tmp_path: Path, mariadb: MariaDBServer,
                                                            redis_server: RedisServer, redis_client: Any,
                                                            fresh_db: str, workers: str) -> None:
    """A value the decoder cannot render (a charset Python lacks) is a poison row: one line, nothing skipped."""
    table = _table(mariadb, fresh_db)
    mariadb.execute(f"CREATE TABLE {fresh_db}.odd (id INT PRIMARY KEY, v VARCHAR(10) CHARACTER SET swe7)")
    start = binlog_end(mariadb)
    mariadb.execute(f"INSERT INTO {table} VALUES (1,'fine')",
                    f"INSERT INTO {fresh_db}.odd VALUES (1,'abc')",
                    f"INSERT INTO {table} VALUES (2,'after')")
    cfg = write_config(tmp_path, mariadb, redis_server, [table, f"{fresh_db}.odd"], start=start)
    code, out = Engine(cfg, "--workers", workers).wait(60)
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{fresh_db}.odd" in last and "swe7" in last, out
    assert "Traceback" not in out
    assert [e["after"]["id"] for e in stream_events(redis_client, "cdc:e2e")] == [1]
