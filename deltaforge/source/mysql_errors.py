"""What a MySQL/MariaDB error means for the pipeline: the one classification.

Every place that opens a MySQL connection or talks over one (the reader's
connection factory and binlog fetch, the live-schema fallback, the preflight)
turns a PyMySQL exception into a :class:`~deltaforge.errors.SourceError` with
:func:`mysql_error` and never looks at error codes itself.

Classes (``classify``):

- ``auth``: the login is refused: 1045 access denied, 1698 (no password / socket
  plugin), 1130 host not allowed, 1129 host blocked, 1251/2059 auth plugin, 1820
  and 1862 expired password, 3118/4151 account locked. Fatal **on the first
  connect and on every reconnect**: a replication password rotated under a running
  engine must stop it with the fix, not be retried for minutes.
- ``privilege``: logged in but not allowed: 1044 database, 1142 table, 1143
  column, 1227 (REPLICATION SLAVE, BINLOG MONITOR/REPLICATION CLIENT, SUPER),
  1370 routine. Fatal.
- ``position``: 1236, the server cannot send the binlog from where we ask (purged
  file, unknown GTID, a replica with the same server id). Fatal.
- ``transient``: the connection or the server went away or is overloaded: client
  errors 2000-2999 (2003 refused, 2006 gone away, 2013 lost, ...), 1040 too many
  connections, 1053/1077/1078/1079/1080 shutdown, 1152/1153/1184 aborted, 1159/1161
  net timeouts, 1205/1213 lock timeout/deadlock, 1317 interrupted, 1927 killed,
  3024 query timeout, 4031 idle disconnect, and sockets/OS errors. Retriable: the
  pipeline restarts from its checkpoint with backoff.

Any other server error is ``transient`` too, on purpose: the supervisor's restart
budget bounds the retries and then exits with the error, while an unknown but
passing condition read as fatal would stop a pipeline that could have recovered.

Messages: one line naming the cause (code and server text) and the fix: the DSN
at ``spec.source.config.dsn`` and the environment variable it was expanded from
(:func:`dsn_location`), or the GRANT statement to run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from deltaforge.errors import SourceError, SourceUnavailable

__all__ = [
    "AUTH",
    "DSN_PATH",
    "POSITION",
    "PRIVILEGE",
    "TRANSIENT",
    "classify",
    "dsn_location",
    "error_code",
    "is_fatal",
    "mysql_error",
]

DSN_PATH = "spec.source.config.dsn"

AUTH = "auth"
PRIVILEGE = "privilege"
POSITION = "position"
TRANSIENT = "transient"
#: TLS could not be set up as the DSN asks (certificate not trusted, wrong host, no TLS on the
#: server, client certificate refused): a configuration problem, never retried
TLS = "tls"
_CR_SSL_CONNECTION_ERROR = 2026

_AUTH_CODES = frozenset({1045, 1129, 1130, 1251, 1698, 1820, 1862, 2059, 3118, 4151})
_EXPIRED = frozenset({1820, 1862})
_LOCKED = frozenset({3118, 4151})
_PRIVILEGE_CODES = frozenset({1044, 1142, 1143, 1227, 1370})
_POSITION_CODES = frozenset({1236})
#: known passing conditions (documentation and tests; unknown codes are transient too)
TRANSIENT_CODES = frozenset({
    1040, 1053, 1077, 1078, 1079, 1080, 1152, 1153, 1158, 1159, 1160, 1161, 1184, 1205, 1213, 1317, 1927,
    3024, 4031, 2002, 2003, 2005, 2006, 2012, 2013, 2014, 2055,
})

_USER_HOST = re.compile(r"user '(?P<user>[^']*)'@'(?P<host>[^']*)'")


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a PyMySQL exception (None for other exceptions)."""
    import pymysql

    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def classify(exc: BaseException) -> str:
    """``auth`` | ``privilege`` | ``position`` | ``transient`` (see the module header)."""
    code = error_code(exc)
    if code is None:
        # PyMySQL raises RuntimeError when caching_sha2_password needs `cryptography`
        if isinstance(exc, RuntimeError) and "cryptography" in str(exc):
            return AUTH
        return TRANSIENT
    if _is_tls(exc, code):
        return TLS
    if code in _AUTH_CODES:
        return AUTH
    if code in _PRIVILEGE_CODES:
        return PRIVILEGE
    if code in _POSITION_CODES:
        return POSITION
    return TRANSIENT


