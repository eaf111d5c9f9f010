"""``deltaforge check``: is every server usable as configured? One line per check.

Contract: ``check_mysql`` / ``check_redis`` never raise for a server problem; each
problem becomes a :class:`CheckResult` with ``ok=False`` (a failure) or
``warning=True`` (the pipeline runs, degraded), carrying the cause in ``detail``
and the fix in ``hint``. ``run_preflight`` prints them as::

    ok   mysql: reachable at mysql://app:***@127.0.0.1:3306/ (MariaDB 10.11.19)
    FAIL mysql: binlog_format is STATEMENT (fix: SET GLOBAL binlog_format=ROW ...)
    warn mysql: binlog_row_metadata is MINIMAL: ... (fix: ...)

and returns ``True`` when nothing failed. Checks that cannot run because an
earlier one failed (no connection, no login) are not printed: the first failure
is the one to fix.

Processors: each one's JavaScript is loaded in V8 (syntax, processBatch defined,
top-level code runs within its limits). MySQL checks: reachable, credentials, log_bin (+ non-zero server_id),
binlog_format=ROW, binlog_row_image=FULL, binlog_row_metadata=FULL (a warning:
the source then falls back to the live schema), GTIDs, replication privileges
(REPLICATION SLAVE + REPLICATION CLIENT / BINLOG MONITOR), SELECT on the
captured tables, tables exist, start position. Redis checks per sink:
reachable, auth, writable (SET+DEL of ``deltaforge:preflight:<pipeline>``),
eviction policy, stream key type. Failures of a sink with ``required: false``
are reported as warnings: the pipeline can run without it.

Hazards:
- Grants are read from ``SHOW GRANTS FOR CURRENT_USER()``. Privileges that come
  from roles are followed one level (``SHOW GRANTS FOR <role>``); when a role's
  grants cannot be read, a missing REPLICATION SLAVE is a warning, not a failure.
  REPLICATION CLIENT and SELECT are also proven by running the statement, which
  covers any grant path.
- ``information_schema`` lists only tables the user has a privilege on, so a
  missing SELECT grant also shows as a missing table; the table hint says so.
- Passwords never reach a result: URIs are shown redacted and every text is
  scrubbed of the configured passwords before it leaves this module.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from deltaforge.errors import ConfigError, DeltaForgeError, PreflightError
from deltaforge.log import scrub

CONNECT_TIMEOUT_S = 5
QUERY_TIMEOUT_S = 10
#: Tables probed with ``SELECT 1 ... LIMIT 0`` when grants alone do not prove SELECT.
_PROBE_LIMIT = 100

_DSN_PATH = "spec.source.config.dsn"
_TABLES_PATH = "spec.source.config.tables"


class CheckResult(msgspec.Struct):
    name: str
    ok: bool
    detail: str
    hint: str | None = None
    warning: bool = False
    #: stable id of the check ("mysql.binlog_format", "redis.writable"), for programs
    check: str = ""

    def line(self) -> str:
        tag = "FAIL" if not self.ok else ("warn" if self.warning else "ok  ")
        text = f"{tag} {self.name}: {self.detail}"
        if self.hint and (not self.ok or self.warning):
            text += f" (fix: {self.hint})"
        return text


class ServerInfo(msgspec.Struct):
    flavor: str  # "mariadb" | "mysql"
    version: str
    server_id: int
    server_uuid: str | None
    full_metadata: bool
    gtid_mode: bool
    # current end of the binlog (where start=latest begins)
    binlog_file: str
    binlog_pos: int
    gtid_position: str | None

    @property
    def label(self) -> str:
        """``MariaDB 10.11.19`` / ``MySQL 8.0.36``."""
        name = "MariaDB" if self.flavor == "mariadb" else "MySQL"
        return f"{name} {self.version}"


# ---------------------------------------------------------------------------
# helpers


def _ok(name: str, check: str, detail: str) -> CheckResult:
    return CheckResult(name=name, ok=True, detail=detail, check=check)


def _fail(name: str, check: str, detail: str, hint: str | None) -> CheckResult:
    return CheckResult(name=name, ok=False, detail=detail, hint=hint, check=check)


def _warn(name: str, check: str, detail: str, hint: str | None) -> CheckResult:
    return CheckResult(name=name, ok=True, detail=detail, hint=hint, warning=True, check=check)


def _scrubbed(results: list[CheckResult], secrets: Iterable[str | None],
              user: str | None = None) -> list[CheckResult]:
    """Remove URI passwords and every configured password from all texts.

    A password equal to the user name is left alone: masking it would mask the
    user name too, and the name is printed anyway.
    """
    words = [s for s in secrets if s and len(s) >= 3 and s != user]

    def clean(text: str | None) -> str | None:
        if text is None:
            return None
        text = scrub(text)
        for w in words:
            text = text.replace(w, "***")
        return text

    for r in results:
        r.detail = clean(r.detail) or ""
        r.hint = clean(r.hint)
    return results


def _root_cause(exc: BaseException) -> BaseException:
    seen = 0
    while seen < 10:
        nxt = getattr(exc, "original_exception", None) or exc.__cause__ or exc.__context__
        if nxt is None:
            return exc
        exc = nxt
        seen += 1
    return exc


def _network_fix(host: str, port: int, cause: BaseException, text: str, where: str) -> tuple[str, str]:
    """(detail, fix) for a socket-level failure to reach host:port."""
    low = text.lower()
    if isinstance(cause, socket.gaierror) or "name or service not known" in low or "nodename nor servname" in low \
            or "temporary failure in name resolution" in low or "error -2 " in low or "error -3 " in low:
        return (f"unknown host {host!r}", f"correct the host in {where}, or make {host!r} resolvable")
    if isinstance(cause, ConnectionRefusedError) or "connection refused" in low or "error 111" in low:
        return (f"connection refused by {host}:{port} (nothing listens there)",
                f"start the server or correct host/port in {where}")
    if isinstance(cause, (TimeoutError, socket.timeout)) or "timed out" in low or "timeout" in low:
        return (f"no answer from {host}:{port} (timed out: a firewall drops the packets, or the port "
                "is not the right server)",
                f"check host/port in {where}, firewalls and security groups")
    return (f"cannot connect to {host}:{port}: {text}", f"check host/port in {where}")


# ---------------------------------------------------------------------------
# MySQL / MariaDB: server information

_VARIABLES = (
    "version", "server_id", "server_uuid", "log_bin", "binlog_format", "binlog_row_image",
    "binlog_row_metadata", "binlog_row_value_options", "gtid_mode", "gtid_binlog_pos",
)


def _variables(conn: Any) -> dict[str, str]:
    names = ", ".join(f"'{n}'" for n in _VARIABLES)
    with conn.cursor() as cur:
        # GLOBAL: new sessions (the application's writers) use the global values.
        cur.execute(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})")
        return {str(k).lower(): "" if v is None else str(v) for k, v in cur.fetchall()}


def _flavor_version(raw: str) -> tuple[str, str]:
    flavor = "mariadb" if "mariadb" in raw.lower() else "mysql"
    # MariaDB's handshake says "5.5.5-10.11.19-MariaDB" (a prefix for old clients).
    m = re.search(r"(\d+\.\d+\.\d+)-MariaDB", raw, re.IGNORECASE) or re.search(r"(\d+\.\d+\.\d+)", raw)
    return flavor, (m.group(1) if m else raw)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def _binlog_status(conn: Any) -> tuple[str, int, str | None]:
    """(file, position, executed GTID set or None) of the binlog end.

    MySQL 8.2+ renamed SHOW MASTER STATUS to SHOW BINARY LOG STATUS (8.4 dropped
    the old name); MariaDB keeps SHOW MASTER STATUS.
    """
    import pymysql

    last: Exception | None = None
    for sql in ("SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"):
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                row = cur.fetchone()
        except pymysql.err.ProgrammingError as e:  # 1064: syntax, try the other name
            last = e
            continue
        if not row:
            return "", 0, None
        gtid = str(row[4]).replace("\n", "") if len(row) > 4 and row[4] else None
        return str(row[0]), int(row[1]), gtid
    assert last is not None
    raise last


def _info_from(variables: dict[str, str], status: tuple[str, int, str | None]) -> ServerInfo:
    flavor, version = _flavor_version(variables.get("version", ""))
    if flavor == "mariadb":
        gtid_mode = True  # MariaDB always writes GTID events
        gtid_position = variables.get("gtid_binlog_pos") or None
    else:
        gtid_mode = variables.get("gtid_mode", "OFF").upper() == "ON"
        gtid_position = status[2] if gtid_mode else None
    return ServerInfo(
        flavor=flavor,
        version=version,
        server_id=int(variables.get("server_id") or 0),
        server_uuid=variables.get("server_uuid") or None,
        full_metadata=variables.get("binlog_row_metadata", "").upper() == "FULL",
        gtid_mode=gtid_mode,
        binlog_file=status[0],
        binlog_pos=status[1],
        gtid_position=gtid_position,
    )


def server_info(conn: Any) -> ServerInfo:
    """Identity, capabilities and binlog end of the server behind a PyMySQL connection.

    Raises :class:`PreflightError` when the binlog is off or the user may not read
    the binlog status (both make CDC impossible).
    """
    import pymysql

    variables = _variables(conn)
    try:
        status = _binlog_status(conn)
    except pymysql.err.MySQLError as e:
        flavor, _ = _flavor_version(variables.get("version", ""))
        raise PreflightError(f"cannot read the binlog position: {e}",
                             f"GRANT {_monitor_priv(flavor)} ON *.* TO the DeltaForge user") from e
    if not status[0]:
        raise PreflightError("the binary log is off (log_bin=OFF)", _LOG_BIN_FIX)
    return _info_from(variables, status)


# ---------------------------------------------------------------------------
# MySQL / MariaDB: grants

_GRANT_ON = re.compile(
    r"^GRANT\s+(?P<privs>.*?)\s+ON\s+(?:(?:TABLE|FUNCTION|PROCEDURE|PACKAGE BODY|PACKAGE)\s+)?"
    r"(?P<obj>(?:`(?:[^`]|``)*`|[^\s.`]+)(?:\.(?:`(?:[^`]|``)*`|[^\s.`]+))?)\s+TO\s",
    re.IGNORECASE | re.DOTALL,
)
_GRANT_ROLE = re.compile(r"^GRANT\s+(?P<roles>.+?)\s+TO\s", re.IGNORECASE | re.DOTALL)
_ALL = {"ALL", "ALL PRIVILEGES"}
_REPL = {"REPLICATION SLAVE", "REPLICATION REPLICA"} | _ALL
_MONITOR = {"REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"} | _ALL
_SELECT = {"SELECT"} | _ALL


def _split_privs(text: str) -> list[str]:
    """Split "SELECT (`a`, `b`), INSERT" at commas outside parentheses."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return [p for p in out if p]


