"""Connection security against real servers.

- MySQL TLS as the DSN asks (``?ssl-mode=...&ssl-ca=...``), against a MariaDB that accepts only
  TLS (``require_secure_transport=ON``), with certificates from a private CA made at test time.
  Both directions: VERIFY_IDENTITY with the right CA checks and streams; the wrong host, the
  wrong CA and DISABLED each fail with a one-line message naming the cause (never retried).
- An unknown DSN or Redis URI parameter is an error naming the nearest valid one, never ignored.
- Passwords from files (``password_file``, ``$MYSQL_PASSWORD_FILE``, ``$REDIS_PASSWORD_FILE``).
- No password in logs, errors, ``/metrics``, ``/health``, ``/ready`` or any process's command
  line, in every topology.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltaforge.dsn import parse_mysql_dsn
from deltaforge.errors import ConfigError
from deltaforge.testing import MariaDBServer, RedisServer, TLSFiles
from tests.e2e import (
    TOPOLOGIES,
    TOPOLOGIES_SLOW,
    Engine,
    binlog_end,
    stream_events,
    wait_for,
    write_config,
)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_mariadb(tls: TLSFiles) -> Iterator[MariaDBServer]:
    server = MariaDBServer(extra_args=tls.server_args(require=True)).start()
    try:
        yield server
    finally:
        server.stop()


def _dsn(server: MariaDBServer, query: str, host: str = "127.0.0.1") -> str:
    return server.dsn().replace("127.0.0.1", host) + (f"?{query}" if query else "")


def _config(tmp: Path, server: MariaDBServer, redis_server: RedisServer, dsn: str, table: str) -> Path:
    path = write_config(tmp, server, redis_server, [table], start=binlog_end(server))
    text = path.read_text()
    path.write_text(text.replace(f"dsn: {server.dsn()}", f"dsn: '{dsn}'", 1))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltaforge", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))


# ----------------------------------------------------------------------------- the DSN's grammar


@pytest.mark.parametrize(("query", "message"), [
    ("ssl_mode=REQUIRED", r"unknown parameter 'ssl_mode' in .* \(fix: did you mean ssl-mode\?\)"),
    ("sslmode=require", r"unknown parameter 'sslmode' .* \(fix: did you mean ssl-mode\?\)"),
    ("ssl-mode=VERIFY_IDENTTY", r"ssl-mode='VERIFY_IDENTTY' .* is not a TLS mode \(fix: write ssl-mode=VERIFY_IDENTITY"),
    ("ssl-key=k.pem", r"ssl-key without ssl-cert"),
    ("ssl-ca=/nonexistent/ca.pem", r"cannot load the TLS files of .*: .* \(fix: check the ssl-ca, ssl-cert and ssl-key"),
])
def test_a_bad_or_unknown_parameter_is_an_error_never_ignored(query: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^spec\.source\.config\.dsn: {message}") as info:
        parse_mysql_dsn(f"mysql://u:pw@db.example:3306/app?{query}")
    assert "\n" not in str(info.value) and "pw@" not in str(info.value)


def test_modes_map_to_the_driver_as_the_mysql_client_means_them(tls: TLSFiles) -> None:
    import ssl

    base = "mysql://u:pw@127.0.0.1:3306/app"
    assert parse_mysql_dsn(base).ssl_mode == "PREFERRED" and parse_mysql_dsn(base).tls_kwargs() == {}
    assert parse_mysql_dsn(f"{base}?ssl-mode=disabled").tls_kwargs() == {"ssl_disabled": True}
    assert parse_mysql_dsn(f"{base}?ssl-ca={tls.ca}").ssl_mode == "VERIFY_CA"  # as the MySQL client
    for mode, verify, host in (("REQUIRED", ssl.CERT_NONE, False), ("VERIFY_CA", ssl.CERT_REQUIRED, False),
                               ("VERIFY_IDENTITY", ssl.CERT_REQUIRED, True)):
        ctx = parse_mysql_dsn(f"{base}?ssl-mode={mode}&ssl-ca={tls.ca}").tls_kwargs()["ssl"]
        assert (ctx.verify_mode, ctx.check_hostname) == (verify, host), mode


# ----------------------------------------------------------------------------- against a TLS-only server


def test_verify_identity_checks_and_streams(tmp_path: Path, tls: TLSFiles, tls_mariadb: MariaDBServer,
                                            redis_server: RedisServer, redis_client) -> None:  # type: ignore[no-untyped-def]
    tls_mariadb.execute("CREATE DATABASE IF NOT EXISTS tlsdb", "CREATE TABLE IF NOT EXISTS tlsdb.t (id INT PRIMARY KEY)")
    dsn = _dsn(tls_mariadb, f"ssl-mode=VERIFY_IDENTITY&ssl-ca={tls.ca}")
    cfg = _config(tmp_path, tls_mariadb, redis_server, dsn, "tlsdb.t")
    res = _cli("check", str(cfg))
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("ok   mysql: TLS (TLSv1.3, " in res.stdout
            and f"certificate verified (CA: {tls.ca}; host 127.0.0.1) (ssl-mode=VERIFY_IDENTITY)" in res.stdout), res.stdout
    redis_client.delete("cdc:e2e")
    for workers in TOPOLOGIES_SLOW:  # the reader's connections, in this process and in a reader process
        engine = Engine(cfg, "--workers", workers).wait_ready(60)
        try:
            tls_mariadb.execute(f"INSERT INTO tlsdb.t VALUES ({int(workers) + 1})")
            wait_for(lambda w=workers: any(e["after"]["id"] == int(w) + 1 for e in stream_events(redis_client, "cdc:e2e")),
                     timeout=60, what="the row through a verified TLS connection")
        finally:
            code, out = engine.stop()
        assert code == 0, out


@pytest.mark.parametrize(("case", "expect"), [
    ("wrong-host", "the MySQL server's TLS certificate does not name the host in"),
    ("wrong-ca", "the MySQL server's TLS certificate is not signed by a CA this client trusts"),
    ("disabled", "MySQL refused the login while"),
])
def test_the_wrong_host_ca_or_a_plain_connection_fails_naming_the_cause(
        tmp_path: Path, tls: TLSFiles, tls_mariadb: MariaDBServer, redis_server: RedisServer, case: str,
        expect: str) -> None:
    tls_mariadb.execute("CREATE DATABASE IF NOT EXISTS tlsdb", "CREATE TABLE IF NOT EXISTS tlsdb.t (id INT PRIMARY KEY)")
    dsn = {"wrong-host": _dsn(tls_mariadb, f"ssl-mode=VERIFY_IDENTITY&ssl-ca={tls.ca}", host="localhost"),
           "wrong-ca": _dsn(tls_mariadb, f"ssl-mode=VERIFY_CA&ssl-ca={tls.other_ca}"),
           "disabled": _dsn(tls_mariadb, "ssl-mode=DISABLED")}[case]
    fix = {"wrong-host": "connect by a name the certificate holds",
           "wrong-ca": "set ssl-ca in",
           "disabled": "if the server requires TLS (require_secure_transport=ON), remove ssl-mode=DISABLED"}[case]
    cfg = _config(tmp_path, tls_mariadb, redis_server, dsn, "tlsdb.t")
    res = _cli("check", str(cfg))
    assert res.returncode == 3, res.stdout + res.stderr
    fail = [line for line in res.stdout.splitlines() if line.startswith("FAIL mysql: ")]
    assert len(fail) == 1 and expect in fail[0] and f"(fix: {fix}" in fail[0], res.stdout
    # the engine itself (no preflight): the same cause, one line, exit 1 at once (not retried)
    res = _cli("run", str(cfg), "--workers", "0", "--skip-preflight")
    assert res.returncode == 1, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expect in errors[0] and "restarting" not in res.stderr, res.stderr


@pytest.mark.parametrize(("query", "message"), [
    ("ssl_cert_req=none", r"unknown parameter 'ssl_cert_req' .* \(fix: did you mean ssl_cert_reqs\?\)"),
    ("socket_connect_timeout=3", r"unknown parameter 'socket_connect_timeout' .* \(fix: did you mean connect_timeout\?\)"),
    ("ssl_cert_reqs=maybe", r"ssl_cert_reqs='maybe' .* is not none, optional or required"),
])
def test_the_redis_uri_takes_only_the_parameters_it_honours(query: str, message: str) -> None:
    from deltaforge.dsn import parse_redis_uri

    with pytest.raises(ConfigError, match=rf"^spec\.sinks\[0\]\.config\.uri: {message}"):
        parse_redis_uri(f"rediss://u:pw@cache.example:6380/0?{query}")
    ok = parse_redis_uri("rediss://u:pw@cache.example:6380/2?connect_timeout=3&ssl_cert_reqs=required")
    assert (ok.db, ok.params) == (2, {"connect_timeout": "3", "ssl_cert_reqs": "required"})


def test_a_client_certificate_logs_in_a_user_that_requires_one(tmp_path: Path, tls: TLSFiles,
                                                                  tls_mariadb: MariaDBServer,
                                                                  redis_server: RedisServer) -> None:
    tls_mariadb.execute("CREATE DATABASE IF NOT EXISTS tlsdb", "CREATE TABLE IF NOT EXISTS tlsdb.t (id INT PRIMARY KEY)",
                        "CREATE USER IF NOT EXISTS 'certuser'@'%' IDENTIFIED BY 'cert-pw' REQUIRE X509",
                        "GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO 'certuser'@'%'")
    base = f"mysql://certuser:cert-pw@127.0.0.1:{tls_mariadb.port}/?ssl-mode=VERIFY_IDENTITY&ssl-ca={tls.ca}"
    with_cert = _config(tmp_path, tls_mariadb, redis_server,
                        f"{base}&ssl-cert={tls.client_cert}&ssl-key={tls.client_key}", "tlsdb.t")
    res = _cli("check", str(with_cert))
    assert res.returncode == 0 and "ok   mysql: logged in as 'certuser'" in res.stdout, res.stdout + res.stderr
    without = _config(tmp_path, tls_mariadb, redis_server, base, "tlsdb.t")
    res = _cli("check", str(without))
    assert res.returncode == 3 and "FAIL mysql: MySQL refused the login" in res.stdout, res.stdout
    stranger = _config(tmp_path, tls_mariadb, redis_server,
                       f"{base}&ssl-cert={tls.stranger_cert}&ssl-key={tls.stranger_key}", "tlsdb.t")
    res = _cli("check", str(stranger))
    assert res.returncode == 3, res.stdout
    assert ("FAIL mysql: the MySQL server closed the TLS connection during the login while connecting: it "
            "refused this client's TLS certificate" in res.stdout
            and "(fix: set ssl-cert and ssl-key in" in res.stdout), res.stdout


def test_a_password_to_an_unverified_server_off_loopback_is_a_warning() -> None:
    from deltaforge.preflight import _tls_result

    class Sock:
        def version(self) -> str:
            return "TLSv1.3"

        def cipher(self) -> tuple[str, str, int]:
            return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)

    remote = parse_mysql_dsn("mysql://app:pw@db.internal:3306/app")
    line = _tls_result("mysql", remote, Sock(), "$MYSQL_DSN").line()
    assert line.startswith("warn mysql: TLS (TLSv1.3, TLS_AES_256_GCM_SHA384), certificate not verified "
                           "(ssl-mode=PREFERRED): the password goes to a server that was not verified (fix: add "
                           "?ssl-mode=VERIFY_IDENTITY&ssl-ca=<the server's CA file> to $MYSQL_DSN)"), line
    assert _tls_result("mysql", remote, None, "x").line().startswith("warn mysql: plain connection, not encrypted")
    local = parse_mysql_dsn("mysql://app:pw@127.0.0.1:3306/app")
    assert _tls_result("mysql", local, Sock(), "x").line().startswith("ok   mysql: TLS (TLSv1.3")


# ----------------------------------------------------------------------------- passwords from files


def test_passwords_come_from_files_for_container_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deltaforge.dsn import parse_redis_uri

    secret = tmp_path / "mysql-password"
    secret.write_text("s3cret-from-file\n")
    assert parse_mysql_dsn(f"mysql://app@db:3306/app?password_file={secret}").password == "s3cret-from-file"
    monkeypatch.setenv("MYSQL_PASSWORD_FILE", str(secret))
    assert parse_mysql_dsn("mysql://app@db:3306/app").password == "s3cret-from-file"  # the URL has none
    assert parse_mysql_dsn("mysql://app:inline@db:3306/app").password == "inline"  # the URL's wins
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(secret))
    uri = parse_redis_uri("redis://worker@cache:6379/0")
    assert uri.password == "s3cret-from-file" and "s3cret" not in uri.redacted()
    with pytest.raises(ConfigError, match=r"has both a password and password_file \(fix: keep one"):
        parse_mysql_dsn(f"mysql://app:pw@db/app?password_file={secret}")
    monkeypatch.setenv("MYSQL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"cannot read the password file .*missing' \(\$MYSQL_PASSWORD_FILE\): "
                                          r"No such file or directory \(fix: point \$MYSQL_PASSWORD_FILE at a file"):
        parse_mysql_dsn("mysql://app@db:3306/app")


def test_the_engine_logs_in_with_a_password_file(tmp_path: Path, mariadb: MariaDBServer,
                                                 redis_server: RedisServer) -> None:
    from deltaforge.testing import REPL_PASSWORD

    mariadb.execute("CREATE DATABASE IF NOT EXISTS pwfile", "CREATE TABLE IF NOT EXISTS pwfile.t (id INT PRIMARY KEY)")
    secret = tmp_path / "pw"
    secret.write_text(REPL_PASSWORD + "\n")
    dsn = mariadb.dsn().replace(f":{REPL_PASSWORD}@", "@") + f"?password_file={secret}"
    res = _cli("check", str(_config(tmp_path, mariadb, redis_server, dsn, "pwfile.t")))
    assert res.returncode == 0 and "ok   mysql: logged in as 'deltaforge'" in res.stdout, res.stdout + res.stderr


# ----------------------------------------------------------------------------- what the engine exposes


@pytest.mark.parametrize("workers", TOPOLOGIES)
def test_no_password_in_logs_metrics_health_or_process_titles(tmp_path: Path, mariadb: MariaDBServer,
                                                              redis_server: RedisServer, redis_client,  # type: ignore[no-untyped-def]
                                                              workers: str) -> None:
    import urllib.request

    from deltaforge.testing import free_port
    from tests.e2e import TAG_PROCESSOR

    password = f"Pw-{workers}-Zq8x1vN7"
    mariadb.execute("CREATE DATABASE IF NOT EXISTS exposed", "CREATE TABLE IF NOT EXISTS exposed.t (id INT PRIMARY KEY)",
                    f"CREATE USER IF NOT EXISTS 'exposer'@'%' IDENTIFIED BY '{password}'",
                    # the documented least privilege, SELECT narrowed to the captured database
                    "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'exposer'@'%'",
                    "GRANT SELECT ON exposed.* TO 'exposer'@'%'")
    redis_client.execute_command("ACL", "SETUSER", "exposer", "on", f">{password}", "~*", "+@all")
    try:
        cfg = write_config(tmp_path, mariadb, redis_server, ["exposed.t"], start=binlog_end(mariadb),
                           processors=TAG_PROCESSOR)
        text = cfg.read_text().replace(f"dsn: {mariadb.dsn()}", f"dsn: mysql://exposer:{password}@127.0.0.1:{mariadb.port}/")
        cfg.write_text(text.replace(f"uri: {redis_server.uri}",
                                    f"uri: redis://exposer:{password}@127.0.0.1:{redis_server.port}/0"))
        port = free_port()
        engine = Engine(cfg, "--workers", workers, "--metrics-port", str(port), "--progress-every", "0.5",
                        global_args=("--log-level", "DEBUG")).wait_ready(60)
        try:
            mariadb.execute(f"INSERT INTO exposed.t VALUES ({int(workers) + 1})")
            wait_for(lambda: redis_client.xlen("cdc:e2e") >= 1, timeout=60, what="the row")
            pages = [urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=5).read().decode()
                     for p in ("/metrics", "/health", "/ready")]
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        finally:
            code, out = engine.stop()
        assert code == 0, out
        for where, text in (("the log", out), ("/metrics, /health, /ready", "\n".join(pages)), ("ps", ps)):
            assert password not in text, where
        assert "exposer:***@" in out  # the DSN is shown, redacted
    finally:
        redis_client.execute_command("ACL", "DELUSER", "exposer")
        redis_client.delete("cdc:e2e")
        mariadb.execute("DROP USER IF EXISTS 'exposer'@'%'")


def test_metrics_listen_on_loopback_unless_told_otherwise() -> None:
    from deltaforge.metrics import serve_http

    server = serve_http({}, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ConfigError, match=r"^--metrics-port: cannot listen on 203\.0\.113\.9:0: .* \(fix: pick a "
                                          r"free port, an address of this host for --metrics-bind"):
        serve_http({}, 0, bind="203.0.113.9")


# ----------------------------------------------------------------------------- least privilege on Redis

#: the documented ACLs (README, Security): the engine's sink user and the invalidation worker's
from deltaforge.sink.redis_conn import ACL_COMMANDS as ENGINE_ACL  # noqa: E402 - (the one list)
from deltaforge.worker import WORKER_ACL, WORKER_CACHE_ACL, WORKER_STREAM_ACL, InvalidationWorker  # noqa: E402

_KEYS_PROCESSOR = """  processors:
    - type: javascript
      id: keys
      inline: |
        function processBatch(events) {
          for (const e of events) {
            const row = e.after || e.before;
            row._cache_keys = ['lp:' + row.id];
          }
          return events;
        }
