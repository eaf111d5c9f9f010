"""Throwaway Redis Cluster and Sentinel topologies on free loopback ports, for tests (DESIGN.md §9, §10).

Started from the installed ``redis-server``/``redis-cli`` (7.0+), like :class:`deltaforge.testing.RedisServer`:
every process has its own temporary directory (config, log, ``nodes-<port>.conf``), its own session
(``start_new_session``: a Ctrl-C meant for pytest does not reach it, and :meth:`stop` decides its end),
no persistence (``--save "" --appendonly no``) and binds 127.0.0.1 only. They never touch the
machine's own Redis on 6379.

:class:`RedisCluster`
    ``masters * (1 + replicas_per_master)`` nodes formed by ``redis-cli --cluster create``. Each node
    gets a free client port AND a free cluster-bus port (``--cluster-port``): the default
    ``port + 10000`` may be taken, or above 65535. ``--cluster-node-timeout 2000`` makes an automatic
    failover after :meth:`RedisCluster.kill` take ~3-5 s. :meth:`~RedisCluster.migrate_slot` is the
    documented live resharding sequence (IMPORTING, MIGRATING, GETKEYSINSLOT + MIGRATE, SETSLOT NODE),
    so clients writing meanwhile get ``ASK`` during the move and ``MOVED`` after it.
    :attr:`~RedisCluster.uri` is ``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/0``: the first
    three nodes as seeds (the client learns the rest from ``CLUSTER SLOTS``).
:class:`RedisSentinelSet`
    A primary, one replica (``--replicaof``) and three sentinels (quorum 2,
    ``down-after-milliseconds 1000``, ``failover-timeout 5000``). The sentinels' internal periods are
    shortened at start with ``SENTINEL DEBUG`` (INFO every 1 s instead of 10 s, hello every 1 s instead of 2,
    ...): with the defaults, discovering peers and turning a returning old master into a replica
    takes 10-20 s. With a password, the data nodes require it (``requirepass``/``masterauth``) and the
    sentinels know it (``auth-pass``); the sentinels themselves need no password.

With ``tls=`` (a :class:`~deltaforge.testing.TLSFiles`), both topologies speak TLS only: every node
listens on its TLS port alone (``--port 0 --tls-port <port>``, the server certificate for 127.0.0.1,
clients not asked for certificates), the cluster bus (``--tls-cluster yes``), replication and the
sentinels' links to the data nodes and to each other (``--tls-replication yes``) are encrypted too.
Every helper (:meth:`RedisNode.client`, ``redis-cli --cluster create --tls --cacert``, the
resharding and failover helpers, the sentinels' client) then connects with TLS and verifies the
certificate against the test CA, host name included; :attr:`~RedisCluster.uri` is
``rediss+cluster://...?ssl_ca_certs=<ca>`` and :attr:`~RedisSentinelSet.uri`
``rediss+sentinel://...&ssl_ca_certs=<ca>``. Waiting for a port is a TCP connect, which a TLS-only
port accepts as well. Without ``tls`` the command lines and URIs are exactly the plain ones.

Every wait has a deadline and fails with :class:`TopologyTimeout` naming what did not happen, the
last error seen and the involved nodes' log tails. A missing binary raises
:class:`~deltaforge.testing.MissingBinaryError` (tests fail, never skip).

Hazards:

* Ports are picked free then released before the server binds them (as ``free_port``): another
  process may win the race; the start then fails loudly, it never talks to a wrong server.
* No persistence: a node killed and restarted comes back empty. A restarted old *sentinel* master is
  empty too; the sentinels turn it into a replica, which then resyncs from the new master.
* :meth:`RedisCluster.failover` and the sentinel failovers wait for every live node to agree; a
  node that was :meth:`~RedisCluster.kill`-ed is ignored, not waited for.
* A process that outlives the Python process (SIGKILL of pytest) is not cleaned: only ``stop()``,
  the context manager and an ``atexit`` hook stop them.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from deltaforge.errors import DeltaForgeError
from deltaforge.testing import TLSFiles, _wait_port, require_binary

HOST = "127.0.0.1"
#: ``redis.cluster.key_slot``'s modulus: slots are 0..16383
CLUSTER_SLOTS = 16384
#: keys per ``MIGRATE ... KEYS`` when moving a slot (redis-cli's default pipeline is 10; bigger is faster)
MIGRATE_BATCH = 100

T = TypeVar("T")


class TopologyTimeout(DeltaForgeError, TimeoutError):
    """A topology did not reach the awaited state before its deadline (the message says which)."""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: all sockets are held open until all are picked."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    # what a node that is starting, dying, failing over or loading answers; polling goes on
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            redis.exceptions.ResponseError, OSError)


class RedisNode:
    """One ``redis-server`` process (data node or sentinel) in its own directory.

    ``role`` is the last value :meth:`refresh_role` read (``"master"``, ``"replica"``, ``"sentinel"``, or
    ``"down"`` when it does not answer); ``id`` is the cluster node id (cluster nodes only).
    """

    def __init__(self, kind: str, port: int, dir: Path, args: list[str], *, password: str | None = None,
                 bus_port: int = 0, tls: TLSFiles | None = None) -> None:
        self.kind = kind
        self.port = port
        self.bus_port = bus_port
        self.dir = dir
        self.args = args
        self.password = password
        #: the node listens with TLS only: clients connect with TLS, verifying against ``tls.ca``
        self.tls = tls
        self.log = dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.role = "down"
        self.id = ""

    def __repr__(self) -> str:
        return f"<RedisNode {self.kind} {self.address} {self.role} pid={self.pid}>"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        """Start the process (returns at once; :meth:`wait_port` waits for the port)."""
        if self.alive:
            raise DeltaForgeError(f"{self.kind} on port {self.port} is already running")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.dir, start_new_session=True)

    def wait_port(self, timeout: float) -> None:
        assert self.proc is not None
        _wait_port(self.port, self.proc, f"redis-server ({self.kind})", self.log, timeout)

    def client(self, **kw: Any) -> Any:
        """A ``redis.Redis`` to this node only (no redirections followed); TLS, verified, on a TLS node."""
        import redis

        kw.setdefault("socket_timeout", 5)
        kw.setdefault("socket_connect_timeout", 2)
        if self.kind != "sentinel":
            kw.setdefault("password", self.password)
        for name, value in _tls_client_kwargs(self.tls).items():
            kw.setdefault(name, value)
        return redis.Redis(host=HOST, port=self.port, **kw)

    def call(self, *args: Any, timeout: float = 5.0) -> Any:
        """One command on a fresh connection, replies decoded as str."""
        client = self.client(decode_responses=True, socket_timeout=timeout)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def refresh_role(self) -> str:
        """Ask the node (``ROLE``) and refresh :attr:`role`."""
        try:
            reply = self.call("ROLE", timeout=2) if self.alive else None
        except _redis_errors():
            reply = None
        name = str(reply[0]) if reply else "down"
        self.role = {"slave": "replica"}.get(name, name)
        return self.role

    def info(self, section: str) -> dict[str, Any]:
        client = self.client(decode_responses=True)
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def log_tail(self, lines: int = 15) -> str:
        if not self.log.exists():
            return f"{self.kind} {self.address}: no log"
        tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"{self.kind} {self.address} ({self.log}):\n  " + "\n  ".join(tail)

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def reap(self, timeout: float = 5.0) -> None:
        """Wait for the process to end after :meth:`signal`; SIGKILL when it takes longer than ``timeout``."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.role = "down"

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        self.signal(signal.SIGKILL)
        self.reap()


