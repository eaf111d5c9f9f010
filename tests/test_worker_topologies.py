"""``deltaforge worker`` and ``LeaseCache`` on a real Redis Cluster and Sentinel set (docs/worker.md,
"Redis Cluster and Sentinel"; docs/cache-protocol.md, "Redis Cluster").

Stream entries are written by hand in the engine's wire format (tests/test_worker.py helpers). The
cluster (3 masters, 1 replica each) is shared by the module: each test uses its own stream and key
prefix, and the failover and resharding tests leave it healthy. Waits poll with a deadline (hang
guards); nothing asserts on wall-clock durations.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from deltaforge.cache import LeaseCache, LeaseStats
from deltaforge.testing import RedisServer
from deltaforge.testing_topologies import RedisCluster, RedisSentinelSet
from deltaforge.worker import InvalidationWorker
from tests.test_worker import RunningWorker, native_event, out_text, wait_until, xadd_event
from tests.topologies import redis_cluster, redis_sentinel  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

GROUP = "cache-workers"


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def rc(redis_cluster: RedisCluster) -> Iterator[Any]:  # noqa: F811 - the imported fixture
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture
def make_worker() -> Iterator[Callable[..., InvalidationWorker]]:
    workers: list[InvalidationWorker] = []

    def factory(uri: str, stream: str, **kw: Any) -> InvalidationWorker:
        kw.setdefault("block_ms", 100)
        kw.setdefault("consumer", f"topo-{len(workers)}")
        kw.setdefault("out", io.StringIO())
        worker = InvalidationWorker(uri, stream, GROUP, **kw)
        workers.append(worker)
        return worker

    yield factory
    for worker in workers:
        worker.close()


def owners(client: Any, keys: list[str]) -> set[int]:
    """The ports of the masters owning ``keys``' slots (the cluster client's slot map)."""
    return {client.get_node_from_key(k).port for k in keys}


def spread(client: Any, prefix: str, n: int = 30) -> list[str]:
    """``n`` keys under ``prefix``, checked to live on every master of the cluster."""
    keys = [f"{prefix}{i}" for i in range(n)]
    assert owners(client, keys) == {node.port for node in client.get_primaries()}
    return keys


def set_all(client: Any, keys: list[str]) -> None:
    for k in keys:
        client.set(k, "cached")


def left(client: Any, keys: list[str]) -> list[str]:
    return [k for k in keys if client.exists(k)]


def pending(client: Any, stream: str) -> int:
    return int(client.xpending(stream, GROUP)["pending"])


def event(keys: list[str], table: str = "app.users", row: int = 1) -> dict[str, Any]:
    return native_event(table, "u", {"id": row}, {"id": row}, list(keys))


def write_events(client: Any, stream: str, prefix: str, n: int) -> list[str]:
    """``n`` events of 2 keys each (spread over the masters on a cluster), their keys set first."""
    keys: list[str] = []
    for i in range(n):
        pair = [f"{prefix}{i}:a", f"{prefix}{i}:b"]
        set_all(client, pair)
        xadd_event(client, event(pair, row=i), stream=stream)
        keys += pair
    return keys


def drained(client: Any, stream: str, keys: list[str]) -> bool:
    """Every key deleted and nothing pending: a Redis error (the topology moving) reads as "not yet"."""
    try:
        return not left(client, keys) and pending(client, stream) == 0
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        return False


# --- the worker on a cluster -----------------------------------------------------------------------


def test_a_cluster_worker_deletes_keys_on_every_master_per_slot_and_acks(
        make_worker: Any, rc: Any, redis_cluster: RedisCluster) -> None:  # noqa: F811
    stream = "t1:stream"
    plain = spread(rc, "t1:u:")
    pages = spread(rc, "t1:p:")
    keep = spread(rc, "keep:t1:")
    set_all(rc, [*plain, *pages, *keep])
    xadd_event(rc, event(plain), stream=stream)
    # "t1:s*" matches the stream itself: the same cluster, so it is spared
    xadd_event(rc, event(["t1:p:*", "t1:s*"], table="app.pages"), stream=stream)
    worker = make_worker(redis_cluster.uri, stream)
    assert not worker._transactional  # never MULTI on a cluster: the stream and the keys' slots differ

    assert worker.process_once() == 2

    assert left(rc, [*plain, *pages]) == []
    assert left(rc, keep) == keep
    assert rc.type(stream) == b"stream" and pending(rc, stream) == 0
    assert out_text(worker) == "Invalidated 30 keys for app.users\nInvalidated 2 keys for app.pages\n"
    assert worker.metrics.keys == 32 and worker.metrics.reconnects == 0


def test_a_cluster_worker_keeps_going_through_a_failover_of_the_streams_master(
        make_worker: Any, rc: Any, redis_cluster: RedisCluster,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    stream = "t2:stream"
    worker = make_worker(redis_cluster.uri, stream)
    running = RunningWorker(worker)
    try:
        before = write_events(rc, stream, "t2:before:", 20)
        wait_until(lambda: drained(rc, stream, before), 20, "the entries before the failover handled")
        old = redis_cluster.master_of_key(stream)
        new = redis_cluster.failover(old.port)
        assert redis_cluster.master_of_key(stream) is new
        after = write_events(rc, stream, "t2:after:", 20)
        wait_until(lambda: drained(rc, stream, [*before, *after]), 30,
                   "the entries after the failover handled, none pending")
    finally:
        running.join(30)  # re-raises the worker's error, if it stopped on one
    assert out_text(worker).count("Invalidated 2 keys for app.users\n") >= 40
    assert "Traceback" not in caplog.text


def test_a_cluster_worker_keeps_going_while_the_streams_slot_is_resharded(
        make_worker: Any, rc: Any, redis_cluster: RedisCluster) -> None:  # noqa: F811
    stream = "t3:stream"
    worker = make_worker(redis_cluster.uri, stream)
    running = RunningWorker(worker)
    try:
        before = write_events(rc, stream, "t3:before:", 20)
        wait_until(lambda: drained(rc, stream, before), 20, "the entries before the resharding handled")
        source = redis_cluster.master_of_key(stream)
        # entries keep coming while the slot moves (between MIGRATE batches: the stream is one key)
        during: list[str] = []
        target = redis_cluster.reshard_key(
            stream, between_batches=lambda: during.extend(write_events(rc, stream, "t3:during:", 3)))
        assert target is not source and redis_cluster.master_of_key(stream) is target
        after = write_events(rc, stream, "t3:after:", 20)
        wait_until(lambda: drained(rc, stream, [*before, *during, *after]), 30,
                   "the entries after the resharding handled, none pending")
    finally:
        running.join(30)
    assert len(during) == 6


def test_the_stream_on_one_redis_and_the_cache_on_a_cluster(
        make_worker: Any, rc: Any, redis_cluster: RedisCluster,  # noqa: F811
        redis_server: RedisServer, redis_client: Any) -> None:
    stream = "cache:invalidations"
    plain = spread(rc, "t4:u:")
    pages = spread(rc, "t4:p:")
    keep = spread(rc, "keep:t4:")
    set_all(rc, [*plain, *pages, *keep, stream])
    set_all(redis_client, [*plain[:3], *pages[:3]])  # the same names on the stream's Redis: not the cache
    xadd_event(redis_client, event(plain), stream=stream)
    xadd_event(redis_client, event(["t4:p:*", "cache:*"], table="app.pages"), stream=stream)
    worker = make_worker(redis_server.uri, stream, cache_uri=redis_cluster.uri)
    assert not worker._transactional
    # a cluster and a single server: the URIs cannot say they differ, so patterns spare the stream's name
    assert worker._spare_stream

    assert worker.process_once() == 2

    assert left(rc, [*plain, *pages]) == []
    assert left(rc, [*keep, stream]) == [*keep, stream]
    assert left(redis_client, [*plain[:3], *pages[:3]]) == [*plain[:3], *pages[:3]]
    assert redis_client.type(stream) == b"stream" and pending(redis_client, stream) == 0


def test_a_wrong_cluster_password_fails_at_once_naming_the_cache_option(
        make_worker: Any, redis_server: RedisServer, redis_cluster: RedisCluster) -> None:  # noqa: F811
    from deltaforge.errors import SinkError

    wrong = redis_cluster.uri.replace("redis+cluster://", "redis+cluster://nobody:nope@")
    worker = make_worker(redis_server.uri, "t5:stream", cache_uri=wrong)
    with pytest.raises(SinkError) as info:
        worker.process_once()
    assert "--cache-uri" in str(info.value) and "credentials" in str(info.value)


# --- the loop's decisions on cluster errors, and which URIs spare the stream ------------------------


def _refused(message: str) -> redis.exceptions.RedisClusterException:
    try:
        try:
            raise redis.ResponseError(message)
        except redis.ResponseError:
            raise redis.exceptions.RedisClusterException("Cluster mode is not enabled on this node") from None
    except redis.exceptions.RedisClusterException as inner:
        try:
            raise redis.exceptions.RedisClusterException("Redis Cluster cannot be connected") from inner
        except redis.exceptions.RedisClusterException as outer:
            return outer


@pytest.mark.parametrize(("error", "decision"), [
    (redis.ResponseError("UNBLOCKED force unblock from blocking operation, instance state changed"), "retry"),
    (redis.ResponseError("UNBLOCKED the stream key no longer exists"), "retry"),
    (redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"), "retry"),
    (redis.exceptions.ClusterDownError("The cluster is down"), "retry"),
    (redis.exceptions.MasterDownError("Link with MASTER is down"), "retry"),
    (redis.exceptions.ClusterError("TTL exhausted."), "retry"),
    (redis.exceptions.SlotNotCoveredError('Slot "5" is not covered by the cluster.'), "retry"),
    (redis.exceptions.RedisClusterException("Redis Cluster cannot be connected. Please provide ..."), "retry"),
    (_refused("NOPERM this user has no permissions to run the 'cluster|slots' command"), "NOPERM"),
    (_refused("ERR This instance has cluster support disabled"), "not a cluster node"),
    (redis.exceptions.RedisClusterException("UNLINK - all keys must map to the same key slot"), "cluster client failed"),
])
def test_cluster_errors_are_retried_or_stop_with_the_fix(make_worker: Any, error: Exception, decision: str) -> None:
    from deltaforge.errors import SinkError
    from deltaforge.worker import _Retry

    worker = make_worker("redis://127.0.0.1:1/0", "t7:stream", cache_uri="redis+cluster://127.0.0.1:2")
    outcome = worker._classify(error, worker._cache_server)
    if decision == "retry":
        assert isinstance(outcome, _Retry) and worker._refresh_slots and worker._recover_own
    else:
        assert isinstance(outcome, SinkError) and decision in str(outcome)
        assert "--cache-uri" in str(outcome) + str(outcome.hint)


@pytest.mark.parametrize(("stream_uri", "cache_uri", "spare"), [
    ("redis://127.0.0.1:1/0", "redis://localhost:1/0", True),
    ("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1", False),
    ("redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0", False),
    ("redis+cluster://127.0.0.1:1,127.0.0.1:2", "redis+cluster://127.0.0.1:2,127.0.0.1:3", True),
    ("redis+cluster://127.0.0.1:1", "redis+cluster://127.0.0.1:9", True),  # disjoint seeds prove nothing
    ("redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:9", True),
    ("redis://127.0.0.1:1/3", "redis+cluster://127.0.0.1:9", False),  # a cluster has db 0 only
    ("redis+sentinel://127.0.0.1:1/0?service=a", "redis+sentinel://127.0.0.1:2/0?service=a", True),
    ("redis+sentinel://127.0.0.1:1/0?service=a", "redis+sentinel://127.0.0.1:1/0?service=b", False),
    ("redis+sentinel://127.0.0.1:1/0?service=a", "redis://127.0.0.1:5/0", True),
])
def test_patterns_spare_the_stream_unless_the_uris_prove_another_keyspace(
        make_worker: Any, stream_uri: str, cache_uri: str, spare: bool) -> None:
    assert make_worker(stream_uri, "t8:stream", cache_uri=cache_uri)._spare_stream is spare


# --- the worker on Sentinel ------------------------------------------------------------------------


def test_a_sentinel_worker_keeps_going_through_a_failover(
        make_worker: Any, redis_sentinel: RedisSentinelSet,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    stream = "cache:invalidations"
    worker = make_worker(redis_sentinel.uri, stream)
    assert worker._transactional  # one client on the master: deletes and ack in one MULTI/EXEC
    # the test's own client follows the failover too
    master = redis_sentinel.sentinel_client().master_for(redis_sentinel.service, socket_timeout=5)
    running = RunningWorker(worker)
    try:
        before = write_events(master, stream, "s:before:", 20)
        wait_until(lambda: drained(master, stream, before), 20, "the entries before the failover handled")
        # the replica has everything the master acked: nothing the worker did is lost by the failover
        assert master.wait(1, 5000) == 1
        old = redis_sentinel.master_address()
        assert redis_sentinel.failover() != old
        after = write_with_retry(lambda: write_events(master, stream, "s:after:", 20))
        wait_until(lambda: drained(master, stream, [*before, *after]), 30,
                   "the entries after the failover handled, none pending")
    finally:
        running.join(30)
        master.close()
    assert out_text(worker).count("Invalidated 2 keys for app.users\n") >= 40
    assert "Traceback" not in caplog.text


def write_with_retry(write: Callable[[], list[str]], attempts: int = 50) -> list[str]:
    """The test's writes right after a failover: its client may meet the demoted master once."""
    for _ in range(attempts):
        try:
            return write()
        except redis.ConnectionError:
            threading.Event().wait(0.1)
    return write()


