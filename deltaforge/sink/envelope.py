"""Envelopes (the ``df-event`` payload of each stream entry) and stream-name templates.

Envelopes (DESIGN.md §4), all compact UTF-8 JSON, encoded per *batch*:

``native``
    ``msgspec.json.encode(event)``: the :class:`deltaforge.model.Event` fields in
    model order (``event_id, tenant_id, table, op, before, after, ts_ms, source,
    transaction, tags`` [, ``synthetic``]). The seed's worker does
    ``JSON.parse(fields[1])`` on exactly this.
``debezium``
    ``{"schema":null,"payload":<native>}``.
``cloudevents``
    CloudEvents 1.0 structured JSON::

        {"specversion":"1.0","id":<event_id>,
         "source":"/deltaforge/<pipeline>/<db.table>",
         "type":"io.deltaforge.change.<insert|update|delete|snapshot>",
         "subject":<db.table>,"time":"YYYY-MM-DDTHH:MM:SS.mmmZ" (ts_ms, UTC),
         "datacontenttype":"application/json",
         "data":{"before":...,"after":...,"op":"c|u|d|r"},
         "tenant":<tenant_id>, "txid":<transaction id>}

    ``type`` uses words rather than op letters so that routers can match on it
    (an unknown op is used verbatim). ``tenant`` and ``txid`` are extension
    attributes, omitted when null. ``tags`` stays out: CloudEvents extension
    values cannot be arrays; use the native envelope if consumers need them.

Hot path: a batch's events arrive as an :class:`~deltaforge.model.EventBlock`, their native
JSON built once by the reader (or spliced by a processor): ``native`` and ``debezium`` use
those bytes as they are, ``cloudevents`` envelopes are built from them in C
(``eventbuf.cloudevents_block``: ``before``/``after``/``id`` copied, not re-encoded). A list of Event objects is encoded by one ``Encoder.encode_lines``
call, split on ``\\n`` (compact JSON escapes every newline inside strings, and UTF-8
continuation bytes never equal 0x0A). The sink does not build the debezium wrapper per event:
it takes :meth:`Envelope.encode_body` (the native JSON) and writes ``prefix + body + suffix``
straight into its request buffer (``_core/streamcommit.pyx``); :meth:`Envelope.encode` gives
whole payloads.

Stream templates: ``cdc:${source.db}.${source.table}`` — ``${path}`` over the
event fields ``event_id, tenant_id, table, op, ts_ms, source.*, transaction.*``.
Compiled once; a null value renders as the empty string. When the template
only uses table-level fields the rendered name is cached per (tenant, table).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import msgspec

from deltaforge._accel import eventbuf
from deltaforge.errors import ConfigError
from deltaforge.model import Event, EventBlock, Source, Transaction

ENVELOPES = ("native", "debezium", "cloudevents")

_DEBEZIUM_PREFIX = b'{"schema":null,"payload":'
_DEBEZIUM_SUFFIX = b"}"

CLOUDEVENT_TYPES = {"c": "insert", "u": "update", "d": "delete", "r": "snapshot"}


class _CEData(msgspec.Struct):
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    op: str


class _CloudEvent(msgspec.Struct, omit_defaults=True):
    specversion: str
    id: str
    source: str
    type: str
    subject: str
    time: str
    datacontenttype: str
    data: _CEData
    tenant: str | None = None
    txid: str | None = None


def rfc3339_ms(ts_ms: int) -> str:
    """``1714564800123`` -> ``2024-05-01T12:00:00.123Z`` (UTC, millisecond precision)."""
    secs, ms = divmod(ts_ms, 1000)
    return datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms:03d}Z"


class Envelope:
    """Encodes a list of events into their ``df-event`` payloads (one bytes per event)."""

    def __init__(self, kind: str, pipeline: str, *, path: str = "envelope.type") -> None:
        if kind not in ENVELOPES:
            raise ConfigError(path, f"unknown envelope {kind!r}", f"use one of {', '.join(ENVELOPES)}")
        self.kind = kind
        self.pipeline = pipeline
        self._enc = msgspec.json.Encoder()
        self.encode: Callable[[list[Event]], list[bytes]] = getattr(self, f"_encode_{kind}")
        #: ``prefix + body + suffix`` is the payload of each event (only debezium wraps)
        self.prefix, self.suffix = (_DEBEZIUM_PREFIX, _DEBEZIUM_SUFFIX) if kind == "debezium" else (b"", b"")
        self.encode_body: Callable[[list[Event]], list[bytes]] = (
            self._encode_cloudevents if kind == "cloudevents" else self._encode_native)

    def _encode_native(self, events: list[Event] | EventBlock) -> list[bytes]:
        if isinstance(events, EventBlock):
            return events.lines()  # built once upstream
        if not events:
            return []
        lines = self._enc.encode_lines(events).split(b"\n")
        lines.pop()  # encode_lines ends every item with "\n": the last piece is empty
        return lines

    def _encode_debezium(self, events: list[Event] | EventBlock) -> list[bytes]:
        return [_DEBEZIUM_PREFIX + p + _DEBEZIUM_SUFFIX for p in self._encode_native(events)]

    def cloudevents_block(self, events: EventBlock) -> EventBlock:
        """The CloudEvents envelopes of a block, built in C from its bytes (``eventbuf``)."""
        return eventbuf.cloudevents_block(events, self.pipeline)

    def _encode_cloudevents(self, events: list[Event] | EventBlock) -> list[bytes]:
        if isinstance(events, EventBlock):
            return self.cloudevents_block(events).lines()
        if not events:
            return []
        prefix = f"/deltaforge/{self.pipeline}/"
        types = CLOUDEVENT_TYPES
        docs = [
            _CloudEvent(
                specversion="1.0",
                id=e.event_id,
                source=prefix + e.table,
                type="io.deltaforge.change." + types.get(e.op, e.op),
                subject=e.table,
                time=rfc3339_ms(e.ts_ms),
                datacontenttype="application/json",
                data=_CEData(e.before, e.after, e.op),
                tenant=e.tenant_id,
                txid=e.transaction.id if e.transaction is not None else None,
            )
            for e in events
        ]
        lines = self._enc.encode_lines(docs).split(b"\n")
        lines.pop()
        return lines


# --------------------------------------------------------------------------- stream templates

_VAR = re.compile(r"\$\{([^}]*)\}")
_TOP_FIELDS = ("event_id", "tenant_id", "table", "op", "ts_ms")
_NESTED = {"source": Source.__struct_fields__, "transaction": Transaction.__struct_fields__}
#: fields whose value is the same for every event of one (tenant, table)
_TABLE_LEVEL = frozenset(
    ("tenant_id", "table", "source.connector", "source.name", "source.server_id", "source.db", "source.table")
)


def _valid_fields() -> list[str]:
    return [*_TOP_FIELDS, *(f"{k}.{f}" for k, fields in _NESTED.items() for f in fields)]


def _render_value(value: object) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _getter(field: str) -> Callable[[Event], object]:
    head, _, tail = field.partition(".")
    if not tail:
        return lambda e: getattr(e, head)

    def get(e: Event) -> object:
        obj = getattr(e, head)
        return None if obj is None else getattr(obj, tail)

    return get


def hash_tag(key: str) -> str | None:
    """The Redis Cluster hash tag of ``key`` (content of the first non-empty ``{...}``), or None."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


