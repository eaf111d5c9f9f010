"""``deltaforge.cache.LeaseCache`` and its Lua scripts against a real Redis (docs/cache-protocol.md).

The race tests are deterministic interleavings, not timing: the loader blocks on an Event until
the test has run the invalidation, so each step happens in the order the test names. "The DB" is
a dict the loader reads and the test's "writer" updates.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from deltaforge.cache import (
    LEASE_PREFIX,
    NEGATIVE_MARKER,
    SCRIPT_NAMES,
    LeaseCache,
    LeaseStats,
    LoaderValueError,
    lua_source,
)
from deltaforge.errors import ConfigError
from deltaforge.testing import RedisServer
from deltaforge.worker import InvalidationWorker
from tests.nodeworker import ensure_node_worker, start_node_worker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
LUA_DIR = ROOT / "deltaforge" / "cache" / "lua"
LEASE_JS = ROOT / "tests" / "node" / "lease-cache.js"
KEY = "user:1"


# --- helpers -------------------------------------------------------------------------------------


def wait_until(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``cond`` until true; fail naming ``what`` (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class GatedLoader:
    """Reads the row from ``db`` at once (the SELECT), then blocks until ``go`` is set."""

    def __init__(self, db: dict[str, bytes], key: str = KEY) -> None:
        self.db = db
        self.key = key
        self.loaded = threading.Event()
        self.go = threading.Event()
        self.calls = 0

    def __call__(self) -> bytes | None:
        self.calls += 1
        row = self.db.get(self.key)
        self.loaded.set()
        if not self.go.wait(30):
            raise AssertionError("the test never let the loader return")
        return row


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as ex:
        yield ex


def in_thread(pool: ThreadPoolExecutor, fn: Callable[[], Any]) -> Future[Any]:
    return pool.submit(fn)


def holds_lease(r: Any, key: str = KEY) -> bytes | None:
    value = r.get(key)
    return value if value is not None and value.startswith(LEASE_PREFIX) else None


def commit_and_invalidate(db: dict[str, bytes], r: Any, value: bytes, key: str = KEY) -> None:
    """The writer commits, then the invalidation worker's UNLINK runs (in that order, always)."""
    db[key] = value
    r.unlink(key)


# --- the race --------------------------------------------------------------------------------------


def test_plain_cache_aside_ends_stale(redis_client: Any, pool: ThreadPoolExecutor) -> None:
    """The race itself, with GET; miss; load; SET: the old row is cached after the invalidation."""
    r = redis_client
    db = {KEY: b"old"}
    loader = GatedLoader(db)

    def plain_read() -> bytes | None:
        cached: bytes | None = r.get(KEY)
        if cached is not None:
            return cached
        row = loader()  # 1) miss, read the old row (then delayed)
        r.set(KEY, row)  # 4) the delayed fill
        return row

    reader = in_thread(pool, plain_read)
    assert loader.loaded.wait(20)
    commit_and_invalidate(db, r, b"new")  # 2) commit, 3) invalidation
    loader.go.set()
    assert reader.result(20) == b"old"
    assert r.get(KEY) == b"old"  # stale, and no further invalidation is coming
    assert db[KEY] == b"new"


def test_lease_fill_after_invalidation_is_refused(redis_client: Any, pool: ThreadPoolExecutor) -> None:
    r = redis_client
    db = {KEY: b"old"}
    cache = LeaseCache(r)
    loader = GatedLoader(db)
    reader = in_thread(pool, lambda: cache.get(KEY, loader))
    assert loader.loaded.wait(20)
    assert holds_lease(r)
    commit_and_invalidate(db, r, b"new")
    loader.go.set()
    # the reader gets what the DB said when it read; it is just not cached
    assert reader.result(20) == b"old"
    assert r.exists(KEY) == 0
    assert cache.stats == LeaseStats(misses=1, refused=1)
    assert cache.get(KEY, lambda: db[KEY]) == b"new"
    assert r.get(KEY) == b"new"
    assert cache.stats.fills == 1


