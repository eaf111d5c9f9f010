"""Least privilege on a Redis Cluster and a Sentinel set: ``deltaforge run`` and ``deltaforge worker``
as Redis users holding only the documented commands (README, Security), the lists taken from the
code's constants, never copied:

- the sink: ``ACL_COMMANDS``, and on a cluster ``CLUSTER_ACL_COMMANDS`` (deltaforge/sink/redis_conn.py);
- the worker: ``WORKER_ACL``, and on a cluster ``WORKER_CLUSTER_ACL`` (deltaforge/worker.py);
- the sentinels' user of a ``redis+sentinel://`` URI: ``SENTINEL_ACL_COMMANDS`` (deltaforge/redisclient.py).

ACLs are per node: the users are created on every cluster node (replicas too: a failover promotes
one) and on both Sentinel data nodes, the sentinels' user on every sentinel; every test deletes its
users however it ends. The single-node lists are tested in tests/test_security.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from deltaforge.redisclient import SENTINEL_ACL_COMMANDS
from deltaforge.sink.redis_conn import ACL_COMMANDS, CLUSTER_ACL_COMMANDS
from deltaforge.testing import MariaDBServer
from deltaforge.testing_topologies import RedisCluster, RedisNode, RedisSentinelSet
from deltaforge.worker import WORKER_ACL, WORKER_CLUSTER_ACL
from tests.e2e import Engine, wait_for
from tests.topologies import redis_cluster, redis_sentinel
from tests.topology_e2e import cache_keys as _cache_keys
from tests.topology_e2e import cli as _cli
from tests.topology_e2e import insert_rows as _insert
from tests.topology_e2e import invalidate, run_engine_until, topology_config
from tests.topology_e2e import keys_processor as _keys_processor
from tests.topology_e2e import spread_tables as _spread_tables
from tests.topology_e2e import stream_ids as _ids

FIXTURES = (redis_cluster, redis_sentinel)  # used as test arguments (tests/topologies.py)

pytestmark = pytest.mark.integration

FORBIDDEN = ("NOPERM",)  # never in the engine's or a worker's output here
_run_engine_until = functools.partial(run_engine_until, forbidden=FORBIDDEN)
_invalidate = functools.partial(invalidate, consumer="acl-0", forbidden=FORBIDDEN)


def _config(tmp_path: Path, mariadb: MariaDBServer, topology: Any, uri: str, tables: list[str],
            **kw: Any) -> Path:
    return topology_config(tmp_path, mariadb, topology, tables, uri=uri, **kw)


ENGINE_PW, WORKER_PW, SENTINEL_PW = "Eng-acl-7", "Wrk-acl-7", "Snt-acl-7"


# --- helpers -------------------------------------------------------------------------------------


def _set_users(nodes: Iterable[RedisNode], users: dict[str, tuple[str, ...]]) -> None:
    """``ACL SETUSER <name> reset on <rules...>`` on every node: exactly these rules, nothing else."""
    for node in nodes:
        for name, rules in users.items():
            node.call("ACL", "SETUSER", name, "reset", "on", *rules)


def _del_users(nodes: Iterable[RedisNode], names: Iterable[str]) -> None:
    for node in nodes:
        if node.alive:
            node.call("ACL", "DELUSER", *names)


def _with_user(uri: str, user: str, password: str) -> str:
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


# --- a cluster -----------------------------------------------------------------------------------


def test_a_fixed_stream_on_a_cluster_runs_and_is_invalidated_with_the_documented_acls(
        tmp_path: Path, mariadb: MariaDBServer, redis_cluster: RedisCluster, fresh_db: str) -> None:
    name, stream, table, rows = "aclfixed", "cdc:aclfixed", f"{fresh_db}.t", range(1, 31)
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    users = {
        # the stream, its checkpoint (tagged by the stream on a cluster) and the one tagged by the pipeline
        "acl-eng": (f">{ENGINE_PW}", f"~{stream}", f"~{{{stream}}}:deltaforge:*", f"~{{{name}}}:deltaforge:*",
                    *ACL_COMMANDS, *CLUSTER_ACL_COMMANDS),
        "acl-wrk": (f">{WORKER_PW}", f"~{stream}", "~fx:*", "~fxp:*", *WORKER_ACL, *WORKER_CLUSTER_ACL),
    }
    _set_users(redis_cluster.nodes, users)
    client = redis_cluster.client()
    try:
        cfg = _config(tmp_path, mariadb, redis_cluster, _with_user(redis_cluster.uri, "acl-eng", ENGINE_PW),
                      [table], name=name, stream=stream, processors=_keys_processor("fx"))
        keys = _cache_keys("fx", table, rows)
        keep = [f"fx:keep:{i}" for i in rows]
        for key in (*keys, *keep):
            client.set(key, "cached")
        masters = {node.port for node in redis_cluster.masters()}
        assert {redis_cluster.master_of_key(k).port for k in keys} == masters  # the deletes span every master

        engine = Engine(cfg, "--workers", "0").wait_ready(60)
        try:
            _insert(mariadb, [table], rows)
            wait_for(lambda: client.xlen(stream) >= len(rows) or engine.poll() is not None, 60,
                     f"{len(rows)} entries written by acl-eng")
        finally:
            code, out = engine.stop()
        assert code == 0 and "NOPERM" not in out and "Traceback" not in out, out
        assert "the sink's keys (slot" in out and "may run the sink's commit" in out, out  # the preflight passed
        assert _ids(client, stream) == list(rows)  # every row once, in order

        _invalidate(tmp_path, client, _with_user(redis_cluster.uri, "acl-wrk", WORKER_PW), {stream: table}, keys,
                    keep)
    finally:
        _del_users(redis_cluster.nodes, users)
        client.close()


def test_a_template_spread_over_cluster_slots_runs_and_is_invalidated_with_the_documented_acls(
        tmp_path: Path, mariadb: MariaDBServer, redis_cluster: RedisCluster, fresh_db: str) -> None:
    """No hash tag: each stream has its checkpoint in its own slot (sink/slot_split.py), found again by
    SCAN on every master at the next start; and during a live migration of one of their slots, the
    SCAN's GETs are answered with ASK."""
    from deltaforge.config import load_config
    from deltaforge.sink.slot_split import SlotSplitSink, make_redis_sink

    name = "aclspread"
    tables = _spread_tables(redis_cluster, fresh_db, 3)
    for t in tables:
        mariadb.execute(f"CREATE TABLE {t} (id INT PRIMARY KEY)")
    streams = {f"cdc:{t}": t for t in tables}
    users = {
        # the streams (and their dead letters), their checkpoints in their slots, the floor key
        "acl-eng": (f">{ENGINE_PW}", f"~cdc:{fresh_db}.*", f"~{{cdc:{fresh_db}.*}}:deltaforge:*",
                    f"~{{{name}}}:deltaforge:*", *ACL_COMMANDS, *CLUSTER_ACL_COMMANDS),
        "acl-wrk": (f">{WORKER_PW}", f"~cdc:{fresh_db}.*", "~sp:*", "~spp:*", *WORKER_ACL, *WORKER_CLUSTER_ACL),
    }
    _set_users(redis_cluster.nodes, users)
    client = redis_cluster.client()
    try:
        engine_uri = _with_user(redis_cluster.uri, "acl-eng", ENGINE_PW)
        cfg = _config(tmp_path, mariadb, redis_cluster, engine_uri, tables, name=name, stream="'cdc:$${table}'",
                      processors=_keys_processor("sp"))
        first, then = range(1, 21), range(21, 31)
        keys = [k for t in tables for k in _cache_keys("sp", t, [*first, *then])]
        keep = [f"sp:keep:{i}" for i in first]
        for key in (*keys, *keep):
            client.set(key, "cached")

        # a first run: the SCAN at open finds nothing; each stream's checkpoint is created in its slot
        _insert(mariadb, tables, first)
        _run_engine_until(cfg, lambda: all(client.xlen(s) >= len(first) for s in streams), "the first rows")
        # a second run: the SCAN finds the three checkpoints (and GETs them) and each stream resumes
        _insert(mariadb, tables, then)
        out = _run_engine_until(cfg, lambda: all(client.xlen(s) >= 30 for s in streams), "the rows after")
        assert "3 streams over the cluster's slots" in out, out
        for s in streams:
            assert _ids(client, s) == list(range(1, 31)), s  # every row once, in order, per stream
        assert len({redis_cluster.master_of_key(s).port for s in streams}) == 3

        _invalidate(tmp_path, client, _with_user(redis_cluster.uri, "acl-wrk", WORKER_PW), streams, keys, keep)

        # The open's SCAN while one stream's slot is half migrated: its keys already on the target, whose
        # GET the source answers with ASK, so redis-py sends ASKING (in CLUSTER_ACL_COMMANDS) to the target.
        loaded = load_config(cfg)
        sink = make_redis_sink(loaded.spec.sinks[0].config, loaded.metadata.name, loaded.metadata.tenant,
                               "spec.sinks[0]")
        assert isinstance(sink, SlotSplitSink)
        scanned: list[set[str]] = []
        moved = next(iter(streams))
        redis_cluster.reshard_key(moved, between_batches=lambda: scanned.append(set(sink._scan_parts())))
        assert scanned == [set(streams)]
    finally:
        _del_users(redis_cluster.nodes, users)
        client.close()