class StreamTemplate:
    """``stream`` of a sink: a fixed key or a ``${field}`` template rendered per event."""

    def __init__(self, text: str, path: str = "stream") -> None:
        self.text = text
        if not text:
            raise ConfigError(path, "the stream name is empty", "set it, e.g. stream: cdc:events")
        pieces: list[str | Callable[[Event], object]] = []
        fields: list[str] = []
        valid = _valid_fields()
        pos = 0
        for m in _VAR.finditer(text):
            field = m.group(1).strip()
            if field not in valid:
                raise ConfigError(path, f"unknown field ${{{m.group(1)}}} in stream template {text!r}",
                                  f"use one of: {', '.join('${' + f + '}' for f in valid)}")
            if m.start() > pos:
                pieces.append(text[pos : m.start()])
            pieces.append(_getter(field))
            fields.append(field)
            pos = m.end()
        if "${" in text[pos:]:
            raise ConfigError(path, f"unterminated ${{ in stream template {text!r}", "close it with }")
        if pos < len(text):
            pieces.append(text[pos:])
        self.fields = tuple(fields)
        #: the stream name when it is not a template
        self.static: str | None = None if fields else text
        self._pieces = pieces
        self._table_level = bool(fields) and all(f in _TABLE_LEVEL for f in fields)
        self._cache: dict[tuple[str | None, str], str] = {}

    @property
    def is_template(self) -> bool:
        return self.static is None

    @property
    def per_table(self) -> bool:
        """A template over table-level fields only: events of one (tenant, table) share a stream."""
        return self._table_level

    def render(self, event: Event) -> str:
        if self.static is not None:
            return self.static
        if self._table_level:
            ck = (event.tenant_id, event.table)
            name = self._cache.get(ck)
            if name is None:
                if len(self._cache) > 65536:  # bounded: a runaway number of tables must not grow memory
                    self._cache.clear()
                name = self._cache[ck] = self._render(event)
            return name
        return self._render(event)

    def _render(self, event: Event) -> str:
        return "".join(p if isinstance(p, str) else _render_value(p(event)) for p in self._pieces)

    def render_batch(self, events: Sequence[Event] | EventBlock) -> list[str]:
        if self.static is not None:
            return [self.static] * len(events)
        render = self.render
        return [render(e) for e in events]

    def hash_tag(self) -> str | None:
        """The stream's hash tag when it is fixed text (not produced by a ``${}``), else None."""
        tag = hash_tag(self.text)
        if tag is None or "${" in tag or "}" in tag:
            return None
        # A tag is only fixed if it lies before the first ${...}
        first_var = self.text.find("${")
        if first_var >= 0 and self.text.find("{") > first_var:
            return None
        return tag


