"""deltaforge.source.mysql_errors: the one classification of MySQL/MariaDB errors.

Unit tests on the exception objects PyMySQL raises (built here with the codes and
texts a server sends); the password-rotation integration test is in
tests/test_source_errors.py.
"""

from __future__ import annotations

import pymysql
import pytest

from deltaforge.errors import SourceError, SourceUnavailable
from deltaforge.source.mysql_errors import (
    AUTH,
    POSITION,
    PRIVILEGE,
    TLS,
    TRANSIENT,
    TRANSIENT_CODES,
    classify,
    dsn_location,
    error_code,
    mysql_error,
)

DENIED = "Access denied for user 'repl'@'10.0.0.7' (using password: YES)"


def op(code: int, text: str = "x") -> pymysql.err.OperationalError:
    return pymysql.err.OperationalError(code, text)


@pytest.mark.parametrize(("exc", "kind"), [
    (op(1045, DENIED), AUTH),
    (op(1698, "Access denied for user 'root'@'localhost'"), AUTH),
    (op(1130, "Host '10.0.0.7' is not allowed to connect"), AUTH),
    (op(1129, "Host is blocked because of many connection errors"), AUTH),
    (op(1862, "Your password has expired"), AUTH),
    (op(1820, "You must SET PASSWORD before executing this statement"), AUTH),
    (op(4151, "Access denied, this account is locked"), AUTH),
    (op(3118, "Access denied for user. Account is locked."), AUTH),
    (RuntimeError("'cryptography' package is required for sha256_password or caching_sha2_password"), AUTH),
    (op(1044, "Access denied for user 'repl'@'%' to database 'app'"), PRIVILEGE),
    (op(1142, "SELECT command denied to user 'repl'@'%' for table `app`.`users`"), PRIVILEGE),
    (op(1227, "Access denied; you need (at least one of) the REPLICATION SLAVE privilege(s)"), PRIVILEGE),
    (op(1236, "Could not find first log file name in binary log index file"), POSITION),
    (op(2003, "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)"), TRANSIENT),
    (op(2003, "Can't connect to MySQL server on 'db' ([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
              "failed: self-signed certificate in certificate chain (_ssl.c:1006))"), TLS),
    (op(2026, "SSL is required but the server doesn't support it"), TLS),
    (op(2006, "MySQL server has gone away"), TRANSIENT),
    (op(2013, "Lost connection to MySQL server during query"), TRANSIENT),
    (op(1927, "Connection was killed"), TRANSIENT),
    (op(1040, "Too many connections"), TRANSIENT),
    (op(1053, "Server shutdown in progress"), TRANSIENT),
    (pymysql.err.InterfaceError(0, ""), TRANSIENT),
    (ConnectionResetError(104, "Connection reset by peer"), TRANSIENT),
    (OSError("broken pipe"), TRANSIENT),
    (op(9999, "a code nobody knows"), TRANSIENT),
])
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind
    err = mysql_error(exc, "reading the binlog")
    assert isinstance(err, SourceError)
    assert err.retriable is (kind == TRANSIENT)
    assert isinstance(err, SourceUnavailable) is (kind == TRANSIENT)
    assert err.hint and "\n" not in str(err)


@pytest.mark.parametrize("code", sorted(TRANSIENT_CODES))
def test_every_known_transient_code_is_retriable(code: int) -> None:
    assert classify(op(code)) == TRANSIENT


def test_error_code() -> None:
    assert error_code(op(1045, DENIED)) == 1045
    assert error_code(OSError("x")) is None
    assert error_code(pymysql.err.InterfaceError("no code")) is None


def test_login_error_names_the_dsn_and_its_env_var() -> None:
    err = mysql_error(op(1045, DENIED), "connecting to MySQL", where=dsn_location(["MYSQL_DSN"]))
    assert not err.retriable
    text = str(err)
    assert text.startswith("MySQL refused the login while connecting to MySQL: (1045) Access denied")
    assert "$MYSQL_DSN (spec.source.config.dsn)" in err.hint  # type: ignore[operator]
    assert "not retried" in text


def test_dsn_location_without_env() -> None:
    assert dsn_location() == "spec.source.config.dsn"
    assert dsn_location(["DB_USER", "DB_PASS"]) == "$DB_USER, $DB_PASS (spec.source.config.dsn)"


def test_expired_and_locked_accounts_name_the_statement() -> None:
    expired = mysql_error(op(1862, "Your password has expired. To log in you must change it"), "connecting",
                          user="repl")
    assert "ALTER USER 'repl'@'<host>' IDENTIFIED BY" in expired.hint  # type: ignore[operator]
    locked = mysql_error(op(4151, "Access denied, this account is locked"), "connecting", user="repl")
    assert "ACCOUNT UNLOCK" in locked.hint  # type: ignore[operator]


def test_privilege_error_names_the_grant_and_grantee() -> None:
    err = mysql_error(op(1227, "Access denied; you need (at least one of) the REPLICATION SLAVE privilege(s) "
                               "for this operation"), "reading the binlog", user="repl")
    assert "GRANT REPLICATION SLAVE" in err.hint and "'repl'@'<host>'" in err.hint  # type: ignore[operator]
    table = mysql_error(op(1142, "SELECT command denied to user 'repl'@'10.0.0.7' for table `app`.`t`"),
                        "reading the columns of app.t", grant="SELECT ON `app`.*")
    assert table.hint == "GRANT SELECT ON `app`.* TO 'repl'@'10.0.0.7'"


def test_position_errors() -> None:
    purged = mysql_error(op(1236, "Could not find first log file name in binary log index file"), "reading")
    assert "purged" in purged.hint  # type: ignore[operator]
    twin = mysql_error(op(1236, "A slave with the same server_uuid/server_id as this slave has connected to "
                                "the master"), "reading")
    assert "spec.source.config.server_id" in twin.hint  # type: ignore[operator]


def test_a_tls_eof_is_a_refused_certificate_only_while_logging_in() -> None:
    eof = op(2006, "MySQL server has gone away (SSLEOFError(8, 'EOF occurred in violation of protocol (_ssl.c:2427)'))")
    at_login = mysql_error(eof, "connecting to MySQL", connecting=True)
    assert not at_login.retriable and "refused this client's TLS certificate" in str(at_login)
    mid_stream = mysql_error(eof, "reading the binlog")  # the same EOF later: a dropped connection
    assert mid_stream.retriable


def test_a_tls_alert_at_login_is_a_refused_certificate_too() -> None:
    alert = op(2013, "Lost connection to MySQL server during query ([SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert "
                     "unknown ca (_ssl.c:2580))")
    err = mysql_error(alert, "connecting to MySQL", connecting=True)
    assert not err.retriable and "refused this client's TLS certificate" in str(err)