"""


@pytest.mark.parametrize("workers", TOPOLOGIES_SLOW)
def test_engine_and_worker_run_with_the_documented_least_privilege_acls(
        tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer, redis_client, workers: str) -> None:  # type: ignore[no-untyped-def]
    import io

    from deltaforge.worker import InvalidationWorker

    name, stream = f"lp{workers}", f"cdc:lp{workers}"
    # the stream, its checkpoint (tagged by the pipeline) and the checkpoint's former name (tagged by the
    # stream: read once, to carry an older install's position over)
    engine_keys = (f"~{stream}", f"~{{{name}}}:deltaforge:*", f"~{{{stream}}}:deltaforge:*")
    redis_client.execute_command("ACL", "SETUSER", "lp-engine", "reset", "on", ">Eng-pw-5", *engine_keys, *ENGINE_ACL)
    redis_client.execute_command("ACL", "SETUSER", "lp-worker", "reset", "on", ">Wrk-pw-5", f"~{stream}", "~lp:*",
                                 *WORKER_ACL)
    mariadb.execute("CREATE DATABASE IF NOT EXISTS lp", f"CREATE TABLE IF NOT EXISTS lp.t{workers} (id INT PRIMARY KEY)")
    try:
        cfg = write_config(tmp_path, mariadb, redis_server, [f"lp.t{workers}"], name=name, stream=stream,
                           start=binlog_end(mariadb), processors=_KEYS_PROCESSOR)
        cfg.write_text(cfg.read_text().replace(f"uri: {redis_server.uri}",
                                               f"uri: redis://lp-engine:Eng-pw-5@127.0.0.1:{redis_server.port}/0"))
        res = _cli("check", str(cfg))
        assert res.returncode == 0 and "user lp-engine may run the sink's commit" in res.stdout, res.stdout + res.stderr
        for i in (1, 2, 3):
            redis_client.set(f"lp:{i}", "cached")
        engine = Engine(cfg, "--workers", workers).wait_ready(60)
        try:
            mariadb.execute(f"INSERT INTO lp.t{workers} VALUES (1),(2),(3)")
            wait_for(lambda: redis_client.xlen(stream) == 3 or engine.poll() is not None, timeout=60,
                     what="3 entries written by lp-engine")
        finally:
            code, out = engine.stop()
        assert code == 0 and "NOPERM" not in out, out
        log = io.StringIO()
        worker = InvalidationWorker(f"redis://lp-worker:Wrk-pw-5@127.0.0.1:{redis_server.port}/0", stream,
                                    "cache-workers", "lp-0", block_ms=50, claim_idle_ms=0, out=log)
        try:
            while worker.process_once():
                pass
        finally:
            worker.close()
        assert redis_client.exists("lp:1", "lp:2", "lp:3") == 0, log.getvalue()  # invalidated by lp-worker
    finally:
        redis_client.execute_command("ACL", "DELUSER", "lp-engine", "lp-worker")
        redis_client.delete(stream)


def _split_worker(redis_server: RedisServer, cache: RedisServer, stream: str, stream_user: str,
                  cache_user: str) -> InvalidationWorker:
    """The stream on ``redis_server`` as ``stream_user``, the cache in db 2 of ``cache`` as ``cache_user``."""
    import io

    return InvalidationWorker(f"redis://{stream_user}@127.0.0.1:{redis_server.port}/0", stream, "cache-workers",
                              "split-0", block_ms=50, claim_idle_ms=0, out=io.StringIO(),
                              cache_uri=f"redis://{cache_user}@127.0.0.1:{cache.port}/2")


def test_worker_runs_with_a_stream_user_and_a_cache_user_each_with_its_own_acl(
        redis_server: RedisServer, redis_client, redis_own: RedisServer) -> None:  # type: ignore[no-untyped-def]
    import orjson

    stream = "cdc:split"
    redis_client.execute_command("ACL", "SETUSER", "split-stream", "reset", "on", ">Str-pw-6", f"~{stream}",
                                 *WORKER_STREAM_ACL)
    cache = redis_own.client(db=2)  # db 2: SELECT is in WORKER_CACHE_ACL
    cache.execute_command("ACL", "SETUSER", "split-cache", "reset", "on", ">Cch-pw-6", "~lp:*", *WORKER_CACHE_ACL)
    cache.mset({"lp:1": "cached", "lp:2": "cached", "lp:3:a": "cached", "lp:3:b": "cached"})
    for keys in (["lp:1", "lp:2"], ["lp:3:*"]):
        redis_client.xadd(stream, {"df-event": orjson.dumps({"table": "lp.t", "after": {"_cache_keys": keys}})})
    worker = _split_worker(redis_server, redis_own, stream, "split-stream:Str-pw-6", "split-cache:Cch-pw-6")
    try:
        assert worker.process_once() == 2
    finally:
        worker.close()
        redis_client.execute_command("ACL", "DELUSER", "split-stream")
    assert cache.dbsize() == 0
    assert redis_client.xpending(stream, "cache-workers")["pending"] == 0
    redis_client.delete(stream)
    cache.close()


@pytest.mark.parametrize("side", ["stream", "cache"])
def test_worker_nopermission_names_the_uri_and_the_acl_of_that_connection(
        redis_server: RedisServer, redis_client, redis_own: RedisServer, side: str) -> None:  # type: ignore[no-untyped-def]
    import orjson

    from deltaforge.errors import SinkError

    stream = "cdc:split-noperm"
    # the stream user without the right to create the group; the cache user without the cache's keys
    stream_acl = [c for c in WORKER_STREAM_ACL if c != "+xgroup|create"] if side == "stream" else WORKER_STREAM_ACL
    redis_client.execute_command("ACL", "SETUSER", "np-stream", "reset", "on", ">Np-pw-6", f"~{stream}", *stream_acl)
    cache = redis_own.client(db=2)
    cache.execute_command("ACL", "SETUSER", "np-cache", "reset", "on", ">Np-pw-7",
                          "~other:*" if side == "cache" else "~lp:*", *WORKER_CACHE_ACL)
    redis_client.xadd(stream, {"df-event": orjson.dumps({"table": "lp.t", "after": {"_cache_keys": ["lp:1"]}})})
    worker = _split_worker(redis_server, redis_own, stream, "np-stream:Np-pw-6", "np-cache:Np-pw-7")
    try:
        with pytest.raises(SinkError) as info:
            while worker.process_once():
                pass
    finally:
        worker.close()
        redis_client.execute_command("ACL", "DELUSER", "np-stream")
        redis_client.delete(stream)
        cache.close()
    text = str(info.value)
    assert "NOPERM" in text and "\n" not in text and "Np-pw" not in text
    if side == "stream":
        assert "--redis-uri (REDIS_URI)" in text and " ".join(WORKER_STREAM_ACL) in text and "+unlink" not in text
    else:
        assert "--cache-uri (CACHE_REDIS_URI)" in text and " ".join(WORKER_CACHE_ACL) in text and "+xack" not in text


@pytest.mark.parametrize("missing", ["+unlink", "+multi"])
def test_one_worker_user_missing_a_command_acks_nothing_and_deletes_nothing(
        redis_server: RedisServer, redis_client, missing: str) -> None:  # type: ignore[no-untyped-def]
    """One client: the deletes and the ack share a MULTI, which Redis aborts as a whole; without
    +multi the error says so."""
    import orjson

    from deltaforge.errors import SinkError

    stream, group = f"cdc:one-noperm{missing[1:]}", "g"
    acl = [c for c in WORKER_ACL if c != missing]
    redis_client.execute_command("ACL", "SETUSER", "one-np", "reset", "on", ">One-pw-3", f"~{stream}", "~lp1:*", *acl)
    redis_client.set("lp1:1", "cached")
    redis_client.xadd(stream, {"df-event": orjson.dumps({"table": "lp.t", "after": {"_cache_keys": ["lp1:1"]}})})
    worker = InvalidationWorker(f"redis://one-np:One-pw-3@127.0.0.1:{redis_server.port}/0", stream, group,
                                "c1", 100, 100, 0, 0, out=io.StringIO())
    try:
        with pytest.raises(SinkError) as info:
            while worker.process_once():
                pass
        text = str(info.value)
        assert "NOPERM" in text and missing in text and "\n" not in text, text
        if missing == "+unlink":
            assert redis_client.get("lp1:1") == b"cached"  # the MULTI was aborted whole: nothing deleted
            assert redis_client.xpending(stream, group)["pending"] == 1  # ... and nothing acked
        else:
            # MULTI refused: the commands ran unwrapped, in order, so the ack came after the delete
            assert redis_client.get("lp1:1") is None
            assert "may not run MULTI" in text
    finally:
        worker.close()
        redis_client.execute_command("ACL", "DELUSER", "one-np")
        redis_client.delete(stream, "lp1:1")


def test_a_missing_acl_command_stops_the_engine_at_once_naming_it(tmp_path: Path, mariadb: MariaDBServer,
                                                                  redis_server: RedisServer, redis_client) -> None:  # type: ignore[no-untyped-def]
    stream = "cdc:lp-noxadd"
    acl = [c for c in ENGINE_ACL if c != "+xadd"]
    redis_client.execute_command("ACL", "SETUSER", "lp-noxadd", "reset", "on", ">Nx-pw-5", "~*", *acl)
    mariadb.execute("CREATE DATABASE IF NOT EXISTS lp", "CREATE TABLE IF NOT EXISTS lp.nx (id INT PRIMARY KEY)")
    try:
        cfg = write_config(tmp_path, mariadb, redis_server, ["lp.nx"], name="lpnx", stream=stream,
                           start=binlog_end(mariadb))
        cfg.write_text(cfg.read_text().replace(f"uri: {redis_server.uri}",
                                               f"uri: redis://lp-noxadd:Nx-pw-5@127.0.0.1:{redis_server.port}/0"))
        res = _cli("check", str(cfg))
        assert res.returncode == 3, res.stdout
        assert (f"FAIL redis[stream]: user lp-noxadd may not run XADD on '{stream}': NOPERM" in res.stdout
                and "(fix: the Redis user needs the commands +xadd" in res.stdout), res.stdout
        engine = Engine(cfg, "--workers", "0", "--skip-preflight").wait_ready(60)
        mariadb.execute("INSERT INTO lp.nx VALUES (1)")
        code, out = engine.wait(60)
        assert code != 0 and "restarting" not in out, out
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "NOPERM" in errors[0] and "'xadd'" in errors[0] and "+xadd" in errors[0], out
    finally:
        redis_client.execute_command("ACL", "DELUSER", "lp-noxadd")


@pytest.fixture(scope="module")
def tls_redis(tls: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Redis that speaks TLS only, its certificate from the private CA; yields its port."""
    from deltaforge.testing import tls_redis

    with tls_redis(tls.server_cert, tls.server_key, tls.ca, tmp_path_factory.mktemp("tls-redis")) as port:
        yield port