# --- LeaseCache --------------------------------------------------------------------------------------


def test_lease_cache_on_a_cluster_keys_in_different_slots(rc: Any, redis_cluster: RedisCluster) -> None:  # noqa: F811
    keys = spread(rc, "lc:", 12)
    db = {k: f"row-{k}".encode() for k in keys}

    def exercise(cache: LeaseCache) -> None:
        calls: list[list[str]] = []

        def loader(wanted: list[str]) -> dict[str, bytes | str | None]:
            calls.append(wanted)
            return {k: db[k] for k in wanted}

        assert cache.get(keys[0], lambda: db[keys[0]]) == db[keys[0]]
        assert cache.get(keys[0], lambda: pytest.fail("a hit must not load")) == db[keys[0]]
        assert cache.get_many(keys, loader) == db
        assert calls == [keys[1:]]  # one loader call for the misses, over every master
        assert [rc.get(k) for k in keys] == [db[k] for k in keys]
        assert cache.get_many(keys, loader) == db and len(calls) == 1  # all hits
        # a flushed script cache on every primary: NOSCRIPT, SCRIPT LOAD, the calls rerun
        rc.script_flush()
        assert cache.get_many(keys, loader) == db and len(calls) == 1
        assert cache.invalidate(*keys) == len(keys)  # one UNLINK per slot: no CROSSSLOT
        assert left(rc, keys) == []
        assert cache.get_many(keys, loader) == db and calls[-1] == keys
        assert cache.invalidate(*keys) == len(keys)
        assert cache.stats == LeaseStats(hits=2 + 2 * len(keys), misses=2 * len(keys), fills=2 * len(keys))

    with LeaseCache(redis_cluster.uri) as from_uri:  # a redis+cluster:// URI
        exercise(from_uri)
    with LeaseCache(rc) as from_client:  # a RedisCluster client
        exercise(from_client)


