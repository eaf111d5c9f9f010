"""Verified TLS to a Redis Cluster and a Sentinel set (``rediss+cluster://``, ``rediss+sentinel://``).

Real servers speaking TLS only (deltaforge/testing_topologies.py with ``tls=``): every data node and
sentinel on its TLS port alone, the cluster bus, replication and the sentinels' links encrypted
too; certificates from a private CA made at test time for 127.0.0.1 only (deltaforge/testing.py
``TLSFiles``). Every client verifies the certificate and the host name, never ``ssl_cert_reqs=none``:

- the topology helpers themselves (clients, resharding, failovers) in TLS mode;
- ``deltaforge run`` into the cluster (a fixed stream, and a template without a hash tag spread over
  the masters, restarted once) and into the Sentinel master: every row once, in order; then
  ``deltaforge worker`` over the same URI invalidates the keys the rows name;
- ``deltaforge check`` names the topology and that TLS was verified; with the wrong CA, or an address
  the certificate does not hold, ``check`` fails (exit 3) and the engine and the worker stop, each
  with one line naming the certificate failure and the fix, never a traceback nor a retry.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from deltaforge.testing import MariaDBServer, TLSFiles
from deltaforge.testing_topologies import RedisCluster, RedisSentinelSet
from tests.e2e import Engine, wait_for
from tests.topology_e2e import WorkerProcess, invalidate, run_engine_until, topology_config
from tests.topology_e2e import cache_keys as _cache_keys
from tests.topology_e2e import cli as _cli
from tests.topology_e2e import insert_rows as _insert
from tests.topology_e2e import keys_processor as _keys_processor
from tests.topology_e2e import spread_tables as _spread_tables
from tests.topology_e2e import stream_ids as _ids

pytestmark = pytest.mark.integration

FORBIDDEN = ("retrying",)  # never in the engine's or a worker's output here
_run_engine_until = functools.partial(run_engine_until, forbidden=FORBIDDEN)
_invalidate = functools.partial(invalidate, consumer="tls-0", forbidden=FORBIDDEN)
_config = topology_config


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_cluster(tls_files: TLSFiles) -> Iterator[RedisCluster]:
    """3 masters, 1 replica each, TLS only (client port, bus, replication)."""
    cluster = RedisCluster(tls=tls_files).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def tls_sentinel(tls_files: TLSFiles) -> Iterator[RedisSentinelSet]:
    """A primary, a replica and 3 sentinels, TLS only; the helper test fails it over once."""
    sentinels = RedisSentinelSet(tls=tls_files).start()
    try:
        yield sentinels
    finally:
        sentinels.stop()


# --- helpers -------------------------------------------------------------------------------------


# --- the topologies themselves ---------------------------------------------------------------------


def _refused_without_tls_and_with_the_wrong_ca(port: int, tls: TLSFiles) -> None:
    once = {"socket_timeout": 2, "socket_connect_timeout": 2, "retry": Retry(NoBackoff(), 0)}
    plain = redis.Redis(host="127.0.0.1", port=port, **once)
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # TLS only: the server drops a plain client during its handshake
    plain.close()
    stranger = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(tls.other_ca),
                           ssl_cert_reqs="required", **once)
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        stranger.ping()
    stranger.close()


def test_a_tls_cluster_speaks_tls_only_and_its_helpers_reshard_and_fail_over(
        tls_cluster: RedisCluster, tls_files: TLSFiles) -> None:
    seeds = ",".join(f"127.0.0.1:{n.port}" for n in tls_cluster.nodes[:3])
    assert tls_cluster.uri == f"rediss+cluster://{seeds}/0?ssl_ca_certs={tls_files.ca}"
    assert len(tls_cluster.masters()) == 3 and len(tls_cluster.replicas()) == 3
    for node in tls_cluster.nodes:
        client = node.client(decode_responses=True)
        try:  # no plain port at all; the bus and replication over TLS
            assert client.config_get("port") == {"port": "0"}
            tls_config = client.config_get("tls-*")
            assert (tls_config["tls-cluster"], tls_config["tls-replication"]) == ("yes", "yes")
        finally:
            client.close()
    _refused_without_tls_and_with_the_wrong_ca(tls_cluster.nodes[0].port, tls_files)

    client = tls_cluster.client()
    try:
        keys = [f"tlshelper:{i}" for i in range(30)]
        for key in keys:
            client.set(key, key)
        source = tls_cluster.master_of_key(keys[0])
        target = tls_cluster.reshard_key(keys[0])  # MIGRATE between TLS nodes (tls-cluster)
        assert target is not source and tls_cluster.master_of_key(keys[0]) is target
        promoted = tls_cluster.failover(source.port)  # CLUSTER FAILOVER over the TLS bus
        assert promoted.role == "master" and source.refresh_role() == "replica"
        assert [client.get(k) for k in keys] == [k.encode() for k in keys]
    finally:
        client.close()


def test_a_tls_sentinel_set_speaks_tls_only_and_fails_over(tls_sentinel: RedisSentinelSet,
                                                           tls_files: TLSFiles) -> None:
    sentinels = ",".join(tls_sentinel.sentinels)
    assert tls_sentinel.uri == f"rediss+sentinel://{sentinels}/0?service=mymaster&ssl_ca_certs={tls_files.ca}"
    for node in tls_sentinel.nodes:
        _refused_without_tls_and_with_the_wrong_ca(node.port, tls_files)
    old = tls_sentinel.master_address()
    master = tls_sentinel.sentinel_client().master_for("mymaster", socket_timeout=5)

    def write_after() -> bool:
        try:
            return bool(master.set("tlshelper", "after"))
        except redis.RedisError:  # READONLY: the old connection, before the client asks the sentinels again
            return False

    try:
        master.set("tlshelper", "before")
        new = tls_sentinel.failover()  # the sentinels reach both data nodes over TLS (tls-replication)
        assert new != old and tls_sentinel.master_address() == new
        wait_for(write_after, 30, "a write through master_for after the failover")
        assert master.connection_pool.get_master_address() == new  # asked the sentinels again, over TLS
        assert tls_sentinel.master_client().get("tlshelper") == b"after"
    finally:
        master.close()


# --- the engine and the worker -------------------------------------------------------------------


def test_the_engine_delivers_a_fixed_stream_into_a_tls_cluster_and_the_worker_invalidates(
        tmp_path: Path, mariadb: MariaDBServer, tls_cluster: RedisCluster, fresh_db: str) -> None:
    stream, table, rows = "cdc:tlsfixed", f"{fresh_db}.t", range(1, 31)
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    client = tls_cluster.client()
    try:
        cfg = _config(tmp_path, mariadb, tls_cluster, [table], name="tlsfixed", stream=stream,
                      processors=_keys_processor("tf"))
        keys = _cache_keys("tf", table, rows)
        keep = [f"tf:keep:{i}" for i in rows]
        for key in (*keys, *keep):
            client.set(key, "cached")
        masters = {node.port for node in tls_cluster.masters()}
        assert {tls_cluster.master_of_key(k).port for k in keys} == masters  # the deletes span every master

        _insert(mariadb, [table], rows)
        out = _run_engine_until(cfg, lambda: client.xlen(stream) >= len(rows), f"{len(rows)} entries")
        assert "certificates and host names verified" in out, out  # the preflight's topology line
        assert _ids(client, stream) == list(rows)  # every row once, in order

        _invalidate(tmp_path, client, tls_cluster.uri, {stream: table}, keys, keep)
    finally:
        client.close()


def test_the_engine_spreads_a_template_over_a_tls_clusters_masters_and_the_worker_invalidates(
        tmp_path: Path, mariadb: MariaDBServer, tls_cluster: RedisCluster, fresh_db: str) -> None:
    """No hash tag: one stream (and its checkpoint) per table, in its own slot; the restart finds the
    checkpoints again by SCAN on every master, through redis-py's cluster client over TLS."""
    tables = _spread_tables(tls_cluster, fresh_db, 3)
    for t in tables:
        mariadb.execute(f"CREATE TABLE {t} (id INT PRIMARY KEY)")
    streams = {f"cdc:{t}": t for t in tables}
    client = tls_cluster.client()
    try:
        cfg = _config(tmp_path, mariadb, tls_cluster, tables, name="tlsspread", stream="'cdc:$${table}'",
                      processors=_keys_processor("ts"))
        first, then = range(1, 16), range(16, 31)
        keys = [k for t in tables for k in _cache_keys("ts", t, [*first, *then])]
        keep = [f"ts:keep:{i}" for i in first]
        for key in (*keys, *keep):
            client.set(key, "cached")

        _insert(mariadb, tables, first)
        _run_engine_until(cfg, lambda: all(client.xlen(s) >= len(first) for s in streams), "the first rows")
        _insert(mariadb, tables, then)
        out = _run_engine_until(cfg, lambda: all(client.xlen(s) >= 30 for s in streams), "the rows after")
        assert "3 streams over the cluster's slots" in out, out
        for s in streams:
            assert _ids(client, s) == list(range(1, 31)), s  # every row once, in order, per stream
        assert len({tls_cluster.master_of_key(s).port for s in streams}) == 3

        _invalidate(tmp_path, client, tls_cluster.uri, streams, keys, keep)
    finally:
        client.close()