def test_rediss_with_acl_users_is_verified_by_check_engine_and_worker(
        tmp_path: Path, tls: TLSFiles, tls_redis: int, mariadb: MariaDBServer, redis_server: RedisServer) -> None:
    import io

    import redis

    from deltaforge.worker import InvalidationWorker

    admin = redis.Redis(host="127.0.0.1", port=tls_redis, ssl=True, ssl_ca_certs=str(tls.ca))
    admin.execute_command("ACL", "SETUSER", "tls-engine", "reset", "on", ">Tls-pw-7", "~cdc:tls",
                          "~{tlspipe}:deltaforge:*", "~{cdc:tls}:deltaforge:*", *ENGINE_ACL)
    admin.execute_command("ACL", "SETUSER", "tls-worker", "reset", "on", ">Tls-pw-8", "~cdc:tls", "~lp:*", *WORKER_ACL)
    mariadb.execute("CREATE DATABASE IF NOT EXISTS tlsr", "CREATE TABLE IF NOT EXISTS tlsr.t (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path, mariadb, redis_server, ["tlsr.t"], name="tlspipe", stream="cdc:tls",
                       start=binlog_end(mariadb))
    good = f"rediss://tls-engine:Tls-pw-7@127.0.0.1:{tls_redis}/0?ssl_ca_certs={tls.ca}"
    cfg.write_text(cfg.read_text().replace(f"uri: {redis_server.uri}", f"uri: '{good}'"))
    res = _cli("check", str(cfg))
    assert res.returncode == 0 and "user tls-engine may run the sink's commit on 'cdc:tls'" in res.stdout, \
        res.stdout + res.stderr
    assert "ok   redis[stream]: TLS (TLSv1.3, " in res.stdout and f"certificate verified (CA: {tls.ca}; host 127.0.0.1)" \
        in res.stdout, res.stdout
    cfg.write_text(cfg.read_text().replace(f"?ssl_ca_certs={tls.ca}", f"?ssl_ca_certs={tls.other_ca}"))
    res = _cli("check", str(cfg))
    assert res.returncode == 3 and "FAIL redis[stream]: " in res.stdout and "certificate verify failed" in res.stdout, \
        res.stdout
    worker = InvalidationWorker(f"rediss://tls-worker:Tls-pw-8@127.0.0.1:{tls_redis}/0?ssl_ca_certs={tls.ca}",
                                "cdc:tls", "cache-workers", "tls-0", block_ms=50, claim_idle_ms=0, out=io.StringIO())
    try:
        assert worker.process_once() == 0  # the group made and read over verified TLS, as tls-worker
    finally:
        worker.close()
    assert admin.xinfo_groups("cdc:tls")[0]["name"] == b"cache-workers"
    admin.close()


