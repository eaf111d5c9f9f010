"""A minimal Redis connection on a raw socket, for whole pre-encoded pipelines.

Why not redis-py: the writer sends one buffer of RESP per batch (built by
``_core/resp.pyx`` in one call) and reads exactly ``n`` replies back; redis-py's
pipeline re-packs every command and costs about 3x (PERF.md). This class does
only what the sink needs: connect (TLS for ``rediss://``), AUTH, SELECT,
CLIENT SETNAME, ``send(bytes)``, ``read_replies(n)`` and ``read_checked(n, scan)`` (the
commit round trip: its success reply is recognised in C on the raw socket bytes, and only
a reply that deviates from it is parsed by hiredis into objects).

Reply contract (hiredis.Reader): replies that are Redis errors come back as
``hiredis.ReplyError`` *values* in the list (a pipeline can mix successes and
errors and the caller must see all of them); a protocol error (desynchronised
stream) raises :class:`SinkUnavailable` and closes the socket, because nothing
after it can be trusted.

Error policy (:func:`classify`): everything that a retry can cure (connection
refused/reset, timeouts, LOADING, READONLY, OOM, MASTERDOWN, TRYAGAIN, BUSY, ...)
is :class:`SinkUnavailable`; authentication and ACL failures (NOAUTH, WRONGPASS,
NOPERM) are :class:`SinkError` with the fix. Messages show ``uri.redacted()``:
the password never appears in an error or a log line.

URI query parameters understood: ``connect_timeout`` and ``socket_timeout``
(seconds, defaults 5 and 30), ``ssl_cert_reqs=none`` (skip certificate
verification), ``ssl_ca_certs=<file>``.

TLS on a cluster or Sentinel (``rediss+cluster``, ``rediss+sentinel``): the sink's socket to the
slot's master or the sentinels' master is verified here (certificate and host name: the address
the cluster or the sentinels announce); finding that address (CLUSTER SLOTS on a seed, SENTINEL
MASTERS) goes through redis-py with the same TLS settings. A failed TLS handshake anywhere is a
:class:`SinkError` naming the certificate failure and the fix, never retried: a wrong CA does not
cure itself.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Callable
from typing import Any

import hiredis

from deltaforge.dsn import RedisURI
from deltaforge.errors import ConfigError, SinkError, SinkUnavailable

#: first word of a Redis error reply -> a retry can cure it
RETRIABLE_PREFIXES = frozenset(
    ("LOADING", "READONLY", "OOM", "MASTERDOWN", "TRYAGAIN", "BUSY", "CLUSTERDOWN",
     "NOREPLICAS", "MISCONF", "UNBLOCKED", "MOVED", "ASK")
)
_AUTH_PREFIXES = frozenset(("NOAUTH", "WRONGPASS", "NOPERM"))

#: every command a sink sends (README, Security; tests/test_security.py runs a sink user with just these)
ACL_COMMANDS = ("+xadd", "+xrevrange", "+set", "+get", "+del", "+type", "+watch", "+multi", "+exec", "+select",
                "+auth", "+client|setname")
#: and what it sends besides on a Redis Cluster (``redis+cluster://``), on every node, masters and
#: replicas (a failover promotes a replica; tests/test_topology_acls.py runs a sink user with just
#: these): CLUSTER SLOTS, to find the master of the sink's slot at every connect. A template without
#: a hash tag (sink/slot_split.py) also SCANs every master for its per-stream checkpoints when it
#: opens (and GETs them), through redis-py's cluster client: it reads the slot map (CLUSTER SLOTS)
#: and the command table (COMMAND) when it is built, and follows an ASK (a slot being migrated) with
#: ASKING.
CLUSTER_ACL_COMMANDS = ("+cluster|slots", "+scan", "+command", "+asking")
ACL_HINT = (
    f"the Redis user needs the commands {' '.join(ACL_COMMANDS)} on the stream and checkpoint keys "
    f"(ACL SETUSER <user> ... ~<keys>); on a Redis Cluster also {' '.join(CLUSTER_ACL_COMMANDS)}, on every node"
)
#: the hint when a cluster refuses what finding the slot's owner (or a spread template's SCAN) needs
CLUSTER_ACL_HINT = (
    f"on a Redis Cluster the sink's user needs {' '.join(CLUSTER_ACL_COMMANDS)} besides {' '.join(ACL_COMMANDS)}, "
    "on every node, replicas included (ACL SETUSER <user> ... on each)"
)

_RETRY_HINTS = {
    "LOADING": "Redis is loading its dataset; DeltaForge retries until it is ready",
    "READONLY": "the URI points at a replica; point it at the primary (DeltaForge retries meanwhile)",
    "OOM": "Redis reached maxmemory; raise maxmemory, trim the streams (max_len) or let consumers catch up",
    "MOVED": "the stream's hash slot moved to another node (resharding or a failover); DeltaForge reconnects "
             "to its new owner and retries, the checkpoint not advanced",
    "ASK": "the stream's hash slot is being migrated; DeltaForge retries until the migration completes",
    "MASTERDOWN": "the replica lost its primary; fix replication or point the URI at the primary",
    "MISCONF": "Redis cannot persist (see its log: stop-writes-on-bgsave-error); fix the disk or the setting",
    "BUSY": "a Lua script or function is running too long on Redis; SCRIPT KILL it or wait",
}


def reply_text(err: object) -> str:
    text = str(err)
    return text if len(text) <= 300 else text[:300] + "..."


def classify(err: object, what: str) -> SinkError:
    """Turn an error reply into the exception the sink raises.

    ``what`` says where it happened ("XADD to stream 'cdc:app.users'", "AUTH to
    redis://...:***@host:6379/0"): it is the start of the message.
    """
    text = reply_text(err)
    prefix = text.split(" ", 1)[0].upper()
    if prefix in RETRIABLE_PREFIXES:
        return SinkUnavailable(f"{what} failed: {text}", _RETRY_HINTS.get(prefix, "DeltaForge retries with backoff"))
    if prefix == "NOAUTH":
        return SinkError(f"{what} failed: Redis requires a password ({text})",
                         "put the password in the sink URI: redis://[user]:password@host:6379/0")
    if prefix == "WRONGPASS" or text.startswith("ERR invalid password") or text.startswith("ERR invalid username"):
        return SinkError(f"{what} failed: the username or password was rejected ({text})",
                         "check the user and password in the sink URI (and that the ACL user is enabled)")
    if text.startswith("ERR AUTH") or "without any password configured" in text:
        return SinkError(f"{what} failed: the URI has a password but Redis has none configured ({text})",
                         "remove the password from the sink URI, or set requirepass / an ACL user on Redis")
    if prefix == "NOPERM":
        return SinkError(f"{what} failed: permission denied ({text})", ACL_HINT)
    if type(err).__name__ == "NoPermissionError":  # redis-py's, its NOPERM prefix stripped
        return SinkError(f"{what} failed: permission denied (NOPERM {text})", ACL_HINT)
    if prefix == "WRONGTYPE":
        return SinkError(f"{what} failed: {text}",
                         "the key exists with another type; delete it or point the sink at another key")
    return SinkError(f"{what} failed: {text}")


def _float_param(uri: RedisURI, name: str, default: float) -> float:
    raw = uri.params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError("", f"{name}={raw!r} in {uri.redacted()} is not a number of seconds",
                          f"write ?{name}=5 in the sink URI") from None
    return value


class RedisConnection:
    """One socket to one Redis server. Not thread-safe; one per sink."""

    def __init__(self, uri: RedisURI, *, client_name: str | None = None, slot: int | None = None) -> None:
        self.uri = uri
        self.client_name = client_name
        #: on a Redis Cluster: the hash slot every key sent on this connection lives in
        self.slot = slot
        self.connect_timeout = _float_param(uri, "connect_timeout", 5.0)
        self.socket_timeout = _float_param(uri, "socket_timeout", 30.0)
        self._sock: socket.socket | None = None
        self._reader: Any = None
        #: the server connected to: the URI's host, or the master the sentinels named
        self.address: tuple[str, int] = (uri.host, uri.port)

    @property
    def where(self) -> str:
        if self.uri.topology == "sentinel":
            return f"{self.uri.redacted()} (master {self.address[0]}:{self.address[1]})"
        if self.uri.topology == "cluster":
            return f"{self.uri.redacted()} (slot {self.slot} on {self.address[0]}:{self.address[1]})"
        return self.uri.redacted()

    def _slot_owner(self) -> tuple[str, int]:
        """Ask the cluster which master serves our slot now (on every connect: MOVED brings us here)."""
        import redis

        from deltaforge.redisclient import cluster_slot_owner, tls_failure

        if self.slot is None:
            raise SinkError(f"no hash slot given for a connection to the cluster {self.uri.redacted()}",
                            "a DeltaForge bug: report it")
        try:
            return cluster_slot_owner(self.uri, self.slot, connect_timeout=self.connect_timeout)
        except redis.AuthenticationError as e:
            raise SinkError(f"the cluster {self.uri.redacted()} refused the credentials: {e}",
                            "fix the user/password in the sink URI") from None
        except redis.exceptions.NoPermissionError as e:
            raise SinkError(f"the cluster {self.uri.redacted()} refused CLUSTER SLOTS, which finds the owner of "
                            f"slot {self.slot}: permission denied (NOPERM {e})", CLUSTER_ACL_HINT) from None
        except redis.RedisError as e:
            tls = tls_failure(e, "the sink URI")
            if tls is not None:
                raise SinkError(f"TLS to the cluster {self.uri.redacted()} failed: {tls[0]}", tls[1]) from None
            raise SinkUnavailable(f"no node of the cluster {self.uri.redacted()} serves slot {self.slot} now: {e}",
                                  "check the cluster (CLUSTER INFO); a failover in progress resolves itself, "
                                  "DeltaForge retries") from None

    def _sentinel_master(self) -> tuple[str, int]:
        """Ask the sentinels where the master is now (on every connect: a failover moves it)."""
        import redis

        from deltaforge.redisclient import SENTINEL_ACL_COMMANDS, sentinel_master, tls_failure

        uri = self.uri
        try:
            return sentinel_master(uri, connect_timeout=self.connect_timeout)
        except redis.AuthenticationError as e:
            raise SinkError(f"the sentinels of {uri.redacted()} refused the credentials: {e}",
                            "set sentinel_username/sentinel_password in the sink URI to the sentinels' own "
                            "(the user:password part is the master's)") from None
        except redis.exceptions.NoPermissionError as e:
            who = uri.params.get("sentinel_username") or "default"
            raise SinkError(f"a sentinel of {uri.redacted()} refused SENTINEL MASTERS to user {who}: permission "
                            f"denied (NOPERM {e})", f"the sentinels' user needs {' '.join(SENTINEL_ACL_COMMANDS)} "
                            "on every sentinel (ACL SETUSER <user> ... on each)") from None
        except redis.RedisError as e:  # MasterNotFoundError is a ConnectionError
            tls = tls_failure(e, "the sink URI")
            if tls is not None:  # every sentinel refused the handshake (chained to MasterNotFoundError)
                raise SinkError(f"TLS to the sentinels of {uri.redacted()} failed: {tls[0]}", tls[1]) from None
            raise SinkUnavailable(
                f"no sentinel of {uri.redacted()} names a master for service {uri.service!r} now: {e}",
                f"check the sentinels and `sentinel monitor {uri.service} ...` (a failover in progress "
                "resolves itself; DeltaForge retries)") from None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the socket and run the handshake (AUTH, SELECT, CLIENT SETNAME) in one round trip."""
        self.close()
        uri = self.uri
        if uri.topology == "sentinel":
            self.address = self._sentinel_master()
        elif uri.topology == "cluster":
            self.address = self._slot_owner()
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        except (TimeoutError, OSError) as e:
            raise SinkUnavailable(
                f"cannot connect to Redis at {self.where}: {e.strerror or e}",
                "check that Redis is running and reachable at that host:port (DeltaForge retries)",
            ) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if uri.tls:
                sock = self._wrap_tls(sock)
            sock.settimeout(self.socket_timeout)
        except ssl.SSLError as e:
            from deltaforge.redisclient import tls_failure

            sock.close()
            detail, fix = tls_failure(e, "the sink URI") or (str(e), "check the server's TLS settings")
            raise SinkError(f"TLS handshake with {self.where} failed: {detail}", fix) from None
        except OSError as e:
            sock.close()
            raise SinkUnavailable(f"cannot connect to Redis at {self.where}: {e}") from None
        self._sock = sock
        self._reader = hiredis.Reader()
        commands: list[tuple[str, str]] = []
        hello: list[list[bytes | str | int]] = []
        if uri.password is not None:
            auth: list[bytes | str | int] = ["AUTH", uri.username, uri.password] if uri.username else ["AUTH", uri.password]
            hello.append(auth)
            commands.append(("AUTH", f"AUTH to {self.where}"))
        if uri.db:
            hello.append(["SELECT", uri.db])
            commands.append(("SELECT", f"SELECT {uri.db} on {self.where}"))
        if self.client_name:
            hello.append(["CLIENT", "SETNAME", self.client_name])
            commands.append(("SETNAME", f"CLIENT SETNAME on {self.where}"))
        if not hello:
            return
        from deltaforge._accel import resp

        try:
            self.send(resp.encode_commands(hello))
            replies = self.read_replies(len(hello))
        except SinkError:
            self.close()
            raise
        for (cmd, what), reply in zip(commands, replies, strict=True):
            if isinstance(reply, hiredis.ReplyError):
                if cmd == "SETNAME" and reply_text(reply).upper().startswith("NOPERM"):
                    continue  # the name is a convenience for operators; an ACL may forbid it
                self.close()
                raise classify(reply, what)

    def _wrap_tls(self, sock: socket.socket) -> socket.socket:
        """The certificate and its host name verified (the address connected to: on a cluster or Sentinel
        the one announced), unless ``ssl_cert_reqs=none``."""
        params = self.uri.params
        ctx = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
        if params.get("ssl_cert_reqs", "").lower() == "none":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx.wrap_socket(sock, server_hostname=self.address[0])

    def closed_by_peer(self) -> bool:
        """True when the server has (probably) closed this idle connection: a restart, a failover
        that turned the master into a replica. With no request outstanding, RESP sends nothing, so
        a readable socket means EOF (or something unexpected: reconnecting is the safe answer
        either way). A zero-timeout select: never blocks, also for TLS sockets (no peek there)."""
        sock = self._sock
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise SinkUnavailable(f"not connected to Redis at {self.where}")
        try:
            sock.sendall(data)
        except (TimeoutError, OSError) as e:
            self.close()
            raise SinkUnavailable(f"lost the connection to Redis at {self.where} while sending: {e}",
                                  "DeltaForge reconnects and retries") from None

    def read_replies(self, n: int) -> list[Any]:
        """Read exactly ``n`` replies; error replies are ``hiredis.ReplyError`` values in the list."""
        sock = self._sock
        reader = self._reader
        if sock is None:
            raise SinkUnavailable(f"not connected to Redis at {self.where}")
        out: list[Any] = []
        gets = reader.gets
        append = out.append
        try:
            while len(out) < n:
                reply = gets()
                if reply is False:
                    reader.feed(self._recv(sock))
                    continue
                append(reply)
        except hiredis.ProtocolError as e:
            self.close()
            raise SinkUnavailable(f"protocol error from {self.where}: {e}", "DeltaForge reconnects") from None
        return out

    def read_checked(self, n: int, scan: Callable[[bytes], int]) -> list[Any] | None:
        """Read the ``n`` replies of a round trip whose success shape ``scan`` recognises.

        ``scan(data)`` (``_core/streamcommit.pyx``) returns > 0 when ``data`` is exactly the
        success reply, 0 when it is a prefix of it, -1 when it deviates. Success returns None
        without a Python object per reply; anything else is parsed by hiredis from the first
        byte and returned as :meth:`read_replies` does, for the caller to judge reply by reply.
        """
        sock = self._sock
        reader = self._reader
        if sock is None:
            raise SinkUnavailable(f"not connected to Redis at {self.where}")
        if reader.has_data():  # bytes left by an earlier read belong before ours: the exact path
            return self.read_replies(n)
        data = self._recv(sock)
        while True:
            verdict = scan(data)
            if verdict > 0:
                return None
            if verdict < 0:
                reader.feed(data)
                return self.read_replies(n)
            data += self._recv(sock)

    def _recv(self, sock: socket.socket) -> bytes:
        try:
            data = sock.recv(1 << 18)
        except TimeoutError:
            self.close()
            raise SinkUnavailable(
                f"no reply from Redis at {self.where} within {self.socket_timeout:g}s",
                "check the server's load, or raise ?socket_timeout= in the sink URI",
            ) from None
        except OSError as e:
            self.close()
            raise SinkUnavailable(f"lost the connection to Redis at {self.where}: {e}",
                                  "DeltaForge reconnects and retries") from None
        if not data:
            self.close()
            raise SinkUnavailable(f"Redis at {self.where} closed the connection", "DeltaForge reconnects and retries")
        return data

    def call(self, *args: bytes | str | int, what: str | None = None) -> Any:
        """One command, one reply; an error reply raises (classified)."""
        from deltaforge._accel import resp

        self.send(resp.encode_commands([args]))
        reply = self.read_replies(1)[0]
        if isinstance(reply, hiredis.ReplyError):
            raise classify(reply, what or f"{args[0]!s} on {self.where}")
        return reply

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._reader = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