def test_invalidation_before_the_lease_loads_the_new_row(redis_client: Any) -> None:
    r = redis_client
    db = {KEY: b"old"}
    r.set(KEY, b"old")
    cache = LeaseCache(r)
    commit_and_invalidate(db, r, b"new")
    assert cache.get(KEY, lambda: db[KEY]) == b"new"
    assert r.get(KEY) == b"new"
    assert r.pttl(KEY) == -1  # no TTL unless asked
    assert cache.stats == LeaseStats(misses=1, fills=1)
    assert cache.get(KEY, lambda: pytest.fail("a hit must not load")) == b"new"
    assert cache.stats.hits == 1


def test_the_deltaforge_worker_revokes_a_lease(redis_server: RedisServer, redis_client: Any,
                                               pool: ThreadPoolExecutor) -> None:
    """The invalidation side needs no change: the worker's UNLINK of the key is the revocation."""
    r = redis_client
    db = {KEY: b"old"}
    cache = LeaseCache(r)
    loader = GatedLoader(db)
    reader = in_thread(pool, lambda: cache.get(KEY, loader))
    assert loader.loaded.wait(20)
    db[KEY] = b"new"
    worker = InvalidationWorker(redis_server.uri, block_ms=50, consumer="lease-test", out=io.StringIO())
    try:
        r.xadd("cache:invalidations", {"df-event": orjson.dumps(
            {"event_id": str(uuid.uuid4()), "table": "app.users", "op": "u",
             "before": {"id": 1}, "after": {"id": 1, "_cache_keys": [KEY]}})})
        assert worker.process_once() == 1
    finally:
        worker.close()
    loader.go.set()
    assert reader.result(20) == b"old"
    assert r.exists(KEY) == 0
    assert cache.stats.refused == 1


def test_the_seeds_node_worker_revokes_a_lease(redis_server: RedisServer, redis_client: Any,
                                               pool: ThreadPoolExecutor) -> None:
    """Even the seed's unchanged Node worker (plain DEL) revokes the lease."""
    r = redis_client
    db = {KEY: b"old"}
    cache = LeaseCache(r)
    loader = GatedLoader(db)
    node = start_node_worker(redis_server.uri)
    try:
        node.wait_for_line("Starting cache invalidation worker")
        reader = in_thread(pool, lambda: cache.get(KEY, loader))
        assert loader.loaded.wait(20)
        db[KEY] = b"new"
        r.xadd("cache:invalidations", {"df-event": orjson.dumps(
            {"table": "app.users", "after": {"id": 1, "_cache_keys": [KEY]}})})
        node.wait_for_line("Invalidated 1 keys for app.users")
    finally:
        node.stop()
    loader.go.set()
    assert reader.result(20) == b"old"
    assert r.exists(KEY) == 0
    assert cache.stats.refused == 1


def test_concurrent_readers_one_lease_the_other_waits_for_the_fill(
        redis_client: Any, pool: ThreadPoolExecutor) -> None:
    r = redis_client
    holder_cache = LeaseCache(r)
    waiter_cache = LeaseCache(r, wait_ms=30_000, poll_ms=2)
    loader = GatedLoader({KEY: b"row"})
    holder = in_thread(pool, lambda: holder_cache.get(KEY, loader))
    assert loader.loaded.wait(20)
    waiter = in_thread(pool, lambda: waiter_cache.get(KEY, lambda: pytest.fail("the waiter must not load")))
    wait_until(lambda: waiter_cache.stats.waits == 1, "the second reader to find the lease")
    assert not waiter.done()
    loader.go.set()
    assert holder.result(20) == b"row"
    assert waiter.result(20) == b"row"
    assert loader.calls == 1
    assert holder_cache.stats == LeaseStats(misses=1, fills=1)
    assert waiter_cache.stats == LeaseStats(waits=1, hits=1)


def test_waiter_reads_through_when_the_holder_is_slow(redis_client: Any, pool: ThreadPoolExecutor) -> None:
    r = redis_client
    holder_cache = LeaseCache(r)
    loader = GatedLoader({KEY: b"row"})
    holder = in_thread(pool, lambda: holder_cache.get(KEY, loader))
    assert loader.loaded.wait(20)
    marker = holds_lease(r)
    assert marker
    waiter_cache = LeaseCache(r, wait_ms=20, poll_ms=2)
    assert waiter_cache.get(KEY, lambda: b"row-read-through") == b"row-read-through"
    assert waiter_cache.stats == LeaseStats(waits=1, read_through=1)
    assert r.get(KEY) == marker  # the waiter stored nothing, the lease is intact
    loader.go.set()
    assert holder.result(20) == b"row"
    assert r.get(KEY) == b"row"  # the holder's fill still lands
    assert holder_cache.stats.fills == 1