def _unquote_ident(part: str) -> str:
    if len(part) >= 2 and part[0] == "`" and part[-1] == "`":
        return part[1:-1].replace("``", "`")
    return part


def _parse_object(obj: str) -> str:
    m = re.fullmatch(r"((?:`(?:[^`]|``)*`|[^\s.`]+))(?:\.((?:`(?:[^`]|``)*`|[^\s.`]+)))?", obj)
    if not m:
        return obj
    db = _unquote_ident(m.group(1))
    return f"{db}.{_unquote_ident(m.group(2))}" if m.group(2) else db


def parse_grants(lines: Iterable[str]) -> tuple[dict[str, set[str]], list[str]]:
    """Privileges per object (``*.*``, ``app.*``, ``app.users``) and roles granted.

    Column-level privileges (``SELECT (`a`)``) are ignored: they do not let the
    engine read a table's schema.
    """
    privs: dict[str, set[str]] = {}
    roles: list[str] = []
    for raw in lines:
        line = raw.strip()
        m = _GRANT_ON.match(line)
        if m:
            target = privs.setdefault(_parse_object(m.group("obj")), set())
            for p in _split_privs(m.group("privs")):
                if "(" not in p:
                    target.add(" ".join(p.upper().split()))
            continue
        m = _GRANT_ROLE.match(line)
        if m:
            roles.extend(_split_privs(m.group("roles")))
    return privs, roles


def _monitor_priv(flavor: str) -> str:
    return "BINLOG MONITOR" if flavor == "mariadb" else "REPLICATION CLIENT"


def _quote_grantee(current_user: str) -> str:
    user, _, host = current_user.rpartition("@")
    if not user:
        user, host = current_user, "%"
    return f"'{user}'@'{host}'"


# ---------------------------------------------------------------------------
# MySQL / MariaDB: the checks

_LOG_BIN_FIX = ("in my.cnf [mysqld] set log_bin=mysql-bin and server_id=<unique non-zero>, "
                "then restart the server (log_bin cannot be changed at runtime)")


def _setting_fix(var: str, value: str) -> str:
    return f"SET GLOBAL {var}={value} and in my.cnf [mysqld] {var}={value}"


def _source_config(cfg: Any) -> Any:
    return cfg.spec.source.config


def check_mysql(cfg: Any) -> tuple[list[CheckResult], ServerInfo | None]:
    """Run the MySQL/MariaDB checks for ``cfg.spec.source``."""
    import pymysql

    from deltaforge.dsn import parse_mysql_dsn
    from deltaforge.source.mysql_errors import dsn_location, mysql_error

    name = "mysql"
    results: list[CheckResult] = []
    src = _source_config(cfg)
    raw_dsn = str(getattr(src, "dsn", "") or "")
    try:
        dsn = parse_mysql_dsn(raw_dsn, _DSN_PATH)
    except ConfigError as e:
        results.append(_fail(name, "mysql.dsn", e.detail, e.hint))
        return _scrubbed(results, ()), None
    secrets = (dsn.password,)
    user = dsn.user
    info: ServerInfo | None = None
    try:
        info = _check_mysql(cfg, dsn, results)
    except DeltaForgeError as e:
        results.append(_fail(name, "mysql.error", e.detail, e.hint))
    except pymysql.err.MySQLError as e:  # a check's query failed: what it means is mysql_errors' call
        err = mysql_error(e, "running the checks", where=dsn_location(getattr(src, "dsn_env", ())), user=user)
        results.append(_fail(name, "mysql.error", err.detail, err.hint))
    except Exception as e:  # noqa: BLE001 - a check must report, not crash the command
        results.append(_fail(name, "mysql.error", f"unexpected error: {type(e).__name__}: {e}",
                             "run with --debug and report it"))
    return _scrubbed(results, secrets, user), info