def _poll(what: str, check: Callable[[], T | None], timeout: float, nodes: list[RedisNode],
          interval: float = 0.05) -> T:
    """Call ``check`` until it returns something other than None/False; :class:`TopologyTimeout` after ``timeout``.

    Redis errors raised by ``check`` count as "not yet" (a node that is failing over or loading);
    the last one is reported with the nodes' log tails.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result is not None and result is not False:
                return result
        except _redis_errors() as e:
            last = e
        if time.monotonic() > deadline:
            logs = "\n".join(n.log_tail() for n in nodes)
            seen = f" (last error: {type(last).__name__}: {last})" if last else ""
            raise TopologyTimeout(f"{what} did not happen within {timeout:g}s{seen}", f"see the logs:\n{logs}")
        time.sleep(interval)


def _server_binaries() -> tuple[str, str]:
    return (require_binary(("redis-server",), "redis-server"), require_binary(("redis-cli",), "redis-server"))


def _tls_client_kwargs(tls: TLSFiles | None) -> dict[str, Any]:
    """redis-py's arguments for a verified TLS connection to a node of a TLS topology (none without TLS)."""
    if tls is None:
        return {}
    return {"ssl": True, "ssl_ca_certs": str(tls.ca), "ssl_cert_reqs": "required", "ssl_check_hostname": True}


