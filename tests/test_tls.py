"""MySQL TLS as the DSN asks (``?ssl-mode=...&ssl-ca=...``), against a MariaDB that accepts only
TLS (``require_secure_transport=ON``), with certificates from a private CA made at test time.

Both directions: VERIFY_IDENTITY with the right CA checks and streams; the wrong host, the
wrong CA and DISABLED each fail with a one-line message naming the cause (and are not retried);
an unknown DSN parameter is an error naming the nearest valid one, never ignored.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltaforge.dsn import parse_mysql_dsn
from deltaforge.errors import ConfigError
from deltaforge.testing import MariaDBServer, RedisServer, TLSFiles
from tests.e2e import TOPOLOGIES_SLOW, Engine, binlog_end, stream_events, wait_for, write_config


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
