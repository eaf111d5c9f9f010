"""Connection strings for MySQL/MariaDB (``mysql://``) and Redis (``redis://``, ``rediss://``;
``redis+cluster://`` and ``redis+sentinel://`` with a list of seed addresses, ``rediss+...`` for TLS).

Passwords never leave this module in clear text except into the driver:
``redacted`` forms (``mysql://app:***@db:3306/app``) are what logs and errors show.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from deltaforge.errors import ConfigError

#: the MySQL client's TLS modes (``?ssl-mode=``), weakest first
SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")
#: every parameter a mysql:// DSN may carry (anything else is an error, never ignored)
MYSQL_PARAMS = ("ssl-mode", "ssl-ca", "ssl-cert", "ssl-key", "ssl-cipher", "password_file")
#: every parameter a redis:// or rediss:// URI may carry (the sinks' and ``deltaforge worker``'s)
REDIS_PARAMS = ("db", "connect_timeout", "socket_timeout", "ssl_ca_certs", "ssl_cert_reqs", "password_file")
#: and a redis+sentinel:// URI: the monitored master's name, the sentinels' own credentials
SENTINEL_PARAMS = ("service", "sentinel_username", "sentinel_password")
#: scheme -> (topology, TLS)
REDIS_SCHEMES = {"redis": ("single", False), "rediss": ("single", True),
                 "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
                 "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True)}


class MySQLDSN(msgspec.Struct, frozen=True):
    host: str
    port: int
    user: str
    password: str
    database: str
    params: dict[str, str] = {}

    def redacted(self) -> str:
        auth = f"{self.user}:***@" if self.password else (f"{self.user}@" if self.user else "")
        return f"mysql://{auth}{self.host}:{self.port}/{self.database}"

    @property
    def ssl_mode(self) -> str:
        """The TLS mode: ``ssl-mode``, else VERIFY_CA when ``ssl-ca`` is given (as the MySQL
        client does), else PREFERRED."""
        mode = self.params.get("ssl-mode")
        if mode:
            return mode.upper()
        return "VERIFY_CA" if self.params.get("ssl-ca") else "PREFERRED"

    def tls_kwargs(self) -> dict[str, Any]:
        """pymysql's TLS arguments for this DSN's ``ssl-*`` parameters: DISABLED never uses TLS;
        PREFERRED uses it when the server offers it, verifying nothing (pymysql's default);
        REQUIRED insists on it; VERIFY_CA also checks the certificate against ``ssl-ca`` (or the
        system's CAs); VERIFY_IDENTITY also checks that it names the DSN's host."""
        mode = self.ssl_mode
        if mode == "DISABLED":
            return {"ssl_disabled": True}
        p = self.params
        if mode == "PREFERRED" and not (p.get("ssl-cert") or p.get("ssl-cipher")):
            return {}
        return {"ssl": _tls_context(mode, p.get("ssl-ca"), p.get("ssl-cert"), p.get("ssl-key"), p.get("ssl-cipher"))}

    def connect_kwargs(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "user": self.user, "passwd": self.password,
                **self.tls_kwargs()}


class RedisURI(msgspec.Struct, frozen=True):
    """A parsed Redis URI. ``host``/``port`` is the first (for ``single``: the only) address;
    ``seeds`` every address given: cluster nodes to discover the slot map from, or sentinels."""

    host: str
    port: int
    username: str | None
    password: str | None
    db: int
    tls: bool
    params: dict[str, str] = {}
    topology: str = "single"  # "single" | "cluster" | "sentinel"
    seeds: tuple[tuple[str, int], ...] = ()
    service: str | None = None  # sentinel: the monitored master's name

    def redis_py_kwargs(self) -> dict[str, Any]:
        """This URI as redis-py ``Redis(...)`` arguments (address, credentials, TLS); the callers add
        their timeouts. The one translation, so the worker and ``check`` connect as the sinks do."""
        kw: dict[str, Any] = {"host": self.host, "port": self.port, "db": self.db, "username": self.username,
                              "password": self.password}
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=self.params.get("ssl_ca_certs"),
                      ssl_cert_reqs=(self.params.get("ssl_cert_reqs") or "required").lower())
        return kw

    def redacted(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        if self.topology != "single":
            scheme += f"+{self.topology}"
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}:***@" if self.password else f"{self.username}@"
        hosts = ",".join(f"{h}:{p}" for h, p in self.seeds) if self.seeds else f"{self.host}:{self.port}"
        service = f"?service={self.service}" if self.service else ""
        return f"{scheme}://{auth}{hosts}/{self.db}{service}"


def _port(text: str | None, default: int, path: str, raw: str) -> int:
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(path, f"port {text!r} in {redact(raw)!r} is not a number",
                          "write host:port, e.g. localhost:3306") from None


def parse_mysql_dsn(dsn: str, path: str = "spec.source.config.dsn") -> MySQLDSN:
    """``mysql://user:password@host:port/db?param=value``; ``mariadb://`` is accepted too."""
    raw = dsn.strip()
    if not raw:
        raise ConfigError(path, "the DSN is empty", "set it to mysql://user:password@host:3306/db")
    parts = urlsplit(raw)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ConfigError(path, f"expected a mysql:// DSN, found {redact(raw)!r}",
                          "write mysql://user:password@host:3306/db")
    try:
        port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2] if ":" in parts.netloc.rpartition("@")[2] else None
        host = parts.hostname or ""
    except ValueError as e:
        raise ConfigError(path, f"cannot parse {redact(raw)!r}: {e}", "write mysql://user:password@host:3306/db") from None
    if not host:
        raise ConfigError(path, f"no host in {redact(raw)!r}", "write mysql://user:password@host:3306/db")
    port = _port(port_text, 3306, path, raw)
    params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    _check_params(params, MYSQL_PARAMS, path, raw)
    mode = params.get("ssl-mode")
    if mode is not None and mode.upper() not in SSL_MODES:
        near = difflib.get_close_matches(mode.upper(), SSL_MODES, n=1)
        raise ConfigError(path, f"ssl-mode={mode!r} in {redact(raw)!r} is not a TLS mode",
                          f"write ssl-mode={near[0] if near else 'VERIFY_IDENTITY'} (one of {', '.join(SSL_MODES)})")
    if params.get("ssl-key") and not params.get("ssl-cert"):
        raise ConfigError(path, f"ssl-key without ssl-cert in {redact(raw)!r}",
                          "give the client certificate too: ?ssl-cert=client.pem&ssl-key=client-key.pem")
    try:
        MySQLDSN(host=host, port=port, user="", password="", database="", params=params).tls_kwargs()
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(path, f"cannot load the TLS files of {redact(raw)!r}: {e}",
                          "check the ssl-ca, ssl-cert and ssl-key paths (PEM files this process can read)") from None
    password = _password(unquote(parts.password or ""), params.pop("password_file", None), "MYSQL_PASSWORD_FILE",
                         path, raw)
    return MySQLDSN(
        host=host,
        port=port,
        user=unquote(parts.username or "root"),
        password=password,
        database=unquote(parts.path.lstrip("/")),
        params=params,
    )


def parse_redis_uri(uri: str, path: str = "spec.sinks[0].config.uri") -> RedisURI:
    """``redis://[user[:password]@]host[:port][/db]``; ``rediss://`` for TLS.

    ``redis+cluster://[user[:password]@]host:port[,host:port...]`` names seed nodes of a Redis
    Cluster (database 0 only, as on any cluster); ``redis+sentinel://[user[:password]@]host:port
    [,host:port...][/db]?service=<master name>`` names sentinels and the master they monitor (the
    credentials are the master's; ``sentinel_username``/``sentinel_password`` the sentinels' own,
    if they require any). ``rediss+cluster``/``rediss+sentinel``: TLS to every node.
    """
    raw = uri.strip()
    scheme, sep, rest = raw.partition("://")
    known = REDIS_SCHEMES.get(scheme.lower()) if sep else None
    if known is None:
        raise ConfigError(path, f"expected a redis:// or rediss:// URI (or redis+sentinel://, redis+cluster://), "
                          f"found {redact(raw)!r}", "write redis://[user:password@]host:6379/0")
    topology, tls = known
    if topology == "single":
        parts = urlsplit(raw)
        try:
            host = parts.hostname or ""
            port_text = str(parts.port) if parts.port is not None else None
        except ValueError as e:
            raise ConfigError(path, f"cannot parse {redact(raw)!r}: {e}", "write redis://host:6379/0") from None
        if not host:
            raise ConfigError(path, f"no host in {redact(raw)!r}", "write redis://host:6379/0")
        seeds: tuple[tuple[str, int], ...] = ((host, _port(port_text, 6379, path, raw)),)
        user_text, password_text = parts.username, parts.password
        db_text, query = parts.path.lstrip("/") or "0", parts.query
    else:
        seeds, user_text, password_text, db_text, query = _parse_seeds(scheme, rest, path, raw)
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    _check_params(params, REDIS_PARAMS + (SENTINEL_PARAMS if topology == "sentinel" else ()), path, raw)
    reqs = params.get("ssl_cert_reqs")
    if reqs is not None and reqs.lower() not in ("none", "optional", "required"):
        raise ConfigError(path, f"ssl_cert_reqs={reqs!r} in {redact(raw)!r} is not none, optional or required",
                          "write ssl_cert_reqs=required (verify the server, the default) or none")
    db_text = params.pop("db", db_text)
    try:
        db = int(db_text)
    except ValueError:
        raise ConfigError(path, f"database {db_text!r} in {redact(raw)!r} is not a number",
                          "end the URI with /0 (or another database number)") from None
    if topology == "cluster" and db != 0:
        raise ConfigError(path, f"database {db} in {redact(raw)!r}: a Redis Cluster has database 0 only",
                          "end the URI with /0, or drop the database")
    service = params.pop("service", None)
    if topology == "sentinel" and not service:
        raise ConfigError(path, f"no service in {redact(raw)!r}: which master should the sentinels name?",
                          "add ?service=<the name in `sentinel monitor <name> ...`>, e.g. ?service=mymaster")
    password = _password(unquote(password_text) if password_text is not None else "",
                         params.pop("password_file", None), "REDIS_PASSWORD_FILE", path, raw)
    return RedisURI(
        host=seeds[0][0],
        port=seeds[0][1],
        username=unquote(user_text) if user_text else None,
        password=password or None,
        db=db,
        tls=tls,
        params=params,
        topology=topology,
        seeds=seeds,
        service=service,
    )


def _parse_seeds(scheme: str, rest: str, path: str,
                 raw: str) -> tuple[tuple[tuple[str, int], ...], str | None, str | None, str, str]:
    """``[user[:password]@]host:port[,host:port...][/db][?query]`` of a cluster or sentinel URI
    (urlsplit reads one host only). Returns (seeds, user, password, db text, query)."""
    example = f"{scheme}://host1:{'26379' if 'sentinel' in scheme else '7000'},host2:..."
    head, _, query = rest.partition("?")
    netloc, _, db_path = head.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    user: str | None = None
    password: str | None = None
    if at:
        user_part, colon, pw = userinfo.partition(":")
        user, password = user_part or None, (pw if colon else None)
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [::1]:7000
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        if not host:
            raise ConfigError(path, f"address {item!r} in {redact(raw)!r} has no host", f"write {example}")
        default = 26379 if "sentinel" in scheme else 6379
        seeds.append((host, _port(port_text or None, default, path, raw)))
    if not seeds:
        raise ConfigError(path, f"no host in {redact(raw)!r}", f"write {example}")
    return tuple(seeds), user, password, db_path.strip("/") or "0", query


def _password(inline: str, file: str | None, env: str, path: str, raw: str) -> str:
    """The password: in the URL, or read from ``password_file`` (the query) or from the file
    ``$<env>`` names when the URL has none (container secrets); a trailing newline is dropped."""
    if file is not None and inline:
        raise ConfigError(path, f"{redact(raw)!r} has both a password and password_file",
                          "keep one: the password in the URL or password_file")
    if file is None and not inline:
        file = os.environ.get(env) or None
        where = f"${env}"
    else:
        where = "password_file"
    if file is None:
        return inline
    try:
        with open(file, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(path, f"cannot read the password file {file!r} ({where}): {e.strerror or e}",
                          f"point {where} at a file this process can read") from None


def _check_params(params: dict[str, str], known: tuple[str, ...], path: str, raw: str) -> None:
    """An unknown parameter is an error naming the nearest known one (a typo must not silently
    turn verification off)."""
    for name in params:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {near[0]}?" if near else f"the known ones are {', '.join(known)}"
            raise ConfigError(path, f"unknown parameter {name!r} in {redact(raw)!r}", hint)


@functools.cache
def _tls_context(mode: str, ca: str | None, cert: str | None, key: str | None, cipher: str | None) -> ssl.SSLContext:
    """One context per set of TLS settings (loading a CA bundle costs tens of milliseconds)."""
    verify = mode in ("VERIFY_CA", "VERIFY_IDENTITY")
    ctx = ssl.create_default_context(cafile=ca) if verify else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = mode == "VERIFY_IDENTITY"
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    if cipher:
        ctx.set_ciphers(cipher)
    return ctx


#: secrets a URI may carry in its query (the sentinels' own password), masked wherever URIs are shown
QUERY_SECRET = re.compile(r"([?&]sentinel_password=)([^&\s'\"]+)", re.IGNORECASE)


def redact(url: str) -> str:
    """Replace the password of any ``scheme://user:password@host`` (and a ``sentinel_password``
    in the query) with ``***``."""
    url = QUERY_SECRET.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    auth, at, host = rest.rpartition("@")
    if not at or ":" not in auth:
        return url
    user = auth.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
