"""``deltaforge check`` preflight against the real throwaway MariaDB and Redis."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from deltaforge.preflight import (
    CheckResult,
    check_mysql,
    check_redis,
    parse_grants,
    run_preflight,
    server_info,
)
from deltaforge.testing import MariaDBServer, RedisServer, free_port

pytestmark = pytest.mark.integration

# A user with the documented grants and a password that cannot appear by accident.
PF_USER = "pf_user"
PF_PASSWORD = "Pf-Secret-913"


def make_cfg(dsn: str, tables: list[str], sinks: list[dict[str, Any]] | None = None,
             start: str | None = None, name: str = "pf-test") -> Any:
    """A PipelineConfig from YAML text (stand-in objects until deltaforge.config exists).

    Without ``sinks`` the pipeline gets one placeholder sink (the config requires
    one); tests that only look at MySQL use :func:`run_mysql`, which never touches it.
    """
    if sinks is None:
        sinks = [{"id": "unused", "uri": "redis://127.0.0.1:1/0", "stream": "cdc"}]
    try:
        from deltaforge.config import load_config_text
    except ImportError:
        load_config_text = None
    if load_config_text is not None:
        doc = {
            "apiVersion": "deltaforge/v1",
            "kind": "Pipeline",
            "metadata": {"name": name, "tenant": "acme"},
            "spec": {
                "source": {"type": "mysql", "config": {
                    "id": "src", "dsn": "${MYSQL_DSN}", "tables": tables,
                    **({"start": start} if start else {})}},
                "processors": [{"type": "javascript", "id": "noop",
                                "inline": "function processBatch(events) { return events; }"}],
                "sinks": [{"type": "redis", "config": {"id": s["id"], "uri": s["uri"], "stream": s["stream"],
                                                       "required": s.get("required", True)}} for s in sinks],
            },
        }
        # JSON is YAML; the DSN comes through the environment like the seed's ${MYSQL_DSN}.
        return load_config_text(json.dumps(doc), env={"MYSQL_DSN": dsn})
    ns = SimpleNamespace
    return ns(
        metadata=ns(name=name, tenant="acme"),
        spec=ns(
            source=ns(type="mysql", config=ns(id="src", dsn=dsn, tables=tables, start=start or "latest")),
            processors=[],
            sinks=[ns(type="redis", config=ns(id=s["id"], uri=s["uri"], stream=s["stream"],
                                              required=s.get("required", True))) for s in sinks],
        ),
    )


def run(cfg: Any) -> tuple[bool, list[str]]:
    lines: list[str] = []
    ok = run_preflight(cfg, echo=lines.append)
    return ok, lines


def run_mysql(cfg: Any) -> tuple[bool, list[str]]:
    results, _ = check_mysql(cfg)
    return all(r.ok for r in results), [r.line() for r in results]


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


@pytest.fixture(scope="module")
def pf_user(mariadb: MariaDBServer) -> Iterator[str]:
    mariadb.execute(
        f"CREATE USER IF NOT EXISTS '{PF_USER}'@'%' IDENTIFIED BY '{PF_PASSWORD}'",
        f"GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{PF_USER}'@'%'",
    )
    yield mariadb.dsn(PF_USER, PF_PASSWORD)
    mariadb.execute(f"DROP USER IF EXISTS '{PF_USER}'@'%'")


@pytest.fixture
def app_db(mariadb: MariaDBServer, fresh_db: str) -> str:
    mariadb.execute(
        f"CREATE TABLE {fresh_db}.users (id INT PRIMARY KEY, email VARCHAR(100))",
        f"CREATE TABLE {fresh_db}.orders_2024 (id INT PRIMARY KEY)",
        f"CREATE TABLE {fresh_db}.orders_2025 (id INT PRIMARY KEY)",
        f"CREATE VIEW {fresh_db}.active_users AS SELECT id FROM {fresh_db}.users",
    )
    return fresh_db


@pytest.fixture
def temp_user(mariadb: MariaDBServer) -> Iterator[Any]:
    """Create users with chosen grants; dropped afterwards."""
    made: list[str] = []

    def create(user: str, password: str, *grants: str) -> str:
        mariadb.execute(f"DROP USER IF EXISTS '{user}'@'%'", f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
                        *(f"GRANT {g} TO '{user}'@'%'" for g in grants))  # "<privs> ON <obj>" or a role
        made.append(user)
        return mariadb.dsn(user, password)

    yield create
    for user in made:
        mariadb.execute(f"DROP USER IF EXISTS '{user}'@'%'")


@contextlib.contextmanager
def global_setting(mariadb: MariaDBServer, var: str, value: str) -> Iterator[None]:
    old = mariadb.execute(f"SELECT @@GLOBAL.{var}")[0][0]
    mariadb.execute(f"SET GLOBAL {var}={value}")
    try:
        yield
    finally:
        mariadb.execute(f"SET GLOBAL {var}='{old}'")


def sink(redis_server: RedisServer, **kw: Any) -> dict[str, Any]:
    return {"id": "invalidation-stream", "uri": redis_server.uri, "stream": "cache:invalidations", **kw}


# ---------------------------------------------------------------------------


def test_everything_ok_on_the_fixture_servers(mariadb: MariaDBServer, redis_server: RedisServer,
                                              redis_client: Any, app_db: str) -> None:
    cfg = make_cfg(mariadb.dsn(), [f"{app_db}.users", f"{app_db}.orders%"], [sink(redis_server)])
    ok, lines = run(cfg)
    assert ok, lines
    assert failures(lines) == []
    assert not [line for line in lines if line.startswith("warn")], lines
    text = "\n".join(lines)
    assert f"ok   mysql: reachable at mysql://deltaforge:***@127.0.0.1:{mariadb.port}/ (MariaDB 10." in text
    for check in ("log_bin is ON", "binlog_format is ROW", "binlog_row_image is FULL",
                  "binlog_row_metadata is FULL", "REPLICATION SLAVE and BINLOG MONITOR", "GTIDs on",
                  "match 3 table(s)", "start latest = "):
        assert check in text, (check, lines)
    assert "ok   redis[invalidation-stream]: reachable at redis://127.0.0.1:" in text
    assert ("ok   redis[invalidation-stream]: user default may run the sink's commit on 'cache:invalidations' and "
            "'{pf-test}:deltaforge:checkpoint:pf-test:invalidation-stream' (WATCH, GET, MULTI, XADD, SET, EXEC: "
            "rehearsed, aborted, nothing written)") in text
    assert "df-preflight" not in str(redis_client.xrange("cache:invalidations"))  # nothing written indeed
    assert "does not exist yet" in text
    assert redis_client.exists("deltaforge:preflight:pf-test") == 0


def test_check_mysql_returns_server_info(mariadb: MariaDBServer, pf_user: str, app_db: str) -> None:
    results, info = check_mysql(make_cfg(pf_user, [f"{app_db}.*"]))
    assert all(isinstance(r, CheckResult) and r.ok for r in results), results
    assert info is not None
    assert info.flavor == "mariadb" and info.version.startswith("10.")
    assert info.server_id == 1 and info.server_uuid is None
    assert info.full_metadata and info.gtid_mode
    assert info.binlog_file.startswith("binlog.") and info.binlog_pos > 4
    assert info.gtid_position and info.gtid_position.startswith("0-1-")
    assert PF_PASSWORD not in repr(results)


def test_server_info_on_a_connection(mariadb: MariaDBServer) -> None:
    conn = mariadb.connect()
    try:
        info = server_info(conn)
    finally:
        conn.close()
    (file, pos, *_), = mariadb.execute("SHOW MASTER STATUS")
    assert (info.binlog_file, info.flavor) == (file, "mariadb")
    assert info.binlog_pos <= pos


def test_wrong_password(mariadb: MariaDBServer, app_db: str) -> None:
    secret = "Wr0ng-Secret-77"
    ok, lines = run_mysql(make_cfg(mariadb.dsn(password=secret), [f"{app_db}.users"]))
    assert not ok
    assert lines[0].startswith("ok   mysql: reachable at mysql://deltaforge:***@")
    (fail,) = failures(lines)
    assert "access denied" in fail.lower() and "fix:" in fail
    assert "MYSQL_DSN" in fail and "spec.source.config.dsn" in fail
    assert secret not in "\n".join(lines)


def test_unreachable_port(app_db: str) -> None:
    port = free_port()
    ok, lines = run_mysql(make_cfg(f"mysql://deltaforge:Unseen-pw-1@127.0.0.1:{port}/", [f"{app_db}.users"]))
    assert not ok
    assert lines == [lines[0]] and lines[0].startswith("FAIL mysql:"), lines
    assert "connection refused" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert "fix:" in lines[0] and "host/port" in lines[0]
    assert "Unseen-pw-1" not in lines[0]


def test_unknown_host(app_db: str) -> None:
    ok, lines = run_mysql(make_cfg("mysql://u:Unseen-pw-2@no-such-host.invalid:3306/", [f"{app_db}.users"]))
    assert not ok
    assert "unknown host 'no-such-host.invalid'" in lines[0] and "fix:" in lines[0], lines
    assert "Unseen-pw-2" not in lines[0]


def test_user_without_replication_slave(mariadb: MariaDBServer, temp_user: Any, app_db: str) -> None:
    dsn = temp_user("pf_norepl", "Norepl-pw-5", "SELECT, BINLOG MONITOR ON *.*")
    ok, lines = run_mysql(make_cfg(dsn, [f"{app_db}.users"]))
    assert not ok
    (fail,) = failures(lines)
    assert fail.startswith("FAIL mysql: 'pf_norepl'@'%' lacks REPLICATION SLAVE")
    assert "fix: GRANT REPLICATION SLAVE ON *.* TO 'pf_norepl'@'%'" in fail
    assert "Norepl-pw-5" not in "\n".join(lines)


def test_user_with_only_replication_slave(mariadb: MariaDBServer, temp_user: Any, app_db: str) -> None:
    dsn = temp_user("pf_onlyrepl", "Onlyrepl-pw-6", "REPLICATION SLAVE ON *.*")
    ok, lines = run_mysql(make_cfg(dsn, [f"{app_db}.users"]))
    assert not ok
    text = "\n".join(failures(lines))
    assert "lacks BINLOG MONITOR" in text and "fix: GRANT BINLOG MONITOR ON *.* TO 'pf_onlyrepl'@'%'" in text
    assert f"has no SELECT on {app_db}.*" in text and f"GRANT SELECT ON {app_db}.* TO 'pf_onlyrepl'@'%'" in text
    # information_schema hides every table from this user: not reported as missing, but unverified
    assert "1 pattern(s) not verified: 'pf_onlyrepl'@'%' cannot see their tables" in text
    assert "no such table" not in text


def test_table_level_select_is_enough(mariadb: MariaDBServer, temp_user: Any, app_db: str) -> None:
    dsn = temp_user("pf_tbl", "Tbl-pw-7", "REPLICATION SLAVE, BINLOG MONITOR ON *.*",
                    f"SELECT ON {app_db}.users")
    ok, lines = run_mysql(make_cfg(dsn, [f"{app_db}.users"]))
    assert ok, lines
    assert any("may SELECT the captured tables" in line for line in lines)
    # A table this user cannot see may exist: the fix mentions the grant too.
    ok, lines = run_mysql(make_cfg(dsn, [f"{app_db}.users", f"{app_db}.orders_2024"]))
    assert not ok
    text = "\n".join(failures(lines))
    assert len(failures(lines)) == 1
    assert f"tables[1] '{app_db}.orders_2024': no such table" in text and "GRANT SELECT on it" in text


def test_privileges_through_a_default_role(mariadb: MariaDBServer, temp_user: Any, app_db: str) -> None:
    mariadb.execute("DROP ROLE IF EXISTS pf_role", "CREATE ROLE pf_role",
                    "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO pf_role", f"GRANT SELECT ON {app_db}.* TO pf_role")
    try:
        dsn = temp_user("pf_roleuser", "Role-pw-8", "pf_role")
        mariadb.execute("SET DEFAULT ROLE pf_role FOR 'pf_roleuser'@'%'")
        ok, lines = run_mysql(make_cfg(dsn, [f"{app_db}.users", f"{app_db}.orders%"]))
    finally:
        mariadb.execute("DROP ROLE IF EXISTS pf_role")
    assert ok, lines
    assert "ok   mysql: 'pf_roleuser'@'%' has REPLICATION SLAVE and BINLOG MONITOR" in lines
    assert any("match 3 table(s)" in line for line in lines)


def test_missing_table_and_wildcard_matching_nothing(mariadb: MariaDBServer, app_db: str) -> None:
    cfg = make_cfg(mariadb.dsn(), [f"{app_db}.users", f"{app_db}.nope", f"{app_db}.zzz%"])
    ok, lines = run_mysql(cfg)
    assert not ok
    missing, wildcard = failures(lines)
    assert f"spec.source.config.tables[1] '{app_db}.nope': no such table" in missing
    assert f"spec.source.config.tables[2] '{app_db}.zzz%': matches no table" in wildcard
    for line in (missing, wildcard):
        assert "fix: create it or correct spec.source.config.tables[" in line


def test_view_is_not_a_capturable_table(mariadb: MariaDBServer, app_db: str) -> None:
    ok, lines = run_mysql(make_cfg(mariadb.dsn(), [f"{app_db}.active_users"]))
    assert not ok
    (fail,) = failures(lines)
    assert "is a view" in fail and "fix:" in fail


def test_row_metadata_minimal_is_a_warning(mariadb: MariaDBServer, app_db: str) -> None:
    with global_setting(mariadb, "binlog_row_metadata", "MINIMAL"):
        ok, lines = run_mysql(make_cfg(mariadb.dsn(), [f"{app_db}.users"]))
        _, info = check_mysql(make_cfg(mariadb.dsn(), [f"{app_db}.users"]))
    assert ok, lines
    (warn,) = [line for line in lines if line.startswith("warn")]
    assert warn.startswith("warn mysql: binlog_row_metadata is MINIMAL")
    assert "information_schema" in warn and "ALTER" in warn
    assert "fix: SET GLOBAL binlog_row_metadata=FULL" in warn
    assert info is not None and not info.full_metadata


def test_statement_format_fails(mariadb: MariaDBServer, app_db: str) -> None:
    with global_setting(mariadb, "binlog_format", "STATEMENT"):
        ok, lines = run_mysql(make_cfg(mariadb.dsn(), [f"{app_db}.users"]))
    assert not ok
    (fail,) = failures(lines)
    assert fail.startswith("FAIL mysql: binlog_format is STATEMENT")
    assert "fix: SET GLOBAL binlog_format=ROW and in my.cnf [mysqld] binlog_format=ROW" in fail


def test_row_image_minimal_fails(mariadb: MariaDBServer, app_db: str) -> None:
    with global_setting(mariadb, "binlog_row_image", "MINIMAL"):
        ok, lines = run_mysql(make_cfg(mariadb.dsn(), [f"{app_db}.users"]))
    assert not ok
    (fail,) = failures(lines)
    assert "binlog_row_image is MINIMAL" in fail and "fix: SET GLOBAL binlog_row_image=FULL" in fail


def test_source_server_id_equal_to_the_servers(mariadb: MariaDBServer, app_db: str) -> None:
    cfg = make_cfg(mariadb.dsn(), [f"{app_db}.users"])
    cfg.spec.source.config.server_id = 1  # the fixture server's id
    ok, lines = run_mysql(cfg)
    assert not ok
    (fail,) = failures(lines)
    assert "spec.source.config.server_id 1 is the server's own server_id" in fail and "fix:" in fail


def test_start_positions(mariadb: MariaDBServer, app_db: str) -> None:
    (file, pos, *_), = mariadb.execute("SHOW MASTER STATUS")
    good = [f"{file}:4", f"{file}:{pos}", "earliest", "0-1-1"]
    for start in good:
        ok, lines = run_mysql(make_cfg(mariadb.dsn(), [f"{app_db}.users"], start=start))
        assert ok, (start, lines)
    for start, cause in (("binlog.999999:4", "is not on the server"), (f"{file}:{pos + 10**9}", "outside")):
        ok, lines = run_mysql(make_cfg(mariadb.dsn(), [f"{app_db}.users"], start=start))
        assert not ok
        (fail,) = failures(lines)
        assert cause in fail and "spec.source.config.start" in fail and "fix:" in fail


# --- Redis -----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[RedisServer]:
    with RedisServer(password="Redis-Pass-55") as server:
        yield server


def test_redis_wrong_password(redis_with_password: RedisServer) -> None:
    uri = f"redis://:Bad-Redis-pw-9@127.0.0.1:{redis_with_password.port}/0"
    results = check_redis(make_cfg("mysql://u@h/", ["a.b"],
                                   [{"id": "s1", "uri": uri, "stream": "cdc"}]))
    lines = [r.line() for r in results]
    assert lines[0].startswith("ok   redis[s1]: reachable at redis://:***@127.0.0.1:")
    (fail,) = [line for line in lines if line.startswith("FAIL")]
    assert fail.startswith("FAIL redis[s1]: authentication as default rejected")
    assert "fix:" in fail and "REDIS_URI" in fail and "spec.sinks[0].config.uri" in fail
    assert "Bad-Redis-pw-9" not in "\n".join(lines)


def test_redis_missing_password(redis_with_password: RedisServer) -> None:
    uri = f"redis://127.0.0.1:{redis_with_password.port}/0"
    results = check_redis(make_cfg("mysql://u@h/", ["a.b"], [{"id": "s1", "uri": uri, "stream": "cdc"}]))
    (fail,) = [r.line() for r in results if not r.ok]
    assert "requires a password" in fail and "REDIS_URI" in fail


def test_redis_right_password(redis_with_password: RedisServer) -> None:
    results = check_redis(make_cfg("mysql://u@h/", ["a.b"],
                                   [{"id": "s1", "uri": redis_with_password.uri, "stream": "cdc"}]))
    assert all(r.ok for r in results), results
    assert "Redis-Pass-55" not in repr(results)
    assert any(r.check == "redis.auth" and "authenticated as default" in r.detail for r in results)


def test_redis_unreachable(app_db: str, mariadb: MariaDBServer) -> None:
    # the whole command: MySQL passes, the one Redis sink fails
    port = free_port()
    cfg = make_cfg(mariadb.dsn(), [f"{app_db}.users"],
                   [{"id": "s1", "uri": f"redis://:Gone-pw-3@127.0.0.1:{port}/0", "stream": "cdc"}])
    ok, lines = run(cfg)
    assert not ok
    (fail,) = failures(lines)
    assert fail.startswith(f"FAIL redis[s1]: connection refused by 127.0.0.1:{port}")
    assert "fix:" in fail and "REDIS_URI" in fail
    assert "Gone-pw-3" not in "\n".join(lines)


def test_redis_unknown_host() -> None:
    uri = "redis://:Unseen-pw-4@no-such-host.invalid:6379/0"
    results = check_redis(make_cfg("mysql://u@h/", ["a.b"], [{"id": "s1", "uri": uri, "stream": "cdc"}]))
    (fail,) = [r.line() for r in results]
    assert fail.startswith("FAIL redis[s1]: unknown host 'no-such-host.invalid'") and "fix:" in fail
    assert "Unseen-pw-4" not in fail


def test_unreachable_optional_sink_is_a_warning(app_db: str, mariadb: MariaDBServer,
                                                redis_server: RedisServer) -> None:
    cfg = make_cfg(mariadb.dsn(), [f"{app_db}.users"],
                   [{"id": "s1", "uri": redis_server.uri, "stream": "cdc"},
                    {"id": "s2", "uri": f"redis://127.0.0.1:{free_port()}/0", "stream": "cdc2", "required": False}])
    ok, lines = run(cfg)
    assert ok, lines
    (warn,) = [line for line in lines if line.startswith("warn")]
    assert "connection refused" in warn and "required: false" in warn


def test_stream_key_holding_a_string(redis_server: RedisServer, redis_client: Any) -> None:
    redis_client.set("cache:invalidations", "oops")
    results = check_redis(make_cfg("mysql://u@h/", ["a.b"], [sink(redis_server)]))
    (fail,) = [r.line() for r in results if not r.ok]
    assert fail.startswith("FAIL redis[invalidation-stream]: key 'cache:invalidations' holds a string")
    assert "WRONGTYPE" in fail and "fix:" in fail and "spec.sinks[0].config.stream" in fail


def test_existing_stream_and_template_stream(redis_server: RedisServer, redis_client: Any) -> None:
    redis_client.xadd("cache:invalidations", {"df-event": "{}"})
    results = check_redis(make_cfg("mysql://u@h/", ["a.b"], [
        sink(redis_server), sink(redis_server, id="t", stream="cdc:${source.db}.${source.table}")]))
    assert all(r.ok and not r.warning for r in results), results
    details = [r.detail for r in results if r.check == "redis.stream"]
    assert details == ["stream 'cache:invalidations' exists (1 entries)",
                       "stream name 'cdc:${source.db}.${source.table}' is a template; key types are checked on write"]


def test_redis_user_without_write_permission(redis_server: RedisServer, redis_client: Any) -> None:
    redis_client.execute_command("ACL", "SETUSER", "pf_ro", "on", ">Ro-pw-11", "~*", "+@read", "+@connection",
                                 "+info")
    try:
        uri = f"redis://pf_ro:Ro-pw-11@127.0.0.1:{redis_server.port}/0"
        results = check_redis(make_cfg("mysql://u@h/", ["a.b"], [{"id": "s1", "uri": uri, "stream": "cdc"}]))
    finally:
        redis_client.execute_command("ACL", "DELUSER", "pf_ro")
    (fail,) = [r.line() for r in results if not r.ok]
    assert fail.startswith("FAIL redis[s1]: user pf_ro may not run WATCH on '{pf-test}:deltaforge:checkpoint:pf-test:s1': "
                           "NOPERM"), fail
    assert "(fix: the Redis user needs the commands +xadd +xrevrange +set +get +del +type +watch +multi +exec" in fail
    assert "Ro-pw-11" not in "\n".join(r.line() for r in results)


def test_allkeys_eviction_is_a_warning(redis_server: RedisServer, redis_client: Any) -> None:
    old = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        results = check_redis(make_cfg("mysql://u@h/", ["a.b"], [sink(redis_server)]))
    finally:
        redis_client.config_set("maxmemory-policy", old)
    (warn,) = [r.line() for r in results if r.warning]
    assert warn.startswith("warn redis[invalidation-stream]: maxmemory-policy is allkeys-lru")
    assert all(r.ok for r in results)


# --- grant parsing (no server: MySQL 8 output shapes MariaDB does not produce) ---


def test_parse_grants_mysql8_shapes() -> None:
    privs, roles = parse_grants([
        "GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `cdc`@`%`",
        "GRANT BACKUP_ADMIN ON *.* TO `cdc`@`%`",
        "GRANT SELECT, INSERT ON `app`.* TO `cdc`@`%`",
        "GRANT SELECT (`id`, `email`), UPDATE ON `shop`.`users` TO `cdc`@`%`",
        "GRANT `reader`@`%`,`writer`@`%` TO `cdc`@`%`",
    ])
    assert privs["*.*"] == {"SELECT", "RELOAD", "REPLICATION SLAVE", "REPLICATION CLIENT", "BACKUP_ADMIN"}
    assert privs["app.*"] == {"SELECT", "INSERT"}
    assert privs["shop.users"] == {"UPDATE"}  # column-level SELECT does not count
    assert roles == ["`reader`@`%`", "`writer`@`%`"]


def test_parse_grants_mariadb_all_privileges() -> None:
    privs, roles = parse_grants([
        "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION",
        "GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION",
        "GRANT USAGE ON `my db`.* TO `x`@`%`",
    ])
    assert privs["*.*"] == {"ALL PRIVILEGES"}
    assert privs["my db.*"] == {"USAGE"}
    assert roles == []