def _connect(dsn: Any, results: list[CheckResult], where: str = _DSN_PATH) -> tuple[Any, str] | None:
    """Connect; appends the reachable/credentials results. Returns (conn, label) or None.

    ``where``: the DSN's YAML path and the environment variable it came from. What a
    failure means is :mod:`deltaforge.source.mysql_errors`' call, as for the reader.
    """
    import pymysql

    from deltaforge.source.mysql_connect import Connection
    from deltaforge.source.mysql_errors import (
        TLS,
        TRANSIENT,
        classify,
        error_code,
        mysql_error,
        refused_during_tls_login,
    )

    name = "mysql"
    conn = Connection(
        host=dsn.host, port=dsn.port, user=dsn.user, password=dsn.password, connect_timeout=CONNECT_TIMEOUT_S, read_timeout=QUERY_TIMEOUT_S,
        write_timeout=QUERY_TIMEOUT_S, charset="utf8mb4", autocommit=True, defer_connect=True, **dsn.tls_kwargs(),
    )
    try:
        conn.connect()
    except (pymysql.err.MySQLError, RuntimeError) as e:
        code = error_code(e)
        # The handshake arrived before the login failed: the server is reachable.
        version = getattr(conn, "server_version", None)
        label = ""
        if version:
            flavor, ver = _flavor_version(str(version))
            label = f" ({'MariaDB' if flavor == 'mariadb' else 'MySQL'} {ver})"
        kind = classify(e)
        if kind != TRANSIENT or refused_during_tls_login(e):
            err = mysql_error(e, "connecting", where=where, user=dsn.user, tls_mode=dsn.ssl_mode, connecting=True)
            results.append(_ok(name, "mysql.reachable", f"reachable at {dsn.redacted()}{label}"))
            tls = kind == TLS or refused_during_tls_login(e)
            results.append(_fail(name, "mysql.tls" if tls else "mysql.credentials", err.detail, err.hint))
        elif code in (2003, 2005, 2006, 2013):
            msg = str(e.args[1]) if len(e.args) > 1 else str(e)
            detail, fix = _network_fix(dsn.host, dsn.port, _root_cause(e), msg, where)
            results.append(_fail(name, "mysql.reachable", detail, fix))
        else:
            results.append(_fail(name, "mysql.reachable", f"cannot connect to {dsn.redacted()}: {e}",
                                 f"check {where}"))
        return None
    flavor, ver = _flavor_version(str(conn.server_version or ""))
    label = f"{'MariaDB' if flavor == 'mariadb' else 'MySQL'} {ver}"
    results.append(_ok(name, "mysql.reachable", f"reachable at {dsn.redacted()} ({label})"))
    results.append(_tls_result(name, dsn, getattr(conn, "_sock", None), where))
    return conn, label


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _tls_result(name: str, dsn: Any, sock: Any, where: str) -> CheckResult:
    """What the connection got: TLS or not, its version and cipher, and what was verified; a
    warning when a password crosses the network unencrypted or to an unverified server."""
    mode = dsn.ssl_mode
    version = sock.version() if hasattr(sock, "version") else None
    ca = dsn.params.get("ssl-ca") or "the system's CAs"
    if version:
        cipher = (sock.cipher() or ("?",))[0]
        verified = {"VERIFY_IDENTITY": f"certificate verified (CA: {ca}; host {dsn.host})",
                    "VERIFY_CA": f"certificate verified (CA: {ca}), host name not checked"}.get(
                        mode, "certificate not verified")
        detail = f"TLS ({version}, {cipher}), {verified} (ssl-mode={mode})"
    else:
        detail = f"plain connection, not encrypted (ssl-mode={mode})"
    exposed = mode not in ("VERIFY_CA", "VERIFY_IDENTITY") and dsn.password and dsn.host not in _LOOPBACK
    if exposed:
        return _warn(name, "mysql.tls", f"{detail}: the password goes to a server that was not verified",
                     f"add ?ssl-mode=VERIFY_IDENTITY&ssl-ca=<the server's CA file> to {where}")
    return _ok(name, "mysql.tls", detail)