def _is_tls(exc: BaseException, code: int | None) -> bool:
    if code == _CR_SSL_CONNECTION_ERROR:
        return True
    if code == 2003:  # "Can't connect ...": TLS when the handshake's TLS part failed, else the network
        low = str(exc.args[1] if len(exc.args) > 1 else "").lower()
        return "ssl" in low or "certificate" in low or "tls" in low
    return False


def is_fatal(exc: BaseException) -> bool:
    return classify(exc) != TRANSIENT


def dsn_location(env_names: Sequence[str] = ()) -> str:
    """``spec.source.config.dsn`` plus the environment variables its value came from."""
    if not env_names:
        return DSN_PATH
    names = ", ".join(f"${n}" for n in env_names)
    return f"{names} ({DSN_PATH})"


def _text(exc: BaseException) -> str:
    code = error_code(exc)
    if code is not None:
        msg = str(exc.args[1]) if len(exc.args) > 1 else ""
        return f"({code}) {msg}".strip()
    return str(exc) or type(exc).__name__


def _grantee(message: str, user: str | None) -> str:
    m = _USER_HOST.search(message)
    if m:
        return f"'{m['user']}'@'{m['host']}'"
    return f"'{user}'@'<host>'" if user else "the DeltaForge user"


def refused_during_tls_login(exc: BaseException) -> bool:
    """The server closed the TLS connection during the login (a client certificate it does not
    accept, or one it requires): meaningful only while connecting; later, the same EOF is a
    dropped connection and is retried."""
    code = error_code(exc)
    low = str(exc.args[1] if len(exc.args) > 1 else "").lower()
    # the refusal arrives as an EOF or as a TLS alert (unknown ca, certificate required), by timing
    return code in (2006, 2013) and ("violation of protocol" in low or "alert" in low)