def _tls_server_args(tls: TLSFiles) -> list[str]:
    """A TLS node's TLS options (its port options apart): the server certificate for 127.0.0.1, the CA
    it verifies its peers with (the cluster bus, replication), clients not asked for a certificate,
    and replication (the sentinels' links too) over TLS."""
    return ["--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key),
            "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no", "--tls-replication", "yes"]


def _port_args(port: int, tls: TLSFiles | None) -> list[str]:
    """``--port <port>``; with TLS, ``--port 0 --tls-port <port>`` and the TLS options: TLS only."""
    if tls is None:
        return ["--port", str(port)]
    return ["--port", "0", "--tls-port", str(port), *_tls_server_args(tls)]


def _data_node_args(server: str, port: int, dir: Path, password: str | None,
                    tls: TLSFiles | None = None) -> list[str]:
    args = [server, *_port_args(port, tls), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(dir), "--logfile", str(dir / "redis.log"), "--daemonize", "no",
            # a stop() must not wait 10 s for a replica that was killed (SIGTERM waits for lagging replicas)
            "--shutdown-timeout", "1",
            # a replica's first full sync would wait 5 s for other replicas to share the transfer
            "--repl-diskless-sync-delay", "0"]
    if password:
        args += ["--requirepass", password, "--masterauth", password]
    return args


def _stop_all(nodes: list[RedisNode]) -> None:
    # SIGTERM to all first, then reap each: the shutdowns run in parallel
    for node in nodes:
        node.signal(signal.SIGTERM)
    for node in nodes:
        node.reap()


