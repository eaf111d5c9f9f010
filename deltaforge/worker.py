"""``deltaforge worker``: the cache-invalidation consumer (DESIGN.md §7).

The Python counterpart of the seed's Node worker (``seed/cache-invalidation.md``), built for
production. It reads the stream the engine writes, deletes the cache keys the JavaScript processor
computed, and acknowledges the entries.

Two Redis connections, by role: the *stream* client (``--redis-uri``, env ``REDIS_URI``) sends
XGROUP/XREADGROUP/XAUTOCLAIM/XACK; the *cache* client (``--cache-uri``, env ``CACHE_REDIS_URI``,
default the same URI) sends UNLINK/SCAN. They may be different deployments or different db numbers
of one server. When both URIs parse the same there is one client and one connection. Each role
has its ACL (``WORKER_STREAM_ACL``, ``WORKER_CACHE_ACL``; ``WORKER_ACL`` is both for one user;
``WORKER_CLUSTER_ACL`` on a cluster), and every error names the option whose server failed.

Topologies (docs/worker.md, "Redis Cluster and Sentinel"): either URI may be ``redis://``, a
``redis+sentinel://`` master (followed across failovers) or a ``redis+cluster://``, each through
:func:`deltaforge.redisclient.redis_py_client`. On a cluster the stream commands route by the
stream's slot; a batch's keys are UNLINKed one command per hash slot (CROSSSLOT otherwise), all in
one cluster pipeline (one round trip per master), and patterns are SCANned on every master.
``rediss+cluster://``/``rediss+sentinel://``: TLS to every node and sentinel, verified as for
``rediss://``; a failed TLS handshake (a wrong CA, a certificate not naming the address) stops the
worker with the fix instead of being retried as an outage.

Wire format (DESIGN.md §4): ``XADD <stream> * df-event <payload> event_id <id> idempotency_key <k>``.
The payload is read from the field ``df-event`` (else the first field, as the seed reads
``fields[1]``) and may be any of the three envelopes, detected by shape:

- ``native``: the event object; keys in ``(after or before)._cache_keys``;
- ``debezium``: ``{"schema": null, "payload": <native>}``;
- ``cloudevents``: ``{"specversion": "1.0", "data": {before, after, op, ...}, "subject": ...}``.

Contract:

- The consumer group is created if missing (``XGROUP CREATE <stream> <group> 0 MKSTREAM``), also
  after a Redis restart without persistence lost it (``NOGROUP``).
- One batch = one XREADGROUP of up to ``count`` entries. All keys of the batch are UNLINKed in one
  round trip (keys containing ``*`` go through SCAN MATCH + UNLINK first, as the seed does), and
  the entries are XACKed only after the deletes: in the same MULTI/EXEC when the stream and the
  cache are one client that is not a cluster's (two round trips per batch in all), else in a
  second round trip on the stream's client. A crash before the ack re-delivers the batch (at-least-once); deleting a key
  twice is harmless, and a LeaseCache lease (docs/cache-protocol.md) is revoked by any delete.
- Entries this consumer read but did not ack (a Redis connection lost mid-batch, or a restart
  with the same ``--consumer``) are re-read first (``XREADGROUP ... 0``). Entries left pending by
  dead consumers are taken over with XAUTOCLAIM once idle longer than ``claim_idle_ms``
  (0 disables this: with 0, live consumers' entries would be stolen).
- Trimmed entries are never dropped silently. An entry deleted from the stream while pending
  (trimmed by ``max_len_hard``, or XDEL) comes back from XREADGROUP with no fields, and XAUTOCLAIM
  lists such ids apart: they are acked (so they cannot loop), counted
  (``deltaforge_worker_trimmed_pending_total``) and logged as a warning with their number and id
  range. A *gap entry* (``df-gap`` field, written by the engine when ``max_len_hard`` cut entries a
  group had not acknowledged, see ``deltaforge/sink/trim.py``) is logged as an error naming the
  stream and the lost id range, counted (``deltaforge_worker_gaps_total``,
  ``deltaforge_worker_gap_entries_total``) and acked.
- Poison entries (payload that is not a DeltaForge event) are logged with their id and acked:
  they can never block the group. An entry without ``_cache_keys`` (or with none) is acked
  silently, like the seed, which logs nothing for it.
- ``double_delete_ms > 0``: every batch's keys are deleted a second time that many ms later, to
  close the read-fill race (a reader that missed the cache, read the old row before the commit and
  fills the cache after the first delete). The second delete is scheduled, never slept for per
  event; XREADGROUP's BLOCK is shortened so it runs on time. It is best effort: the entries are
  acked after the first delete, so a crash before the second one loses only the second delete.
- Output: one line per event on stdout in the seed's words, ``Invalidated 5 keys for app.users``,
  written per batch after the ack. Everything else (stats, poison, reconnects) goes to logging
  (stderr).
- Metrics: counters (events, keys, poison, reclaimed, ...) and two lag figures, both taken when
  the batch's UNLINK round trip has returned (``time.time()``), one observation per event with
  keys:

  - *stream lag*: from the entry id's millisecond part (Redis' clock at XADD) to the delete;
  - *binlog lag*: from the event's binlog timestamp (``ts_ms``, else ``source.ts_ms``) to the
    delete. MySQL/MariaDB binlog timestamps have one-second resolution, so this figure reads up
    to 1 s high; that is why the stream figure exists.

  Both need the worker's clock in sync with Redis' and MySQL's (same host, or NTP); a negative
  lag (clock skew) counts as 0. Histograms ``deltaforge_worker_stream_lag_seconds``,
  ``deltaforge_worker_binlog_lag_seconds`` and ``deltaforge_worker_batch_seconds`` (one batch's
  delete round trip), p50/p99 over the recent window in the stats line logged every
  ``stats_interval_s``; ``--metrics-port`` serves them through prometheus-client on 127.0.0.1.

Hazards:

- Shutdown (``request_stop`` from a signal handler, or the ``stop`` event) is noticed between
  batches: the worker finishes and acks the batch in hand, then exits 0. A blocked XREADGROUP is
  not interrupted (that could leave delivered entries pending), so shutdown takes up to
  ``block_ms`` (plus ``double_delete_ms`` for the last second deletes). A second signal exits at
  once (128 + signal number) leaving the batch pending, to be re-read or reclaimed.
- Keys matched by a pattern are never the stream itself (``*`` would otherwise delete it) when the
  cache may be the stream's server and db (:func:`_same_db`). For two single servers "same"
  compares host (``localhost``, ``127.0.0.1`` and ``::1`` count as one), port and db: reach one
  server under two different names and a broad pattern can delete the stream. With a cluster or
  Sentinel on either side the stream is spared unless the URIs prove otherwise (another db,
  another Sentinel service): conservative.
- Connection loss (or LOADING, timeouts) on either server is retried with capped exponential
  backoff, forever, by this loop alone (redis-py's own retries are off, so every failure is
  logged at once); the batch in hand stays pending and is re-read. So are a failover or a slot
  migration in progress (READONLY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, and UNBLOCKED: a master
  demoted, or the stream's key migrated away, ends a blocked XREADGROUP with it); after any
  retried error a cluster client re-reads its slot map before the next attempt. A cluster client
  connects when built, so it is built in the loop: an unreachable cluster at start is retried too. Only errors the operator must
  fix (auth, ACL, a stream key of the wrong type) end the worker, as a one-line
  :class:`~deltaforge.errors.SinkError` naming ``--redis-uri`` or ``--cache-uri``. The cache
  connection is opened (AUTH, SELECT) at start, so a wrong cache password shows at once rather
  than with the first batch.
- SCAN over a pattern walks the whole keyspace; patterns are de-duplicated per batch but stay
  expensive on large databases. Prefer exact keys in the processor.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from http.server import ThreadingHTTPServer
from typing import Any, Literal, TextIO, TypeVar

import click
import msgspec
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from redis.exceptions import RedisClusterException, SlotNotCoveredError

from deltaforge.dsn import RedisURI, parse_redis_uri, redact
from deltaforge.errors import ConfigError, DeltaForgeError, SinkError
from deltaforge.metrics import serve_http
from deltaforge.redisclient import by_slot, is_cluster, redis_py_client, tls_failure

# Every command the worker sends, by connection (README, Security; tests/test_security.py runs
# worker users with exactly these). +auth/+select: the login, on any connection.
_STREAM_COMMANDS = ("+xgroup|create", "+xreadgroup", "+xautoclaim", "+xack")
_CACHE_COMMANDS = ("+unlink", "+scan")
_LOGIN_ACL = ("+select", "+auth")
#: the stream's user (``--redis-uri``), on ``~<stream>``
WORKER_STREAM_ACL = (*_STREAM_COMMANDS, *_LOGIN_ACL)
#: the cache's user (``--cache-uri``), on ``~<cache key patterns>``
WORKER_CACHE_ACL = (*_CACHE_COMMANDS, *_LOGIN_ACL)
#: one user for both (no ``--cache-uri``): the union, and MULTI/EXEC (a batch's deletes and its ack
#: go in one transaction, one round trip)
WORKER_ACL = (*_STREAM_COMMANDS, *_CACHE_COMMANDS, "+multi", "+exec", *_LOGIN_ACL)
#: and on a Redis Cluster, what redis-py's cluster client sends besides: the slot map, the command
#: table (and COMMAND GETKEYS for XREADGROUP's movable keys), ASKING during a slot migration
WORKER_CLUSTER_ACL = ("+cluster|slots", "+command", "+asking")

STREAM_OPTION = "--redis-uri (REDIS_URI)"
CACHE_OPTION = "--cache-uri (CACHE_REDIS_URI)"

logger = logging.getLogger("deltaforge.worker")

#: keys per UNLINK command inside the pipeline (keeps single commands small)
_UNLINK_CHUNK = 512
#: SCAN COUNT hint for pattern keys
_SCAN_COUNT = 1000
#: lag samples kept for the percentiles of the stats line
_LAG_WINDOW = 8192
#: histogram bounds (seconds) of the lags and the batch time: sub-millisecond to a backlog
LAG_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: cache hosts that are this machine: the same server as the stream's under another spelling
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0


# --- payload shapes --------------------------------------------------------------------------
# Only the fields the worker needs are declared: msgspec skips the rest (row columns, source,
# transaction, tags) without allocating them.


class _Image(msgspec.Struct):
    cache_keys: list[str | int] | None = msgspec.field(default=None, name="_cache_keys")


class _Source(msgspec.Struct):
    db: str | None = None
    table: str | None = None
    ts_ms: int | float | None = None


class _Body(msgspec.Struct):
    """A native event, a Debezium ``payload`` or a CloudEvents ``data``."""

    table: str | None = None
    before: _Image | None = None
    after: _Image | None = None
    ts_ms: int | float | None = None
    source: _Source | None = None


class Gap(msgspec.Struct):
    """The payload of a gap entry (``deltaforge/sink/trim.py``): entries cut by ``max_len_hard``."""

    stream: str = ""
    first_id: str = ""
    last_id: str = ""
    entries: int = 0
    unacked: dict[str, int] = msgspec.field(default_factory=dict)
    max_len_hard: int | None = None
    pipeline: str | None = None
    sink: str | None = None
    reason: str = "max_len_hard"


class _Wire(msgspec.Struct):
    """The top level of any of the three envelopes, or a gap entry (``df_gap``)."""

    table: str | None = None
    before: _Image | None = None
    after: _Image | None = None
    ts_ms: int | float | None = None
    source: _Source | str | None = None  # CloudEvents' `source` is a URI string
    payload: _Body | None = None  # debezium
    data: _Body | None = None  # cloudevents
    subject: str | None = None  # cloudevents
    time: str | None = None  # cloudevents
    df_gap: Gap | None = None  # a gap entry


_decoder = msgspec.json.Decoder(_Wire)


class ParsedEvent(msgspec.Struct):
    """What the worker takes from one stream entry."""

    table: str
    keys: list[str]
    ts_ms: float | None
    gap: Gap | None = None
    """set for a gap entry (no keys): entries the engine's max_len_hard cut before this group acked them"""