@pytest.mark.parametrize(("server", "query", "expect"), [
    ("tls", "ssl-mode=REQUIRED", "ok   mysql: TLS (TLSv1.3, "),
    ("tls", "ssl-mode=VERIFY_CA&ssl-ca={ca}", "certificate verified (CA: {ca}), host name not checked (ssl-mode=VERIFY_CA)"),
    ("tls", "", "certificate not verified (ssl-mode=PREFERRED)"),
    ("plain", "", "ok   mysql: plain connection, not encrypted (ssl-mode=PREFERRED)"),
    ("plain", "ssl-mode=DISABLED", "ok   mysql: plain connection, not encrypted (ssl-mode=DISABLED)"),
    ("plain", "ssl-mode=REQUIRED", "FAIL mysql: the MySQL server does not offer TLS, and ssl-mode=REQUIRED requires it"),
])
def test_every_mode_against_a_tls_only_and_a_plain_server(tmp_path: Path, tls: TLSFiles, tls_mariadb: MariaDBServer,
                                                          mariadb: MariaDBServer, redis_server: RedisServer,
                                                          server: str, query: str, expect: str) -> None:
    target = tls_mariadb if server == "tls" else mariadb
    target.execute("CREATE DATABASE IF NOT EXISTS modes", "CREATE TABLE IF NOT EXISTS modes.t (id INT PRIMARY KEY)")
    cfg = _config(tmp_path, target, redis_server, _dsn(target, query.format(ca=tls.ca)), "modes.t")
    res = _cli("check", str(cfg))
    assert expect.format(ca=tls.ca) in res.stdout, res.stdout
    assert res.returncode == (3 if expect.startswith("FAIL") else 0), res.stdout