# ----------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES`` as some node sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "" for a master
    link: str
    slots: tuple[tuple[int, int], ...] = field(default=())

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def _parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    views = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split("@", 1)[0]
        slots = []
        for token in parts[8:]:
            if token.startswith("["):  # [slot->-id] / [slot-<-id]: a migration in progress, not ownership
                continue
            lo, _, hi = token.partition("-")
            slots.append((int(lo), int(hi or lo)))
        views.append(ClusterNodeView(id=parts[0], port=int(addr.rsplit(":", 1)[1]),
                                     flags=frozenset(parts[2].split(",")),
                                     master_id="" if parts[3] == "-" else parts[3], link=parts[7],
                                     slots=tuple(slots)))
    return views


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each.

    ``with RedisCluster() as cluster: ...`` or ``cluster = RedisCluster().start()`` ... ``cluster.stop()``.
    """

    def __init__(self, masters: int = 3, replicas_per_master: int = 1, *, password: str | None = None,
                 tls: TLSFiles | None = None) -> None:
        if masters < 3:
            raise DeltaForgeError(f"a Redis Cluster needs at least 3 masters, not {masters}")
        self.masters_count = masters
        self.replicas_per_master = replicas_per_master
        self.password = password
        #: TLS only: clients, the cluster bus and replication (module docstring)
        self.tls = tls
        self.nodes: list[RedisNode] = []
        self.dir: Path | None = None

    # -- lifecycle

    def start(self, timeout: float = 30.0) -> RedisCluster:
        server, cli = _server_binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="deltaforge-cluster-"))
        atexit.register(self.stop)
        try:
            n = self.masters_count * (1 + self.replicas_per_master)
            ports = _free_ports(2 * n)
            for port, bus in zip(ports[:n], ports[n:], strict=True):
                node_dir = self.dir / f"node-{port}"
                node_dir.mkdir()
                args = [*_data_node_args(server, port, node_dir, self.password, self.tls),
                        "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / f"nodes-{port}.conf"),
                        "--cluster-node-timeout", "2000", "--cluster-port", str(bus),
                        "--cluster-announce-ip", HOST]
                if self.tls is not None:
                    args += ["--tls-cluster", "yes"]  # the bus too
                self.nodes.append(RedisNode("cluster", port, node_dir, args, password=self.password, bus_port=bus,
                                            tls=self.tls))
            for node in self.nodes:  # all launched before any is waited for: they boot in parallel
                node.launch()
            for node in self.nodes:
                node.wait_port(timeout)
                node.id = str(node.call("CLUSTER", "MYID"))
            self._create(cli, timeout)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, cli: str, timeout: float) -> None:
        assert self.dir is not None
        args = [cli, "--cluster", "create", *self.seeds, "--cluster-replicas", str(self.replicas_per_master),
                "--cluster-yes"]
        if self.password:
            args += ["-a", self.password, "--no-auth-warning"]
        if self.tls is not None:
            args += ["--tls", "--cacert", str(self.tls.ca)]
        log = self.dir / "cluster-create.log"
        with log.open("wb") as out:
            try:
                rc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        if rc != 0:
            raise DeltaForgeError(f"redis-cli --cluster create failed ({rc}): "
                                  f"{log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        """Stop every node and remove the directories; idempotent."""
        _stop_all(self.nodes)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses and clients

    @property
    def seeds(self) -> list[str]:
        return [node.address for node in self.nodes]

    @property
    def uri(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss+cluster://{auth}{','.join(self.seeds[:3])}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis+cluster://{auth}{','.join(self.seeds[:3])}/0"

    def client(self, **kw: Any) -> Any:
        """A ``redis.cluster.RedisCluster`` seeded with every node (follows MOVED/ASK and failovers);
        TLS, verified, on a TLS cluster."""
        from redis import cluster

        kw.setdefault("password", self.password)
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("socket_connect_timeout", 2)
        for name, value in _tls_client_kwargs(self.tls).items():
            kw.setdefault(name, value)
        seed: Any = cluster.ClusterNode  # untyped in redis-py
        return cluster.RedisCluster(startup_nodes=[seed(HOST, node.port) for node in self.nodes], **kw)

    def node(self, port: int) -> RedisNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise DeltaForgeError(f"no node of this cluster listens on port {port} (ports: {self.seeds})")

    def _by_id(self, node_id: str) -> RedisNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise DeltaForgeError(f"no node of this cluster has the id {node_id}")

    def _live(self) -> list[RedisNode]:
        return [node for node in self.nodes if node.alive]

    def view(self, node: RedisNode | None = None) -> list[ClusterNodeView]:
        """``CLUSTER NODES`` as ``node`` (default: the first live node) sees it."""
        node = node or self._live()[0]
        return _parse_cluster_nodes(str(node.call("CLUSTER", "NODES")))

    # -- roles

    def masters(self) -> list[RedisNode]:
        """The live masters (CLUSTER NODES), by port; their ``.role`` refreshed."""
        found = [self._by_id(v.id) for v in self.view() if v.is_master and not v.failed]
        # the node's own word: another node's view may still list a just-demoted master
        found = [node for node in found if node.alive and node.refresh_role() == "master"]
        return sorted(found, key=lambda n: n.port)

    def replicas(self, master_port: int | None = None) -> list[RedisNode]:
        """The live replicas (of the master on ``master_port`` if given), by port; ``.role`` refreshed."""
        master_id = self.node(master_port).id if master_port is not None else None
        found = [self._by_id(v.id) for v in self.view()
                 if "slave" in v.flags and not v.failed and master_id in (None, v.master_id)]
        found = [node for node in found if node.alive and node.refresh_role() == "replica"]
        return sorted(found, key=lambda n: n.port)

    def slot_owner(self, slot: int) -> RedisNode:
        for v in self.view():
            if v.is_master and not v.failed and any(lo <= slot <= hi for lo, hi in v.slots):
                return self._by_id(v.id)
        raise DeltaForgeError(f"no live master owns slot {slot}")

    @staticmethod
    def key_slot(key: str | bytes) -> int:
        from redis.crc import key_slot

        return int(key_slot(key.encode() if isinstance(key, str) else key))

    def master_of_key(self, key: str | bytes) -> RedisNode:
        """The master owning ``key``'s slot now."""
        return self.slot_owner(self.key_slot(key))

    # -- health

    def _healthy(self) -> bool:
        """Every live node: cluster_state ok and the same slot map, owned by live masters; every live
        replica's link to its master up."""
        live = self._live()
        # what each live node says it is; every view must agree (gossip lags behind a role change)
        roles = {node.id: node.refresh_role() for node in live}
        maps = set()
        for node in live:
            if "cluster_state:ok" not in str(node.call("CLUSTER", "INFO")):
                return False
            views = self.view(node)
            owners = tuple(sorted((v.id, v.slots) for v in views if v.is_master and v.slots))
            if any(v.failed for v in views if v.is_master and v.slots):
                return False
            if any(v.failed for v in views if v.id in roles):
                return False  # a live node still marked failing: clients could be told a wrong topology
            if any(v.is_master != (roles[v.id] == "master") for v in views if v.id in roles):
                return False
            maps.add(owners)
        if len(maps) != 1:
            return False
        live_ids = {node.id for node in live}
        if not all(node_id in live_ids for node_id, _ in next(iter(maps))):
            return False
        for node in live:
            if roles[node.id] == "replica" and node.info("replication").get("master_link_status") != "up":
                return False
        return True

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every live node says ``cluster_state:ok``, all agree on who owns which slot (only
        live masters), and every live replica's link is up."""
        _poll("the cluster becoming healthy (cluster_state:ok everywhere, one slot map, replica links up)",
              self._healthy, timeout, self._live())

    # -- failover and resharding

    def failover(self, master_port: int | None = None, timeout: float = 30.0) -> RedisNode:
        """``CLUSTER FAILOVER`` on a replica of the master on ``master_port`` (default: the first master);
        returns the promoted node once it is master, the old master (if alive) its replica with link up,
        and the cluster healthy."""
        old = self.node(master_port) if master_port is not None else self.masters()[0]
        candidates = self.replicas(old.port)
        if not candidates:
            raise DeltaForgeError(f"the master on port {old.port} has no live replica to fail over to")
        new = candidates[0]

        def promoted() -> bool:
            return new.refresh_role() == "master"

        new.call("CLUSTER", "FAILOVER")
        try:
            _poll(f"the replica on port {new.port} becoming master", promoted, min(timeout, 10.0), [new, old])
        except TopologyTimeout:
            # a manual failover times out after 5 s if the master did not pause in time; ask once more
            new.call("CLUSTER", "FAILOVER")
            _poll(f"the replica on port {new.port} becoming master", promoted, timeout, [new, old])
        if old.alive:
            def demoted() -> bool:
                return (old.refresh_role() == "replica"
                        and old.info("replication").get("master_link_status") == "up"
                        and int(old.info("replication").get("master_port", 0)) == new.port)

            _poll(f"the old master on port {old.port} replicating from port {new.port}", demoted, timeout,
                  [new, old])
        self.wait_healthy(timeout)
        return new

    def migrate_slot(self, slot: int, to_port: int, *, batch: int = MIGRATE_BATCH,
                     between_batches: Callable[[], None] | None = None, timeout: float = 30.0) -> RedisNode:
        """Move ``slot`` and its keys to the master on ``to_port`` (live resharding); returns the target.

        The documented sequence: ``SETSLOT IMPORTING`` on the target, ``MIGRATING`` on the source,
        ``GETKEYSINSLOT`` + ``MIGRATE ... KEYS`` until the slot is empty on the source, then
        ``SETSLOT NODE`` on the target, the source and every other master. Meanwhile, a key already
        moved is answered with ``ASK`` by the source; afterwards every node answers ``MOVED``.
        ``between_batches`` (a test hook) runs after each ``MIGRATE``, while the slot is half moved.
        Returns once every live node agrees on the new owner.
        """
        if not 0 <= slot < CLUSTER_SLOTS:
            raise DeltaForgeError(f"slot {slot} is not in 0..{CLUSTER_SLOTS - 1}")
        source = self.slot_owner(slot)
        target = self.node(to_port)
        if target.refresh_role() != "master":
            raise DeltaForgeError(f"the node on port {to_port} is a {target.role}, not a master")
        if source is target:
            return target
        target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
        source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
        auth = ["AUTH", self.password] if self.password else []
        deadline = time.monotonic() + timeout
        while True:
            keys = source.call("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            if time.monotonic() > deadline:
                raise TopologyTimeout(f"slot {slot} still has keys on port {source.port} after {timeout:.0f}s",
                                      "are clients creating keys in it faster than it is migrated?")
            # no REPLACE: a key on both sides would be a bug in the sequence, let BUSYKEY say so
            source.call("MIGRATE", HOST, target.port, "", 0, 5000, *auth, "KEYS", *keys, timeout=10)
            if between_batches is not None:
                between_batches()
        # target first: once it owns the slot, the source's ASKs and then MOVEDs point at an owner
        target.call("CLUSTER", "SETSLOT", slot, "NODE", target.id)
        source.call("CLUSTER", "SETSLOT", slot, "NODE", target.id)
        for master in self.masters():
            if master not in (source, target):
                master.call("CLUSTER", "SETSLOT", slot, "NODE", target.id)

        def agreed() -> bool:
            for node in self._live():
                views = self.view(node)
                if not any(v.id == target.id and any(lo <= slot <= hi for lo, hi in v.slots) for v in views):
                    return False
                if any(f"[{slot}-" in line for line in str(node.call("CLUSTER", "NODES")).splitlines()):
                    return False  # still importing/migrating on this node
            return True

        _poll(f"every node agreeing that slot {slot} is on port {target.port}", agreed, timeout,
              [source, target])
        return target

    def reshard_key(self, key: str | bytes, to_port: int | None = None, **kw: Any) -> RedisNode:
        """:meth:`migrate_slot` of ``key``'s slot to ``to_port`` (default: the first other master)."""
        source = self.master_of_key(key)
        if to_port is None:
            others = [m for m in self.masters() if m is not source]
            to_port = others[0].port
        return self.migrate_slot(self.key_slot(key), to_port, **kw)

    # -- chaos

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (its replica takes over after ~2 s node timeout; see wait_healthy)."""
        self.node(port).kill()

    def restart(self, port: int, timeout: float = 30.0) -> RedisNode:
        """Start a killed node again on its port with its ``nodes-<port>.conf``: it rejoins empty and, if
        its slots went to its replica meanwhile, as that node's replica (it resyncs). Follow with
        :meth:`wait_healthy`."""
        node = self.node(port)
        node.launch()
        node.wait_port(timeout)
        return node


# ----------------------------------------------------------------------------- sentinel


#: SENTINEL DEBUG settings (ms): the defaults (INFO every 10 s, hello every 2 s, 30 s TILT, ...) make
#: discovery and reconfiguration take 10-20 s, too slow for tests. Not shorter publish-period: a
#: sentinel waits 4 of them before demoting a replica it sees reporting "master", and that wait is
#: what keeps it from undoing another sentinel's promotion before the new config reached it.
SENTINEL_DEBUG = {"info-period": 1000, "publish-period": 1000, "ping-period": 500, "ask-period": 500,
                  "tilt-trigger": 5000, "tilt-period": 3000, "slave-reconf-timeout": 3000,
                  "min-link-reconnect-period": 2000, "election-timeout": 2000}


class RedisSentinelSet:
    """A primary, a replica and three sentinels monitoring them as ``service``."""

    def __init__(self, service: str = "mymaster", *, password: str | None = None,
                 tls: TLSFiles | None = None) -> None:
        self.service = service
        self.password = password
        #: TLS only: the data nodes, the sentinels, replication and the sentinels' links (module docstring)
        self.tls = tls
        self.data_nodes: list[RedisNode] = []
        self.sentinel_nodes: list[RedisNode] = []
        self.dir: Path | None = None

    # -- lifecycle

    def start(self, timeout: float = 30.0) -> RedisSentinelSet:
        server, _ = _server_binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="deltaforge-sentinel-"))
        atexit.register(self.stop)
        try:
            primary_port, replica_port, *sentinel_ports = _free_ports(5)
            for port, extra in ((primary_port, []), (replica_port, ["--replicaof", HOST, str(primary_port)])):
                node_dir = self.dir / f"redis-{port}"
                node_dir.mkdir()
                args = [*_data_node_args(server, port, node_dir, self.password, self.tls), *extra]
                self.data_nodes.append(RedisNode("redis", port, node_dir, args, password=self.password,
                                                 tls=self.tls))
            for node in self.data_nodes:
                node.launch()
            for node in self.data_nodes:
                node.wait_port(timeout)
            # the replica must be attached before the sentinels' first INFO of the primary, which is
            # how they discover it
            self._wait_replica_up(self.data_nodes[1], primary_port, timeout)
            for port in sentinel_ports:
                self.sentinel_nodes.append(self._sentinel(server, port, primary_port))
            for node in self.sentinel_nodes:
                node.launch()
            for node in self.sentinel_nodes:
                node.wait_port(timeout)
                node.call("SENTINEL", "DEBUG", *[x for kv in SENTINEL_DEBUG.items() for x in kv])
            self._wait_known(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinel(self, server: str, port: int, primary_port: int) -> RedisNode:
        assert self.dir is not None
        node_dir = self.dir / f"sentinel-{port}"
        node_dir.mkdir()
        # the config file's form of _port_args: "--tls-port 7000" is the line "tls-port 7000"
        args = _port_args(port, self.tls)
        ports = [f"{args[i][2:]} {args[i + 1]}" for i in range(0, len(args), 2)]
        lines = [*ports, f"bind {HOST}", f"dir {node_dir}", f"logfile {node_dir / 'redis.log'}",
                 "daemonize no", "sentinel resolve-hostnames no", f"sentinel announce-ip {HOST}",
                 f"sentinel monitor {self.service} {HOST} {primary_port} 2",
                 f"sentinel down-after-milliseconds {self.service} 1000",
                 f"sentinel failover-timeout {self.service} 5000"]
        if self.password:
            lines.append(f"sentinel auth-pass {self.service} {self.password}")
        conf = node_dir / "sentinel.conf"  # the sentinel rewrites it with what it learns
        conf.write_text("\n".join(lines) + "\n")
        return RedisNode("sentinel", port, node_dir, [server, str(conf), "--sentinel"], tls=self.tls)

    def stop(self) -> None:
        """Stop the sentinels (first: they would react to the data nodes going), then the data nodes,
        and remove the directories; idempotent."""
        _stop_all(self.sentinel_nodes)
        _stop_all(self.data_nodes)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> RedisSentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses and clients

    @property
    def nodes(self) -> list[RedisNode]:
        return [*self.data_nodes, *self.sentinel_nodes]

    @property
    def sentinels(self) -> list[str]:
        return [node.address for node in self.sentinel_nodes]

    @property
    def uri(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return (f"rediss+sentinel://{auth}{','.join(self.sentinels)}/0?service={self.service}"
                    f"&ssl_ca_certs={self.tls.ca}")
        return f"redis+sentinel://{auth}{','.join(self.sentinels)}/0?service={self.service}"

    def sentinel_client(self, **kw: Any) -> Any:
        """A ``redis.sentinel.Sentinel`` over the three sentinels (``.master_for(service)`` follows failovers);
        TLS, verified, to the sentinels and the master in a TLS set."""
        from redis import sentinel

        kw.setdefault("password", self.password)
        kw.setdefault("socket_timeout", 5)
        if self.tls is not None:
            tls = _tls_client_kwargs(self.tls)
            kw.setdefault("sentinel_kwargs", {"socket_timeout": kw["socket_timeout"], **tls})
            for name, value in tls.items():
                kw.setdefault(name, value)  # the master's and replicas' connections
        make: Any = sentinel.Sentinel  # untyped in redis-py
        return make([(HOST, node.port) for node in self.sentinel_nodes], **kw)

    def _ask_master(self, sentinel: RedisNode) -> tuple[str, int] | None:
        reply = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service, timeout=2)
        return (str(reply[0]), int(reply[1])) if reply else None

    def master_address(self) -> tuple[str, int]:
        """``(host, port)`` of the master, from the first sentinel that answers."""
        last: BaseException | None = None
        for sentinel in self.sentinel_nodes:
            if not sentinel.alive:
                continue
            try:
                addr = self._ask_master(sentinel)
            except _redis_errors() as e:
                last = e
                continue
            if addr is not None:
                return addr
        raise DeltaForgeError(f"no sentinel knows the master of {self.service!r} (last error: {last})")

    def master_node(self) -> RedisNode:
        port = self.master_address()[1]
        for node in self.data_nodes:
            if node.port == port:
                return node
        raise DeltaForgeError(f"the sentinels name port {port} as master, which is not a node of this set")

    def replica_node(self) -> RedisNode:
        """A live data node that is not the master."""
        master = self.master_node()
        for node in self.data_nodes:
            if node is not master and node.alive:
                return node
        raise DeltaForgeError(f"the master of {self.service!r} on port {master.port} has no live replica")

    def master_client(self, **kw: Any) -> Any:
        """A ``redis.Redis`` to the current master (does not follow a later failover; use
        ``sentinel_client().master_for(service)`` for that)."""
        return self.master_node().client(**kw)

    def replica_client(self, **kw: Any) -> Any:
        return self.replica_node().client(**kw)

    # -- waits

    @staticmethod
    def _wait_replica_up(replica: RedisNode, master_port: int, timeout: float) -> None:
        def up() -> bool:
            info = replica.info("replication")
            return (info.get("role") == "slave" and int(info.get("master_port", 0)) == master_port
                    and info.get("master_link_status") == "up")

        _poll(f"the replica on port {replica.port} replicating from port {master_port} with its link up",
              up, timeout, [replica])

    def _wait_known(self, timeout: float, master_port: int | None = None) -> None:
        """Every live sentinel: names ``master_port`` (default: the current one) as master, knows the
        live replicas (not down) and the other live sentinels."""
        live_sentinels = [s for s in self.sentinel_nodes if s.alive]

        def known() -> bool:
            port = master_port or self.master_address()[1]
            replica_ports = {n.port for n in self.data_nodes if n.alive and n.port != port}
            for sentinel in live_sentinels:
                if self._ask_master(sentinel) != (HOST, port):
                    return False
                master = _pairs(sentinel.call("SENTINEL", "MASTER", self.service))
                if _is_down(master):
                    return False
                replicas = [_pairs(r) for r in sentinel.call("SENTINEL", "REPLICAS", self.service)]
                # seen AS a replica of this master: a sentinel that last saw a node report "master" may
                # demote it again when a later failover promotes it (SENTINEL_DEBUG's comment)
                seen = {int(r["port"]) for r in replicas
                        if not _is_down(r) and r.get("role-reported") == "slave"
                        and r.get("master-link-status") == "ok" and int(r.get("master-port", 0)) == port}
                if not replica_ports <= seen:
                    return False
                peers = [_pairs(s) for s in sentinel.call("SENTINEL", "SENTINELS", self.service)]
                if len([p for p in peers if not _is_down(p)]) < len(live_sentinels) - 1:
                    return False
            return True

        _poll("every sentinel knowing the master, its replicas and the other sentinels", known, timeout,
              self.nodes)

    def _wait_switched(self, old_port: int, timeout: float) -> tuple[str, int]:
        """After a failover away from ``old_port``: every live sentinel names the same new master, which
        says it is master; returns its address."""
        def switched() -> tuple[str, int] | None:
            addrs = {self._ask_master(s) for s in self.sentinel_nodes if s.alive}
            if len(addrs) != 1:
                return None
            addr = addrs.pop()
            if addr is None or addr[1] == old_port:
                return None
            return addr if self.master_node().refresh_role() == "master" else None

        return _poll(f"the sentinels switching {self.service!r} away from port {old_port}", switched, timeout,
                     self.nodes)

    # -- failovers

    def failover(self, timeout: float = 30.0) -> tuple[str, int]:
        """``SENTINEL FAILOVER`` (a planned switch): returns the new master's address once every
        sentinel names it, it says it is master, and the old master replicates from it with link up."""
        import redis

        old = self.master_node()
        sentinel = next(s for s in self.sentinel_nodes if s.alive)
        deadline = time.monotonic() + timeout

        def asked() -> bool:
            try:
                sentinel.call("SENTINEL", "FAILOVER", self.service)
            except redis.exceptions.ResponseError as e:
                # NOGOODSLAVE: the sentinel's view of the replica is not fresh yet; INPROG: one is running
                if "INPROG" in str(e):
                    return True
                raise
            return True

        while True:
            left = max(deadline - time.monotonic(), 1.0)
            _poll(f"a sentinel accepting SENTINEL FAILOVER {self.service}", asked, left, self.nodes,
                  interval=0.5)
            try:
                # an aborted failover (promotion not confirmed within failover-timeout) is not retried
                # by the sentinels for a requested one: ask again
                addr = self._wait_switched(old.port, min(left, 10.0))
                break
            except TopologyTimeout:
                if time.monotonic() + 1.0 > deadline:
                    raise
        self._wait_replica_up(old, addr[1], timeout)
        self._wait_known(timeout, addr[1])
        return addr

    def kill_master(self, *, restart_old: bool = False, timeout: float = 30.0) -> tuple[str, int]:
        """SIGKILL the master; returns the new master's address once the sentinels failed over on their
        own. ``restart_old``: start the old master again (empty, as a master) and wait until the
        sentinels turned it into a replica of the new one with its link up."""
        old = self.master_node()
        old.kill()
        addr = self._wait_switched(old.port, timeout)
        if restart_old:
            # its original command line: no --replicaof; converting it is the sentinels' job
            old.launch()
            old.wait_port(timeout)
            self._wait_replica_up(old, addr[1], timeout)
            self._wait_known(timeout, addr[1])
        return addr


def _pairs(flat: Any) -> dict[str, str]:
    """A SENTINEL MASTER/REPLICAS/SENTINELS entry (flat key/value list, or a dict under RESP3) as a dict."""
    if isinstance(flat, dict):
        return {str(k): str(v) for k, v in flat.items()}
    items = list(flat)
    return {str(k): str(v) for k, v in zip(items[::2], items[1::2], strict=True)}


def _is_down(entry: dict[str, str]) -> bool:
    flags = set(entry.get("flags", "").split(","))
    return bool(flags & {"s_down", "o_down", "disconnected"})