def parse_payload(raw: bytes | str) -> ParsedEvent:
    """Decode one payload in any envelope. Raises ``msgspec.DecodeError``/``ValidationError``."""
    wire = _decoder.decode(raw)
    if wire.df_gap is not None:
        return ParsedEvent(table="", keys=[], ts_ms=None, gap=wire.df_gap)
    body: _Wire | _Body
    if wire.payload is not None:
        body = wire.payload
    elif wire.data is not None:
        body = wire.data
    else:
        body = wire
    record = body.after if body.after is not None else body.before
    keys = record.cache_keys if record is not None and record.cache_keys else []
    if keys and not all(type(k) is str for k in keys):
        keys = [k if isinstance(k, str) else str(k) for k in keys]
    src = body.source if isinstance(body.source, _Source) else None
    table = body.table
    if table is None and src is not None and src.db and src.table:
        table = f"{src.db}.{src.table}"
    if table is None and body is wire.data:
        table = wire.subject
    ts: float | None = body.ts_ms
    if ts is None and src is not None:
        ts = src.ts_ms
    if ts is None and wire.time:
        try:
            ts = datetime.fromisoformat(wire.time.replace("Z", "+00:00")).timestamp() * 1000.0
        except ValueError:
            ts = None
    return ParsedEvent(table=table or "unknown", keys=keys, ts_ms=ts)  # type: ignore[arg-type]  # str|int narrowed above