def _check_mysql(cfg: Any, dsn: Any, results: list[CheckResult]) -> ServerInfo | None:
    import pymysql

    from deltaforge.source.mysql_errors import dsn_location
    from deltaforge.source.tables import TableFilter

    name = "mysql"
    connected = _connect(dsn, results, dsn_location(getattr(_source_config(cfg), "dsn_env", ())))
    if connected is None:
        return None
    conn, _label = connected
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            row = cur.fetchone()
        current_user = str(row[0]) if row else f"{dsn.user}@%"
        grantee = _quote_grantee(current_user)
        results.append(_ok(name, "mysql.credentials", f"logged in as {grantee}"))

        variables = _variables(conn)
        flavor, _version = _flavor_version(variables.get("version", ""))

        # --- binlog settings -------------------------------------------------
        server_id = int(variables.get("server_id") or 0)
        if variables.get("log_bin", "OFF").upper() not in ("ON", "1"):
            results.append(_fail(name, "mysql.log_bin", "the binary log is off (log_bin=OFF)", _LOG_BIN_FIX))
        elif server_id == 0:
            results.append(_fail(name, "mysql.log_bin", "log_bin is ON but server_id is 0: the server refuses replicas",
                                 _setting_fix("server_id", "<unique non-zero number>")))
        else:
            results.append(_ok(name, "mysql.log_bin", f"log_bin is ON (server_id {server_id})"))
        own_id = getattr(_source_config(cfg), "server_id", None)
        if own_id is not None and server_id and int(own_id) == server_id:
            # A replica with the server's own id is refused (MySQL) or its events are skipped.
            results.append(_fail(name, "mysql.server_id",
                                 f"spec.source.config.server_id {own_id} is the server's own server_id",
                                 "set spec.source.config.server_id to a number no server or replica uses, "
                                 "or remove it to derive one"))

        fmt = variables.get("binlog_format", "").upper()
        if fmt == "ROW":
            results.append(_ok(name, "mysql.binlog_format", "binlog_format is ROW"))
        else:
            results.append(_fail(name, "mysql.binlog_format",
                                 f"binlog_format is {fmt or 'unset'}: changes are not logged as rows",
                                 _setting_fix("binlog_format", "ROW")))

        image = variables.get("binlog_row_image", "").upper()
        if image == "FULL":
            results.append(_ok(name, "mysql.binlog_row_image", "binlog_row_image is FULL"))
        else:
            results.append(_fail(name, "mysql.binlog_row_image",
                                 f"binlog_row_image is {image or 'unset'}: before/after images would miss columns",
                                 _setting_fix("binlog_row_image", "FULL")))

        metadata = variables.get("binlog_row_metadata")
        fallback = ("the engine falls back to the live schema from information_schema, "
                    "so an ALTER TABLE while changes are in flight can mislabel columns")
        if metadata is None:
            need = "MariaDB 10.5" if flavor == "mariadb" else "MySQL 8.0.1"
            results.append(_warn(name, "mysql.binlog_row_metadata",
                                 f"this server has no binlog_row_metadata (needs {need}): {fallback}",
                                 f"upgrade to {need} or later and set binlog_row_metadata=FULL"))
        elif metadata.upper() == "FULL":
            results.append(_ok(name, "mysql.binlog_row_metadata", "binlog_row_metadata is FULL"))
        else:
            results.append(_warn(name, "mysql.binlog_row_metadata",
                                 f"binlog_row_metadata is {metadata.upper()}: {fallback}",
                                 _setting_fix("binlog_row_metadata", "FULL")))

        value_options = variables.get("binlog_row_value_options", "")
        if value_options.upper() == "PARTIAL_JSON":
            results.append(_fail(name, "mysql.binlog_row_value_options",
                                 "binlog_row_value_options is PARTIAL_JSON: JSON updates arrive as diffs",
                                 "SET GLOBAL binlog_row_value_options='' and remove it from my.cnf"))
        results.extend(_compression_checks(conn))

        # --- binlog position and GTIDs ----------------------------------------
        status: tuple[str, int, str | None] | None = None
        status_error: str | None = None
        try:
            status = _binlog_status(conn)
        except pymysql.err.MySQLError as e:
            status_error = str(e.args[1]) if len(e.args) > 1 else str(e)

        info: ServerInfo | None = None
        if status is not None and status[0]:
            info = _info_from(variables, status)
            if flavor == "mariadb":
                results.append(_ok(name, "mysql.gtid",
                                   f"GTIDs on (MariaDB), gtid_binlog_pos {info.gtid_position or '(empty)'}"))
            elif info.gtid_mode:
                results.append(_ok(name, "mysql.gtid", "gtid_mode is ON: resume positions survive a failover"))
            else:
                results.append(_warn(
                    name, "mysql.gtid",
                    f"gtid_mode is {variables.get('gtid_mode', 'OFF') or 'OFF'}: positions are file:pos only "
                    "and do not survive a failover to a replica",
                    "SET GLOBAL enforce_gtid_consistency=ON, then step gtid_mode OFF_PERMISSIVE -> ON_PERMISSIVE -> ON"))

        # --- privileges --------------------------------------------------------
        privs, unreadable_roles = _grants(conn)
        monitor = _monitor_priv(flavor)
        has_global = privs.get("*.*", set())
        missing: list[str] = []
        if not has_global & _REPL:
            missing.append("REPLICATION SLAVE")
        if status_error is not None:
            missing.append(monitor)
        if missing:
            detail = f"{grantee} lacks {' and '.join(missing)}"
            if status_error is not None:
                detail += f" (SHOW MASTER STATUS: {status_error})"
            fix = f"GRANT {', '.join(missing)} ON *.* TO {grantee}"
            if missing == ["REPLICATION SLAVE"] and unreadable_roles:
                results.append(_warn(name, "mysql.privileges",
                                     f"{detail}, unless a role grants it (could not read grants of "
                                     f"{', '.join(unreadable_roles)})", fix))
            else:
                results.append(_fail(name, "mysql.privileges", detail, fix))
        else:
            results.append(_ok(name, "mysql.privileges", f"{grantee} has REPLICATION SLAVE and {monitor}"))

        # --- tables ------------------------------------------------------------
        try:
            table_filter = TableFilter(list(getattr(_source_config(cfg), "tables", None) or []))
        except ConfigError as e:
            results.append(_fail(name, "mysql.tables", e.detail, e.hint))
            return info
        visible = _visible_tables(conn, table_filter.schemas())
        select_results, blind_dbs = _select_check(conn, table_filter, visible, privs, grantee)
        results.extend(select_results)
        global_select = bool(privs.get("*.*", set()) & _SELECT)
        seeing = {db for db in table_filter.schemas() if global_select or privs.get(f"{db}.*", set()) & _SELECT}
        results.extend(_tables_check(table_filter, visible, grantee, blind_dbs, seeing))

        # --- start position ----------------------------------------------------
        if info is not None:
            results.append(_start_check(conn, getattr(_source_config(cfg), "start", None), info))
        return info
    finally:
        conn.close()


# --- binlog compression (its own block: the reader decodes both forms, see source/compressed.py)

def _compression_checks(conn: Any) -> list[CheckResult]:
    """One ok line per binlog compression that is on; nothing when both are off or unknown."""
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN "
                    "('log_bin_compress', 'log_bin_compress_min_len', 'binlog_transaction_compression')")
        found = {str(k).lower(): "" if v is None else str(v).upper() for k, v in cur.fetchall()}
    out: list[CheckResult] = []
    if found.get("log_bin_compress") in ("ON", "1"):
        out.append(_ok("mysql", "mysql.log_bin_compress",
                       f"log_bin_compress is ON (events over {found.get('log_bin_compress_min_len') or '?'} bytes "
                       "are zlib-compressed): supported, compressed query and rows events are decoded"))
    if found.get("binlog_transaction_compression") in ("ON", "1"):
        out.append(_ok("mysql", "mysql.binlog_transaction_compression",
                       "binlog_transaction_compression is ON: supported, zstd transaction payloads are decoded"))
    return out


def _grants(conn: Any) -> tuple[dict[str, set[str]], list[str]]:
    """Merged privileges of the current user and its roles; roles whose grants are unreadable."""
    import pymysql

    with conn.cursor() as cur:
        cur.execute("SHOW GRANTS FOR CURRENT_USER()")
        privs, roles = parse_grants(str(r[0]) for r in cur.fetchall())
    unreadable: list[str] = []
    for role in roles:
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW GRANTS FOR {role}")
                more, _ = parse_grants(str(r[0]) for r in cur.fetchall())
        except pymysql.err.MySQLError:
            unreadable.append(role)
            continue
        for obj, ps in more.items():
            privs.setdefault(obj, set()).update(ps)
    return privs, unreadable


def _visible_tables(conn: Any, schemas: set[str]) -> dict[tuple[str, str], str]:
    """(db, table) -> TABLE_TYPE for the named schemas, as far as the user can see them."""
    if not schemas:
        return {}
    marks = ", ".join(["%s"] * len(schemas))
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA IN ({marks})",
            sorted(schemas),
        )
        return {(str(db), str(t)): str(kind) for db, t, kind in cur.fetchall()}


def _select_check(conn: Any, tf: Any, visible: dict[tuple[str, str], str],
                  privs: dict[str, set[str]], grantee: str) -> tuple[list[CheckResult], set[str]]:
    """The SELECT result, and the databases in which the user can see no captured table."""
    import pymysql

    name = "mysql"
    if privs.get("*.*", set()) & _SELECT:
        return [_ok(name, "mysql.select", f"{grantee} may SELECT the captured tables (global SELECT)")], set()
    missing_dbs: list[str] = []
    missing_tables: list[str] = []
    for db in sorted(tf.schemas()):
        if privs.get(f"{db}.*", set()) & _SELECT:
            continue
        tables = sorted(t for (d, t), kind in visible.items() if d == db and kind != "VIEW" and tf.matches(d, t))
        if not tables:
            missing_dbs.append(db)
            continue
        for t in tables[:_PROBE_LIMIT]:
            if privs.get(f"{db}.{t}", set()) & _SELECT:
                continue
            try:  # proves SELECT whatever grant path (role, PUBLIC) gives it
                with conn.cursor() as cur:
                    cur.execute(f"SELECT 1 FROM `{db.replace('`', '``')}`.`{t.replace('`', '``')}` LIMIT 0")
            except pymysql.err.MySQLError:
                missing_tables.append(f"{db}.{t}")
    if not missing_dbs and not missing_tables:
        return [_ok(name, "mysql.select", f"{grantee} may SELECT the captured tables")], set()
    objects = [f"{d}.*" for d in missing_dbs] + missing_tables
    fix = "; ".join(f"GRANT SELECT ON {o} TO {grantee}" for o in objects[:5])
    return [_fail(name, "mysql.select",
                  f"{grantee} has no SELECT on {', '.join(objects[:5])}"
                  f"{' and more' if len(objects) > 5 else ''} (the schema fallback reads the table definitions)",
                  fix)], set(missing_dbs)