def mysql_error(exc: BaseException, doing: str, *, where: str = DSN_PATH, user: str | None = None,
                grant: str | None = None, tls_mode: str | None = None, connecting: bool = False) -> SourceError:
    """The :class:`SourceError` (fatal) or :class:`SourceUnavailable` (retriable) for ``exc``.

    ``doing`` says what failed ("connecting to MySQL", "reading the binlog"); ``where``
    is :func:`dsn_location`; ``grant`` the privilege list of the fix for a privilege
    error (default: everything the engine needs); ``tls_mode`` the DSN's ``ssl-mode``;
    ``connecting``: the failure happened while logging in (see :func:`refused_during_tls_login`).
    """
    kind = classify(exc)
    text = _text(exc)
    code = error_code(exc)
    if kind == TLS:
        return _tls_error(text, doing, where, tls_mode)
    if connecting and refused_during_tls_login(exc):
        return SourceError(f"the MySQL server closed the TLS connection during the login while {doing}: it refused "
                           f"this client's TLS certificate (or requires one): {text}",
                           f"set ssl-cert and ssl-key in {where} to a certificate the server's CA (its ssl_ca) "
                           "signed")
    if kind == AUTH and code == 1045 and tls_mode == "DISABLED":
        # MariaDB answers a plain login to a server with require_secure_transport=ON like a bad password
        return SourceError(f"MySQL refused the login while {doing} over a plain connection (ssl-mode=DISABLED): "
                           f"{text}", f"if the server requires TLS (require_secure_transport=ON), remove "
                           f"ssl-mode=DISABLED from {where} (VERIFY_IDENTITY with ssl-ca verifies the server); else "
                           "check the user and password")
    if kind == AUTH:
        who = _grantee(text, user)
        if code in _EXPIRED:
            return SourceError(f"MySQL refused the login while {doing}: the password of {who} has expired: {text}",
                               f"on the server ALTER USER {who} IDENTIFIED BY '<new password>' (or PASSWORD "
                               f"EXPIRE NEVER), then put that password in {where}")
        if code in _LOCKED:
            return SourceError(f"MySQL refused the login while {doing}: the account {who} is locked: {text}",
                               f"on the server ALTER USER {who} ACCOUNT UNLOCK")
        if code == 1130:
            return SourceError(f"MySQL refused the connection while {doing}: {text}",
                               f"CREATE USER for this client's host on the server (or use '%'), or correct the "
                               f"host in {where}")
        if code == 1129:
            return SourceError(f"MySQL blocked this host while {doing}: {text}",
                               "run FLUSH HOSTS (mariadb-admin flush-hosts) on the server and raise "
                               "max_connect_errors")
        if code is None or code in (1251, 2059):
            return SourceError(f"MySQL login failed while {doing}: {text}",
                               "pip install cryptography (MySQL 8 caching_sha2_password), or ALTER USER ... "
                               "IDENTIFIED WITH mysql_native_password")
        return SourceError(f"MySQL refused the login while {doing}: {text}",
                           f"put the right user and password in {where}; if the password was changed on the "
                           "server, update it there and start again (login errors are not retried)")
    if kind == PRIVILEGE:
        who = _grantee(text, user)
        if grant is not None:
            return SourceError(f"MySQL denied a privilege while {doing}: {text}", f"GRANT {grant} TO {who}")
        # what the engine needs on any server (README "Your own MySQL/MariaDB", docs/mysql-setup.md)
        return SourceError(f"MySQL denied a privilege while {doing}: {text}",
                           f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO {who} (MySQL: REPLICATION CLIENT "
                           "instead of BINLOG MONITOR) and GRANT SELECT on the captured databases; "
                           "docs/mysql-setup.md lists the grants")
    if kind == POSITION:
        low = text.lower()
        if "server_id" in low or "server_uuid" in low or "server id" in low:
            return SourceError(f"the server stopped the binlog dump while {doing}: {text}",
                               "another replica uses this pipeline's server id: set spec.source.config.server_id "
                               "to a number no other server or replica uses")
        return SourceError(f"the server cannot send the binlog from the requested position while {doing}: {text}",
                           "the checkpoint's binlog was purged or is not on this server; reset the checkpoint "
                           "or set spec.source.config.start, and keep binlogs longer (binlog_expire_logs_seconds)")
    return SourceUnavailable(f"the MySQL connection failed while {doing}: {text}",
                             "the pipeline restarts from its checkpoint")


def _tls_error(text: str, doing: str, where: str, mode: str | None) -> SourceError:
    """The one-line error of a TLS set-up failure, by its cause."""
    low = text.lower()
    mode_text = f"ssl-mode={mode}" if mode else "the DSN's ssl-mode"
    if "hostname mismatch" in low or "doesn't match" in low:
        return SourceError(f"the MySQL server's TLS certificate does not name the host in {where} while {doing}: "
                           f"{text}", f"connect by a name the certificate holds (its subjectAltName), or verify the "
                           f"CA only with ssl-mode=VERIFY_CA in {where}")
    if "certificate verify failed" in low:
        return SourceError(f"the MySQL server's TLS certificate is not signed by a CA this client trusts while "
                           f"{doing}: {text}", f"set ssl-ca in {where} to the CA that issued the server's "
                           "certificate")
    if "doesn't support" in low or "does not support" in low:
        return SourceError(f"the MySQL server does not offer TLS, and {mode_text} requires it, while {doing}: "
                           f"{text}", f"enable TLS on the server (ssl_cert, ssl_key), or lower ssl-mode in {where}")
    if "alert" in low:
        return SourceError(f"the MySQL server refused this client's TLS certificate while {doing}: {text}",
                           f"set ssl-cert and ssl-key in {where} to a certificate the server's CA (its ssl_ca) "
                           "signed")
    return SourceError(f"TLS with the MySQL server failed while {doing}: {text}",
                       f"check the ssl-* parameters in {where} against the server's TLS settings")