def test_the_cluster_workers_delete_revokes_a_lease(make_worker: Any, rc: Any,
                                                    redis_cluster: RedisCluster) -> None:  # noqa: F811
    key, stream = "lease:user:1", "t6:stream"
    cache = LeaseCache(rc)
    loaded, go = threading.Event(), threading.Event()

    def slow_loader() -> bytes:
        loaded.set()
        assert go.wait(20)
        return b"old"

    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(cache.get, key, slow_loader)
        assert loaded.wait(20)
        assert rc.get(key).startswith(b"\x00df:lease:")
        xadd_event(rc, event([key]), stream=stream)
        worker = make_worker(redis_cluster.uri, stream)
        assert worker.process_once() == 1
        go.set()
        assert reader.result(20) == b"old"  # what the database said; not cached
    assert rc.exists(key) == 0
    assert cache.stats == LeaseStats(misses=1, refused=1)


def test_lease_cache_on_sentinel_follows_a_failover(redis_sentinel: RedisSentinelSet) -> None:  # noqa: F811
    keys = [f"ls:{i}" for i in range(10)]
    db = {k: f"row-{k}".encode() for k in keys}

    def loader(wanted: list[str]) -> dict[str, bytes | str | None]:
        return {k: db[k] for k in wanted}

    with LeaseCache(redis_sentinel.uri) as cache:
        assert cache.get(keys[0], lambda: db[keys[0]]) == db[keys[0]]
        assert cache.get_many(keys, loader) == db
        assert cache.stats.fills == len(keys) and cache.stats.hits == 1
        assert cache.invalidate(*keys[:5]) == 5
        cache.client.wait(1, 5000)
        redis_sentinel.failover()

        def after_failover() -> bool:
            try:
                return cache.get_many(keys, loader) == db
            except redis.ConnectionError:  # the application's retry: the old master was demoted
                return False

        wait_until(after_failover, 30, "LeaseCache answering from the new master")
        new_master = redis_sentinel.master_client()
        try:
            assert [new_master.get(k) for k in keys] == [db[k] for k in keys]
        finally:
            new_master.close()
