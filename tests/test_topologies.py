"""The Redis Cluster and Sentinel topologies of deltaforge.testing_topologies, against real servers.

What the pipeline's topology tests rely on: the cluster forms with 3 masters and 3 replicas, keys
spread over the masters, a slot moves with its keys while a client keeps writing (ASK during the
move, MOVED after it, no write lost), a planned failover promotes the replica, a killed master is
replaced; Sentinel names the master, a planned failover and a killed master both move it and a
``redis.sentinel`` client follows; everything is gone after ``stop()``. Waits poll with deadlines,
nothing asserts on wall-clock time.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.sentinel import Sentinel

from deltaforge.errors import DeltaForgeError
from deltaforge.testing import MissingBinaryError
from deltaforge.testing_topologies import (
    RedisCluster,
    RedisNode,
    RedisSentinelSet,
    TopologyTimeout,
    _poll,
)
from tests.topologies import redis_cluster, redis_sentinel

pytestmark = pytest.mark.integration
#: the fixtures this module uses; naming them here makes the import "used" (no F401, and no F811
#: where a test's argument shadows it)
FIXTURES = (redis_cluster, redis_sentinel)


def _eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """``check()``'s first true result; Redis connection/readonly errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (redis.exceptions.ConnectionError, redis.exceptions.ReadOnlyError,
                redis.exceptions.TimeoutError) as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s (last error: {last!r})")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def _assert_gone(nodes: list[RedisNode]) -> None:
    for node in nodes:
        assert node.proc is not None and node.proc.poll() is not None, node
        assert not _port_open(node.port), node
        if node.bus_port:
            assert not _port_open(node.bus_port), node


# ----------------------------------------------------------------------------- cluster


def test_cluster_forms_with_3_masters_and_3_replicas(redis_cluster: RedisCluster) -> None:
    masters, replicas = redis_cluster.masters(), redis_cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    assert {n.role for n in masters} == {"master"} and {n.role for n in replicas} == {"replica"}
    for master in masters:
        (replica,) = redis_cluster.replicas(master.port)
        info = replica.info("replication")
        assert info["master_port"] == master.port and info["master_link_status"] == "up"
    for node in redis_cluster.nodes:
        assert "cluster_state:ok" in node.call("CLUSTER", "INFO")
        assert node.pid is not None
    assert redis_cluster.seeds == [f"127.0.0.1:{n.port}" for n in redis_cluster.nodes]
    assert redis_cluster.uri == f"redis+cluster://{','.join(redis_cluster.seeds[:3])}/0"


def test_keys_land_on_different_masters(redis_cluster: RedisCluster) -> None:
    client = redis_cluster.client()
    keys = [f"spread:{i}" for i in range(60)]
    for key in keys:
        client.set(key, key)
    owners = {key: redis_cluster.master_of_key(key) for key in keys}
    assert {n.port for n in owners.values()} == {n.port for n in redis_cluster.masters()}
    for key, owner in owners.items():
        assert owner.call("CLUSTER", "KEYSLOT", key) == redis_cluster.key_slot(key)
        # the owner answers a plain (non-cluster) client without redirecting
        assert owner.client().get(key) == key.encode()
    client.close()


def test_migrate_slot_under_writes_asks_then_moves(redis_cluster: RedisCluster) -> None:
    counter = "{mig}counter"
    fillers = {f"{{mig}}:{i}": str(i) for i in range(300)}  # 4 MIGRATE batches of 100
    setup = redis_cluster.client()
    setup.mset(fillers)
    slot = redis_cluster.key_slot(counter)
    source = redis_cluster.master_of_key(counter)
    target = next(m for m in redis_cluster.masters() if m is not source)

    done = threading.Event()
    writes = [0]
    errors: list[BaseException] = []

    def write() -> None:
        client = redis_cluster.client()
        try:
            while not done.is_set():
                client.incr(counter)
                writes[0] += 1
        except Exception as e:  # noqa: BLE001 - any error fails the test below, from the main thread
            errors.append(e)
        finally:
            client.close()

    asks: list[redis.exceptions.AskError] = []
    raw_source = source.client()

    def between_batches() -> None:
        # the writer goes on while the slot is half moved ...
        seen = writes[0]
        _eventually(lambda: writes[0] > seen or errors, "a write while the slot is half moved")
        # ... and the source sends what it no longer holds to the target
        for key in fillers:
            try:
                raw_source.get(key)
            except redis.exceptions.AskError as e:
                asks.append(e)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        _eventually(lambda: writes[0] > 0 or errors, "the first write")
        assert redis_cluster.migrate_slot(slot, target.port, between_batches=between_batches) is target
        seen = writes[0]
        _eventually(lambda: writes[0] > seen or errors, "a write after the move")
    finally:
        done.set()
        writer.join(10)
    assert not writer.is_alive()
    assert errors == []
    assert asks and {int(e.port) for e in asks} == {target.port} and {e.slot_id for e in asks} == {slot}
    with pytest.raises(redis.exceptions.MovedError) as moved:
        raw_source.get(counter)
    assert int(moved.value.port) == target.port
    raw_source.close()

    assert redis_cluster.master_of_key(counter) is target
    assert int(target.client().get(counter)) == writes[0] == int(setup.get(counter))
    assert source.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert target.call("CLUSTER", "COUNTKEYSINSLOT", slot) == len(fillers) + 1
    assert setup.get("{mig}:7") == b"7"
    setup.close()