def test_wait_ms_zero_reads_through_at_once(redis_client: Any) -> None:
    r = redis_client
    r.set(KEY, LEASE_PREFIX + b"0" * 32, px=60_000)
    cache = LeaseCache(r, wait_ms=0)
    assert cache.get(KEY, lambda: "through") == b"through"  # returned in the client's form
    assert cache.stats == LeaseStats(waits=1, read_through=1)


_DYING_FILLER = """
import sys, time
from deltaforge.cache import LeaseCache

def loader():
    print("loading", flush=True)
    while True:
        time.sleep(60)

LeaseCache(sys.argv[1], lease_ms=int(sys.argv[3])).get(sys.argv[2], loader)
"""


def test_a_dead_fillers_lease_expires(redis_server: RedisServer, redis_client: Any) -> None:
    r = redis_client
    lease_ms = 3000
    proc = subprocess.Popen([sys.executable, "-c", _DYING_FILLER, redis_server.uri, KEY, str(lease_ms)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "loading", "the filler did not start loading"
        marker = holds_lease(r)
        assert marker
        assert 0 < r.pttl(KEY) <= lease_ms
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(20) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    reader = LeaseCache(r, lease_ms=lease_ms, wait_ms=0)
    assert reader.get(KEY, lambda: b"fresh") == b"fresh"
    # the dead filler's marker is still there, so that read went through without storing
    assert r.get(KEY) == marker
    assert reader.stats == LeaseStats(waits=1, read_through=1)

    def stored() -> bool:
        assert reader.get(KEY, lambda: b"fresh") == b"fresh"
        return reader.stats.fills == 1

    wait_until(stored, "the dead filler's lease to expire", timeout=lease_ms / 1000 + 20)
    assert r.get(KEY) == b"fresh"
    assert r.pttl(KEY) == -1
    assert reader.stats.misses == 1
    assert reader.stats.read_through >= 1


# --- the scripts, directly ---------------------------------------------------------------------------


@pytest.fixture(params=["evalsha", "eval"])
def run_script(request: pytest.FixtureRequest, redis_client: Any) -> Callable[..., Any]:
    """Run a shipped script: EVALSHA through redis-py's registered Script, or EVAL of the file."""
    r = redis_client
    if request.param == "evalsha":
        scripts = {name: r.register_script(lua_source(name)) for name in SCRIPT_NAMES}
        return lambda name, key, *args: scripts[name](keys=[key], args=list(args))
    texts = {name: (LUA_DIR / f"{name}.lua").read_text() for name in SCRIPT_NAMES}
    return lambda name, key, *args: r.eval(texts[name], 1, key, *args)


def test_the_shipped_files_are_what_lua_source_reads() -> None:
    for name in SCRIPT_NAMES:
        text = (LUA_DIR / f"{name}.lua").read_text()
        assert lua_source(name) == text
        assert "KEYS[1]" in text.split("\n\n")[0]  # the header documents KEYS/ARGV/returns
        assert "Returns" in text
    with pytest.raises(ValueError, match="no script"):
        lua_source("nope")


def test_acquire_script(run_script: Callable[..., Any], redis_client: Any) -> None:
    r = redis_client
    mine, theirs = LEASE_PREFIX + b"a" * 32, LEASE_PREFIX + b"b" * 32
    assert run_script("acquire", KEY, mine, 10_000) == [b"lease"]
    assert r.get(KEY) == mine
    assert 0 < r.pttl(KEY) <= 10_000
    assert run_script("acquire", KEY, theirs, 10_000) == [b"wait"]
    assert run_script("acquire", KEY, mine, 10_000) == [b"wait"]  # even the holder's own marker
    assert r.get(KEY) == mine
    r.set(KEY, b"value")
    assert run_script("acquire", KEY, theirs, 10_000) == [b"hit", b"value"]
    r.set(KEY, NEGATIVE_MARKER)
    assert run_script("acquire", KEY, theirs, 10_000) == [b"hit", NEGATIVE_MARKER]
    r.set(KEY, b"")
    assert run_script("acquire", KEY, theirs, 10_000) == [b"hit", b""]
    assert r.get(KEY) == b""


def test_fill_script(run_script: Callable[..., Any], redis_client: Any) -> None:
    r = redis_client
    mine, theirs = LEASE_PREFIX + b"a" * 32, LEASE_PREFIX + b"b" * 32
    # absent key (revoked or expired lease): refused, and the key stays absent
    assert run_script("fill", KEY, mine, b"v", 0) == 0
    assert r.exists(KEY) == 0
    # another caller's lease: refused, left alone
    r.set(KEY, theirs, px=10_000)
    assert run_script("fill", KEY, mine, b"v", 0) == 0
    assert r.get(KEY) == theirs
    # a value already there: refused, left alone
    r.set(KEY, b"other")
    assert run_script("fill", KEY, mine, b"v", 0) == 0
    assert r.get(KEY) == b"other"
    # my lease, TTL "0": stored without an expiry (the lease's expiry is dropped)
    r.set(KEY, mine, px=10_000)
    assert run_script("fill", KEY, mine, b"v", 0) == 1
    assert r.get(KEY) == b"v"
    assert r.pttl(KEY) == -1
    # my lease, TTL given: stored with it
    r.set(KEY, mine, px=10_000)
    assert run_script("fill", KEY, mine, b"v2", 60_000) == 1
    assert r.get(KEY) == b"v2"
    assert 10_000 < r.pttl(KEY) <= 60_000


def test_release_script(run_script: Callable[..., Any], redis_client: Any) -> None:
    r = redis_client
    mine, theirs = LEASE_PREFIX + b"a" * 32, LEASE_PREFIX + b"b" * 32
    assert run_script("release", KEY, mine) == 0
    assert r.exists(KEY) == 0
    r.set(KEY, theirs, px=10_000)
    assert run_script("release", KEY, mine) == 0
    assert r.get(KEY) == theirs
    r.set(KEY, b"value")
    assert run_script("release", KEY, mine) == 0
    assert r.get(KEY) == b"value"
    r.set(KEY, mine, px=10_000)
    assert run_script("release", KEY, mine) == 1
    assert r.exists(KEY) == 0


def test_a_flushed_script_cache_is_reloaded(redis_client: Any) -> None:
    r = redis_client
    cache = LeaseCache(r)
    r.script_flush()
    assert cache.get("a", lambda: b"A") == b"A"
    r.script_flush()
    assert cache.get_many(["a", "b"], lambda keys: {k: k.upper() for k in keys}) == {"a": b"A", "b": b"B"}
    assert r.get("b") == b"B"


# --- TTL, negative caching, loader errors --------------------------------------------------------------


def test_ttl_and_the_lease_expiry(redis_client: Any) -> None:
    r = redis_client
    cache = LeaseCache(r, lease_ms=7000, ttl_ms=60_000)
    seen: list[int] = []

    def loader() -> bytes:
        seen.append(r.pttl(KEY))  # the lease, while loading
        return b"v"

    assert cache.get(KEY, loader) == b"v"
    assert 0 < seen[0] <= 7000
    assert 7000 < r.pttl(KEY) <= 60_000


def test_negative_caching(redis_client: Any) -> None:
    r = redis_client
    cache = LeaseCache(r, ttl_ms=600_000, cache_none=True, negative_ttl_ms=30_000)
    assert cache.get(KEY, lambda: None) is None
    assert r.get(KEY) == NEGATIVE_MARKER
    assert 0 < r.pttl(KEY) <= 30_000
    assert cache.get(KEY, lambda: pytest.fail("a negative hit must not load")) is None
    assert cache.stats == LeaseStats(misses=1, fills=1, hits=1, negative_hits=1)
    # without negative_ttl_ms the negative marker gets ttl_ms
    cache2 = LeaseCache(r, ttl_ms=600_000, cache_none=True)
    assert cache2.get("user:2", lambda: None) is None
    assert 30_000 < r.pttl("user:2") <= 600_000


def test_none_without_cache_none_releases_the_lease(redis_client: Any) -> None:
    r = redis_client
    cache = LeaseCache(r)
    assert cache.get(KEY, lambda: None) is None
    assert r.exists(KEY) == 0
    assert cache.stats == LeaseStats(misses=1, released=1)


@pytest.mark.parametrize("value", [b"\x00df:lease:" + b"0" * 32, "\x00df:none", b"\x00df:anything"])
def test_a_value_with_the_reserved_prefix_is_refused(redis_client: Any, value: bytes | str) -> None:
    r = redis_client
    cache = LeaseCache(r)
    with pytest.raises(LoaderValueError, match="reserved prefix") as err:
        cache.get(KEY, lambda: value)
    assert "\n" not in str(err.value)
    assert r.exists(KEY) == 0  # the lease was released, nothing stored
    assert cache.stats.released == 1
    with pytest.raises(LoaderValueError, match="reserved prefix"):
        cache.get_many([KEY, "other"], lambda keys: {k: value for k in keys})
    assert r.exists(KEY, "other") == 0


def test_a_value_of_another_type_is_refused(redis_client: Any) -> None:
    cache = LeaseCache(redis_client)
    with pytest.raises(LoaderValueError, match="returned int"):
        cache.get(KEY, lambda: 42)  # type: ignore[arg-type,return-value]
    assert redis_client.exists(KEY) == 0
    with pytest.raises(LoaderValueError, match="mapping"):
        cache.get_many([KEY], lambda keys: [b"x"])  # type: ignore[arg-type,return-value]
    assert redis_client.exists(KEY) == 0


def test_a_raising_loader_releases_the_lease(redis_client: Any, pool: ThreadPoolExecutor) -> None:
    r = redis_client
    cache = LeaseCache(r)
    gate = threading.Event()

    def failing() -> bytes:
        assert holds_lease(r)
        gate.set()
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError, match="db down"):
        cache.get(KEY, failing)
    assert gate.is_set()
    assert r.exists(KEY) == 0  # released: nobody waits for lease_ms
    assert cache.stats == LeaseStats(misses=1, released=1)
    with pytest.raises(RuntimeError, match="db down"):
        cache.get_many(["a", "b"], lambda keys: (_ for _ in ()).throw(RuntimeError("db down")))
    assert r.exists("a", "b") == 0
    assert cache.stats.released == 3
    assert cache.get(KEY, lambda: b"ok") == b"ok"


def test_a_redis_error_propagates(redis_client: Any) -> None:
    r = redis_client
    r.rpush(KEY, "not a string")
    cache = LeaseCache(r)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        cache.get(KEY, lambda: b"v")
    r.delete(KEY)
    r.rpush("b", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        cache.get_many(["a", "b"], lambda keys: pytest.fail("nothing must load"))
    assert r.exists("a") == 0  # the lease taken for "a" in the same round was released


# --- get_many --------------------------------------------------------------------------------------


class CountingPipelines:
    """Wraps ``client.pipeline`` to count round trips (one execute per pipeline)."""

    def __init__(self, cache: LeaseCache, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = cache.client.pipeline

        def counting(*a: Any, **kw: Any) -> Any:
            self.count += 1
            return real(*a, **kw)

        monkeypatch.setattr(cache.client, "pipeline", counting)


def test_get_many_one_loader_call_mixed(redis_client: Any, pool: ThreadPoolExecutor,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    r = redis_client
    r.set("a", b"A")
    r.set("n", NEGATIVE_MARKER)
    holder_cache = LeaseCache(r)
    gated = GatedLoader({"w": b"W"}, key="w")
    holder = in_thread(pool, lambda: holder_cache.get("w", gated))
    assert gated.loaded.wait(20)
    cache = LeaseCache(r, wait_ms=30_000, poll_ms=2, ttl_ms=60_000)
    calls: list[list[str]] = []

    def loader(keys: list[str]) -> dict[str, bytes | str | None]:
        calls.append(keys)
        return {"c": b"C", "d": "D"}  # "e" left out: None

    many = in_thread(pool, lambda: cache.get_many(["a", "c", "w", "d", "n", "e", "c"], loader))
    wait_until(lambda: cache.stats.waits == 1, "get_many to wait on w")
    gated.go.set()
    assert holder.result(20) == b"W"
    assert many.result(20) == {"a": b"A", "c": b"C", "w": b"W", "d": b"D", "n": None, "e": None}
    assert calls == [["c", "d", "e"]]  # one loader call, no duplicates, nothing it did not lease
    assert cache.stats == LeaseStats(hits=3, negative_hits=1, misses=3, fills=2, released=1, waits=1)
    assert r.get("c") == b"C"
    assert 0 < r.pttl("d") <= 60_000
    assert r.exists("e") == 0
    # round trips: one for the acquires, one for the fills
    pipes = CountingPipelines(cache, monkeypatch)
    r.delete("c", "d")
    assert cache.get_many(["a", "c", "d"], loader) == {"a": b"A", "c": b"C", "d": b"D"}
    assert pipes.count == 2
    pipes.count = 0
    assert cache.get_many(["a", "c", "d"], loader) == {"a": b"A", "c": b"C", "d": b"D"}
    assert pipes.count == 1  # all hits: the acquires only


def test_get_many_reads_through_what_stays_leased(redis_client: Any) -> None:
    r = redis_client
    other = LEASE_PREFIX + b"f" * 32
    r.set("w1", other, px=60_000)
    r.set("w2", other, px=60_000)
    cache = LeaseCache(r, wait_ms=0)
    calls: list[list[str]] = []

    def loader(keys: list[str]) -> dict[str, bytes | str | None]:
        calls.append(keys)
        return {k: k.encode() for k in keys}

    assert cache.get_many(["w1", "m", "w2"], loader) == {"w1": b"w1", "m": b"m", "w2": b"w2"}
    assert calls == [["m"], ["w1", "w2"]]  # the leased keys, then one read-through call
    assert r.get("w1") == other and r.get("w2") == other  # the waiter stored nothing
    assert r.get("m") == b"m"
    assert cache.stats == LeaseStats(misses=1, fills=1, waits=2, read_through=2)


def test_get_many_refused_fill_and_edge_cases(redis_client: Any, pool: ThreadPoolExecutor) -> None:
    r = redis_client
    cache = LeaseCache(r)
    loaded = threading.Event()
    go = threading.Event()

    def loader(keys: list[str]) -> dict[str, bytes | str | None]:
        loaded.set()
        assert go.wait(30)
        return {k: b"old" for k in keys}

    many = in_thread(pool, lambda: cache.get_many(["x", "y"], loader))
    assert loaded.wait(20)
    assert cache.invalidate("x") == 1  # revokes x's lease only
    go.set()
    assert many.result(20) == {"x": b"old", "y": b"old"}
    assert r.exists("x") == 0
    assert r.get("y") == b"old"
    assert cache.stats == LeaseStats(misses=2, fills=1, refused=1)
    assert cache.get_many([], loader) == {}
    with pytest.raises(ConfigError, match="get_many"):
        cache.get_many("x", loader)


# --- construction, invalidate, decode_responses ------------------------------------------------------


def test_invalidate_counts_and_revokes(redis_client: Any) -> None:
    r = redis_client
    cache = LeaseCache(r)
    r.set("a", b"A")
    r.set("b", LEASE_PREFIX + b"c" * 32)
    assert cache.invalidate() == 0
    assert cache.invalidate("a", "b", "absent") == 2
    assert r.exists("a", "b") == 0


def test_uri_constructor(redis_server: RedisServer, redis_client: Any) -> None:
    with LeaseCache(redis_server.uri + "?socket_timeout=3", ttl_ms=1000) as cache:
        assert cache.get(KEY, lambda: b"v") == b"v"
        assert cache.client.connection_pool.connection_kwargs["socket_timeout"] == 3.0
    assert redis_client.get(KEY) == b"v"


@pytest.mark.parametrize("uri", ["http://localhost:6379", "redis://", "redis://h:port/0",
                                 "redis://localhost/zero", "redis://localhost/0?bogus=1"])
def test_bad_uri_is_a_one_line_config_error(uri: str) -> None:
    with pytest.raises(ConfigError) as err:
        LeaseCache(uri)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("LeaseCache(client=...): ")
    assert err.value.hint


@pytest.mark.parametrize(("kw", "name"), [
    ({"lease_ms": 0}, "lease_ms"), ({"lease_ms": 1.5}, "lease_ms"), ({"wait_ms": -1}, "wait_ms"),
    ({"poll_ms": 0}, "poll_ms"), ({"ttl_ms": 0}, "ttl_ms"), ({"negative_ttl_ms": 0, "cache_none": True},
                                                           "negative_ttl_ms"),
    ({"negative_ttl_ms": 1000}, "negative_ttl_ms"), ({"lease_ms": True}, "lease_ms"),
])
def test_bad_arguments_name_the_argument(redis_client: Any, kw: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^LeaseCache\({name}=\.\.\.\)"):
        LeaseCache(redis_client, **kw)


def test_decode_responses_client(redis_server: RedisServer) -> None:
    r = redis_server.client(decode_responses=True)
    try:
        r.flushall()
        cache = LeaseCache(r, cache_none=True)
        assert cache.get(KEY, lambda: b"v") == "v"  # loaded bytes come back as the client's str
        assert cache.get(KEY, lambda: pytest.fail("hit")) == "v"
        assert cache.get("none", lambda: None) is None
        assert cache.get("none", lambda: pytest.fail("negative hit")) is None
        r.set("held", LEASE_PREFIX.decode() + "0" * 32)
        assert LeaseCache(r, wait_ms=0).get("held", lambda: "t") == "t"
        assert cache.get_many(["x", KEY], lambda keys: {"x": "X"}) == {"x": "X", KEY: "v"}
        assert cache.stats == LeaseStats(hits=3, negative_hits=1, misses=3, fills=3)
    finally:
        r.close()


# --- interop with the ioredis example ----------------------------------------------------------------


def run_node(uri: str, key: str, value: str, delay: str = "0", **env: str) -> subprocess.Popen[str]:
    ensure_node_worker()  # ioredis into tests/node/node_modules; fails saying what to install
    return subprocess.Popen(["node", str(LEASE_JS), uri, key, value, delay], cwd=LEASE_JS.parent,
                            env={**os.environ, **env}, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def node_result(proc: subprocess.Popen[str], stdin: str = "") -> dict[str, Any]:
    try:
        out, err = proc.communicate(stdin, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"node failed ({proc.returncode}): {err}"
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    result: dict[str, Any] = json.loads(lines[0])
    return result


def test_node_fill_is_refused_after_a_python_invalidation(redis_server: RedisServer,
                                                          redis_client: Any) -> None:
    r = redis_client
    proc = run_node(redis_server.uri, KEY, "old", "stdin")
    try:
        wait_until(lambda: proc.poll() is not None or holds_lease(r), "node to take the lease")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert LeaseCache(r).invalidate(KEY) == 1  # what the worker does
    finally:
        result = node_result(proc, "go\n")
    assert result == {"result": "refused", "key": KEY, "value": "old"}
    assert r.exists(KEY) == 0


def test_node_and_python_share_the_protocol(redis_server: RedisServer, redis_client: Any) -> None:
    r = redis_client
    cache = LeaseCache(r)
    assert cache.get(KEY, lambda: b"from python") == b"from python"
    assert node_result(run_node(redis_server.uri, KEY, "unused")) == {
        "result": "hit", "key": KEY, "value": "from python"}
    assert node_result(run_node(redis_server.uri, "user:2", "from node")) == {
        "result": "stored", "key": "user:2", "value": "from node"}
    assert cache.get("user:2", lambda: pytest.fail("python must hit")) == b"from node"
    # a Python lease makes Node read through (WAIT_MS=0), storing nothing
    marker = LEASE_PREFIX + b"9" * 32
    r.set("user:3", marker, px=60_000)
    assert node_result(run_node(redis_server.uri, "user:3", "through", WAIT_MS="0")) == {
        "result": "read_through", "key": "user:3", "value": "through"}
    assert r.get("user:3") == marker
    r.set("user:4", NEGATIVE_MARKER)
    assert node_result(run_node(redis_server.uri, "user:4", "unused")) == {
        "result": "hit", "key": "user:4", "value": None}


def test_the_protocol_doc_shows_the_shipped_scripts() -> None:
    """docs/cache-protocol.md quotes the script bodies for other languages: they must not drift."""
    doc = (ROOT / "docs" / "cache-protocol.md").read_text()
    for name in SCRIPT_NAMES:
        body = "\n".join(line for line in lua_source(name).splitlines() if not line.lstrip().startswith("--"))
        assert f"```lua\n{body}\n```" in doc, f"{name}.lua differs from its copy in the doc"