# --- metrics ---------------------------------------------------------------------------------

Figure = Literal["stream", "binlog"]

#: (name without ``deltaforge_worker_`` and ``_total``, help) of every counter; WorkerMetrics has
#: an int attribute of each name
_COUNTERS = (
    ("events", "Stream entries handled (acked)"),
    ("keys", "Cache keys (and patterns) deleted"),
    ("poison", "Unparseable entries acked and skipped"),
    ("reclaimed", "Entries taken over from dead consumers"),
    ("second_deletes", "Delayed second deletes run"),
    ("reconnects", "Redis errors retried with backoff"),
    ("trimmed_pending", "Pending entries found deleted from the stream (trimmed before they were acked), acked"),
    ("gaps", "Gap entries seen: the engine's max_len_hard cut unacked entries"),
    ("gap_entries", "Entries lost for this group according to gap entries"),
)


#: :data:`LAG_BUCKETS_S` in ms, the unit the hot path measures in (no conversion per event)
_BUCKETS_MS = tuple(b * 1000.0 for b in LAG_BUCKETS_S)


class _Histogram:
    """Bucket counts (not cumulative; the last is +Inf) and a sum, observed in ms, exposed in seconds
    over :data:`LAG_BUCKETS_S`.

    Not locked: :class:`WorkerMetrics` holds its lock around both observing and reading.
    """

    __slots__ = ("counts", "doc", "name", "sum_ms")

    def __init__(self, name: str, doc: str) -> None:
        self.name, self.doc = name, doc
        self.counts = [0] * (len(_BUCKETS_MS) + 1)
        self.sum_ms = 0.0

    def observe_many(self, values_ms: Sequence[float]) -> None:
        counts = self.counts
        for v in values_ms:  # ~0.15 µs each, against a batch round trip of ~1 ms
            counts[bisect_left(_BUCKETS_MS, v)] += 1  # bisect_left: a value equal to a bound is in it (le)
        self.sum_ms += sum(values_ms)

    def family(self) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, n in zip((*LAG_BUCKETS_S, math.inf), self.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum_ms / 1000.0)


def _lags_ms(done_ms: float, starts_ms: Sequence[float]) -> list[float]:
    lags = [done_ms - t for t in starts_ms]
    if lags and min(lags) < 0:  # clock skew: counted as 0 (clamped only then, off the common path)
        lags = [max(0.0, lag) for lag in lags]
    return lags


class WorkerMetrics:
    """Counters, lag histograms and lag windows. Updated once per batch by the worker's thread; read
    by the stats log and by ``/metrics`` (another thread, through prometheus-client)."""

    def __init__(self) -> None:
        self.events = 0
        self.keys = 0
        self.poison = 0
        self.reclaimed = 0
        self.second_deletes = 0
        self.reconnects = 0
        #: pending entries found deleted from the stream (trimmed or XDEL'd before they were acked)
        self.trimmed_pending = 0
        #: gap entries seen, and the entries they say this group lost
        self.gaps = 0
        self.gap_entries = 0
        self.stream_lag = _Histogram(
            "deltaforge_worker_stream_lag_seconds",
            "Stream entry id (Redis' clock at XADD) to the cache delete, per event with keys")
        self.binlog_lag = _Histogram(
            "deltaforge_worker_binlog_lag_seconds",
            "Binlog event timestamp to the cache delete, per event with keys (1 s resolution: reads up to 1 s high)")
        self.batch_seconds = _Histogram(
            "deltaforge_worker_batch_seconds", "One batch's delete round trip (UNLINKs, SCANs of patterns)")
        self._windows: dict[Figure, collections.deque[float]] = {
            "stream": collections.deque(maxlen=_LAG_WINDOW), "binlog": collections.deque(maxlen=_LAG_WINDOW)}
        self._lock = threading.Lock()
        self._last_events = 0
        self._last_keys = 0
        self._registry = CollectorRegistry(auto_describe=False)  # its own: never the process-global one
        self._registry.register(self)  # type: ignore[arg-type]  # a collector by protocol (collect)

    def record(self, events: int, keys: int, done_ms: float, xadd_ms: Sequence[float],
               binlog_ms: Sequence[float], batch_ms: float | None) -> None:
        """One batch: its counts; for each event with keys, its XADD time and its binlog time (if
        any), to be subtracted from ``done_ms`` (the wall clock when the deletes had run); the
        delete round trip."""
        stream_lags, binlog_lags = _lags_ms(done_ms, xadd_ms), _lags_ms(done_ms, binlog_ms)
        with self._lock:
            self.events += events
            self.keys += keys
            if stream_lags:
                self.stream_lag.observe_many(stream_lags)
                self._windows["stream"].extend(stream_lags)
            if binlog_lags:
                self.binlog_lag.observe_many(binlog_lags)
                self._windows["binlog"].extend(binlog_lags)
            if batch_ms is not None:
                self.batch_seconds.observe_many((batch_ms,))

    def lag_percentiles(self, figure: Figure) -> tuple[float | None, float | None]:
        """p50 and p99 of the ``stream`` or ``binlog`` lag over the recent window, in ms."""
        with self._lock:
            lags = sorted(self._windows[figure])
        if not lags:
            return None, None
        last = len(lags) - 1
        return lags[round(0.50 * last)], lags[round(0.99 * last)]

    def summary(self) -> str:
        """One log line; counts are since the previous summary."""
        events, keys = self.events - self._last_events, self.keys - self._last_keys
        self._last_events, self._last_keys = self.events, self.keys
        parts = []
        figures: tuple[tuple[Figure, str, str], ...] = (("stream", ".1f", ""),
                                                         ("binlog", ".0f", " (1 s resolution)"))
        for figure, fmt, note in figures:
            p50, p99 = self.lag_percentiles(figure)
            parts.append(f"{figure} n/a" if p50 is None or p99 is None
                         else f"{figure} p50 {p50:{fmt}} ms p99 {p99:{fmt}} ms{note}")
        return (f"worker stats: {events} events, {keys} keys since last report "
                f"({self.events} events, {self.poison} poison, {self.reclaimed} reclaimed, "
                f"{self.trimmed_pending} trimmed while pending, {self.gaps} gaps in total); "
                f"lag: {', '.join(parts)}")

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        """prometheus-client's collector protocol: every counter and histogram, read under the lock."""
        with self._lock:
            families: list[CounterMetricFamily | HistogramMetricFamily] = [
                CounterMetricFamily(f"deltaforge_worker_{name}", doc, value=getattr(self, name))
                for name, doc in _COUNTERS]
            families += [h.family() for h in (self.stream_lag, self.binlog_lag, self.batch_seconds)]
        yield from families

    def prometheus(self) -> str:
        """The Prometheus text exposition (what ``/metrics`` serves)."""
        return generate_latest(self._registry).decode()