def test_reshard_key_moves_to_another_master(redis_cluster: RedisCluster) -> None:
    client = redis_cluster.client()
    client.set("reshard-me", "v")
    source = redis_cluster.master_of_key("reshard-me")
    target = redis_cluster.reshard_key("reshard-me")
    assert target is not source and target.role == "master"
    assert redis_cluster.master_of_key("reshard-me") is target
    assert client.get("reshard-me") == b"v"
    client.close()


def test_failover_promotes_the_replica(redis_cluster: RedisCluster) -> None:
    client = redis_cluster.client()
    client.set("fo", "before")
    old = redis_cluster.master_of_key("fo")
    (replica,) = redis_cluster.replicas(old.port)
    new = redis_cluster.failover(old.port)
    assert new is replica and new.role == "master"
    assert old.refresh_role() == "replica" and old.info("replication")["master_port"] == new.port
    assert redis_cluster.master_of_key("fo") is new
    # the cluster client follows the MOVED of the old master
    assert client.get("fo") == b"before"
    client.set("fo", "after")
    assert new.client().get("fo") == b"after"
    assert len(redis_cluster.masters()) == 3 and len(redis_cluster.replicas()) == 3
    client.close()


def test_timeouts_name_what_did_not_happen_with_log_tails(redis_cluster: RedisCluster) -> None:
    node = redis_cluster.nodes[0]
    with pytest.raises(TopologyTimeout) as err:
        _poll("the impossible", lambda: False, 0.2, [node])
    assert isinstance(err.value, DeltaForgeError) and isinstance(err.value, TimeoutError)
    assert "the impossible did not happen within" in str(err.value)
    last_line = node.log.read_text().splitlines()[-1]
    assert str(node.log) in str(err.value) and last_line in str(err.value)


def test_cluster_with_password_reshards_survives_a_killed_master_restarts_it_and_stops() -> None:
    cluster = RedisCluster(password="s3cret").start()
    try:
        assert cluster.uri == f"redis+cluster://:s3cret@{','.join(cluster.seeds[:3])}/0"
        with pytest.raises(redis.exceptions.AuthenticationError):
            cluster.nodes[0].client(password=None).ping()
        client = cluster.client()
        client.set("k", "v")
        target = cluster.reshard_key("k")  # MIGRATE ... AUTH
        assert cluster.master_of_key("k") is target and client.get("k") == b"v"
        assert target.client().wait(1, 5000) == 1
        (replica,) = cluster.replicas(target.port)

        cluster.kill(target.port)
        assert not target.alive
        cluster.wait_healthy()
        assert cluster.master_of_key("k") is replica and replica.role == "master"
        assert _eventually(lambda: client.get("k") == b"v", "the client reading from the new master")
        client.close()

        cluster.restart(target.port)  # back empty, as the replica of its successor
        cluster.wait_healthy()
        assert target.refresh_role() == "replica" and target.info("replication")["master_port"] == replica.port
        assert len(cluster.masters()) == 3 and len(cluster.replicas()) == 3
        nodes = list(cluster.nodes)
        dir = cluster.dir
    finally:
        cluster.stop()
    _assert_gone(nodes)
    assert dir is not None and not dir.exists() and cluster.dir is None
    cluster.stop()  # idempotent


# ----------------------------------------------------------------------------- sentinel