class ClusterLayout(msgspec.Struct, frozen=True):
    """Where a sink's keys live on a Redis Cluster: one hash slot for all of them."""

    slot: int
    checkpoint_key: str
    dlq_stream: str


def cluster_layout(stream: str, dlq_stream: str | None, checkpoint_key: str | None, pipeline: str,
                   sink_id: str, path: str) -> ClusterLayout:
    """The keys of a sink on a Redis Cluster, all in the slot of the stream: a MULTI may only touch
    one slot, and the entries, the dead letters and the checkpoint commit in one MULTI.

    A fixed stream lives in its own slot; a template needs a fixed hash tag (``{cdc}:${table}``)
    so that every stream it renders shares one. The checkpoint key and the dead-letter stream
    default to that slot (``{<tag or stream>}:deltaforge:checkpoint:...``, ``{<stream>}:dlq`` for a
    fixed stream without a tag); ones set by hand must be in it. Raises ConfigError otherwise.
    """
    from deltaforge.redisclient import key_slot

    template = StreamTemplate(stream, f"{path}.stream")
    tag = template.hash_tag() or template.static
    if tag is None:
        prefix = stream.split("${", 1)[0]
        tagged = f"{{{prefix.rstrip(':')}}}:{stream[len(prefix):]}" if prefix.rstrip(":") else f"{{{pipeline}}}:{stream}"
        raise ConfigError(f"{path}.stream", f"on a Redis Cluster the stream template {stream!r} spreads a batch "
                          "over hash slots, and a MULTI (entries + checkpoint, exactly once) may only touch one",
                          f"give it a hash tag so that every stream shares one slot, e.g. stream: \"{tagged}\"")
    slot = key_slot(f"{{{tag}}}") if template.hash_tag() or "}" not in tag else key_slot(tag)
    ckpt = checkpoint_key or f"{{{tag}}}:deltaforge:checkpoint:{pipeline}:{sink_id}"
    if key_slot(ckpt) != slot:
        raise ConfigError(f"{path}.checkpoint_key", f"{ckpt!r} is in hash slot {key_slot(ckpt)}, the stream in "
                          f"{slot}: on a Redis Cluster they commit in one MULTI, so they must share a slot",
                          f"give it the stream's hash tag, e.g. {{{tag}}}:deltaforge:checkpoint:{pipeline}:{sink_id}")
    dlq = dlq_stream or (f"{stream}:dlq" if template.hash_tag() else f"{{{tag}}}:dlq")
    dlq_template = StreamTemplate(dlq, f"{path}.dlq_stream")
    dlq_tag = dlq_template.hash_tag()
    dlq_slot = key_slot(dlq_template.static) if dlq_template.static is not None else (
        key_slot(f"{{{dlq_tag}}}") if dlq_tag else None)
    if dlq_slot != slot:
        raise ConfigError(f"{path}.dlq_stream", f"{dlq!r} is not in the stream's hash slot ({slot}): on a Redis "
                          "Cluster dead letters commit in the same MULTI as the entries",
                          f"give it the stream's hash tag, e.g. dlq_stream: \"{{{tag}}}:dlq\", or remove it")
    return ClusterLayout(slot=slot, checkpoint_key=ckpt, dlq_stream=dlq)