def test_the_engine_delivers_into_a_tls_sentinel_master_and_the_worker_invalidates(
        tmp_path: Path, mariadb: MariaDBServer, tls_sentinel: RedisSentinelSet, fresh_db: str) -> None:
    stream, table, rows = "cdc:tlssentinel", f"{fresh_db}.t", range(1, 31)
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    client = tls_sentinel.master_client()
    try:
        cfg = _config(tmp_path, mariadb, tls_sentinel, [table], name="tlssentinel", stream=stream,
                      processors=_keys_processor("tn"))
        keys = _cache_keys("tn", table, rows)
        keep = [f"tn:keep:{i}" for i in rows]
        for key in (*keys, *keep):
            client.set(key, "cached")

        _insert(mariadb, [table], rows)
        out = _run_engine_until(cfg, lambda: client.xlen(stream) >= len(rows), f"{len(rows)} entries")
        assert "the sentinels over TLS" in out, out  # the preflight's topology line
        assert _ids(client, stream) == list(rows)

        _invalidate(tmp_path, client, tls_sentinel.uri, {stream: table}, keys, keep)
    finally:
        client.close()


# --- deltaforge check, and the certificate failures ------------------------------------------------


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_check_names_the_topology_and_that_tls_was_verified(
        tmp_path: Path, mariadb: MariaDBServer, fresh_db: str, tls_files: TLSFiles, topology: str,
        request: pytest.FixtureRequest) -> None:
    topo: Any = request.getfixturevalue(f"tls_{topology}")
    table = f"{fresh_db}.t"
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    cfg = _config(tmp_path, mariadb, topo, [table], name=f"tlscheck{topology}", stream=f"cdc:tlscheck{topology}")
    res = _cli("check", str(cfg))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert not any(line.startswith(("FAIL", "warn")) for line in lines), res.stdout
    topo_line = next(line for line in lines if line.startswith(f"ok   redis[stream]: {topology.capitalize()}: "))
    if topology == "cluster":
        host, port = "127.0.0.1", topo.master_of_key(f"cdc:tlscheck{topology}").port
        assert ("Cluster: 3 masters, 6 nodes, state ok, 16384 of 16384 slots served" in topo_line
                and f"on {host}:{port}; the seed and the slot's master over TLS (TLSv1." in topo_line), topo_line
    else:
        host, port = topo.master_address()
        assert (f"master {host}:{port} named by 3 of 3 sentinels, 1 replica(s); the sentinels over TLS (TLSv1."
                in topo_line), topo_line
    assert f"certificates and host names verified (CA: {tls_files.ca})" in topo_line, topo_line
    # the sink's own connection, to the slot's master or the master the sentinels name
    tls_line = next(line for line in lines if line.startswith("ok   redis[stream]: TLS (TLSv1."))
    assert f"certificate verified (CA: {tls_files.ca}; host {host})" in tls_line, tls_line


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
@pytest.mark.parametrize("case", ["wrong-ca", "wrong-host"])
def test_a_certificate_failure_stops_check_the_engine_and_the_worker_with_one_line_and_the_fix(
        tmp_path: Path, mariadb: MariaDBServer, fresh_db: str, tls_files: TLSFiles, topology: str, case: str,
        request: pytest.FixtureRequest) -> None:
    """The wrong CA (``ssl_ca_certs`` naming another CA), or the right CA with an address the certificate
    does not hold (``localhost``: it names 127.0.0.1 only): the host name is checked, not skipped. (The
    worker's cluster client is not asked about ``localhost``: redis-py turns that seed into 127.0.0.1,
    the address it then connects to and verifies.)"""
    topo: Any = request.getfixturevalue(f"tls_{topology}")
    table = f"{fresh_db}.t"
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    uri = (topo.uri.replace(f"ssl_ca_certs={tls_files.ca}", f"ssl_ca_certs={tls_files.other_ca}") if case == "wrong-ca"
           else topo.uri.replace("127.0.0.1:", "localhost:"))
    assert uri != topo.uri
    if case == "wrong-ca":
        words, fix = "TLS certificate is not trusted (certificate verify failed: ", "(fix: add ?ssl_ca_certs="
    else:
        words, fix = ("TLS certificate does not name the address connected to (certificate verify failed: "
                      "Hostname mismatch", "(fix: connect by an address the certificate holds")
    name = f"tlsbad{topology}{case.replace('-', '')}"
    cfg = _config(tmp_path, mariadb, topo, [table], name=name, stream=f"cdc:{name}", uri=uri)

    res = _cli("check", str(cfg))
    assert res.returncode == 3, res.stdout + res.stderr
    fails = [line for line in res.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL redis[stream]: TLS to "), res.stdout
    assert words in fails[0] and fix in fails[0] and "Traceback" not in res.stdout + res.stderr, fails[0]

    # the sink's own path (its preflight skipped): one error line, no retry
    engine = Engine(cfg, "--workers", "0", "--skip-preflight")
    code, out = engine.wait(60)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in out and "retrying" not in out, out
    assert words in errors[0] and fix in errors[0], errors[0]

    if (topology, case) == ("cluster", "wrong-host"):
        return  # redis-py's cluster client resolves a "localhost" seed to 127.0.0.1 itself, and verifies that
    worker = WorkerProcess(tmp_path, uri, f"cdc:{name}", "tls-0")
    try:
        worker.proc.wait(60)
    finally:
        code, out = worker.stop()
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in out and "retrying" not in out, out
    assert words in errors[0] and fix in errors[0] and "--redis-uri (REDIS_URI)" in errors[0], errors[0]