def serve_metrics(metrics: WorkerMetrics, port: int, bind: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``/metrics`` on ``bind``:``port`` (0 = any free port) from a daemon thread."""

    def render() -> tuple[int, str]:
        return 200, metrics.prometheus()

    return serve_http({"/metrics": render, "/": render}, port, "worker-metrics", bind=bind)


# --- the worker ------------------------------------------------------------------------------


class _Server(msgspec.Struct, frozen=True):
    """One of the worker's Redis servers, as its errors name it."""

    name: str  # "Redis", "the stream's Redis", "the cache Redis"
    option: str  # STREAM_OPTION or CACHE_OPTION
    redacted: str
    acl: tuple[str, ...]
    keys: str  # the ACL key patterns the user needs there

    def at(self) -> str:
        return f"{self.name} at {self.redacted}"


class _Retry(Exception):
    """Internal: a transient Redis failure on ``server``; the loop backs off and tries again."""

    def __init__(self, reason: str, server: _Server) -> None:
        super().__init__(reason)
        self.server = server


class _CacheFailed(Exception):
    """Internal: a Redis error from the cache client, so that it is blamed on the cache's URI
    (``--cache-uri``; ``--redis-uri`` when the two are one client)."""

    def __init__(self, error: redis.RedisError | RedisClusterException) -> None:
        super().__init__(str(error))
        self.error = error


#: what the stream's client raises that the loop classifies (a RedisClusterException is no RedisError)
_STREAM_ERRORS = (redis.AuthenticationError, redis.ConnectionError, redis.TimeoutError, redis.ResponseError,
                  redis.exceptions.ClusterError, RedisClusterException)

#: error codes redis-py strips from the message, naming them by the exception's class instead
_CODE_CLASSES: tuple[tuple[type[redis.RedisError], str], ...] = (
    (redis.exceptions.NoPermissionError, "NOPERM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),  # a ClusterDownError: before it
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.MovedError, "MOVED"),  # an AskError: before it
    (redis.exceptions.AskError, "ASK"),
)

#: codes of a failover or a slot migration in progress, or a restart: retried, never fatal.
#: UNBLOCKED: a master turned replica (CLUSTER FAILOVER, a Sentinel failover) ends its blocked
#: XREADGROUPs with it; MOVED/ASK reach the loop only when redis-py's redirect budget ran out.
_TRANSIENT_CODES = frozenset({"LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED",
                              "MOVED", "ASK"})
#: RedisClusterException messages (no RedisError underneath) of a cluster that is changing or unreachable
_CLUSTER_TRANSIENT = ("cannot be connected", "not covered", "could not agree", "No targets")


def _redis_cause(e: BaseException) -> redis.RedisError | None:
    """The RedisError a RedisClusterException wraps (a seed's AuthenticationError, ConnectionError,
    the NOPERM behind "Cluster mode is not enabled"), if any."""
    seen: BaseException | None = e.__cause__ or e.__context__
    for _ in range(8):  # a short chain; bounded in case of a cycle
        if seen is None or isinstance(seen, redis.RedisError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _error_code(e: redis.RedisError) -> str:
    """The error reply's code (``NOPERM``, ``NOGROUP``, ...), whether redis-py kept it in the message,
    named it by class, or a pipeline prefixed the message (``Command # 1 (UNLINK k) of pipeline
    caused error: ...``)."""
    for cls, code in _CODE_CLASSES:
        if isinstance(e, cls):
            return code
    msg = str(e)
    _, sep, reply = msg.partition("caused error: ")
    return (reply if sep else msg).split(" ", 1)[0]


def _same_db(a: RedisURI, b: RedisURI) -> bool:
    """Whether the stream's URI ``a`` and the cache's ``b`` may reach the same keyspace, so that
    patterns must spare the stream. Conservative: True whenever the URIs cannot tell.

    Two single servers: same host (spelled differently for loopback only), port and db. Two
    Sentinel URIs: same service and db (other sentinels may watch the same master). Anything with
    a cluster, or a Sentinel master against a single address: the same db is enough (overlapping
    seeds say "same cluster", disjoint ones do not say "another")."""
    if a.db != b.db:
        return False

    def where(u: RedisURI) -> tuple[str, int]:
        host = u.host.lower()
        return ("loopback" if host in _LOOPBACK else host, u.port)
    if a.topology == b.topology == "single":
        return where(a) == where(b)
    if a.topology == b.topology == "sentinel":
        return a.service == b.service
    return True


T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class InvalidationWorker:
    """Consumes invalidation events from one stream with a consumer group. See the module doc."""

    def __init__(
        self,
        redis_uri: str,
        stream: str = "cache:invalidations",
        group: str = "cache-workers",
        consumer: str | None = None,
        count: int = 500,
        block_ms: int = 5000,
        double_delete_ms: int = 0,
        claim_idle_ms: int = 60000,
        *,
        stats_interval_s: float = 60.0,
        out: TextIO | None = None,
        cache_uri: str | None = None,
    ) -> None:
        uri = parse_redis_uri(redis_uri, STREAM_OPTION)  # one-line ConfigError if malformed
        cache = uri if cache_uri is None else parse_redis_uri(cache_uri, CACHE_OPTION)
        for name, value, low in (("--count", count, 1), ("--block-ms", block_ms, 1),
                                 ("--double-delete-ms", double_delete_ms, 0),
                                 ("--claim-idle-ms", claim_idle_ms, 0)):
            if value < low:
                # BLOCK 0 would mean "forever": the worker could never notice a stop request
                raise ConfigError(name, f"must be >= {low}, found {value}", f"pass {name} {max(low, 1)} or more")
        self.uri_redacted = redact(redis_uri)
        self.stream = stream
        self._stream_key = stream.encode()
        self.group = group
        self.consumer = consumer or f"worker-{socket.gethostname()}-{os.getpid()}"
        self.count = count
        self.block_ms = block_ms
        self.double_delete_ms = double_delete_ms
        self.claim_idle_ms = claim_idle_ms
        self.stats_interval_s = stats_interval_s
        self._out = out
        self.metrics = WorkerMetrics()
        self._stream_uri, self._cache_uri = uri, cache
        #: one client for both roles (equal URIs): one connection, and the batch's deletes and ack in
        #: one MULTI/EXEC unless it is a cluster (the stream and the keys live in different slots)
        self._one_client = cache == uri
        self._transactional = self._one_client and uri.topology != "cluster"
        cluster_acl = WORKER_CLUSTER_ACL if uri.topology == "cluster" else ()
        if self._one_client:
            self.cache_uri_redacted = self.uri_redacted
            self._stream_server = self._cache_server = _Server(
                "Redis", STREAM_OPTION, self.uri_redacted, (*WORKER_ACL, *cluster_acl),
                f"~{stream} ~<cache key patterns>")
        else:
            assert cache_uri is not None
            self.cache_uri_redacted = redact(cache_uri)
            self._stream_server = _Server("the stream's Redis", STREAM_OPTION, self.uri_redacted,
                                          (*WORKER_STREAM_ACL, *cluster_acl), f"~{stream}")
            self._cache_server = _Server(
                "the cache Redis", CACHE_OPTION, self.cache_uri_redacted,
                (*WORKER_CACHE_ACL, *(WORKER_CLUSTER_ACL if cache.topology == "cluster" else ())),
                "~<cache key patterns>")
        # The clients: redis.Redis (single, or the sentinels' master, which follows failovers) or a
        # RedisCluster. A cluster client connects when built and fails then, so it is built in the
        # loop (_open), where its errors are retried or reported like any other; the others now.
        self._redis: Any = None
        #: UNLINK and SCAN go here: the stream's client itself when the URIs are equal (one connection)
        self._cache: Any = None
        self._cache_connected = self._one_client
        #: set by a retried error: re-read the cluster clients' slot maps before the next attempt
        self._refresh_slots = False
        if uri.topology != "cluster":
            self._open_stream()
        if not self._one_client and cache.topology != "cluster":
            self._open_cache()
        #: spare the stream from patterns only where it lives: elsewhere a key of that name is a cache key
        self._spare_stream = _same_db(uri, cache)
        self._group_ready = False
        self._recover_own = True  # re-read our own unacked entries first (restart with same name)
        self._claim_cursor = "0-0"
        # Reclaim at start (dead workers' leftovers), then every half idle period.
        self._claim_every_s = min(max(claim_idle_ms / 2000.0, 0.1), 30.0)
        self._next_claim = time.monotonic()
        # (due monotonic time, plain keys, patterns): appended in due order since the delay is fixed
        self._second: collections.deque[tuple[float, list[str], list[str]]] = collections.deque()
        self._stop_requested = False

    # -- lifecycle ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Async-signal-safe: only sets a flag, checked between batches."""
        self._stop_requested = True

    def close(self) -> None:
        for client in {id(c): c for c in (self._redis, self._cache) if c is not None}.values():
            client.close()

    def _open_stream(self) -> None:
        # The read timeout must outlast BLOCK, or every idle XREADGROUP would look like a dead socket;
        # retries=0: this loop's backoff owns the retries and logs each.
        self._redis = redis_py_client(self._stream_uri, socket_timeout=self.block_ms / 1000.0 + 10.0, retries=0,
                                      socket_keepalive=True, decode_responses=False)
        if self._one_client:
            self._cache = self._redis

    def _open_cache(self) -> None:
        # no BLOCK here: UNLINK and SCAN answer at once, so a silent server is a dead one after 10 s
        # (unless the URI says otherwise)
        timeout = None if self._cache_uri.params.get("socket_timeout") else 10.0
        self._cache = redis_py_client(self._cache_uri, socket_timeout=timeout, retries=0,
                                      socket_keepalive=True, decode_responses=False)

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set or :meth:`request_stop` is called.

        Transient Redis failures are retried with backoff; operator errors raise ``SinkError``.
        On stop, the batch in hand is finished and acked and due second deletes are run.
        """
        def stopping() -> bool:
            return self._stop_requested or stop.is_set()

        delay = _BACKOFF_FIRST_S
        next_stats = time.monotonic() + self.stats_interval_s
        cache = "" if self._one_client else f", cache {self.cache_uri_redacted}"
        logger.info("Starting cache invalidation worker: %s (stream %s, group %s, %s%s)",
                    self.consumer, self.stream, self.group, self.uri_redacted, cache)
        try:
            while not stopping():
                try:
                    self.process_once()
                    delay = _BACKOFF_FIRST_S
                except _Retry as e:
                    self.metrics.reconnects += 1
                    logger.warning("%s unavailable (%s); retrying in %.1fs", e.server.at(), e, delay)
                    self._sleep(delay, stopping)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
                now = time.monotonic()
                if now >= next_stats:
                    logger.info("%s", self.metrics.summary())
                    next_stats = now + self.stats_interval_s
            try:
                self._drain_second_deletes(stopping_is_final=True)
            except _CacheFailed as e:
                failure = self._classify(e.error, self._cache_server)
                if isinstance(failure, SinkError):
                    raise failure from None
                # no retries at shutdown: the entries are acked, only the second deletes are lost
                logger.warning("%s unavailable at shutdown (%s): %d batches' delayed second deletes not run",
                               self._cache_server.at(), failure, len(self._second))
        finally:
            logger.info("%s", self.metrics.summary())
            logger.info("worker %s stopped", self.consumer)

    @staticmethod
    def _sleep(seconds: float, stopping: Any) -> None:
        deadline = time.monotonic() + seconds
        while not stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    # -- one iteration --------------------------------------------------------------------------

    def process_once(self) -> int:
        """Run due second deletes, then handle one batch. Returns the number of entries handled.

        Blocks up to ``block_ms`` when the stream has nothing new. Raises ``_Retry`` (internal)
        on transient Redis failures and ``SinkError`` on errors the operator must fix.
        """
        try:
            return self._process_once()
        except _CacheFailed as e:
            raise self._classify(e.error, self._cache_server) from None
        except _STREAM_ERRORS as e:
            raise self._classify(e, self._stream_server) from None

    def _classify(self, e: redis.RedisError | RedisClusterException, server: _Server) -> _Retry | SinkError:
        """The loop's one decision on a Redis error from ``server``: retry, or stop with the fix."""
        if isinstance(e, RedisClusterException):
            cause = _redis_cause(e)
            if cause is not None:
                return self._classify(cause, server)
        if isinstance(e, redis.AuthenticationError):  # before ConnectionError: it is one
            return SinkError(f"{server.at()} refused the credentials: {e}",
                             f"fix the user/password in {server.option}")
        if isinstance(e, (redis.ConnectionError, RedisClusterException)):
            # a failed TLS handshake (a wrong CA, a certificate not naming the address) is no outage:
            # no retry cures it (a sentinel's comes chained to MasterNotFoundError, redisclient.sentinel)
            failed = tls_failure(e, server.option)
            if failed is not None:
                return SinkError(f"TLS to {server.at()} failed: {failed[0]}", failed[1])
        # Whatever was read but not acked stays pending for this consumer: re-read it after the retry
        # (also when the cache failed: the batch's deletes did not all run). A cluster client re-reads
        # its slot map first: the error may be a failover or a migration it has not seen.
        self._recover_own = True
        self._refresh_slots = True
        if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):  # BusyLoadingError is one
            return _Retry(str(e) or type(e).__name__, server)
        if isinstance(e, RedisClusterException):
            msg = str(e)
            if isinstance(e, SlotNotCoveredError) or any(s in msg for s in _CLUSTER_TRANSIENT):
                return _Retry(msg, server)
            return SinkError(f"{server.at()}: the cluster client failed: {msg}",
                             f"check the cluster (redis-cli --cluster check <node>) and the nodes in {server.option}")
        if isinstance(e, redis.exceptions.ClusterError) and not isinstance(e, redis.ResponseError):
            return _Retry(f"cluster: {e}", server)  # redirected too often ("TTL exhausted"): a moving slot map
        msg, code = str(e), _error_code(e)
        if "EXEC without MULTI" in msg:
            # MULTI was refused (NOPERM) and the batch's commands ran unwrapped, in order: the deletes
            # before the ack, so nothing was acked undeleted; EXEC then fails with this.
            code, msg = "NOPERM", f"the user may not run MULTI, so EXEC failed: {msg}"
        if code == "NOGROUP":
            # Redis restarted without persistence, or someone destroyed the group.
            logger.warning("consumer group %s on %s is gone (%s); creating it again", self.group, self.stream, msg)
            self._group_ready = False
            return _Retry("consumer group missing", server)
        if code in _TRANSIENT_CODES:
            return _Retry(f"{code} {msg}" if code not in msg else msg, server)
        if "cluster support disabled" in msg:
            return SinkError(f"{server.at()} is not a cluster node: {msg}",
                             f"use redis:// (or redis+sentinel://) in {server.option} for a server not in cluster mode")
        hint = {"WRONGTYPE": f"--stream {self.stream!r} names a key that is not a stream; pick another name",
                "NOPERM": f"the user in {server.option} needs {' '.join(server.acl)} on {server.keys} "
                          f"(ACL SETUSER <user> ... {server.keys} {' '.join(server.acl)})",
                "NOAUTH": f"put the password in {server.option}"}
        return SinkError(f"{server.at()} rejected a worker command ({code}): {msg}",
                         hint.get(code, "check the Redis server log"))

    def _process_once(self) -> int:
        self._open()
        if not self._group_ready:
            self._ensure_group()
        if self._second:
            self._drain_second_deletes(stopping_is_final=False)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        if self._recover_own:
            entries = self._read("0", block=None)
            if not entries:
                self._recover_own = False
        if not entries and self.claim_idle_ms and time.monotonic() >= self._next_claim:
            entries = self._autoclaim()
            self.metrics.reclaimed += len(entries)
        if not entries:
            entries = self._read(">", block=self._block_ms_now())
        if not entries:
            return 0
        self._handle(entries)
        return len(entries)

    def _ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            logger.info("created consumer group %s on %s", self.group, self.stream)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    def _block_ms_now(self) -> int:
        """BLOCK for XREADGROUP: ``block_ms``, shortened so due second deletes and reclaims run on time."""
        block = float(self.block_ms)
        now = time.monotonic()
        if self._second:
            block = min(block, (self._second[0][0] - now) * 1000.0)
        if self.claim_idle_ms:
            block = min(block, (self._next_claim - now) * 1000.0)
        return max(1, int(block))  # never 0: BLOCK 0 waits forever

    def _read(self, last_id: str, block: int | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        resp: Any = self._redis.xreadgroup(self.group, self.consumer, {self.stream: last_id},
                                           count=self.count, block=block)
        if not resp:
            return []
        if isinstance(resp, dict):  # RESP3 (?protocol=3 in the URI)
            return [e for batches in resp.values() for batch in batches for e in batch]
        return [e for _stream, batch in resp for e in batch]

    def _autoclaim(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        resp = self._redis.xautoclaim(self.stream, self.group, self.consumer,
                                      min_idle_time=self.claim_idle_ms,
                                      start_id=self._claim_cursor, count=self.count)
        cursor, claimed = resp[0], resp[1]
        cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if cursor == "0-0":
            # Walked the whole PEL: rest until the next period.
            self._claim_cursor = "0-0"
            self._next_claim = time.monotonic() + self._claim_every_s
        else:
            self._claim_cursor = cursor  # more to look at: continue on the next iteration
        if claimed:
            logger.info("reclaimed %d entries idle > %d ms from dead consumers", len(claimed), self.claim_idle_ms)
        # Redis >= 7 removes pending entries deleted from the stream from the PEL and lists their ids
        # in a third element; 6.2 returns them as (None, None) in the claimed list, without ids.
        deleted: list[bytes] = list(resp[2]) if len(resp) > 2 and resp[2] else []
        unnamed = sum(1 for eid, _f in claimed if eid is None)
        if deleted or unnamed:
            self._report_trimmed(deleted, unnamed, "XAUTOCLAIM")
        return [(eid, f) for eid, f in claimed if eid is not None]

    def _report_trimmed(self, ids: list[bytes], unnamed: int, how: str) -> None:
        """Pending entries whose content is gone from the stream: count and log, never silently."""
        n = len(ids) + unnamed
        self.metrics.trimmed_pending += n
        where = (f"ids {ids[0].decode()} to {ids[-1].decode()}" if len(ids) > 1
                 else f"id {ids[0].decode()}" if ids else "ids not reported by this Redis version")
        logger.warning(
            "%d pending entries of group %s on %s were deleted from the stream before they were acked "
            "(%s, found by %s): their cache keys were NOT invalidated and may be stale; acked so they "
            "do not loop (fix: raise the engine sink's max_len_hard or keep the workers running, and "
            "flush the cache keys of rows changed in that period)",
            n, self.group, self.stream, where, how)

    def _report_gap(self, eid: bytes, gap: Gap) -> None:
        lost = gap.unacked.get(self.group, gap.entries if not gap.unacked else 0)
        self.metrics.gaps += 1
        self.metrics.gap_entries += lost
        groups = ", ".join(f"{g}: {n}" for g, n in gap.unacked.items()) or "none recorded"
        # A group created after the cut reads old gap entries that concern other groups only.
        logger.log(
            logging.ERROR if lost else logging.WARNING,
            "GAP in stream %s (gap entry %s): the engine's max_len_hard %s cut %d entries, ids %s to %s, "
            "before they were acknowledged (%d for this group %s; per group: %s). Cache keys for the "
            "rows in those entries may be stale (fix: flush the cache, or the keys of rows changed "
            "in that period; then raise max_len_hard on sink %s of pipeline %s or keep the workers up)",
            gap.stream or self.stream, eid.decode(), gap.max_len_hard if gap.max_len_hard else "?",
            gap.entries, gap.first_id, gap.last_id, lost, self.group, groups, gap.sink or "?",
            gap.pipeline or "?")

    def _handle(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        ids: list[bytes] = []
        lines: list[str] = []
        plain: list[str] = []
        patterns: list[str] = []
        xadd_ms: list[int] = []  # per event with keys: its entry id's ms (Redis' clock at XADD)
        binlog_ms: list[float] = []  # per event with keys and a timestamp: its binlog ts_ms
        keys_total = 0
        gone: list[bytes] = []
        for eid, fields in entries:
            ids.append(eid)
            raw = fields.get(b"df-event") if fields else None
            if raw is None and fields:
                raw = next(iter(fields.values()))  # the seed's fields[1]
            if raw is None:
                gone.append(eid)  # deleted from the stream while pending: reported, then acked
                continue
            try:
                event = parse_payload(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                self.metrics.poison += 1
                logger.warning("poison entry %s on %s: not a DeltaForge event (%s; payload %.120r); "
                               "acked and skipped so it cannot block the group",
                               eid.decode(), self.stream, e, raw)
                continue
            if event.gap is not None:
                self._report_gap(eid, event.gap)
                continue
            keys = event.keys
            if not keys:
                continue  # the seed logs nothing for events without keys
            if "*" in "\0".join(keys):  # one scan of the event's keys instead of one test per key
                for k in keys:
                    (patterns if "*" in k else plain).append(k)
            else:
                plain.extend(keys)
            keys_total += len(keys)
            lines.append(f"Invalidated {len(keys)} keys for {event.table}\n")
            xadd_ms.append(int(eid.partition(b"-")[0]))  # b"1732981234567-0": ms, then a sequence
            if event.ts_ms is not None:
                binlog_ms.append(event.ts_ms)
        if gone:
            self._report_trimmed(gone, 0, "XREADGROUP")
        plain = list(dict.fromkeys(plain))  # one UNLINK per key even if many events name it
        patterns = list(dict.fromkeys(patterns))
        batch_ms: float | None = None
        started = time.perf_counter()
        if self._transactional and plain:
            # One client: the deletes and the ack in one MULTI/EXEC, one round trip. A command
            # Redis refuses while queueing (NOPERM, READONLY, OOM) aborts the whole EXEC, so an
            # entry is never acked without its deletes; UNLINK has no run-time error.
            if patterns:
                self._invalidate([], patterns)
            pipe = self._redis.pipeline(transaction=True)
            for chunk in _chunks(plain, _UNLINK_CHUNK):
                pipe.unlink(*chunk)
            for id_chunk in _chunks(ids, _UNLINK_CHUNK):
                pipe.xack(self.stream, self.group, *id_chunk)
            pipe.execute()
            batch_ms = (time.perf_counter() - started) * 1000.0
            done_ms = time.time() * 1000.0
        else:
            if plain or patterns:
                self._invalidate(plain, patterns)
                batch_ms = (time.perf_counter() - started) * 1000.0
            # The lags end here, when the delete round trip has returned (wall clock: the starts are
            # Redis' and MySQL's wall clocks).
            done_ms = time.time() * 1000.0
            # Acks go only after the deletes succeeded (a failure above raises and skips this).
            pipe = self._redis.pipeline(transaction=False)
            for id_chunk in _chunks(ids, _UNLINK_CHUNK):
                pipe.xack(self.stream, self.group, *id_chunk)
            pipe.execute()
        if self.double_delete_ms and (plain or patterns):
            self._second.append((time.monotonic() + self.double_delete_ms / 1000.0, plain, patterns))
        self.metrics.record(len(ids), keys_total, done_ms, xadd_ms, binlog_ms, batch_ms)
        if lines:
            out = self._out or sys.stdout
            out.write("".join(lines))
            out.flush()

    def _open(self) -> None:
        """Build the cluster clients (their first connection is in the loop, retried like any other),
        re-read their slot maps after a retried error, and open the cache connection."""
        refresh, self._refresh_slots = self._refresh_slots, False
        try:
            if self._redis is None:
                self._open_stream()
            elif refresh and is_cluster(self._redis):
                self._redis.nodes_manager.initialize()  # also picks a live default node (COMMAND GETKEYS)
        except BaseException:
            self._refresh_slots = refresh
            raise
        if self._one_client:
            return
        try:
            if self._cache is None:
                self._open_cache()
            elif refresh and is_cluster(self._cache):
                self._cache.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException) as e:
            self._refresh_slots = refresh
            raise _CacheFailed(e) from e
        if not self._cache_connected:
            self._connect_cache()

    def _connect_cache(self) -> None:
        """Open the cache connection (AUTH, SELECT) now: redis-py connects lazily, and a wrong cache
        password would otherwise show only with the first batch that has keys. A cluster client
        connected to a seed when built; a PING of every primary checks the credentials on each."""
        cache = self._cache
        try:
            if is_cluster(cache):
                cache.ping(target_nodes=cache.PRIMARIES)
            else:
                pool = cache.connection_pool
                pool.release(pool.get_connection())
        except (redis.RedisError, RedisClusterException) as e:
            raise _CacheFailed(e) from e
        self._cache_connected = True

    @staticmethod
    def _unlink(cache: Any, keys: Sequence[str | bytes]) -> None:
        """UNLINK ``keys`` in one pipelined round trip (per node on a cluster: one UNLINK per hash
        slot, as a multi-key command must not span slots)."""
        pipe = cache.pipeline(transaction=False)
        groups: Iterable[Sequence[str | bytes]] = by_slot(keys).values() if is_cluster(cache) else (keys,)
        for group in groups:
            for chunk in _chunks(group, _UNLINK_CHUNK):
                pipe.unlink(*chunk)
        pipe.execute()

    def _invalidate(self, plain: list[str], patterns: list[str]) -> None:
        """UNLINK ``plain`` (one pipelined round trip) and what ``patterns`` match, on the cache client.

        Redis errors come out as :class:`_CacheFailed`, to be blamed on the cache's URI.
        """
        cache = self._cache
        try:
            if plain:
                self._unlink(cache, plain)
            # SCAN walks one server's keyspace: on a cluster, each primary's (its own client, no
            # redirects: SCAN has no key); the keys found are deleted through the cluster client.
            scanned = [n.redis_connection for n in cache.get_primaries()] if patterns and is_cluster(cache) else [cache]
            for pattern in patterns:
                for node in scanned:
                    cursor = 0
                    while True:
                        cursor, found = node.scan(cursor, match=pattern, count=_SCAN_COUNT)
                        if self._spare_stream:
                            # A broad pattern ("*", "cache*") must not take the invalidation stream with it.
                            found = [k for k in found if k != self._stream_key]
                        if found:
                            self._unlink(cache, found)
                        if not cursor:
                            break
        except (redis.RedisError, RedisClusterException) as e:
            raise _CacheFailed(e) from e

    def _drain_second_deletes(self, *, stopping_is_final: bool) -> None:
        """Run the second deletes that are due; on the final drain, wait for all of them.

        Items are popped only after their deletes succeeded, so a connection error keeps them.
        """
        if not self._second:
            return
        if stopping_is_final:
            # Bounded by double_delete_ms: the delay is what makes the second delete useful.
            wait = self._second[-1][0] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        now = time.monotonic()
        due = 0
        while due < len(self._second) and self._second[due][0] <= now:
            due += 1
        if not due:
            return
        plain: list[str] = []
        patterns: list[str] = []
        for i in range(due):
            plain += self._second[i][1]
            patterns += self._second[i][2]
        self._invalidate(list(dict.fromkeys(plain)), list(dict.fromkeys(patterns)))
        for _ in range(due):
            self._second.popleft()
        self.metrics.second_deletes += due


# --- CLI ---------------------------------------------------------------------------------------


@click.command("worker")
@click.option("--redis-uri", envvar="REDIS_URI", required=True,
              help="Redis holding the stream, and the cache keys unless --cache-uri says otherwise (env REDIS_URI).")
@click.option("--cache-uri", envvar="CACHE_REDIS_URI", default=None,
              help="Redis holding the cache keys: another server, or another db of the stream's "
                   "(env CACHE_REDIS_URI) [default: --redis-uri].")
@click.option("--stream", default="cache:invalidations", show_default=True)
@click.option("--group", default="cache-workers", show_default=True, help="Consumer group.")
@click.option("--consumer", default=None, help="Consumer name [default: worker-<hostname>-<pid>].")
@click.option("--count", default=500, show_default=True, type=click.IntRange(min=1),
              help="Entries per XREADGROUP batch.")
@click.option("--block-ms", default=5000, show_default=True, type=click.IntRange(min=1),
              help="XREADGROUP BLOCK; also the longest a stop request waits.")
@click.option("--double-delete-ms", default=0, show_default=True, type=click.IntRange(min=0),
              help="Delete every batch's keys again this many ms later (0 = off).")
@click.option("--claim-idle-ms", default=60000, show_default=True, type=click.IntRange(min=0),
              help="Take over entries pending this long on dead consumers (0 = off).")
@click.option("--metrics-port", default=None, type=click.IntRange(min=0, max=65535),
              help="Serve Prometheus metrics on --metrics-bind:PORT/metrics.")
@click.option("--metrics-bind", default="127.0.0.1", show_default=True,
              help="Address /metrics listens on (0.0.0.0: every interface).")
@click.option("--stats-interval", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between stats log lines.")
def worker_command(redis_uri: str, cache_uri: str | None, stream: str, group: str, consumer: str | None,
                   count: int, block_ms: int, double_delete_ms: int, claim_idle_ms: int,
                   metrics_port: int | None, metrics_bind: str, stats_interval: float) -> None:
    """Consume cache-invalidation events and delete the cache keys they name.

    The Python counterpart of the seed's Node worker: same stream, group and log lines.
    """
    if not logging.getLogger().handlers:  # run standalone, not under `deltaforge`
        from deltaforge.log import setup_logging

        setup_logging()
    try:
        worker = InvalidationWorker(redis_uri, stream, group, consumer, count, block_ms,
                                    double_delete_ms, claim_idle_ms, stats_interval_s=stats_interval,
                                    cache_uri=cache_uri)
        server = serve_metrics(worker.metrics, metrics_port, metrics_bind) if metrics_port is not None else None
        if server is not None:
            logger.info("metrics on http://%s:%d/metrics", metrics_bind, server.server_address[1])
    except DeltaForgeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)

    signals_seen = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            # Second signal: leave now. The batch in hand stays pending and is re-read
            # (same --consumer) or reclaimed by another worker; nothing is lost.
            os._exit(128 + signum)
        worker.request_stop()  # only a flag: the loop finishes the batch in hand

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signal.signal needs the main thread
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.run(threading.Event())
    except DeltaForgeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
        worker.close()