# --- Sentinel ------------------------------------------------------------------------------------


def test_sentinel_runs_and_is_invalidated_with_the_documented_acls(
        tmp_path: Path, mariadb: MariaDBServer, redis_sentinel: RedisSentinelSet, fresh_db: str) -> None:
    """The data users on the master and the replica; the sentinels' user, the URI's
    ``sentinel_username``, on each sentinel with only ``SENTINEL_ACL_COMMANDS``."""
    name, stream, table, rows = "aclsentinel", "cdc:aclsentinel", f"{fresh_db}.t", range(1, 31)
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    users = {
        "acl-eng": (f">{ENGINE_PW}", f"~{stream}", f"~{{{stream}}}:deltaforge:*", f"~{{{name}}}:deltaforge:*",
                    *ACL_COMMANDS),
        "acl-wrk": (f">{WORKER_PW}", f"~{stream}", "~sn:*", "~snp:*", *WORKER_ACL),
    }
    _set_users(redis_sentinel.data_nodes, users)
    _set_users(redis_sentinel.sentinel_nodes, {"acl-snt": (f">{SENTINEL_PW}", *SENTINEL_ACL_COMMANDS)})
    sentinel_user = f"&sentinel_username=acl-snt&sentinel_password={SENTINEL_PW}"
    client = redis_sentinel.master_client()
    try:
        cfg = _config(tmp_path, mariadb, redis_sentinel,
                      _with_user(redis_sentinel.uri, "acl-eng", ENGINE_PW) + sentinel_user, [table], name=name,
                      stream=stream, processors=_keys_processor("sn"))
        keys = _cache_keys("sn", table, rows)
        keep = [f"sn:keep:{i}" for i in rows]
        for key in (*keys, *keep):
            client.set(key, "cached")
        res = _cli("check", str(cfg))
        assert res.returncode == 0 and "named by 3 of 3 sentinels" in res.stdout, res.stdout + res.stderr

        _insert(mariadb, [table], rows)
        _run_engine_until(cfg, lambda: client.xlen(stream) >= len(rows), f"{len(rows)} entries written by acl-eng")
        assert _ids(client, stream) == list(rows)

        _invalidate(tmp_path, client, _with_user(redis_sentinel.uri, "acl-wrk", WORKER_PW) + sentinel_user,
                    {stream: table}, keys, keep)
    finally:
        _del_users(redis_sentinel.nodes, [*users, "acl-snt"])
        client.close()