def _tables_check(tf: Any, visible: dict[tuple[str, str], str], grantee: str,
                  blind_dbs: set[str], seeing: set[str]) -> list[CheckResult]:
    """One FAIL per pattern that names nothing; patterns in ``blind_dbs`` (the user
    sees no table there, already reported by the SELECT check) are not judged.
    ``seeing``: databases where the user's SELECT makes every table visible."""
    name = "mysql"
    out: list[CheckResult] = []
    matched: set[tuple[str, str]] = set()
    skipped = 0
    for p in tf.patterns:
        path = f"{_TABLES_PATH}[{p.index}]"
        if p.db in blind_dbs:
            skipped += 1
            continue
        hits = [(d, t) for (d, t), kind in visible.items() if p.matches(d, t)]
        views = [f"{d}.{t}" for d, t in hits if visible[(d, t)] == "VIEW"]
        bases = [(d, t) for d, t in hits if visible[(d, t)] != "VIEW"]
        if p.is_exact and views:
            out.append(_fail(name, "mysql.tables", f"{path} {p.text!r} is a view: views write no binlog rows",
                             f"capture the base tables behind it in {path}"))
        elif not bases:
            what = "no such table" if p.is_exact else "matches no table"
            fix = f"create it or correct {path}"
            if p.db not in seeing:
                fix = (f"create it, correct {path}, or GRANT SELECT on it to {grantee} "
                       "(information_schema hides tables the user has no privilege on)")
            out.append(_fail(name, "mysql.tables", f"{path} {p.text!r}: {what} in database {p.db!r}", fix))
        matched.update(bases)
    if skipped and not out:
        out.append(_fail(name, "mysql.tables",
                         f"{skipped} pattern(s) not verified: {grantee} cannot see their tables",
                         "grant SELECT as the line above says, then run deltaforge check again"))
    if not out:
        names = sorted(f"{d}.{t}" for d, t in matched)
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        out.append(_ok(name, "mysql.tables",
                       f"{len(tf.patterns)} pattern(s) match {len(names)} table(s): {shown}"))
    return out


def _start_check(conn: Any, start: Any, info: ServerInfo) -> CheckResult:
    """Where a pipeline without a checkpoint begins; validates file:pos and GTID starts.

    The text grammar is :mod:`deltaforge.source.grammar`'s (the reader's own); this
    checks the parsed start against the server.
    """
    import pymysql

    from deltaforge.source.grammar import START_PATH, parse_start_spec

    name, check, path = "mysql", "mysql.start", START_PATH
    text = str(start or "latest").strip()
    note = "(used only when no checkpoint exists)"
    try:
        spec = parse_start_spec(text, path)
    except ConfigError as e:
        return _fail(name, check, e.detail, e.hint)
    if spec.kind == "latest":
        gtid = f", gtid {info.gtid_position}" if info.gtid_position else ""
        return _ok(name, check, f"start latest = {info.binlog_file}:{info.binlog_pos}{gtid} {note}")
    if spec.kind == "mariadb_gtid" and info.flavor != "mariadb":
        return _fail(name, check, f"start {text!r} is a MariaDB GTID set but the server is {info.label}",
                     f"set {path} to a MySQL GTID set (uuid:1-42), file:pos, latest or earliest")
    if spec.kind == "mysql_gtid" and info.flavor == "mariadb":
        return _fail(name, check, f"start {text!r} is a MySQL GTID set but the server is {info.label}",
                     f"set {path} to a MariaDB GTID set (domain-server-seq, e.g. 0-1-100), file:pos, "
                     "latest or earliest")
    if spec.kind == "mysql_gtid" and not info.gtid_mode:
        return _fail(name, check, f"start {text!r} is a GTID set but gtid_mode is OFF",
                     f"enable gtid_mode or set {path} to file:pos")
    if spec.kind in ("mariadb_gtid", "mysql_gtid"):
        return _ok(name, check, f"start at GTID {spec.gtid} {note}")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            logs = {str(r[0]): int(r[1]) for r in cur.fetchall()}
    except pymysql.err.MySQLError as e:
        return _warn(name, check, f"cannot list binary logs to verify start {text!r}: {e}",
                     f"GRANT {_monitor_priv(info.flavor)} ON *.* to the DeltaForge user")
    if spec.kind == "earliest":
        first = min(logs) if logs else "?"
        return _ok(name, check, f"start earliest = {first}:4 {note}")
    if spec.file not in logs:
        return _fail(name, check, f"start {text!r}: binlog file {spec.file!r} is not on the server (purged?)",
                     f"set {path} to earliest, latest or a file listed by SHOW BINARY LOGS")
    if spec.pos > logs[spec.file]:
        return _fail(name, check, f"start {text!r}: position {spec.pos} is outside {spec.file} "
                     f"(size {logs[spec.file]})", f"set {path} to a position between 4 and {logs[spec.file]}")
    return _ok(name, check, f"start {text} {note}")


# ---------------------------------------------------------------------------
# Redis


_NOPERM_FIX = ("ACL SETUSER <user> +@read +@write +@stream +@transaction +@scripting +@connection ~* "
               "(DeltaForge runs XADD, SET/GET, WATCH/MULTI/EXEC)")


def check_redis(cfg: Any) -> list[CheckResult]:
    """Run the Redis checks for every sink of ``cfg.spec.sinks``."""
    pipeline = str(getattr(cfg.metadata, "name", "") or "pipeline")
    out: list[CheckResult] = []
    for i, sink in enumerate(getattr(cfg.spec, "sinks", None) or []):
        sc = sink.config
        sink_id = str(getattr(sc, "id", None) or f"sinks[{i}]")
        name = f"redis[{sink_id}]"
        results: list[CheckResult] = []
        secrets: tuple[str | None, ...] = ()
        user: str | None = None
        try:
            from deltaforge.dsn import parse_redis_uri

            uri = parse_redis_uri(str(getattr(sc, "uri", "") or ""), f"spec.sinks[{i}].config.uri")
            secrets, user = (uri.password,), uri.username
            _check_one_redis(name, i, uri, sc, pipeline, results)
        except ConfigError as e:
            results.append(_fail(name, "redis.uri", e.detail, e.hint))
        except DeltaForgeError as e:
            results.append(_fail(name, "redis.error", e.detail, e.hint))
        except Exception as e:  # noqa: BLE001 - a check must report, not crash the command
            results.append(_fail(name, "redis.error", f"unexpected error: {type(e).__name__}: {e}",
                                 "run with --debug and report it"))
        if getattr(sc, "required", True) is False:
            # The pipeline commits without this sink: its problems degrade, they do not stop it.
            for r in results:
                if not r.ok:
                    r.ok, r.warning = True, True
                    r.detail += " (sink has required: false)"
        out.extend(_scrubbed(results, secrets, user))
    return out


