"""The Redis Streams sink: one stream entry per event, checkpoint committed with the entries.

Wire format (DESIGN.md §4), one entry per event, ``df-event`` first because the
seed's worker reads ``fields[1]``::

    XADD <stream> * df-event <payload> event_id <id> idempotency_key <key>

No MAXLEN on the XADD: ``max_len``/``max_len_hard`` trim in batches after commits, never past
what a consumer group has not acknowledged (:mod:`deltaforge.sink.trim`).

Exactly-once commit (DESIGN.md §5), ONE pipelined round trip per batch, encoded
by one ``encode_commands`` call::

    MULTI, XADD ..., SET <ckpt> <value>, EXEC, WATCH <ckpt>, GET <ckpt>

Fencing: WATCH is per connection and EXEC always unwatches, so every round trip
ends by re-arming ``WATCH <ckpt>`` for the *next* batch and reading the key.
The GET must return the value we just wrote (a change between our EXEC and our
WATCH shows there), and any change after the WATCH makes the next EXEC return
nil (nothing queued runs). Either way: :class:`FencedError`, nothing of ours
landed, and this sink refuses every later write. ``open()`` *claims* an
existing checkpoint by rewriting it (same position, our owner id) under
WATCH, so a writer left over from a killed supervisor is fenced by the new one.

Checkpoint value (JSON, one string key)::

    {"file":"binlog.000003","pos":1234,"gtid":"0-1-42"|null,"skip_rows":0,
     "owner":"<uuid4 hex of the sink instance>","commit":<counter>,
     "pipeline":"<name>","sink":"<sink id>","ts_ms":<wall clock of the commit>}

Key: ``cfg.checkpoint_key`` or ``{<tag>}:deltaforge:checkpoint:<pipeline>:<sink id>``
with ``<tag>`` = the stream's own hash tag, else the (non-template) stream
name, else the pipeline name: the checkpoint shares the stream's cluster slot.

Transient failures (:class:`SinkUnavailable`) are retried inside ``write()``
with exponential backoff and jitter; after a reconnect the checkpoint is read
back: our new value = the batch landed; our previous value = resend; anything
else = fenced. The checkpoint never advances on a failure.

Hazard: Redis does not roll back inside MULTI. A queued command that fails at
run time (WRONGTYPE: the stream key holds a string) leaves the others executed,
checkpoint included. Stream key types are therefore checked before first use
(at ``open()`` for a fixed stream, on first sight for template streams) and a
failed element in the EXEC reply is reported as a partial commit.

``delivery: at_least_once``: no MULTI/WATCH; the XADDs then the SET in one
pipelined round trip. If any XADD failed the SET already ran, so the previous
checkpoint is written back before the error is raised (entries may repeat,
none is lost).
"""

from __future__ import annotations

import bisect
import logging
import random
import re
import time
import uuid
from typing import Any

import hiredis
import msgspec

from deltaforge._accel import resp
from deltaforge.dsn import parse_redis_uri
from deltaforge.errors import ConfigError, FencedError, SinkError, SinkUnavailable
from deltaforge.model import Batch, Position, idempotency_key
from deltaforge.sink.envelope import Envelope, StreamTemplate
from deltaforge.sink.redis_conn import RedisConnection, classify, reply_text
from deltaforge.sink.trim import StreamTrimmer

log = logging.getLogger("deltaforge.sink")

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]")


class CheckpointValue(msgspec.Struct):
    file: str
    pos: int
    gtid: str | None = None
    skip_rows: int = 0
    owner: str = ""
    commit: int = 0
    pipeline: str = ""
    sink: str = ""
    ts_ms: int = 0

    def position(self) -> Position:
        return Position(file=self.file, pos=self.pos, gtid=self.gtid, skip_rows=self.skip_rows)


_ckpt_decoder = msgspec.json.Decoder(CheckpointValue)
_ckpt_encoder = msgspec.json.Encoder()


