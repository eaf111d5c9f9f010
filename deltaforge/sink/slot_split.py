"""A stream template spread over Redis Cluster hash slots: one checkpoint per stream.

A MULTI may touch one slot only, so a template without a fixed hash tag (``cdc:${table}``)
cannot commit a batch and one checkpoint atomically on a cluster. :class:`SlotSplitSink`
splits each batch by rendered stream and gives each stream a part: a
:class:`RedisStreamSink` on that one stream, with its own checkpoint in the stream's slot::

    {<stream's tag, or the stream>}:deltaforge:checkpoint:<pipeline>:<sink>:<stream>

Each part commits its entries, its dead letters (``<stream>:dlq`` in the same slot) and its
checkpoint in one MULTI on the slot's master, with the fencing, lineage and rollback checks of
a single sink. Exactly once therefore holds per stream, and order per stream; there is no order
across streams (there is none on separate streams anyway).

Resume (the rule of :mod:`deltaforge.sink.sinkset`, applied inside one sink): the minimum over
the *floor* and every part's checkpoint, and each part skips what it holds. The floor is a plain
key, ``{<pipeline>}:deltaforge:checkpoint:<pipeline>:<sink>``, holding a position every stream
has delivered. It is what covers a stream whose first entries were lost in a crash before its
checkpoint existed. It is written (never ahead of a batch whose parts have not all committed):

* before the first commit of a batch that starts a new stream, at the end of the previous batch;
* for a batch of no events (``persist_start``);
* every :data:`REFRESH_S` while batches come, and when the writer goes idle. Parts that had no
  events meanwhile are moved to the same position then, so one quiet stream does not hold the
  resume point back for hours of binlog.

Parts are found at ``open()`` by SCAN on every master. A part the scan missed (a slot in
migration) is opened when its stream next appears and skips what its checkpoint covers, so a
miss costs re-reading, never a duplicate. The floor records how many parts existed: fewer found
at the next start means a checkpoint vanished (Redis lost data), and the sink stops rather than
guess, as a single sink does.

Cost: each stream of a batch is one round trip (sequential) and each part one connection; a
per-table template splits the reader's block by its table column, decoding one event per
table, and the parts pass the bytes on as they are. A hash-tagged template keeps one MULTI per
batch.
"""

from __future__ import annotations

import logging
import operator
import time
from typing import Any

import msgspec

from deltaforge.dsn import parse_redis_uri
from deltaforge.errors import ConfigError, FencedError, SinkError, SinkUnavailable
from deltaforge.model import (
    Batch,
    DeadLetter,
    Event,
    EventBlock,
    OrderKey,
    Position,
    min_position,
    position_le,
)
from deltaforge.sink.envelope import StreamTemplate, hash_tag
from deltaforge.sink.redis_conn import RedisConnection, classify
from deltaforge.sink.redis_stream import (
    _NAME_UNSAFE,
    CheckpointValue,
    RedisSinkBase,
    RedisStreamSink,
    _ckpt_decoder,
    _ckpt_encoder,
    _dead_event,
    default_checkpoint_key,
)

log = logging.getLogger("deltaforge.sink")

#: up to this many tables in a block, it is grouped by one pass per table (faster than one
#: Python-level pass appending per event)
_SCANS_PER_KEY_UP_TO = 16

#: seconds between floor writes (and moves of quiet parts) while batches come
REFRESH_S = 1.0

_parts_codec = msgspec.json.Encoder()
_parts_decoder = msgspec.json.Decoder(dict[str, str])


def spreads_over_slots(uri_text: str, stream: str) -> bool:
    """True when a sink with this URI and ``stream`` needs one checkpoint per stream (a cluster,
    and a template whose streams do not share a fixed hash tag)."""
    uri = parse_redis_uri(uri_text, "uri")
    template = StreamTemplate(stream, "stream")
    return uri.topology == "cluster" and template.is_template and template.hash_tag() is None


def split_config_errors(cfg: Any, path: str) -> None:
    """What a split sink cannot honour, refused at load and at ``check`` (ConfigError)."""
    if getattr(cfg, "checkpoint_key", None):
        raise ConfigError(f"{path}.checkpoint_key", f"the stream template {cfg.stream!r} spreads over hash slots "
                          "on this Redis Cluster, so each stream gets its own checkpoint next to it and one key "
                          "cannot be named", f"remove {path}.checkpoint_key, or give the template a fixed hash tag "
                          "(stream: \"{cdc}:...\") to keep one checkpoint")
    if getattr(cfg, "dlq_stream", None):
        raise ConfigError(f"{path}.dlq_stream", f"the stream template {cfg.stream!r} spreads over hash slots on "
                          "this Redis Cluster, so each stream's dead letters commit in its own slot, in "
                          "<stream>:dlq", f"remove {path}.dlq_stream, or give the template a fixed hash tag")