def _cluster_topology(name: str, index: int, uri: Any, sc: Any, pipeline: str, where: str,
                      results: list[CheckResult]) -> tuple[str, int] | None:
    """The ``redis.topology`` line of a cluster URI: its masters and replicas, whether every slot is
    served, and which master holds the sink's slot (returned; None with a failed result)."""
    import redis

    from deltaforge.redisclient import _tls_kwargs, cluster_slot_owner, tls_failure
    from deltaforge.sink.slot_split import make_redis_sink

    # (a template spread over slots: its floor key; each stream's own checkpoint is known per event)
    sink = make_redis_sink(sc, pipeline, None, f"spec.sinks[{index}]")
    slot, ckpt = sink.slot, sink.checkpoint_key
    assert slot is not None  # a sink on a cluster always knows its slot
    spread = " (streams spread over slots, one checkpoint each next to its stream; floor" if sink.parts_split else ""
    try:
        owner = cluster_slot_owner(uri, slot, connect_timeout=CONNECT_TIMEOUT_S)
        node = redis.Redis(host=owner[0], port=owner[1], username=uri.username, password=uri.password,
                           socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=QUERY_TIMEOUT_S,
                           **_tls_kwargs(uri))
        try:
            try:
                info = node.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
            except redis.exceptions.NoPermissionError:
                info = None  # the sink does not need CLUSTER INFO, its ACL need not allow it
            tls = _tls_words(uri, _tls_session(node), "the seed and the slot's master") if uri.tls else ""
        finally:
            node.close()
    except redis.AuthenticationError as e:
        results.append(_auth_failure(name, uri, str(e), where))
        return None
    except redis.exceptions.NoPermissionError as e:
        from deltaforge.sink.redis_conn import CLUSTER_ACL_HINT

        results.append(_fail(name, "redis.permissions", f"user {uri.username or 'default'} may not run CLUSTER "
                             f"SLOTS on the cluster {uri.redacted()}, which finds the owner of slot {slot}: "
                             f"NOPERM {e}", CLUSTER_ACL_HINT))
        return None
    except redis.RedisError as e:
        failed = tls_failure(e, where)
        if failed is not None:
            results.append(_fail(name, "redis.tls", f"TLS to the cluster {uri.redacted()} failed: {failed[0]}",
                                 failed[1]))
            return None
        results.append(_fail(name, "redis.topology", f"no node of the cluster {uri.redacted()} answers for slot "
                             f"{slot} of the sink's keys: {e}", f"check the seed addresses in {where} and "
                             "CLUSTER INFO on the nodes"))
        return None
    keys = f"slot {slot}: {spread or 'checkpoint'} {ckpt}{')' if spread else ''}"
    tls = f"; {tls}" if tls else ""
    if info is None:
        results.append(_ok(name, "redis.topology", f"Cluster: the sink's keys ({keys}) on {owner[0]}:{owner[1]} "
                           f"(user {uri.username or 'default'} may not run CLUSTER INFO: the cluster's state "
                           f"is not checked){tls}"))
        return owner
    if isinstance(info, bytes):
        info = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
    fields = {str(k): str(v).strip() for k, v in info.items()}
    state, served = fields.get("cluster_state", "?"), fields.get("cluster_slots_ok", "?")
    detail = (f"Cluster: {fields.get('cluster_size', '?')} masters, {fields.get('cluster_known_nodes', '?')} "
              f"nodes, state {state}, {served} of 16384 slots served; the sink's keys ({keys}) on "
              f"{owner[0]}:{owner[1]}{tls}")
    if state != "ok":
        results.append(_fail(name, "redis.topology", detail, "fix the cluster (CLUSTER INFO, redis-cli --cluster check)"))
        return None
    results.append(_ok(name, "redis.topology", detail))
    return owner


def _sentinel_topology(name: str, uri: Any, where: str, results: list[CheckResult]) -> bool:
    """The ``redis.topology`` line of a Sentinel URI: which master each reachable sentinel names for
    the service, and its replicas. False (with a failed result) when no sentinel names one."""
    from deltaforge.redisclient import sentinel

    s = sentinel(uri, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        return _sentinel_topology_of(s, name, uri, where, results)
    finally:
        for node in s.sentinels:
            node.close()


def _sentinel_topology_of(s: Any, name: str, uri: Any, where: str, results: list[CheckResult]) -> bool:
    import redis

    from deltaforge.redisclient import tls_failure

    named: dict[tuple[str, int], int] = {}
    tls = ""  # how the first sentinel that answered was reached (rediss+sentinel)
    unreachable: list[str] = []
    replicas = 0
    replicas_refused = False
    for node in s.sentinels:
        addr = "{host}:{port}".format(**node.connection_pool.connection_kwargs)
        try:
            reply = node.sentinel_get_master_addr_by_name(uri.service)
            if uri.tls and not tls:
                tls = _tls_words(uri, _tls_session(node), "the sentinels")
            if reply:
                key = (reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0]), int(reply[1]))
                named[key] = named.get(key, 0) + 1
                try:
                    replicas = max(replicas, len(node.sentinel_slaves(uri.service) or []))
                except redis.exceptions.NoPermissionError:
                    replicas_refused = True  # not in SENTINEL_ACL_COMMANDS: the count is a nicety
        except redis.AuthenticationError as e:
            results.append(_fail(name, "redis.topology", f"sentinel {addr} refused the credentials: {e}",
                                 f"set sentinel_username/sentinel_password in {where} to the sentinels' own"))
            return False
        except redis.exceptions.NoPermissionError as e:
            from deltaforge.redisclient import SENTINEL_ACL_COMMANDS

            who = uri.params.get("sentinel_username") or "default"
            results.append(_fail(name, "redis.permissions", f"sentinel {addr} refused SENTINEL GET-MASTER-ADDR-BY-NAME "
                                 f"to user {who}: NOPERM {e}", f"the sentinels' user (sentinel_username in {where}) "
                                 f"needs {' '.join(SENTINEL_ACL_COMMANDS)} on every sentinel"))
            return False
        except redis.RedisError as e:
            failed = tls_failure(e, where)
            if failed is not None:  # not a sentinel that is down: every connection to it fails so
                results.append(_fail(name, "redis.tls", f"TLS to sentinel {addr} failed: {failed[0]}", failed[1]))
                return False
            unreachable.append(f"{addr} ({_root_cause(e) or e})")
    if not named:
        detail = (f"no sentinel of {uri.redacted()} names a master for service {uri.service!r}"
                  + (f"; unreachable: {', '.join(unreachable)}" if unreachable else ""))
        results.append(_fail(name, "redis.topology", detail,
                             f"check the sentinel addresses in {where} and `sentinel monitor {uri.service} ...`"))
        return False
    try:
        s.discover_master(uri.service)  # what the sink, the worker and LeaseCache ask: SENTINEL MASTERS
    except redis.exceptions.NoPermissionError as e:
        from deltaforge.redisclient import SENTINEL_ACL_COMMANDS

        who = uri.params.get("sentinel_username") or "default"
        results.append(_fail(name, "redis.permissions", f"a sentinel of {uri.redacted()} refused SENTINEL MASTERS, "
                             f"how the sink finds the master, to user {who}: NOPERM {e}",
                             f"the sentinels' user (sentinel_username in {where}) needs "
                             f"{' '.join(SENTINEL_ACL_COMMANDS)} on every sentinel"))
        return False
    except redis.RedisError:
        pass  # a sentinel that saw the master down, or none reachable now: the sink waits and retries
    (host, port), votes = max(named.items(), key=lambda kv: kv[1])
    total = len(s.sentinels)
    detail = (f"Sentinel: service {uri.service!r}, master {host}:{port} named by {votes} of {total} sentinels, "
              + ("replicas not counted (SENTINEL SLAVES refused)" if replicas_refused and not replicas
                 else f"{replicas} replica(s)") + (f"; {tls}" if tls else ""))
    if len(named) > 1 or unreachable:
        others = ", ".join(f"{h}:{p}" for (h, p) in named if (h, p) != (host, port))
        detail += (f"; disagreeing: {others}" if others else "") + (
            f"; unreachable: {', '.join(unreachable)}" if unreachable else "")
        results.append(_warn(name, "redis.topology", detail,
                             "a failover may be in progress; if it persists, check the sentinels"))
    else:
        results.append(_ok(name, "redis.topology", detail))
    return True


