"""``LeaseCache``: cache reads whose fills an invalidation can revoke (docs/cache-protocol.md).

The race it closes (cache without TTL): 1) a reader misses ``user:1`` and reads the old row;
2) a writer commits the new row; 3) the invalidation worker deletes ``user:1``; 4) the reader's
delayed ``SET user:1 <old row>`` lands, and the cache is stale until the next change.

Protocol (wire format; the Lua scripts in ``deltaforge/cache/lua/`` are the reference):

- Values beginning with the bytes ``\\x00df:`` are protocol markers, never cached data.
  Lease marker: ``\\x00df:lease:`` + 32 hex characters (16 random bytes), one per call.
  Negative-cache marker: ``\\x00df:none`` (the loader found no row and ``cache_none`` is on).
- The lease lives IN the cache key: ``acquire.lua`` sets the absent key to the caller's marker
  for ``lease_ms``; ``fill.lua`` stores the loaded value only while the key still holds that
  marker; ``release.lua`` deletes the key only while it holds that marker. Any DEL/UNLINK of the
  key (``deltaforge worker``, the seed's Node worker, :meth:`LeaseCache.invalidate`) therefore
  revokes the lease atomically, with no script and no change on the invalidation side, and a
  key and its lease share one hash slot (Redis Cluster runs every script on a single key).
- Why it is safe: the load starts after the lease is set; a commit's invalidation runs after the
  commit. Either the invalidation deleted the key before the lease was taken (the load then sees
  the commit) or after (the lease is gone and the fill is refused).

Contract:

- :meth:`LeaseCache.get` returns the cached value, or the loader's. Values come back as the
  client returns them: ``bytes``, or ``str`` with ``decode_responses=True``; a loaded value is
  converted to that form too, so a hit and a miss return the same type.
- A refused fill still returns the loaded value (what the database said a moment ago); it is
  just not cached, and the next read loads again.
- A reader that finds another's lease polls every ``poll_ms`` for up to ``wait_ms``, then reads
  through: it calls the loader and returns its value without storing anything.
- :meth:`LeaseCache.get_many`: one pipelined round trip of single-key acquires, one loader call
  for the keys it leased, one round trip of fills; leased-by-others keys are polled together.
- Thread-safe: one instance may serve many threads over one redis-py client (its pool is);
  :attr:`LeaseCache.stats` is updated under a lock.

Hazards:

- The loader must read a fresh snapshot (autocommit, or a transaction begun after the lease),
  from the primary or from a replica that lags less than the invalidation path; otherwise it can
  load a row older than an invalidation that already ran, and the proof above does not hold.
- ``lease_ms`` must outlast the slowest load. A load that outlives its lease is not unsafe (its
  fill is refused) but caches nothing, and another reader may load the same row meanwhile.
- A filler that dies leaves its lease until ``lease_ms`` passes; readers read through meanwhile.
- Other code doing a plain ``GET`` sees markers: it must treat values starting with ``\\x00df:``
  as a miss (and must not fill with a plain ``SET``, which reopens the race).
- Errors from Redis (connection, auth, ACL, WRONGTYPE) propagate as redis-py raises them. A lease
  taken before the error is released if possible, else it expires after ``lease_ms``.

Topologies (the client, or a URI through :func:`deltaforge.redisclient.redis_py_client`):

- ``redis+sentinel://``: a client of the master the sentinels name, reconnecting to the new one
  after a failover. Replication is asynchronous: a lease or a fill the old master had not sent
  to its replica is lost with it (a lost lease: the next reader takes another; a lost fill: a miss).
- ``redis+cluster://`` or a ``redis.cluster.RedisCluster``: every script touches one key, so
  each call runs on the key's primary. ``get_many``'s acquires and fills go through the cluster
  pipeline: one round trip per primary (``EVALSHA`` sent with ``execute_command``, as the cluster
  pipeline refuses its ``evalsha`` method; a NOSCRIPT reply, e.g. from a promoted replica that
  never loaded the script, reruns after ``SCRIPT LOAD`` on every primary). :meth:`LeaseCache.invalidate`
  sends one UNLINK per hash slot, in one pipeline. MOVED and ASK are followed by redis-py.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeAlias

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisError

from deltaforge.dsn import parse_redis_uri
from deltaforge.errors import ConfigError, DeltaForgeError
from deltaforge.redisclient import by_slot, is_cluster, redis_py_client

#: values starting with these bytes are protocol markers, never data
RESERVED_PREFIX = b"\x00df:"
LEASE_PREFIX = b"\x00df:lease:"
NEGATIVE_MARKER = b"\x00df:none"
_RESERVED_STR = RESERVED_PREFIX.decode()
_NEGATIVE_STR = NEGATIVE_MARKER.decode()

#: the scripts shipped in deltaforge/cache/lua/
SCRIPT_NAMES = ("acquire", "fill", "release")

Value: TypeAlias = "bytes | str | None"

# what one acquire means for the caller
_HIT, _NEGATIVE, _LEASE, _WAIT, _FOREIGN = "hit", "negative", "lease", "wait", "foreign"


def lua_source(name: str) -> str:
    """The text of a shipped script (``acquire``, ``fill`` or ``release``), for EVAL or embedding."""
    if name not in SCRIPT_NAMES:
        msg = f"no script {name!r}; the scripts are {', '.join(SCRIPT_NAMES)}"
        raise ValueError(msg)
    return (resources.files("deltaforge.cache") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class LoaderValueError(DeltaForgeError, ValueError):
    """The loader returned something the protocol cannot store: not bytes/str/None, or a value
    starting with the reserved prefix ``\\x00df:`` (it would read back as a lease or a miss)."""


@dataclass
class LeaseStats:
    """Counters of one :class:`LeaseCache` (per key, not per call)."""

    hits: int = 0
    """acquires that found a value (negative markers included)"""
    misses: int = 0
    """leases taken (the key was absent): each is followed by a load and a fill or a release"""
    fills: int = 0
    """values (or negative markers) stored"""
    refused: int = 0
    """fills refused: the lease was revoked by an invalidation, or expired"""
    waits: int = 0
    """keys found leased by another reader (once per key and call, however many polls)"""
    read_through: int = 0
    """keys loaded without storing: the wait ran out, or the key held an unknown marker"""
    negative_hits: int = 0
    """hits on the negative-cache marker (also counted in ``hits``)"""
    released: int = 0
    """leases given back unfilled: the loader raised, or found no row without ``cache_none``"""


def _check_int(name: str, value: object, low: int) -> None:
    if type(value) is not int or value < low:
        raise ConfigError(f"LeaseCache({name}=...)", f"must be an integer >= {low}, found {value!r}",
                          f"pass {name}={max(low, 1)} or more")


def _new_marker() -> bytes:
    return LEASE_PREFIX + os.urandom(16).hex().encode()


def _is_reserved(value: bytes | str) -> bool:
    if isinstance(value, bytes):
        return value.startswith(RESERVED_PREFIX)
    return value.startswith(_RESERVED_STR)


class LeaseCache:
    """Lease-protected cache-aside reads over one Redis (or Cluster) client. See the module doc.

    ``client`` is a redis-py client (``redis.Redis``, ``redis.cluster.RedisCluster``), or a URI in
    DeltaForge's grammar: ``redis://``/``rediss://``, ``redis+sentinel://``, ``redis+cluster://``
    (``connect_timeout``, ``socket_timeout``, TLS parameters; a bad URI raises ConfigError).
    ``ttl_ms`` is the TTL of stored values (None: none, the invalidation worker removes them);
    ``cache_none`` stores the negative marker when the loader returns None, with
    ``negative_ttl_ms`` (else ``ttl_ms``).
    """

    def __init__(self, client: redis.Redis | RedisCluster | str, *, lease_ms: int = 5000, wait_ms: int = 100,
                 poll_ms: int = 5, ttl_ms: int | None = None, cache_none: bool = False,
                 negative_ttl_ms: int | None = None) -> None:
        _check_int("lease_ms", lease_ms, 1)
        _check_int("wait_ms", wait_ms, 0)
        _check_int("poll_ms", poll_ms, 1)
        if ttl_ms is not None:
            _check_int("ttl_ms", ttl_ms, 1)
        if negative_ttl_ms is not None:
            _check_int("negative_ttl_ms", negative_ttl_ms, 1)
            if not cache_none:
                raise ConfigError("LeaseCache(negative_ttl_ms=...)", "has no effect without cache_none",
                                  "pass cache_none=True, or drop negative_ttl_ms")
        self.lease_ms = lease_ms
        self.wait_ms = wait_ms
        self.poll_ms = poll_ms
        self.ttl_ms = ttl_ms
        self.cache_none = cache_none
        self.negative_ttl_ms = negative_ttl_ms
        self._owns_client = isinstance(client, str)
        # redis.Redis or RedisCluster: the same calls, typed apart. A URI in the project's grammar
        # (dsn.py), not redis-py's own URL parser, as the worker does.
        self._client: Any = (redis_py_client(parse_redis_uri(client, "LeaseCache(client=...)"))
                             if isinstance(client, str) else client)
        self._cluster = is_cluster(self._client)
        self._encoder: Any = self._client.get_encoder()  # redis-py's Encoder is untyped
        # register_script: EVALSHA, and SCRIPT LOAD + retry on NOSCRIPT (a flushed script cache)
        self._acquire: Script = self._client.register_script(lua_source("acquire"))
        self._fill: Script = self._client.register_script(lua_source("fill"))
        self._release: Script = self._client.register_script(lua_source("release"))
        self._fill_ttl = ttl_ms or 0  # "0": no TTL (fill.lua)
        self._negative_ttl = (negative_ttl_ms if negative_ttl_ms is not None else ttl_ms) or 0
        self._lock = threading.Lock()
        self.stats = LeaseStats()

    @property
    def client(self) -> redis.Redis | RedisCluster:
        return self._client  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the client if this instance made it from a URI (a passed client is the caller's)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> LeaseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------------

    def get(self, key: str, loader: Callable[[], bytes | str | None]) -> bytes | str | None:
        """The cached value of ``key``, else ``loader()``'s (stored if the lease survived)."""
        marker = _new_marker()
        kind, value = self._classify(self._acquire(keys=[key], args=[marker, self.lease_ms]))
        if kind == _WAIT:
            self._count(waits=1)
            deadline = time.monotonic() + self.wait_ms / 1000.0
            while kind == _WAIT:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(self.poll_ms / 1000.0, left))
                kind, value = self._classify(self._acquire(keys=[key], args=[marker, self.lease_ms]))
        if kind == _HIT:
            self._count(hits=1)
            return value  # type: ignore[no-any-return]
        if kind == _NEGATIVE:
            self._count(hits=1, negative_hits=1)
            return None
        if kind == _LEASE:
            self._count(misses=1)
            return self._load_and_fill(key, marker, loader)
        # still leased by another reader after wait_ms, or a marker this version does not know
        self._count(read_through=1)
        return self._client_form(self._encode(key, loader()))

    def get_many(self, keys: Sequence[str],
                 loader: Callable[[list[str]], Mapping[str, bytes | str | None]]) -> dict[str, Value]:
        """``{key: value}`` for every key, like :meth:`get` but batched (see the module doc).

        ``loader`` gets the keys to load, once for the keys leased in the first round and once more
        for each later round that takes leases (a waited-on lease was revoked or expired), plus
        once for all keys read through; a key missing from its mapping counts as None.
        """
        if isinstance(keys, (str, bytes)):
            raise ConfigError("get_many(keys=...)", f"expected a sequence of keys, found {keys!r}",
                              "pass a list of keys, or call get() for one key")
        order = list(dict.fromkeys(keys))  # one acquire per distinct key
        out: dict[str, Value] = {}
        through: list[str] = []
        marker = _new_marker()
        pending = order
        deadline: float | None = None
        while pending:
            replies = self._batch([(self._acquire, k, [marker, self.lease_ms]) for k in pending])
            leased: list[str] = []
            waiting: list[str] = []
            error: Exception | None = None
            hits = negative = 0
            for key, reply in zip(pending, replies, strict=True):
                if isinstance(reply, Exception):
                    error = error or reply
                    continue
                kind, value = self._classify(reply)
                if kind == _HIT:
                    hits += 1
                    out[key] = value
                elif kind == _NEGATIVE:
                    negative += 1
                    out[key] = None
                elif kind == _LEASE:
                    leased.append(key)
                elif kind == _WAIT:
                    waiting.append(key)
                else:
                    through.append(key)
            self._count(hits=hits + negative, negative_hits=negative, misses=len(leased))
            if error is not None:
                self._release_quietly(leased, marker)
                raise error
            if deadline is None:
                self._count(waits=len(waiting))
            if leased:
                out.update(self._load_and_fill_many(leased, marker, loader))
            if deadline is None:
                # measured from the end of the first round, after this call's own loads: those
                # take about as long as the other readers' loads we are waiting for
                deadline = time.monotonic() + self.wait_ms / 1000.0
            left = deadline - time.monotonic()
            if waiting and left <= 0:
                through.extend(waiting)
                break
            if waiting:
                time.sleep(min(self.poll_ms / 1000.0, left))
            pending = waiting
        if through:
            self._count(read_through=len(through))
            loaded = self._call_loader(loader, through)
            for key in through:
                out[key] = self._client_form(self._encode(key, loaded.get(key)))
        return {key: out[key] for key in order}

    def invalidate(self, *keys: str) -> int:
        """UNLINK ``keys``, exactly what the invalidation worker does; returns how many existed.

        Deleting a leased key revokes the lease: its holder's fill will be refused."""
        if not keys:
            return 0
        if not self._cluster:
            return int(self._client.unlink(*keys))
        # a multi-key command must not span slots (CROSSSLOT): one UNLINK per slot, one pipeline
        pipe = self._client.pipeline(transaction=False)
        for group in by_slot(keys).values():
            pipe.unlink(*group)
        return sum(int(n) for n in pipe.execute())

    # -- internals -------------------------------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, n in deltas.items():
                if n:
                    setattr(self.stats, name, getattr(self.stats, name) + n)

    def _classify(self, reply: Any) -> tuple[str, Any]:
        tag = reply[0]
        if isinstance(tag, bytes):
            tag = tag.decode()
        if tag != _HIT:
            return (_LEASE, None) if tag == _LEASE else (_WAIT, None)
        value = reply[1]
        if not _is_reserved(value):
            return _HIT, value
        if value in (NEGATIVE_MARKER, _NEGATIVE_STR):
            return _NEGATIVE, None
        return _FOREIGN, None  # a marker of a later protocol version: never return it as data

    def _encode(self, key: str, value: object) -> bytes | None:
        """The loader's value as stored bytes; LoaderValueError if it cannot be stored."""
        if value is None:
            return None
        if not isinstance(value, (bytes, str)):
            raise LoaderValueError(f"the loader returned {type(value).__name__} for {key!r}",
                                   "return bytes, str or None")
        raw: bytes = self._encoder.encode(value)
        if raw.startswith(RESERVED_PREFIX):
            raise LoaderValueError(
                f"the loader's value for {key!r} starts with the reserved prefix \\x00df: "
                f"({raw[:16]!r}); it would read back as a protocol marker",
                "encode such values (e.g. prefix them with another byte) before caching")
        return raw

    def _client_form(self, raw: bytes | None) -> Value:
        # what a hit on this value would return: bytes, or str with decode_responses=True
        if raw is None:
            return None
        value: bytes | str = self._encoder.decode(raw)
        return value

    def _load_and_fill(self, key: str, marker: bytes, loader: Callable[[], object]) -> Value:
        try:
            raw = self._encode(key, loader())
        except BaseException:
            # give the lease back so that waiters need not wait for it to expire
            self._release_quietly([key], marker)
            raise
        if raw is None and not self.cache_none:
            if self._release(keys=[key], args=[marker]):
                self._count(released=1)
            return None
        if raw is None:
            stored = self._fill(keys=[key], args=[marker, NEGATIVE_MARKER, self._negative_ttl])
        else:
            stored = self._fill(keys=[key], args=[marker, raw, self._fill_ttl])
        if stored:
            self._count(fills=1)
        else:
            self._count(refused=1)
        return self._client_form(raw)

    @staticmethod
    def _call_loader(loader: Callable[[list[str]], Mapping[str, object]],
                     keys: list[str]) -> Mapping[str, object]:
        loaded = loader(list(keys))
        if not isinstance(loaded, Mapping):
            raise LoaderValueError(f"the get_many loader returned {type(loaded).__name__}",
                                   "return a mapping {key: bytes | str | None}")
        return loaded

    def _load_and_fill_many(self, keys: list[str], marker: bytes,
                            loader: Callable[[list[str]], Mapping[str, object]]) -> dict[str, Value]:
        try:
            loaded = self._call_loader(loader, keys)
            raws = {key: self._encode(key, loaded.get(key)) for key in keys}
        except BaseException:
            self._release_quietly(keys, marker)
            raise
        calls: list[tuple[Script, str, list[Any]]] = []
        for key, raw in raws.items():
            if raw is not None:
                calls.append((self._fill, key, [marker, raw, self._fill_ttl]))
            elif self.cache_none:
                calls.append((self._fill, key, [marker, NEGATIVE_MARKER, self._negative_ttl]))
            else:
                calls.append((self._release, key, [marker]))
        replies = self._batch(calls)
        fills = refused = released = 0
        for (script, _key, _args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply  # the other fills stand; unfilled leases expire after lease_ms
            if script is self._release:
                released += bool(reply)
            elif reply:
                fills += 1
            else:
                refused += 1
        self._count(fills=fills, refused=refused, released=released)
        return {key: self._client_form(raw) for key, raw in raws.items()}

    def _release_quietly(self, keys: list[str], marker: bytes) -> None:
        """Release leases while another error is on its way up: a Redis failure here must not hide
        it, and a lease that cannot be released expires after lease_ms anyway."""
        if not keys:
            return
        try:
            replies = self._batch([(self._release, key, [marker]) for key in keys])
        except RedisError:
            return
        self._count(released=sum(1 for r in replies if r == 1))

    def _batch(self, calls: list[tuple[Script, str, list[Any]]]) -> list[Any]:
        """Run single-key script calls in one non-transactional pipeline; return their replies,
        errors as exception values.

        EVALSHA directly rather than redis-py's pipelined Script, which sends SCRIPT EXISTS first
        (one more round trip per batch). A NOSCRIPT reply (the script cache was flushed) ran
        nothing, so those calls are rerun once after SCRIPT LOAD."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            for i in todo:
                script, key, args = calls[i]
                # execute_command: the cluster pipeline refuses pipe.evalsha(), not the command
                pipe.execute_command("EVALSHA", script.sha, 1, key, *args)
            results = pipe.execute(raise_on_error=False)
            retry: list[int] = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError) and attempt == 1:
                    retry.append(i)
                else:
                    replies[i] = result
            if not retry:
                break
            for script in {id(calls[i][0]): calls[i][0] for i in retry}.values():
                self._client.script_load(script.script)
            todo = retry
        return replies