def part_checkpoint_key(stream: str, pipeline: str, sink_id: str) -> str:
    """The checkpoint of one stream of a split sink, in the stream's hash slot."""
    return f"{{{hash_tag(stream) or stream}}}:deltaforge:checkpoint:{pipeline}:{sink_id}:{stream}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class SlotSplitSink(RedisSinkBase):
    """One ``type: redis`` sink whose template spreads over cluster slots. Same interface as
    :class:`RedisStreamSink` (SinkSet, the writer, ``check``); single-threaded."""

    parts_split = True

    def __init__(self, cfg: Any, pipeline_name: str, tenant: str | None, path: str) -> None:
        split_config_errors(cfg, self._identify(cfg, pipeline_name, tenant, path))
        #: the floor key: a position every stream has delivered (module header)
        self.checkpoint_key: str = default_checkpoint_key(self.template, pipeline_name, self.id)
        from deltaforge.redisclient import key_slot

        self.slot: int | None = key_slot(self.checkpoint_key)
        self.exactly_once = getattr(cfg, "delivery", "exactly_once") == "exactly_once"
        self.parts: dict[str, RedisStreamSink] = {}
        self.checkpoint: Position | None = None
        #: the end of the last batch every part committed (what the floor may say)
        self._done: Position | None = None
        self._floor: Position | None = None
        self._floor_at = 0.0
        self._floor_conn: RedisConnection | None = None
        self._fenced: FencedError | None = None
        self._seq = 0
        self.entries_written = 0
        self.dead_written = 0

    # ------------------------------------------------------------------ parts

    def _part(self, stream: str) -> RedisStreamSink:
        cfg = msgspec.structs.replace(self.cfg, stream=stream, dlq_stream=None,
                                      checkpoint_key=part_checkpoint_key(stream, self.pipeline, self.id))
        part = RedisStreamSink(cfg, self.pipeline, self.tenant, self.path)
        part.retry_initial, part.retry_max, part.retry_deadline = (self.retry_initial, self.retry_max,
                                                                   self.retry_deadline)
        return part

    def _open_part(self, stream: str, expect: bytes | None) -> RedisStreamSink:
        part = self._part(stream)
        try:
            part.open(expect)
        except BaseException:
            part.close()
            raise
        self.parts[stream] = part
        return part

    def _scan_parts(self) -> dict[str, bytes]:
        """Every part checkpoint of this sink on every master: stream -> value."""
        import redis

        from deltaforge.redisclient import redis_py_client

        middle = f":deltaforge:checkpoint:{self.pipeline}:{self.id}:"
        pattern = "*" + _glob_escape(middle) + "*"
        found: dict[str, bytes] = {}
        client = None
        try:
            client = redis_py_client(self.uri, connect_timeout=5.0, socket_timeout=10.0)
            keys = sorted({k for k in client.scan_iter(match=pattern, count=1000, target_nodes="primaries")})
            for key in keys:
                text = key.decode("utf-8", "replace")
                close = text.find("}")
                rest = text[close + 1:] if text.startswith("{") and close > 0 else ""
                if not rest.startswith(middle):
                    continue
                stream = rest[len(middle):]
                if part_checkpoint_key(stream, self.pipeline, self.id) != text:
                    continue  # another sink whose id shares our prefix
                value = client.get(key)
                if value is not None:
                    found[stream] = value
        except redis.exceptions.NoPermissionError as e:
            raise classify(e, f"scanning {self.uri.redacted()} for the checkpoints of sink {self.id}") from e
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.ClusterDownError, redis.exceptions.RedisClusterException) as e:
            raise SinkUnavailable(f"sink {self.id}: scanning {self.uri.redacted()} for its checkpoints failed: {e}",
                                  "DeltaForge retries with backoff") from e
        except redis.exceptions.RedisError as e:
            raise classify(e, f"scanning {self.uri.redacted()} for the checkpoints of sink {self.id}") from e
        finally:
            if client is not None:
                client.close()
        return found

    # ------------------------------------------------------------------ floor

    def _floor_connection(self) -> RedisConnection:
        if self._floor_conn is None:
            conn = RedisConnection(self.uri, client_name=_NAME_UNSAFE.sub(
                "_", f"deltaforge:{self.pipeline}:{self.id}:floor"), slot=self.slot)
            conn.connect()
            self._floor_conn = conn
        return self._floor_conn

    def _read_floor(self) -> CheckpointValue | None:
        reply = self._floor_connection().call(b"GET", self.checkpoint_key,
                                              what=f"GET of checkpoint {self.checkpoint_key!r}")
        if reply is None:
            return None
        try:
            return _ckpt_decoder.decode(reply)
        except msgspec.DecodeError as e:
            raise SinkError(f"checkpoint {self.checkpoint_key!r} on {self.uri.redacted()} is not a DeltaForge "
                            f"checkpoint ({e})", f"delete it (DEL {self.checkpoint_key}) and the sink's "
                            "per-stream checkpoints to restart from spec.source.config.start") from None

    def _write_floor(self, pos: Position) -> None:
        """SET the floor (no MULTI: it is a lower bound, and older is always safe)."""
        value = _ckpt_encoder.encode(CheckpointValue(
            file=pos.file, pos=pos.pos, gtid=pos.gtid, skip_rows=pos.skip_rows, tx=pos.tx, server=pos.server,
            owner="floor", commit=len(self.parts), pipeline=self.pipeline, sink=self.id,
            ts_ms=int(time.time() * 1000)))
        for attempt in (1, 2):
            try:
                self._floor_connection().call(b"SET", self.checkpoint_key, value,
                                              what=f"SET of checkpoint {self.checkpoint_key!r}")
                break
            except SinkUnavailable:
                if self._floor_conn is not None:
                    self._floor_conn.close()
                    self._floor_conn = None
                if attempt == 2:
                    raise
        self._floor = pos
        self._floor_at = time.monotonic()

    def _refresh(self, force: bool = False) -> None:
        """Move quiet parts and the floor up to the last batch every part committed."""
        done = self._done
        if done is None or (not force and time.monotonic() - self._floor_at < REFRESH_S):
            return
        if self._floor is not None and position_le(done, self._floor):
            self._floor_at = time.monotonic()
            return
        self._seq += 1
        for stream in sorted(self.parts):
            part = self.parts[stream]
            if part.checkpoint is None or not position_le(done, part.checkpoint):
                part.write(Batch(seq=self._seq, events=[], keys=[], end=done))
        self._write_floor(done)

    # ------------------------------------------------------------------ lifecycle

    def _disconnect(self) -> None:
        self.close()

    def _open_once(self, expect: bytes | None) -> Position | None:
        expected = {k: v.encode() for k, v in _parts_decoder.decode(expect).items()} if expect else {}
        self.close()
        self.parts = {}
        floor = self._read_floor()
        found = self._scan_parts()
        if floor is not None and floor.commit > len(found):
            time.sleep(1.0)  # a key in a slot being migrated can be missed by one scan
            found = self._scan_parts()
        for stream in sorted(set(found) | set(expected)):
            self._open_part(stream, expected.get(stream))
        if floor is None and self.parts:
            raise SinkError(
                f"sink {self.id}: the floor checkpoint {self.checkpoint_key!r} is missing on {self.uri.redacted()} "
                f"while {len(self.parts)} per-stream checkpoints exist: a stream whose first entries were lost in "
                "a crash could be skipped", f"restore the key, or DEL the keys matching "
                f"*:deltaforge:checkpoint:{self.pipeline}:{self.id}:* on every master to start over from "
                "spec.source.config.start")
        if floor is not None and floor.commit > len(self.parts):
            raise SinkError(
                f"sink {self.id}: {floor.commit} per-stream checkpoints were committed but {len(self.parts)} are "
                f"on {self.uri.redacted()}: Redis lost some (FLUSHALL, a restart without persistence, a failover "
                "to an empty replica), so where their streams resume cannot be known",
                "check the streams and the cache (flush it if unsure), then start again with the floor key and "
                "the per-stream checkpoints deleted and spec.source.config.start set to where delivery must "
                "resume; give Redis persistence (appendonly) to survive restarts")
        positions = [p.checkpoint for p in self.parts.values() if p.checkpoint is not None]
        if floor is not None:
            self._floor = floor.position()
            positions.append(self._floor)
        self.checkpoint = self._done = min_position(positions)
        self._floor_at = time.monotonic()
        log.info("sink %s: %d streams over the cluster's slots, floor %s, resuming at %s", self.id,
                 len(self.parts), self._floor or "none", self.checkpoint or "the source's start")
        return self.checkpoint

    def close(self) -> None:
        for part in self.parts.values():
            part.close()
        if self._floor_conn is not None:
            self._floor_conn.close()
            self._floor_conn = None

    def probe_idle(self) -> None:
        for part in list(self.parts.values()):
            part.probe_idle()
        try:
            self._refresh(force=True)
        except SinkUnavailable as e:
            log.warning("sink %s: %s; moving the floor at the next batch or probe", self.id, e)

    @property
    def last_value(self) -> bytes | None:
        """Every part's last value, by stream (for :meth:`open`'s ``expect``)."""
        values = {s: p.last_value.decode() for s, p in self.parts.items() if p.last_value is not None}
        return _parts_codec.encode(values) if values else None

    # ------------------------------------------------------------------ write

    def _group(self, events: list[Event] | EventBlock) -> dict[str, list[int]]:
        """The indices of the events of each stream, in batch order. A block under a per-table
        template is grouped by its (tenant, table) columns, rendering one decoded event per
        table: the rest stay bytes."""
        groups: dict[str, list[int]] = {}
        if isinstance(events, EventBlock) and self.template.per_table:
            columns = list(zip(events.tenants, events.tables, strict=True))
            distinct = dict.fromkeys(columns)
            if len(distinct) == 1:
                return {self.template.render(events[0]): list(range(len(columns)))}
            by_key: dict[tuple[str | None, str], list[int]]
            if len(distinct) <= _SCANS_PER_KEY_UP_TO:  # one comprehension per table: C-speed passes
                by_key = {k: [i for i, c in enumerate(columns) if c == k] for k in distinct}
            else:
                by_key = {k: [] for k in distinct}
                for i, key in enumerate(columns):
                    by_key[key].append(i)
            for indices in by_key.values():
                groups.setdefault(self.template.render(events[indices[0]]), []).extend(indices)
            for indices in groups.values():
                indices.sort()  # two (tenant, table) keys may share a stream
            return groups
        for i, stream in enumerate(self.template.render_batch(events)):
            groups.setdefault(stream, []).append(i)
        return groups

    def write(self, batch: Batch) -> None:
        if self._fenced is not None:
            raise self._fenced
        self._seq = max(self._seq, batch.seq)
        events = batch.events
        groups: dict[str, tuple[list[int], list[DeadLetter], list[OrderKey]]] = {
            stream: (indices, [], []) for stream, indices in self._group(events).items()}
        for d, key in zip(batch.dead, batch.dead_keys, strict=True):
            g = groups.setdefault(self.template.render(_dead_event(d)), ([], [], []))
            g[1].append(d)
            g[2].append(key)
        fresh = sorted(s for s in groups if s not in self.parts)
        if fresh:
            # A new stream's part has no checkpoint yet: the floor must not be past its first entries.
            if self._done is not None and (self._floor is None or not position_le(self._done, self._floor)):
                self._write_floor(self._done)
        try:
            for stream in fresh:
                self._open_part(stream, None)
            for stream in sorted(groups):
                indices, dead, dead_keys = groups[stream]
                self.parts[stream].write(Batch(seq=batch.seq, events=_subset(events, indices),
                                               keys=_subset(batch.keys, indices), end=batch.end,
                                               origin=batch.origin, dead=dead, dead_keys=dead_keys))
        except FencedError as e:
            self._fenced = e
            raise
        self.entries_written += len(events)
        self.dead_written += len(batch.dead)
        self.checkpoint = self._done = batch.end
        self._refresh(force=self._floor is None)


def make_redis_sink(cfg: Any, pipeline_name: str, tenant: str | None, path: str) -> Any:
    """The sink for one ``type: redis`` entry: split over slots when it must be (module header)."""
    if spreads_over_slots(cfg.uri, cfg.stream):
        return SlotSplitSink(cfg, pipeline_name, tenant, path)
    return RedisStreamSink(cfg, pipeline_name, tenant, path)


def _subset(items: Any, indices: list[int]) -> Any:
    """The items at ``indices`` (ascending): a block of the same bytes for an EventBlock, else a list."""
    if len(indices) == len(items):
        return items  # the whole batch went to one stream
    if isinstance(items, EventBlock):
        return items.take(indices)
    if len(indices) < 2:  # (none: a stream with dead letters only)
        return [items[i] for i in indices]
    return list(operator.itemgetter(*indices)(items))