def _check_one_redis(name: str, index: int, uri: Any, sc: Any, pipeline: str,
                     results: list[CheckResult]) -> None:
    import redis

    from deltaforge.redisclient import redis_py_client, tls_failure

    where = f"REDIS_URI / spec.sinks[{index}].config.uri"
    if uri.topology == "sentinel" and not _sentinel_topology(name, uri, where, results):
        return
    if uri.topology == "cluster":
        # Every key of the sink lives in one slot (config.py refused the rest): check its owner.
        owner = _cluster_topology(name, index, uri, sc, pipeline, where, results)
        if owner is None:
            return
        uri = msgspec.structs.replace(uri, host=owner[0], port=owner[1], topology="single", seeds=(owner,))
    # One attempt: a check reports the first failure instead of retrying with backoff.
    client = redis_py_client(uri, connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=QUERY_TIMEOUT_S, retries=0)
    try:
        try:
            client.ping()
        except redis.exceptions.NoPermissionError:
            pass  # logged in (NOPERM comes after AUTH); the sink does not need PING, its ACL need not allow it
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError) as e:
            results.append(_ok(name, "redis.reachable", f"reachable at {uri.redacted()}"))
            results.append(_auth_failure(name, uri, str(e), where))
            return
        except redis.exceptions.ResponseError as e:
            if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                results.append(_ok(name, "redis.reachable", f"reachable at {uri.redacted()}"))
                results.append(_auth_failure(name, uri, str(e), where))
                return
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            failed = tls_failure(e, where)
            if failed is not None:
                at = f"the master {uri.service!r} the sentinels name" if uri.topology == "sentinel" else uri.redacted()
                results.append(_fail(name, "redis.tls", f"TLS to {at} failed: {failed[0]}", failed[1]))
                return
            detail, fix = _network_fix(uri.host, uri.port, _root_cause(e), str(e), where)
            results.append(_fail(name, "redis.reachable", detail, fix))
            return

        version = _redis_version(client)
        if version and _version_tuple(version) < (5, 0):
            results.append(_fail(name, "redis.reachable",
                                 f"Redis {version} at {uri.redacted()} has no streams (needs 5.0+)",
                                 f"upgrade Redis or point {where} at a 5.0+ server"))
            return
        label = f" (Redis {version})" if version else ""
        results.append(_ok(name, "redis.reachable", f"reachable at {uri.redacted()}{label}"))
        who = uri.username or "default"
        results.append(_ok(name, "redis.auth",
                           f"authenticated as {who}" if uri.password else f"no password needed (user {who})"))
        results.append(_redis_tls_result(name, client, uri, where))

        if not _rehearse_commit(name, index, client, sc, pipeline, who, where, results):
            return

        policy_result = _eviction_check(name, client)
        if policy_result is not None:
            results.append(policy_result)

        stream = str(getattr(sc, "stream", "") or "")
        if not stream:
            return
        if "${" in stream:
            results.append(_ok(name, "redis.stream",
                               f"stream name {stream!r} is a template; key types are checked on write"))
            return
        try:
            kind = client.type(stream)
        except redis.exceptions.NoPermissionError as e:
            results.append(_fail(name, "redis.stream", f"user {who} may not access {stream!r}: {e}", _NOPERM_FIX))
            return
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind == "none":
            results.append(_ok(name, "redis.stream", f"stream {stream!r} does not exist yet (the first XADD creates it)"))
        elif kind == "stream":
            try:
                length = f" ({client.xlen(stream)} entries)"
            except redis.exceptions.NoPermissionError:
                length = ""  # the sink does not need XLEN, its ACL need not allow it
            results.append(_ok(name, "redis.stream", f"stream {stream!r} exists{length}"))
        else:
            results.append(_fail(
                name, "redis.stream", f"key {stream!r} holds a {kind}, not a stream: XADD would fail with WRONGTYPE",
                f"delete the key (DEL {stream}) or set spec.sinks[{index}].config.stream to another name"))
    finally:
        client.close()


def _tls_session(client: Any) -> tuple[str, str, str] | None:
    """``(TLS version, cipher, host)`` of a connection of ``client``'s pool (the one the last command
    used: connected, on a sentinel master's pool the master); None when it is not TLS."""
    conn = client.connection_pool.get_connection()
    try:
        sock: Any = getattr(conn, "_sock", None)
        version = sock.version() if hasattr(sock, "version") else None
        if not version:
            return None
        return str(version), str((sock.cipher() or ("?",))[0]), str(getattr(conn, "host", "") or "")
    finally:
        client.connection_pool.release(conn)


def _tls_words(uri: Any, session: tuple[str, str, str] | None, to: str) -> str:
    """How ``to`` (the sentinels, a cluster's nodes) was reached, for a topology line."""
    if session is None:
        return f"{to}: plain connections, not encrypted"
    version, cipher, _host = session
    if (uri.params.get("ssl_cert_reqs") or "required").lower() == "none":
        return f"{to} over TLS ({version}, {cipher}), certificates not verified (ssl_cert_reqs=none)"
    ca = uri.params.get("ssl_ca_certs") or "the system's CAs"
    return f"{to} over TLS ({version}, {cipher}), certificates and host names verified (CA: {ca})"


def _redis_tls_result(name: str, client: Any, uri: Any, where: str) -> CheckResult:
    """What the Redis connection got (as :func:`_tls_result` for MySQL): the host is the one connected
    to (a Sentinel URI's first address is a sentinel's, not the master's)."""
    session = _tls_session(client)
    version, cipher, host = session or (None, "", "")
    host = host or uri.host
    verify = (uri.params.get("ssl_cert_reqs") or "required").lower() != "none"
    if version:
        ca = uri.params.get("ssl_ca_certs") or "the system's CAs"
        detail = f"TLS ({version}, {cipher}), " + (f"certificate verified (CA: {ca}; host {host})" if verify
                                                   else "certificate not verified (ssl_cert_reqs=none)")
    else:
        detail = "plain connection, not encrypted (redis://)"
    if uri.password and (not version or not verify) and host not in _LOOPBACK:
        return _warn(name, "redis.tls", f"{detail}: the password goes to a server that was not verified",
                     f"use rediss:// with ?ssl_ca_certs=<the server's CA file> in {where}")
    return _ok(name, "redis.tls", detail)