def default_checkpoint_key(template: StreamTemplate, pipeline: str, sink_id: str) -> str:
    tag = template.hash_tag()
    if tag is None:
        tag = template.static if template.static is not None else pipeline
    return f"{{{tag}}}:deltaforge:checkpoint:{pipeline}:{sink_id}"


class RedisStreamSink:
    """One ``type: redis`` sink. Single-threaded: owned by the writer stage."""

    #: retry policy for SinkUnavailable inside write() (seconds)
    retry_initial: float = 0.1
    retry_max: float = 5.0
    retry_deadline: float = 60.0

    def __init__(self, cfg: Any, pipeline_name: str, tenant: str | None, path: str) -> None:
        self.cfg = cfg
        self.id: str = cfg.id
        self.required: bool = bool(cfg.required)
        self.pipeline = pipeline_name
        self.tenant = tenant
        # the YAML path of this sink's ``config`` mapping, for messages
        self.path = path if path.endswith(".config") else f"{path}.config"
        path = self.path
        self.uri = parse_redis_uri(cfg.uri, f"{path}.uri")
        self.template = StreamTemplate(cfg.stream, f"{path}.stream")
        envelope = getattr(cfg.envelope, "type", cfg.envelope)
        self.envelope = Envelope(envelope, pipeline_name, path=f"{path}.envelope.type")
        encoding = getattr(cfg, "encoding", "json")
        if encoding != "json":
            raise ConfigError(f"{path}.encoding", f"unsupported encoding {encoding!r}", "use encoding: json")
        delivery = getattr(cfg, "delivery", "exactly_once")
        if delivery not in ("exactly_once", "at_least_once"):
            raise ConfigError(f"{path}.delivery", f"unknown delivery {delivery!r}",
                              "use exactly_once (default) or at_least_once")
        self.exactly_once = delivery == "exactly_once"
        max_len = getattr(cfg, "max_len", None)
        max_len_hard = getattr(cfg, "max_len_hard", None)
        #: batched, group-aware trimming after commits (None: streams are never trimmed)
        self.trimmer: StreamTrimmer | None = StreamTrimmer(
            self.uri, max_len=max_len, max_len_hard=max_len_hard, pipeline=pipeline_name, sink_id=self.id,
            path=path, client_name=_NAME_UNSAFE.sub("_", f"deltaforge:{pipeline_name}:{self.id}:trim"),
        ) if max_len or max_len_hard else None
        self.checkpoint_key: str = getattr(cfg, "checkpoint_key", None) or default_checkpoint_key(
            self.template, pipeline_name, self.id)
        self.owner = uuid.uuid4().hex
        #: last committed position (None: nothing committed and no checkpoint found)
        self.checkpoint: Position | None = None
        self._ckpt_order: tuple[int, int, int] | None = None
        #: True once a batch past the checkpoint read at open() was written (skipping is over)
        self._caught_up = False
        #: the checkpoint key's value as we last wrote or read it (None: key absent)
        self._last_value: bytes | None = None
        self._commit = 0
        self._conn: RedisConnection | None = None
        self._checked_streams: set[str] = set()
        self._fenced: FencedError | None = None
        self.entries_written = 0

    # ------------------------------------------------------------------ lifecycle

    def _client_name(self) -> str:
        return _NAME_UNSAFE.sub("_", f"deltaforge:{self.pipeline}:{self.id}")

    def _connect(self) -> RedisConnection:
        conn = RedisConnection(self.uri, client_name=self._client_name())
        conn.connect()
        self._conn = conn
        return conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def open(self, expect: bytes | None = None) -> Position | None:
        """Connect, read (and in exactly-once mode claim) the checkpoint; None when absent.

        ``expect`` is the checkpoint value this process last committed (a restart after a
        failure): if the checkpoint holds anything else, another instance took the pipeline
        over meanwhile and this one is fenced instead of taking it back.
        """
        deadline = time.monotonic() + self.retry_deadline
        delay = self.retry_initial
        while True:
            try:
                return self._open_once(expect)
            except SinkUnavailable as e:
                self._drop_conn()
                delay = self._backoff(e, delay, deadline, "opening")

    def _open_once(self, expect: bytes | None = None) -> Position | None:
        conn = self._connect()
        key = self.checkpoint_key
        value: bytes | None = None
        for _ in range(5):
            value = self._watch_get(conn) if self.exactly_once else self._get(conn)
            if expect is not None and self.exactly_once and value != expect:
                raise self._fence("it changed while this instance was restarting")
            expect = None
            if value is None or not self.exactly_once:
                break
            doc = self._decode_value(value)
            claimed = self._encode_value(doc, commit=doc.commit + 1)
            conn.send(resp.encode_commands([
                (b"MULTI",), (b"SET", key, claimed), (b"EXEC",), (b"WATCH", key), (b"GET", key),
            ]))
            replies = conn.read_replies(5)
            self._raise_errors(replies[:3], f"claiming checkpoint {key!r}")
            if replies[2] is None:
                continue  # the old owner committed between our GET and EXEC: read again
            if isinstance(replies[4], hiredis.ReplyError):
                raise classify(replies[4], f"GET of checkpoint {key!r}")
            if replies[4] != claimed:
                continue
            value = claimed
            break
        else:
            raise self._fence("it kept changing while this instance tried to take over")
        self._last_value = value
        self._caught_up = False
        if value is None:
            self._set_checkpoint(None)
            self._commit = 0
        else:
            doc = self._decode_value(value)
            self._commit = doc.commit
            self._set_checkpoint(doc.position())
        if self.template.static is not None:
            self._check_stream_types(conn, [self.template.static])
        log.info("sink %s: connected to %s, checkpoint %s = %s", self.id, self.uri.redacted(), key,
                 self.checkpoint if self.checkpoint is not None else "none (starting from the source's start)")
        return self.checkpoint

    def close(self) -> None:
        self._drop_conn()
        if self.trimmer is not None:
            self.trimmer.close()

    @property
    def last_value(self) -> bytes | None:
        """The checkpoint value this instance last read or committed (for :meth:`open`'s ``expect``)."""
        return self._last_value

    def _set_checkpoint(self, pos: Position | None) -> None:
        self.checkpoint = pos
        self._ckpt_order = pos.order_key() if pos is not None else None

    # ------------------------------------------------------------------ checkpoint value

    def _encode_value(self, pos: Position | CheckpointValue, commit: int) -> bytes:
        return _ckpt_encoder.encode(CheckpointValue(
            file=pos.file, pos=pos.pos, gtid=pos.gtid, skip_rows=pos.skip_rows, owner=self.owner,
            commit=commit, pipeline=self.pipeline, sink=self.id, ts_ms=int(time.time() * 1000),
        ))

    def _decode_value(self, value: bytes) -> CheckpointValue:
        try:
            return _ckpt_decoder.decode(value)
        except msgspec.DecodeError as e:
            raise SinkError(
                f"checkpoint {self.checkpoint_key!r} on {self.uri.redacted()} is not a DeltaForge checkpoint ({e})",
                f"delete it (DEL {self.checkpoint_key}) to restart from spec.source.config.start, "
                f"or set {self.path}.checkpoint_key to another key",
            ) from None

    def _get(self, conn: RedisConnection) -> bytes | None:
        reply: bytes | None = conn.call(b"GET", self.checkpoint_key,
                                        what=f"GET of checkpoint {self.checkpoint_key!r}")
        return reply

    def _watch_get(self, conn: RedisConnection) -> bytes | None:
        key = self.checkpoint_key
        conn.send(resp.encode_commands([(b"WATCH", key), (b"GET", key)]))
        replies = conn.read_replies(2)
        self._raise_errors(replies, f"WATCH/GET of checkpoint {key!r}")
        value: bytes | None = replies[1]
        return value

    def _raise_errors(self, replies: list[Any], what: str) -> None:
        for r in replies:
            if isinstance(r, hiredis.ReplyError):
                raise classify(r, what)

    def _fence(self, why: str) -> FencedError:
        err = FencedError(
            f"another instance owns pipeline {self.pipeline!r}: checkpoint {self.checkpoint_key!r} on "
            f"{self.uri.redacted()} was changed by someone else ({why}); this writer stopped without committing",
            "stop the other `deltaforge run` of this pipeline (or give it another metadata.name / "
            f"{self.path}.checkpoint_key), then restart this one: it resumes from the checkpoint",
        )
        self._fenced = err
        self._drop_conn()
        return err

    def _check_stream_types(self, conn: RedisConnection, names: list[str]) -> None:
        conn.send(resp.encode_commands([(b"TYPE", n) for n in names]))
        replies = conn.read_replies(len(names))
        for name, kind in zip(names, replies, strict=True):
            if isinstance(kind, hiredis.ReplyError):
                raise classify(kind, f"TYPE of stream key {name!r}")
            if kind not in (b"stream", b"none"):
                raise SinkError(
                    f"sink {self.id}: key {name!r} on {self.uri.redacted()} holds a {kind.decode()}, not a stream",
                    f"delete it (DEL {name}) if it is stale, or point {self.path}.stream at another key",
                )
        self._checked_streams.update(names)

    # ------------------------------------------------------------------ write

    def write(self, batch: Batch) -> None:
        """Append ``batch`` and commit ``batch.end`` atomically (or at least once). Retries transient errors."""
        if self._fenced is not None:
            raise self._fenced
        events = batch.events
        order = self._ckpt_order
        if order is not None and not self._caught_up:
            # Only right after open() can this sink be ahead of the batch. Once a batch ending past the
            # checkpoint is written, every later event is past it too, so the check is switched off.
            if batch.end.order_key() <= order:
                return  # all of it is already in this sink; never move the checkpoint back
            keys = batch.keys
            # min(), not keys[0]: a processor may reorder events (each keeps its input's key)
            if events and min(keys) < order:
                if keys == sorted(keys):
                    cut = bisect.bisect_left(keys, order)
                    events = events[cut:]
                else:
                    events = [e for e, k in zip(events, keys, strict=True) if not k < order]
            self._caught_up = True
        payloads = self.envelope.encode(events)
        streams = self.template.render_batch(events)
        fresh = set(streams) - self._checked_streams if self.template.is_template else set()
        commit = self._commit + 1
        value = self._encode_value(batch.end, commit)
        ckpt = self.checkpoint_key
        cmds: list[tuple[Any, ...]] = [(b"MULTI",)] if self.exactly_once else []
        cmds.extend(
            (b"XADD", s, b"*", b"df-event", p, b"event_id", e.event_id,
             b"idempotency_key", idempotency_key(e))
            for s, p, e in zip(streams, payloads, events, strict=True)
        )
        cmds.append((b"SET", ckpt, value))
        if self.exactly_once:
            cmds += [(b"EXEC",), (b"WATCH", ckpt), (b"GET", ckpt)]
        data = resp.encode_commands(cmds)
        self._commit_with_retry(data, len(events), streams, value, sorted(fresh))
        self._last_value = value
        self._commit = commit
        self._set_checkpoint(batch.end)
        self.entries_written += len(events)
        if self.trimmer is not None:
            self.trimmer.after_commit(streams, self.template.static)  # never raises

    def _backoff(self, err: SinkUnavailable, delay: float, deadline: float, doing: str) -> float:
        now = time.monotonic()
        if now + delay > deadline:
            raise SinkUnavailable(
                f"sink {self.id}: gave up {doing} after {self.retry_deadline:g}s of retries: {err.detail}",
                err.hint,
            ) from err
        log.warning("sink %s: %s; retrying in %.2fs", self.id, err, delay)
        time.sleep(delay * (0.5 + random.random() / 2))  # jitter: instances must not retry in lockstep
        return min(delay * 2, self.retry_max)

    def _commit_with_retry(self, data: bytes, n: int, streams: list[str], value: bytes, fresh: list[str]) -> None:
        deadline = time.monotonic() + self.retry_deadline
        delay = self.retry_initial
        while True:
            try:
                conn = self._conn
                if conn is None:
                    conn = self._connect()
                    if self._resync(conn, value):
                        return  # the lost round trip did land
                if fresh:
                    self._check_stream_types(conn, fresh)
                    fresh = []
                conn.send(data)
                if self.exactly_once:
                    self._check_transaction(conn.read_replies(n + 5), n, streams, value)
                else:
                    self._check_pipeline(conn, conn.read_replies(n + 1), streams)
                return
            except SinkUnavailable as e:
                self._drop_conn()
                delay = self._backoff(e, delay, deadline, "committing a batch")

    def _resync(self, conn: RedisConnection, value: bytes) -> bool:
        """After a reconnect: True when ``value`` (the batch being committed) already landed."""
        current = self._watch_get(conn) if self.exactly_once else self._get(conn)
        if current == value:
            log.info("sink %s: the batch committed before the connection was lost", self.id)
            return True
        if current == self._last_value or not self.exactly_once:
            return False
        raise self._fence("found a value written by another owner after reconnecting")

    def _check_transaction(self, replies: list[Any], n: int, streams: list[str], value: bytes) -> None:
        # replies: MULTI, n+1 QUEUED (XADDs, SET), EXEC, WATCH, GET
        if isinstance(replies[0], hiredis.ReplyError):
            raise classify(replies[0], f"MULTI on {self.uri.redacted()}")
        for i in range(1, n + 2):
            r = replies[i]
            if isinstance(r, hiredis.ReplyError):
                # EXEC is aborted: nothing of the batch ran
                what = f"XADD to stream {streams[i - 1]!r}" if i <= n else f"SET of checkpoint {self.checkpoint_key!r}"
                raise classify(r, what)
        result = replies[n + 2]
        if result is None:
            raise self._fence("its WATCH fired: another client wrote the key since our last commit")
        if isinstance(result, hiredis.ReplyError):
            raise classify(result, f"EXEC on {self.uri.redacted()}")
        for i, r in enumerate(result):
            if isinstance(r, hiredis.ReplyError):
                what = f"XADD to stream {streams[i]!r}" if i < n else f"SET of checkpoint {self.checkpoint_key!r}"
                err = classify(r, what)
                # Not retriable whatever the error: part of the transaction ran (no rollback in Redis).
                raise SinkError(
                    f"sink {self.id}: partial commit, {what} failed inside MULTI/EXEC and Redis does not roll "
                    f"back: {err.detail}",
                    err.hint or f"fix the key, then check the streams around checkpoint {self.checkpoint_key!r}",
                )
        self._raise_errors(replies[n + 3 : n + 5], f"WATCH/GET of checkpoint {self.checkpoint_key!r}")
        if replies[n + 4] != value:
            raise self._fence("it was overwritten right after our commit")

    def _check_pipeline(self, conn: RedisConnection, replies: list[Any], streams: list[str]) -> None:
        first: SinkError | None = None
        for i, r in enumerate(replies):
            if isinstance(r, hiredis.ReplyError) and first is None:
                what = f"XADD to stream {streams[i]!r}" if i < len(streams) else f"SET of checkpoint {self.checkpoint_key!r}"
                first = classify(r, what)
        if first is None:
            return
        if not isinstance(replies[-1], hiredis.ReplyError):
            # The SET ran although an XADD failed: put the previous checkpoint back so
            # the failed entries are sent again (at least once) instead of skipped.
            key = self.checkpoint_key
            undo = (b"SET", key, self._last_value) if self._last_value is not None else (b"DEL", key)
            reply = conn.call(*undo, what=f"restoring checkpoint {key!r}")
            log.debug("sink %s: restored checkpoint %s (%r)", self.id, key, reply_text(reply))
        raise first