# --- one command short -----------------------------------------------------------------------------


@pytest.mark.parametrize(("topology", "missing"), [("cluster", "+cluster|slots"), ("sentinel", "+sentinel|masters")])
def test_one_documented_topology_command_short_stops_the_engine_naming_it_and_the_fix(
        tmp_path: Path, mariadb: MariaDBServer, fresh_db: str, request: pytest.FixtureRequest, topology: str,
        missing: str) -> None:
    """``deltaforge check`` fails the line with the permission and the list; the engine (preflight
    skipped) stops at once with one error line, not retrying what no retry cures."""
    name, stream, table = f"aclshort{topology}", f"cdc:aclshort{topology}", f"{fresh_db}.t"
    mariadb.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    engine_keys = (f"~{stream}", f"~{{{stream}}}:deltaforge:*", f"~{{{name}}}:deltaforge:*")
    if topology == "cluster":
        topo: Any = request.getfixturevalue("redis_cluster")
        extras = [c for c in CLUSTER_ACL_COMMANDS if c != missing]
        assert len(extras) == len(CLUSTER_ACL_COMMANDS) - 1
        data_nodes, sentinels = topo.nodes, []
        uri = _with_user(topo.uri, "acl-short", ENGINE_PW)
        sentinel_acl: list[str] = []
    else:
        topo = request.getfixturevalue("redis_sentinel")
        extras = []
        data_nodes, sentinels = topo.data_nodes, topo.sentinel_nodes
        uri = _with_user(topo.uri, "acl-short", ENGINE_PW) + f"&sentinel_username=acl-short-snt&sentinel_password={SENTINEL_PW}"
        sentinel_acl = [c for c in SENTINEL_ACL_COMMANDS if c != missing]
        assert len(sentinel_acl) == len(SENTINEL_ACL_COMMANDS) - 1
    _set_users(data_nodes, {"acl-short": (f">{ENGINE_PW}", *engine_keys, *ACL_COMMANDS, *extras)})
    _set_users(sentinels, {"acl-short-snt": (f">{SENTINEL_PW}", *sentinel_acl)})
    try:
        cfg = _config(tmp_path, mariadb, topo, uri, [table], name=name, stream=stream)
        res = _cli("check", str(cfg))
        assert res.returncode == 3, res.stdout + res.stderr
        fails = [line for line in res.stdout.splitlines() if line.startswith("FAIL")]
        assert len(fails) == 1 and "NOPERM" in fails[0] and ENGINE_PW not in res.stdout, res.stdout
        if topology == "cluster":
            assert ("FAIL redis[stream]: user acl-short may not run CLUSTER SLOTS on the cluster" in fails[0]
                    and "'cluster|slots'" in fails[0]
                    and f"(fix: on a Redis Cluster the sink's user needs {' '.join(CLUSTER_ACL_COMMANDS)} besides "
                        f"{' '.join(ACL_COMMANDS)}, on every node, replicas included" in fails[0]), fails[0]
        else:
            # the sentinels answer the check's GET-MASTER-ADDR-BY-NAME; the sink's own discovery is refused
            assert ("FAIL redis[stream]: a sentinel of redis+sentinel://acl-short:***@" in fails[0]
                    and "refused SENTINEL MASTERS, how the sink finds the master, to user acl-short-snt" in fails[0]
                    and "'sentinel|masters'" in fails[0]
                    and f"needs {' '.join(SENTINEL_ACL_COMMANDS)} on every sentinel)" in fails[0]), fails[0]

        engine = Engine(cfg, "--workers", "0", "--skip-preflight")
        code, out = engine.wait(60)
        assert code == 1 and "restarting" not in out and "retrying" not in out, out
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "NOPERM" in errors[0] and ENGINE_PW not in out, out
        wanted = CLUSTER_ACL_COMMANDS if topology == "cluster" else SENTINEL_ACL_COMMANDS
        assert f"'{missing[1:]}'" in errors[0] and "(fix: " in errors[0] and " ".join(wanted) in errors[0], errors[0]
    finally:
        _del_users(data_nodes, ["acl-short"])
        _del_users(sentinels, ["acl-short-snt"])
