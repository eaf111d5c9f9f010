"""The Redis Streams sink: one stream entry per event, checkpoint committed with the entries.

Wire format (DESIGN.md §4), one entry per event, ``df-event`` first because the
seed's worker reads ``fields[1]``::

    XADD <stream> * df-event <payload> event_id <id> idempotency_key <key>

No MAXLEN on the XADD: ``max_len``/``max_len_hard`` trim in batches after commits, never past
what a consumer group has not acknowledged (:mod:`deltaforge.sink.trim`).

Exactly-once commit (DESIGN.md §5), ONE pipelined round trip per batch, written
into one buffer by ``_core/streamcommit.pyx`` (``encode_commit``: envelopes, stream
names, idempotency keys and checkpoint, sized first; its header has the bytes)::

    MULTI, XADD ..., SET <ckpt> <value>, EXEC, WATCH <ckpt>, GET <ckpt>

Its reply is checked on the raw socket bytes against the success shape (``OK``,
``QUEUED``..., the EXEC array of entry ids and ``OK``, ``OK``, our value) without a
Python object per reply; any other reply is parsed by hiredis and judged reply by
reply below, so every error path (nil EXEC, an error inside EXEC, a foreign GET) is
the exact one.

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
     "tx":"0-1-43"|null,"server":"mariadb-1",
     "owner":"<uuid4 hex of the engine process>","commit":<counter>,
     "prev":"<owner>:<commit> this lineage took over from"|"",
     "pipeline":"<name>","sink":"<sink id>","ts_ms":<wall clock of the commit>}

Key: ``cfg.checkpoint_key`` or ``{<tag>}:deltaforge:checkpoint:<pipeline>:<sink id>``
with ``<tag>`` = the stream's own hash tag, else the pipeline name. It does not
depend on the stream's name, so renaming ``stream`` keeps the position (older
versions used the stream name as the tag: such a key is adopted and removed).

Lineage (DESIGN.md §5): ``owner`` + ``commit`` (a counter that only grows, across
owners too) + ``prev`` say whose value the key holds. Reading it back after a
reconnect or a restart of the pipeline in this process:

* our value of this commit: nothing happened; of a *later* commit: the commit
  whose reply was lost did land;
* our value (or our predecessor's, up to where we took over) of an *earlier*
  commit: Redis rolled back (restart from an old snapshot, failover to a lagging
  replica). Stream and checkpoint roll back together (one MULTI), so the
  pipeline restarts from that checkpoint and re-delivers: :class:`CheckpointRolledBack`;
* the key gone although we committed: Redis lost the pipeline's state; stop
  (:class:`SinkError`), never guess;
* anything else: another instance owns the pipeline, :class:`FencedError`.

Transient failures (:class:`SinkUnavailable`) are retried inside ``write()``
with exponential backoff and jitter; the checkpoint never advances on a failure.

Hazard: Redis does not roll back inside MULTI. A queued command that fails at
run time (WRONGTYPE: the stream key holds a string) leaves the others executed,
checkpoint included. Stream key types are therefore checked before first use
(at ``open()`` for a fixed stream, on first sight for template streams) and a
failed element in the EXEC reply is reported as a partial commit.

Dead letters (``Batch.dead``, docs/processors.md "Dead letters"): one entry each in the
sink's dead-letter stream (``dlq_stream``, default ``<stream>:dlq``, a template like
``stream``), queued in the SAME MULTI as the batch's entries and checkpoint, so they are
exactly-once too; they are skipped by the same ordering-key rule after a restart::

    XADD <dlq stream> * df-dlq <DeadLetter JSON> event_id <id or "">

They are never trimmed by ``max_len``: a dead letter waits for an operator.

``delivery: at_least_once``: no MULTI/WATCH; the XADDs then the SET in one
pipelined round trip. If any XADD failed the SET already ran, so the previous
checkpoint is written back before the error is raised (entries may repeat,
none is lost).
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
import uuid
from typing import Any

import hiredis
import msgspec

from deltaforge._accel import resp, streamcommit
from deltaforge.dsn import parse_redis_uri
from deltaforge.errors import (
    CheckpointRolledBack,
    ConfigError,
    FencedError,
    SinkError,
    SinkUnavailable,
)
from deltaforge.model import (
    Batch,
    DeadLetter,
    Event,
    EventBlock,
    Position,
    Source,
    position_le,
)
from deltaforge.sink.envelope import Envelope, StreamTemplate, cluster_layout
from deltaforge.sink.redis_conn import RedisConnection, classify, reply_text
from deltaforge.sink.trim import StreamTrimmer

log = logging.getLogger("deltaforge.sink")

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]")


class CheckpointValue(msgspec.Struct):
    file: str
    pos: int
    gtid: str | None = None
    skip_rows: int = 0
    tx: str | None = None
    server: str = ""
    owner: str = ""
    commit: int = 0
    prev: str = ""
    pipeline: str = ""
    sink: str = ""
    ts_ms: int = 0

    def position(self) -> Position:
        return Position(file=self.file, pos=self.pos, gtid=self.gtid, skip_rows=self.skip_rows, tx=self.tx,
                        server=self.server)


_ckpt_decoder = msgspec.json.Decoder(CheckpointValue)
_ckpt_encoder = msgspec.json.Encoder()
_dead_encoder = msgspec.json.Encoder()


def _dead_event(d: DeadLetter) -> Event:
    """What a ``dlq_stream`` template is rendered over: the event, or (decoder) its table and position."""
    if d.event is not None:
        return d.event
    db, _, table = d.table.partition(".")
    return Event(table=d.table, ts_ms=d.ts_ms,
                 source=Source(connector="mysql", name="", server_id=0, db=db, table=table, file=d.file,
                               pos=d.pos, row=0, gtid=d.gtid, ts_ms=d.ts_ms))


def default_checkpoint_key(template: StreamTemplate, pipeline: str, sink_id: str) -> str:
    tag = template.hash_tag() or pipeline
    return f"{{{tag}}}:deltaforge:checkpoint:{pipeline}:{sink_id}"


def legacy_checkpoint_key(template: StreamTemplate, pipeline: str, sink_id: str) -> str | None:
    """The key versions before lineage used (tagged by the stream's name), when it differs."""
    if template.hash_tag() is not None or template.static is None:
        return None
    return f"{{{template.static}}}:deltaforge:checkpoint:{pipeline}:{sink_id}"


class RedisSinkBase:
    """What every ``type: redis`` sink shares (this module's sink, and the split one of
    :mod:`deltaforge.sink.slot_split`): its identity from the configuration, and ``open()``
    retried with backoff around the kind's own ``_open_once``."""

    #: retry policy for SinkUnavailable inside open() and write() (seconds)
    retry_initial: float = 0.1
    retry_max: float = 5.0
    retry_deadline: float = 60.0

    def _open_once(self, expect: bytes | None) -> Position | None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def open(self, expect: bytes | None = None) -> Position | None:
        """Connect, read (and in exactly-once mode claim) the checkpoint(s); return where the source
        resumes (None: no checkpoint). Transient failures are retried with backoff.

        ``expect`` is the checkpoint value this process last committed (a restart of the
        pipeline after a failure): the key is judged against it (module header, Lineage).
        """
        deadline = time.monotonic() + self.retry_deadline
        delay = self.retry_initial
        while True:
            try:
                return self._open_once(expect)
            except SinkUnavailable as e:
                self._disconnect()
                delay = self._backoff(e, delay, deadline, "opening")

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

    def _identify(self, cfg: Any, pipeline_name: str, tenant: str | None, path: str) -> str:
        """Set the sink's id, pipeline, URI and template; returns the YAML path of its ``config``."""
        self.cfg = cfg
        self.id: str = cfg.id
        self.required: bool = bool(cfg.required)
        self.pipeline = pipeline_name
        self.tenant = tenant
        # the YAML path of this sink's ``config`` mapping, for messages
        self.path = path if path.endswith(".config") else f"{path}.config"
        self.uri = parse_redis_uri(cfg.uri, f"{self.path}.uri")
        self.template = StreamTemplate(cfg.stream, f"{self.path}.stream")
        return self.path


class RedisStreamSink(RedisSinkBase):
    """One ``type: redis`` sink. Single-threaded: owned by the writer stage."""

    #: one checkpoint per stream over cluster slots (sink/slot_split.py): not this class
    parts_split = False

    def __init__(self, cfg: Any, pipeline_name: str, tenant: str | None, path: str) -> None:
        path = self._identify(cfg, pipeline_name, tenant, path)
        dlq = getattr(cfg, "dlq_stream", None)
        named_key = getattr(cfg, "checkpoint_key", None)
        #: on a Redis Cluster, the one hash slot of every key this sink touches (None elsewhere)
        self.slot: int | None = None
        if self.uri.topology == "cluster":
            layout = cluster_layout(cfg.stream, dlq, named_key, pipeline_name, cfg.id, path)
            self.slot, named_key, dlq = layout.slot, layout.checkpoint_key, layout.dlq_stream
        self.dlq_template = StreamTemplate(dlq or f"{cfg.stream}:dlq", f"{path}.dlq_stream")
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
            slot=self.slot,
        ) if max_len or max_len_hard else None
        self.checkpoint_key: str = named_key or default_checkpoint_key(self.template, pipeline_name, self.id)
        self._legacy_key = None if named_key else legacy_checkpoint_key(self.template, pipeline_name, self.id)
        self.owner = uuid.uuid4().hex
        #: (owner, commit) of the value this lineage took over from: its older values are ours too
        self._prev: tuple[str, int] | None = None
        #: last committed position (None: nothing committed and no checkpoint found)
        self.checkpoint: Position | None = None
        #: True once a batch past the checkpoint read at open() was written (skipping is over)
        self._caught_up = False
        #: the checkpoint key's value as we last wrote or read it (None: key absent)
        self._last_value: bytes | None = None
        self._commit = 0
        self._conn: RedisConnection | None = None
        #: the idle probe lost the connection and has not judged the checkpoint on a new one yet
        self._recheck = False
        self._checked_streams: set[str] = set()
        self._fenced: FencedError | None = None
        self.entries_written = 0
        self.dead_written = 0

    # ------------------------------------------------------------------ lifecycle

    def _client_name(self) -> str:
        return _NAME_UNSAFE.sub("_", f"deltaforge:{self.pipeline}:{self.id}")

    def _connect(self) -> RedisConnection:
        conn = RedisConnection(self.uri, client_name=self._client_name(), slot=self.slot)
        conn.connect()
        self._conn = conn
        return conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _disconnect(self) -> None:
        self._drop_conn()

    def _adopt(self, expect: bytes) -> None:
        """Continue the lineage of the value this process last committed."""
        doc = self._decode_value(expect)
        self.owner, self._commit, self._last_value = doc.owner, doc.commit, expect
        self._prev = _parse_prev(doc.prev)

    def _judge(self, current: bytes | None) -> tuple[str, CheckpointValue | None]:
        """``same`` | ``newer`` (our later commit) | ``older`` (rolled back) | ``absent`` | ``foreign``."""
        if current is not None and current == self._last_value:
            return "same", None
        if current is None:
            return ("absent" if self._last_value is not None else "same"), None
        doc = self._decode_value(current)
        if doc.owner == self.owner:
            return ("older" if doc.commit < self._commit else "newer"), doc
        if self._prev is not None and doc.owner == self._prev[0] and doc.commit <= self._prev[1]:
            return "older", doc
        return "foreign", doc

    def _rolled_back(self, doc: CheckpointValue) -> str:
        return (f"sink {self.id}: Redis at {self.uri.redacted()} rolled back: checkpoint {self.checkpoint_key!r} "
                f"holds commit {doc.commit} ({doc.position()}) but this engine had committed up to commit "
                f"{self._commit}, so {self._commit - doc.commit} commit(s) were lost with their stream entries "
                "(a restart from an older snapshot, or a failover to a replica that lagged)")

    def _vanished(self) -> SinkError:
        return SinkError(
            f"sink {self.id}: checkpoint {self.checkpoint_key!r} vanished from {self.uri.redacted()} although this "
            "engine had committed to it (FLUSHALL, a restart without persistence, or a failover to an empty "
            "replica): where delivery must resume cannot be known",
            "check the streams and the cache (flush it if unsure), then set spec.source.config.start to where "
            "delivery must resume and start again; give Redis persistence (appendonly) to survive restarts",
        )

    def _open_once(self, expect: bytes | None = None) -> Position | None:
        conn = self._connect()
        key = self.checkpoint_key
        value: bytes | None = None
        legacy: str | None = None
        if expect is not None and self.exactly_once:
            self._adopt(expect)
        for _ in range(5):
            value = self._watch_get(conn) if self.exactly_once else self._get(conn)
            if value is None and self._legacy_key is not None:
                value = self._get_key(conn, self._legacy_key)
                legacy = self._legacy_key if value is not None else None
            if expect is not None and self.exactly_once:
                verdict, doc = self._judge(value)
                if verdict == "absent":
                    raise self._vanished()
                if verdict == "foreign":
                    raise self._fence("it changed while this instance was restarting")
                if verdict == "older" and doc is not None:
                    log.warning("%s; re-delivering from %s", self._rolled_back(doc), doc.position())
                elif verdict == "newer":
                    log.info("sink %s: the commit whose reply was lost had landed", self.id)
                expect = None
            if value is None or not self.exactly_once:
                break
            doc = self._decode_value(value)
            if doc.owner != self.owner:
                self._prev = (doc.owner, doc.commit)
            # The counter only grows, across owners and rollbacks: every value is unique.
            claimed = self._encode_value(doc, commit=max(doc.commit, self._commit) + 1)
            cmds: list[tuple[Any, ...]] = [(b"MULTI",), (b"SET", key, claimed)]
            if legacy is not None:
                cmds.append((b"DEL", legacy))
            cmds += [(b"EXEC",), (b"WATCH", key), (b"GET", key)]
            conn.send(resp.encode_commands(cmds))
            replies = conn.read_replies(len(cmds))
            self._raise_errors(replies[:-2], f"claiming checkpoint {key!r}")
            if replies[-3] is None:
                continue  # the old owner committed between our GET and EXEC: read again
            if isinstance(replies[-1], hiredis.ReplyError):
                raise classify(replies[-1], f"GET of checkpoint {key!r}")
            if replies[-1] != claimed:
                continue
            if legacy is not None:
                log.info("sink %s: checkpoint moved from %r to %r (keys no longer depend on the stream name)",
                         self.id, legacy, key)
            value = claimed
            break
        else:
            raise self._fence("it kept changing while this instance tried to take over")
        self._last_value = value
        self._caught_up = False
        if self.template.static is not None:
            self._check_stream_types(conn, [self.template.static])
        if value is None:
            self._set_checkpoint(None)
            self._commit = 0
            self._refuse_orphan_stream(conn)
        else:
            doc = self._decode_value(value)
            self._commit = doc.commit
            self._set_checkpoint(doc.position())
        log.info("sink %s: connected to %s, checkpoint %s = %s", self.id, self.uri.redacted(), key,
                 self.checkpoint if self.checkpoint is not None else "none")
        return self.checkpoint

    def _refuse_orphan_stream(self, conn: RedisConnection) -> None:
        """No checkpoint, but the stream's newest entry was written by this pipeline: do not guess."""
        stream = self.template.static
        if stream is None:
            return
        reply = conn.call(b"XREVRANGE", stream, b"+", b"-", b"COUNT", 1, what=f"XREVRANGE of stream {stream!r}")
        if isinstance(reply, hiredis.ReplyError) or not reply:
            return  # not a stream (reported by the type check) or empty
        fields = reply[0][1] or []
        payload = fields[1] if len(fields) > 1 and fields[0] == b"df-event" else b""
        name = self.pipeline.encode()
        # native/debezium carry source.name, cloudevents its source URI, gap entries their pipeline
        if any(mark in payload for mark in (b'"name":"' + name + b'"', b'"/deltaforge/' + name + b"/",
                                            b'"pipeline":"' + name + b'"')):
            raise SinkError(
                f"sink {self.id}: stream {stream!r} on {self.uri.redacted()} holds entries of pipeline "
                f"{self.pipeline!r} (newest {reply[0][0].decode()}) but its checkpoint {self.checkpoint_key!r} is "
                "missing (deleted, or lost by Redis): resuming from spec.source.config.start could skip or repeat "
                "changes",
                f"restore the checkpoint key, or name the old key in {self.path}.checkpoint_key; to start over on "
                f"purpose, DEL {stream} (or point {self.path}.stream at a new stream)",
            )

    def close(self) -> None:
        self._drop_conn()
        if self.trimmer is not None:
            self.trimmer.close()

    def probe_idle(self) -> None:
        """Called by the writer while no batch comes (about once a second): if Redis closed the
        connection (a restart, a failover), reconnect now and judge the checkpoint, so that a
        rollback (:class:`CheckpointRolledBack`: re-deliver) or another owner (fenced) is acted on
        at once instead of at the next change, which may be hours away. A Redis still unreachable
        is left to the next probe or write."""
        if not self.exactly_once or self._fenced is not None:
            return
        conn = self._conn
        if conn is not None:
            if not conn.closed_by_peer():
                return
            log.info("sink %s: Redis at %s closed the idle connection; reconnecting to check the checkpoint",
                     self.id, conn.where)
            self._drop_conn()
            self._recheck = True
        elif not self._recheck:
            return  # not connected yet, or closed on purpose: nothing to check
        try:
            conn = self._connect()
            current = self._watch_get(conn)
        except SinkUnavailable as e:
            self._drop_conn()
            log.warning("sink %s: %s; checking again in a moment", self.id, e)
            return
        self._recheck = False
        self._raise_unless_same(current, "after Redis closed the idle connection")

    @property
    def last_value(self) -> bytes | None:
        """The checkpoint value this instance last read or committed (for :meth:`open`'s ``expect``)."""
        return self._last_value

    def _set_checkpoint(self, pos: Position | None) -> None:
        self.checkpoint = pos

    # ------------------------------------------------------------------ checkpoint value

    def _encode_value(self, pos: Position | CheckpointValue, commit: int) -> bytes:
        prev = f"{self._prev[0]}:{self._prev[1]}" if self._prev is not None else ""
        return _ckpt_encoder.encode(CheckpointValue(
            file=pos.file, pos=pos.pos, gtid=pos.gtid, skip_rows=pos.skip_rows, tx=pos.tx, server=pos.server,
            owner=self.owner, commit=commit, prev=prev, pipeline=self.pipeline, sink=self.id,
            ts_ms=int(time.time() * 1000),
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
        return self._get_key(conn, self.checkpoint_key)

    def _get_key(self, conn: RedisConnection, key: str) -> bytes | None:
        reply = conn.call(b"GET", key, what=f"GET of checkpoint {key!r}")
        if isinstance(reply, hiredis.ReplyError):
            raise classify(reply, f"GET of checkpoint {key!r}")
        value: bytes | None = reply
        return value

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
        dead = batch.dead
        ckpt = self.checkpoint
        if ckpt is not None and not self._caught_up:
            # Only right after open() can this sink be ahead of the batch. Once a batch ending past the
            # checkpoint is written, every later event is past it too, so the check is switched off.
            if position_le(batch.end, ckpt):
                return  # all of it is already in this sink; never move the checkpoint back
            server = batch.end.server
            # every key, not the first: a processor may reorder events (each keeps its input's key)
            held = [ckpt.covers(k, server) for k in batch.keys]
            if any(held):
                events = [e for e, h in zip(events, held, strict=True) if not h]
            dead = [d for d, k in zip(dead, batch.dead_keys, strict=True) if not ckpt.covers(k, server)]
            self._caught_up = True
        commit = self._commit + 1
        data, streams, dlq_streams, value = self._encode(events, dead, batch.end, commit)
        fresh: set[str] = set()
        if self.template.is_template:
            fresh.update(streams)
        fresh.update(dlq_streams)
        fresh -= self._checked_streams
        self._commit_with_retry(data, len(events), len(dead), streams, dlq_streams, value, sorted(fresh))
        self._last_value = value
        self._commit = commit
        self._set_checkpoint(batch.end)
        self.entries_written += len(events)
        self.dead_written += len(dead)
        if self.trimmer is not None:
            static = self.template.static
            self.trimmer.after_commit([static] * len(events) if static is not None else streams,
                                      static)  # never raises

    def _encode(self, events: list[Event] | EventBlock, dead: list[DeadLetter], end: Position,
                commit: int) -> tuple[bytes, list[str], list[str], bytes]:
        """The batch's whole commit request (``_core/streamcommit.pyx``), its per-event stream names
        (empty for a fixed stream: nothing per event), its dead-letter streams and checkpoint value."""
        template = self.template
        streams = [] if template.static is not None else template.render_batch(events)
        dlq_streams = [self.dlq_template.render(_dead_event(d)) for d in dead]
        value = self._encode_value(end, commit)
        envelope = self.envelope
        payloads: Any
        if isinstance(events, EventBlock):
            # the reader's (or a processor's) bytes, passed as they are: nothing decoded or copied per event
            # (CloudEvents envelopes are built from them in C)
            payloads = envelope.cloudevents_block(events) if envelope.kind == "cloudevents" else events
            ids: Any = events if events.ids_are_uuids() else events.event_ids()
            tenants: list[str | None] = events.tenants
            tables: list[str] = events.tables
            txids: list[str] = events.txids
        else:
            payloads = envelope.encode_body(events)
            ids = [e.event_id for e in events]
            tenants = [e.tenant_id for e in events]  # None renders as "" (model.idempotency_key)
            tables = [e.table for e in events]
            txids = [e.transaction.id if e.transaction is not None else "" for e in events]
        data = streamcommit.encode_commit(
            payloads, template.static if template.static is not None else streams,
            ids, tenants, tables, txids,
            prefix=envelope.prefix,
            suffix=envelope.suffix,
            dlq_streams=dlq_streams,
            dlq_payloads=[_dead_encoder.encode(d) for d in dead],
            dlq_ids=[d.event_id for d in dead],
            checkpoint_key=self.checkpoint_key,
            checkpoint_value=value,
            exactly_once=self.exactly_once,
        )
        return data, streams, dlq_streams, value

    def _entry_stream(self, i: int, streams: list[str], dlq_streams: list[str], n: int) -> str:
        """The stream of the ``i``-th XADD of a commit request (for messages)."""
        if i >= n:
            return dlq_streams[i - n]
        return streams[i] if streams else str(self.template.static)

    def _commit_with_retry(self, data: bytes, n: int, d: int, streams: list[str], dlq_streams: list[str],
                           value: bytes, fresh: list[str]) -> None:
        deadline = time.monotonic() + self.retry_deadline
        delay = self.retry_initial
        entries = n + d
        scan = functools.partial(streamcommit.scan_commit_reply, entries=entries, expected=value,
                                 exactly_once=self.exactly_once)
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
                    replies = conn.read_checked(entries + 5, scan)
                    if replies is not None:  # not the success shape: judge reply by reply
                        self._check_transaction(replies, entries, n, streams, dlq_streams, value)
                else:
                    replies = conn.read_checked(entries + 1, scan)
                    if replies is not None:
                        self._check_pipeline(conn, replies, n, streams, dlq_streams)
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
        if not self.exactly_once:
            return False
        self._raise_unless_same(current, "after reconnecting")
        return False

    def _raise_unless_same(self, current: bytes | None, when: str) -> None:
        """The checkpoint should hold our last commit: a rollback, a loss or another owner raises."""
        verdict, doc = self._judge(current)
        if verdict == "same":
            return
        if verdict == "older" and doc is not None:
            self._drop_conn()
            raise CheckpointRolledBack(self._rolled_back(doc) + f", seen {when}",
                                       "nothing to do: the pipeline restarts from that checkpoint and re-delivers")
        if verdict == "absent":
            self._drop_conn()
            raise self._vanished()
        raise self._fence(f"found a value written by another owner {when}")

    def _check_transaction(self, replies: list[Any], n: int, events: int, streams: list[str],
                           dlq_streams: list[str], value: bytes) -> None:
        # replies: MULTI, n+1 QUEUED (n XADDs of which ``events`` are the events', SET), EXEC, WATCH, GET
        if isinstance(replies[0], hiredis.ReplyError):
            raise classify(replies[0], f"MULTI on {self.uri.redacted()}")
        for i in range(1, n + 2):
            r = replies[i]
            if isinstance(r, hiredis.ReplyError):
                # EXEC is aborted: nothing of the batch ran
                what = (f"XADD to stream {self._entry_stream(i - 1, streams, dlq_streams, events)!r}" if i <= n
                        else f"SET of checkpoint {self.checkpoint_key!r}")
                raise classify(r, what)
        result = replies[n + 2]
        if result is None:
            # WATCH fired: the key changed since our last commit (nothing of this batch ran)
            assert self._conn is not None
            self._raise_unless_same(self._get(self._conn), "when its WATCH fired")
            raise self._fence("its WATCH fired: another client wrote the key since our last commit")
        if isinstance(result, hiredis.ReplyError):
            raise classify(result, f"EXEC on {self.uri.redacted()}")
        for i, r in enumerate(result):
            if isinstance(r, hiredis.ReplyError):
                what = (f"XADD to stream {self._entry_stream(i, streams, dlq_streams, events)!r}" if i < n
                        else f"SET of checkpoint {self.checkpoint_key!r}")
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

    def _check_pipeline(self, conn: RedisConnection, replies: list[Any], events: int, streams: list[str],
                        dlq_streams: list[str]) -> None:
        first: SinkError | None = None
        for i, r in enumerate(replies):
            if isinstance(r, hiredis.ReplyError) and first is None:
                what = (f"XADD to stream {self._entry_stream(i, streams, dlq_streams, events)!r}"
                        if i < len(replies) - 1 else f"SET of checkpoint {self.checkpoint_key!r}")
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


def _parse_prev(text: str) -> tuple[str, int] | None:
    owner, _, commit = text.rpartition(":")
    return (owner, int(commit)) if owner and commit.isdigit() else None