def _rehearse_commit(name: str, index: int, client: Any, sc: Any, pipeline: str, who: str, where: str,
                     results: list[CheckResult]) -> bool:
    """Send the sink's commit, as the sink's user, on the sink's own keys, and let EXEC abort it:
    Redis checks ACLs, read-only replicas and maxmemory when a command is queued in MULTI, so
    every refusal shows here, and a last command queued with the wrong number of arguments makes
    EXEC discard the whole transaction (EXECABORT), so nothing is written. Only the commands the
    sink itself sends are used (no DISCARD or UNWATCH, which its ACL need not allow). False when
    a FAIL was recorded."""
    import hiredis

    from deltaforge.sink.redis_conn import ACL_HINT
    from deltaforge.sink.slot_split import make_redis_sink

    # (a template split over cluster slots rehearses on its floor key: its streams are known per event)
    sink = make_redis_sink(sc, pipeline, None, f"spec.sinks[{index}]")
    ckpt = sink.checkpoint_key
    stream = sink.template.static  # None for a template: its keys are known only per event
    commands: list[tuple[str, ...]] = [("WATCH", ckpt), ("GET", ckpt), ("MULTI",)]
    if stream is not None:
        commands.append(("XADD", stream, "*", "df-preflight", "1"))
    commands += [("SET", ckpt, "preflight"), ("SET", ckpt), ("EXEC",)]  # (the last two: the abort)
    from deltaforge._accel import resp
    from deltaforge.sink.redis_conn import RedisConnection, reply_text

    conn = RedisConnection(sink.uri, client_name=f"deltaforge-check-{pipeline}", slot=sink.slot)  # the sink's own path
    try:
        conn.connect()
        conn.send(resp.encode_commands(commands))
        replies = [RuntimeError(reply_text(r)) if isinstance(r, hiredis.ReplyError) else r
                   for r in conn.read_replies(len(commands))]
    except DeltaForgeError as e:
        results.append(_fail(name, "redis.writable", f"the commit rehearsal failed: {e.detail}", e.hint))
        return False
    finally:
        conn.close()
    for cmd, reply in zip(commands[:-2], replies[:-2], strict=True):
        if not isinstance(reply, Exception):
            continue
        text = str(reply)
        key = f" on {cmd[1]!r}" if len(cmd) > 1 else ""
        if text.startswith("NOPERM"):
            results.append(_fail(name, "redis.permissions", f"user {who} may not run {cmd[0]}{key}: {text}",
                                 ACL_HINT))
        elif text.startswith("READONLY"):
            results.append(_fail(name, "redis.writable", f"{sink.uri.redacted()} is a read-only replica: {text}",
                                 f"point {where} at the primary"))
        elif text.startswith("OOM"):
            results.append(_fail(name, "redis.writable", f"Redis is out of memory: {text}",
                                 "raise maxmemory or free memory on the server"))
        else:
            results.append(_fail(name, "redis.writable", f"{cmd[0]}{key} failed: {text}", f"check {where}"))
        return False
    if not (isinstance(replies[-1], Exception) and str(replies[-1]).startswith("EXECABORT")):
        # never expected: EXEC ran something. Say so rather than claim nothing was written.
        results.append(_fail(name, "redis.writable", f"the commit rehearsal was not aborted by Redis: {replies[-1]!r}",
                             "report this with the Redis version"))
        return False
    keys = f"{stream!r} and {ckpt!r}" if stream is not None else f"{ckpt!r} (the stream is a template)"
    results.append(_ok(name, "redis.writable", f"user {who} may run the sink's commit on {keys} (WATCH, GET, "
                       f"MULTI, {'XADD, ' if stream is not None else ''}SET, EXEC: rehearsed, aborted, nothing "
                       "written)"))
    return True


def _auth_failure(name: str, uri: Any, message: str, where: str) -> CheckResult:
    if uri.password is None:
        detail = "the server requires a password and none is configured"
    else:
        detail = f"authentication as {uri.username or 'default'} rejected ({message.strip().rstrip('.')})"
    return _fail(name, "redis.auth", detail,
                 f"put the right user:password in {where} (redis://user:password@host:port/db)")


def _redis_version(client: Any) -> str | None:
    import redis

    try:
        info = client.info("server")
    except redis.exceptions.RedisError:  # ACLs may forbid INFO: not a failure
        return None
    version = info.get("redis_version") if isinstance(info, dict) else None
    return str(version) if version else None


def _eviction_check(name: str, client: Any) -> CheckResult | None:
    """allkeys-* eviction may drop the stream or the checkpoint key: exactly-once is then lost."""
    import redis

    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.exceptions.RedisError:  # CONFIG is often forbidden (managed Redis): skip
        return None
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy and str(policy).startswith("allkeys-"):
        return _warn(name, "redis.eviction",
                     f"maxmemory-policy is {policy}: Redis may evict the stream or the checkpoint key",
                     "CONFIG SET maxmemory-policy noeviction (or a volatile-* policy) and persist it in redis.conf")
    return None


# ---------------------------------------------------------------------------


def check_processors(cfg: Any) -> list[CheckResult]:
    """Load every processor in V8 as a pipeline start would (:func:`deltaforge.process.js.compile_processor`):
    a syntax error fails with the processor's YAML path, id and the line of the user's code."""
    from deltaforge.process.js import compile_processor

    out: list[CheckResult] = []
    for i, spec in enumerate(getattr(cfg.spec, "processors", None) or []):
        name = f"processor[{getattr(spec, 'id', i)}]"
        try:
            compile_processor(spec, i)
        except DeltaForgeError as e:
            out.append(_fail(name, "processor.compile", e.detail, e.hint))
        except Exception as e:  # noqa: BLE001 - a check must report, not crash the command
            out.append(_fail(name, "processor.compile", f"spec.processors[{i}]: cannot load the JavaScript: "
                             f"{type(e).__name__}: {e}", "run with --debug and report it"))
        else:
            origin = getattr(spec, "origin", "") or f"spec.processors[{i}]"
            out.append(_ok(name, "processor.compile", f"spec.processors[{i}] ({origin}) compiles in V8 and "
                           "defines processBatch"))
    return out


def _check_processors_child(processors: Any, conn: Any) -> None:
    import types

    import setproctitle

    setproctitle.setproctitle("deltaforge: JS check")
    conn.send(check_processors(types.SimpleNamespace(spec=types.SimpleNamespace(processors=processors))))


def check_processors_apart(cfg: Any) -> list[CheckResult]:
    """:func:`check_processors` in a throwaway process: the supervisor of the multi-process
    topology never runs JavaScript, and V8 would keep ~50 MiB in it for the whole run."""
    import multiprocessing

    processors = list(getattr(cfg.spec, "processors", None) or [])
    if not processors:
        return []
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_check_processors_child, args=(processors, send), name="deltaforge-check-js")
    child.start()
    send.close()
    try:
        return list(recv.recv())
    except EOFError:
        child.join(5)
        return [_fail("processors", "processor.compile",
                      f"the process that loads the JavaScript died (exit status {child.exitcode})",
                      "run deltaforge check on the same YAML; if it passes there, report it")]
    finally:
        recv.close()
        child.join(5)


def run_preflight(cfg: Any, echo: Callable[[str], None] = print, *, js_apart: bool = False) -> bool:
    """Run every check, print one line each through ``echo``; True when nothing failed.
    ``js_apart``: load the processors in a throwaway process (:func:`check_processors_apart`)."""
    processor_results = check_processors_apart(cfg) if js_apart else check_processors(cfg)
    mysql_results, _info = check_mysql(cfg)
    ok = True
    for r in [*processor_results, *mysql_results, *check_redis(cfg)]:
        echo(r.line())
        ok = ok and r.ok
    return ok