def _sentinel_client(sentinels: RedisSentinelSet) -> Sentinel:
    hosts = [(host, int(port)) for host, port in (a.split(":") for a in sentinels.sentinels)]
    return Sentinel(hosts, socket_timeout=2)


def test_sentinel_reports_the_master(redis_sentinel: RedisSentinelSet) -> None:
    primary, replica = redis_sentinel.data_nodes
    assert redis_sentinel.uri == f"redis+sentinel://{','.join(redis_sentinel.sentinels)}/0?service=mymaster"
    assert redis_sentinel.master_address() == ("127.0.0.1", primary.port)
    sentinel = _sentinel_client(redis_sentinel)
    assert sentinel.discover_master("mymaster") == ("127.0.0.1", primary.port)
    assert sentinel.discover_slaves("mymaster") == [("127.0.0.1", replica.port)]
    for node in redis_sentinel.sentinel_nodes:
        assert len(node.call("SENTINEL", "SENTINELS", "mymaster")) == 2
    redis_sentinel.master_client().set("k", "v")
    _eventually(lambda: redis_sentinel.replica_client().get("k") == b"v", "the replica receiving k")


def test_sentinel_failover_switches_master_and_client_follows(redis_sentinel: RedisSentinelSet) -> None:
    old = redis_sentinel.master_node()
    master = _sentinel_client(redis_sentinel).master_for("mymaster", socket_timeout=2)
    master.set("k", "before")
    new = redis_sentinel.failover()
    assert new != ("127.0.0.1", old.port)
    assert redis_sentinel.master_node().refresh_role() == "master"
    assert old.refresh_role() == "replica" and old.info("replication")["master_port"] == new[1]
    # the client's next command may land on the old connection (READONLY) before it asks again
    _eventually(lambda: master.set("k", "after"), "a write through master_for after the failover")
    assert master.connection_pool.get_master_address() == new
    assert redis_sentinel.master_client().get("k") == b"after"
    _eventually(lambda: redis_sentinel.replica_client().get("k") == b"after", "the old master receiving k")


def test_killed_master_is_replaced_automatically(redis_sentinel: RedisSentinelSet) -> None:
    old = redis_sentinel.master_node()
    client = redis_sentinel.master_client()
    client.set("k", "v")
    assert client.wait(1, 5000) == 1
    client.close()
    new = redis_sentinel.kill_master(restart_old=True)
    assert new[1] != old.port and redis_sentinel.master_node().refresh_role() == "master"
    # restarted empty, turned into a replica of the new master by the sentinels, then synced
    assert old.refresh_role() == "replica" and old.info("replication")["master_port"] == new[1]
    assert redis_sentinel.master_client().get("k") == b"v"
    _eventually(lambda: old.client().get("k") == b"v", "the restarted old master resyncing k")
    master = _sentinel_client(redis_sentinel).master_for("mymaster", socket_timeout=2)
    assert master.get("k") == b"v"


def test_sentinel_with_password_kill_without_restart_and_stop() -> None:
    sentinels = RedisSentinelSet(password="pw").start()
    try:
        assert sentinels.uri == f"redis+sentinel://:pw@{','.join(sentinels.sentinels)}/0?service=mymaster"
        with pytest.raises(redis.exceptions.AuthenticationError):
            sentinels.master_node().client(password=None).ping()
        old = sentinels.master_node()
        new = sentinels.kill_master()
        assert new[1] != old.port and not old.alive
        assert sentinels.master_client().ping()
        with pytest.raises(DeltaForgeError, match="has no live replica"):
            sentinels.replica_client()
        nodes = sentinels.nodes
        dir = sentinels.dir
    finally:
        sentinels.stop()
    _assert_gone(nodes)
    assert dir is not None and not dir.exists()
    sentinels.stop()  # idempotent


# ----------------------------------------------------------------------------- missing binaries


@pytest.mark.parametrize("topology", [RedisCluster, RedisSentinelSet])
def test_missing_redis_server_fails_with_the_package_to_install(
        topology: type[RedisCluster] | type[RedisSentinelSet], monkeypatch: pytest.MonkeyPatch) -> None:
    import deltaforge.testing as testing

    monkeypatch.setattr(testing.shutil, "which", lambda name: None)
    monkeypatch.setattr(testing.os, "access", lambda path, mode: False)
    with pytest.raises(MissingBinaryError) as err:
        topology().start()
    assert "apt-get install -y redis-server" in str(err.value)
