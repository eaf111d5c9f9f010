"""Event and batch structs shared by every stage, and the one rule for comparing positions.

Contract (DESIGN.md §3): the JavaScript view of an event and the ``native``
envelope are the JSON encoding of :class:`Event`, fields in this order::

    event_id, tenant_id, table, op, before, after, ts_ms, source, transaction, tags

``synthetic`` is present only on events a processor created (UNSET is never encoded).
On the hot path a batch's events are an :class:`EventBlock`: those JSON encodings, built
once by the reader, as bytes (the stages pass them on without decoding them).

Positions (DESIGN.md §5): a :class:`Position` is where reading resumes. For a
committed transaction it is the binlog position right after its commit event
(= where the next transaction starts) and ``skip_rows == 0``. For a transaction
split across batches it is the position of the transaction's *start*, ``tx`` is
its GTID and ``skip_rows`` the number of its (captured) rows already delivered;
resume re-reads the transaction and skips exactly those rows. ``gtid`` is the
executed GTID set covering every transaction *before* ``file:pos`` (MariaDB
``d-s-n[,d-s-n]``, MySQL ``uuid:1-n[,...]``); ``server`` names the server whose
binlog ``file:pos`` refers to.

"Already delivered?" has one answer, here (:meth:`Position.covers`,
:func:`position_le`, :func:`min_position`): by GTID wherever both sides have one,
by ``file:pos`` only within one server's binlog. Another server numbers its files
differently, so after a failover a file comparison would call new rows delivered.

Every event has an ordering key ``(file_number, tx_start_pos, seq, tx_gtid)``
(``tx_gtid`` is ``""`` without GTIDs); processors carry their input's key onto
their output, and sinks use it to skip what their own checkpoint already holds.

Event ids (DESIGN.md §3) are UUIDs (v5-shaped, SHA-1) of
``(transaction GTID, row index in the transaction)`` where a GTID exists, so a
replay on any server of the topology gives the same id; without GTIDs, of
``(server identity, binlog file, event position, row index in the event)``.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import uuid
from collections.abc import Iterator
from typing import Any, overload

import msgspec
from msgspec import UNSET, UnsetType

from deltaforge.source.gtid import parse_gtid_set

OrderKey = tuple[int, int, int, str]


class Source(msgspec.Struct):
    connector: str
    name: str
    server_id: int
    db: str
    table: str
    file: str
    pos: int
    row: int
    gtid: str | None
    ts_ms: int


class Transaction(msgspec.Struct):
    id: str
    seq: int
    end: bool


class Event(msgspec.Struct):
    # Defaults exist so that processor output (decoded with this type) may omit
    # fields; the stages fill them back in from the input event.
    event_id: str = ""
    tenant_id: str | None = None
    table: str = ""
    op: str = ""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    ts_ms: int = 0
    source: Source | None = None
    transaction: Transaction | None = None
    tags: list[str] | None = None
    synthetic: str | UnsetType = UNSET


OPS = frozenset(("c", "u", "d", "r"))


def binlog_file_number(file: str) -> int:
    """``mysql-bin.000042`` -> 42 (binlog files sort by their numeric suffix)."""
    _, _, suffix = file.rpartition(".")
    try:
        return int(suffix)
    except ValueError:
        return 0


class Position(msgspec.Struct, frozen=True):
    file: str
    pos: int
    gtid: str | None = None
    skip_rows: int = 0
    #: GTID of the transaction ``skip_rows`` counts into (None: the one starting at file:pos)
    tx: str | None = None
    #: identity of the server whose binlog ``file:pos`` belongs to ("": unknown, an older checkpoint)
    server: str = ""

    def order_key(self) -> tuple[int, int, int]:
        """Order within ONE server's binlog (see :func:`position_le` for anything wider)."""
        return (binlog_file_number(self.file), self.pos, self.skip_rows)

    def _by_gtid(self) -> bool:
        return self.gtid is not None and (not self.skip_rows or self.tx is not None)

    def same_binlog(self, server: str) -> bool:
        return not self.server or not server or self.server == server

    def covers(self, key: tuple[int, ...] | tuple[Any, ...], server: str = "") -> bool:
        """True when the event with ordering ``key``, read from ``server``, is already delivered here."""
        gtid = str(key[3]) if len(key) > 3 else ""
        if gtid and self._by_gtid():
            if self.skip_rows and self.tx == gtid:
                return bool(key[2] < self.skip_rows)
            return parse_gtid_set(self.gtid or "").contains(gtid)
        return tuple(key[:3]) < self.order_key()

    def __str__(self) -> str:
        text = f"{self.file}:{self.pos}" if self.file else "gtid"
        if self.skip_rows:
            text += f"+{self.skip_rows} rows"
        if self.gtid:
            text += f" (gtid {self.gtid})"
        return text


def position_le(a: Position, b: Position) -> bool:
    """Is everything delivered at ``a`` also delivered at ``b``?

    By GTID when both carry an executed set: ``a``'s set within ``b``'s, and ``a``'s
    partial transaction complete in ``b`` or partial there with at least as many rows.
    Otherwise by file:pos, which is meaningful only within one server's binlog (the
    reader refuses to resume on another server without GTIDs).
    """
    if a._by_gtid() and b._by_gtid():
        sa, sb = parse_gtid_set(a.gtid or ""), parse_gtid_set(b.gtid or "")
        if not sa.issubset(sb):
            return False
        if a.skip_rows and a.tx:
            return sb.contains(a.tx) or (b.tx == a.tx and a.skip_rows <= b.skip_rows)
        return True
    return a.order_key() <= b.order_key()


def min_position(positions: list[Position]) -> Position | None:
    """The position every one of ``positions`` has delivered (resume point over several sinks).

    One of them when it is behind all others; when GTID positions diverge (different
    domains ahead in different sinks) their intersection, whole transactions only:
    each sink then skips what it holds itself.
    """
    if not positions:
        return None
    for p in positions:
        if all(position_le(p, q) for q in positions):
            return p
    if all(p.gtid is not None for p in positions):
        common = parse_gtid_set(positions[0].gtid or "")
        for p in positions[1:]:
            common = common.intersection(parse_gtid_set(p.gtid or ""))
        return Position(file="", pos=0, gtid=str(common))
    return min(positions, key=Position.order_key)


class DeadLetter(msgspec.Struct, kw_only=True):
    """One dead-letter record: an event a processor could not handle (``on_error: dlq``) or a
    rows event the decoder could not decode (``on_decode_error: dlq``).

    Its JSON is the ``df-dlq`` field of the dead-letter stream entry (docs/processors.md,
    "Dead letters"). ``event`` is the event as the failing processor received it (None for
    a decode failure); ``raw`` is the undecodable rows-event body, base64 (None otherwise).
    """

    stage: str
    """``processor`` | ``decoder``"""
    processor: str | None = None
    """the failing processor's id (None for the decoder)"""
    error: str
    table: str
    file: str
    pos: int
    """start of the binlog rows event"""
    row: int | None = None
    """row index inside the rows event (None: the whole event could not be decoded)"""
    gtid: str | None = None
    event_id: str | None = None
    event: Event | None = None
    raw: str | None = None
    ts_ms: int = 0
    """commit timestamp of the source event, ms"""


class EventBlock:
    """A batch's events as bytes, built once by the reader (or a processor), read by every stage.

    ``data`` is JSON lines: each event's native JSON (exactly ``msgspec.json.encode(Event)``)
    followed by ``\\n``; event ``i`` is ``data[starts[i]:starts[i + 1] - 1]``. ``tables[i]``,
    ``txids[i]`` and ``tenants[i]`` are its ``table``, ``transaction.id`` and ``tenant_id``
    (what sinks need without parsing).

    It is a read-only sequence of :class:`Event`: indexing or iterating decodes the events
    (once, then cached) for the stages that still work on objects (dead letters, stream
    templates, tests); the hot stages use the bytes. Slicing returns an EventBlock.
    """

    __slots__ = ("_events", "_uuid_ids", "data", "spans", "starts", "tables", "tenants", "txids")

    def __init__(self, data: bytes, starts: list[int], tables: list[str], txids: list[str],
                 tenants: list[str | None], uuid_ids: bool | None = None, spans: bytes | None = None) -> None:
        self.data = data
        self.starts = starts
        self.tables = tables
        self.txids = txids
        self.tenants = tenants
        self._events: list[Event] | None = None
        #: every event_id a 36-character UUID first in its line (None: not known yet)
        self._uuid_ids = uuid_ids
        #: the reader's blocks only: per event two native int32, where in its line the ``before``
        #: value starts and where ``,"ts_ms":`` (the end of ``after``) starts, so a processor's
        #: answer is spliced in without scanning the line (eventbuf.splice_answer); None elsewhere
        self.spans = spans

    @classmethod
    def from_lines(cls, lines: list[bytes], tables: list[str], txids: list[str],
                   tenants: list[str | None], uuid_ids: bool | None = None) -> EventBlock:
        """A block of these events' native JSON lines (no newline inside any: compact JSON)."""
        starts = [0]
        total = 0
        for line in lines:
            total += len(line) + 1
            starts.append(total)
        return cls(b"\n".join(lines) + b"\n" if lines else b"", starts, tables, txids, tenants, uuid_ids)

    @classmethod
    def from_events(cls, events: list[Event]) -> EventBlock:
        """The block of Event objects (tests, dead-letter isolation, events built by stages)."""
        if not events:
            return cls(b"", [0], [], [], [])
        lines = _encoder.encode_lines(events).split(b"\n")
        lines.pop()
        block = cls.from_lines(lines, [e.table for e in events],
                               [e.transaction.id if e.transaction is not None else "" for e in events],
                               [e.tenant_id for e in events])
        block._events = list(events)
        return block

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __bool__(self) -> bool:
        return len(self.starts) > 1

    def line(self, i: int) -> bytes:
        """The native JSON of event ``i``."""
        return self.data[self.starts[i]:self.starts[i + 1] - 1]

    def lines(self) -> list[bytes]:
        """The native JSON of every event."""
        if len(self.starts) < 2:
            return []
        out = self.data.split(b"\n")
        out.pop()  # every line ends with "\n": the last piece is empty
        return out

    def take(self, indices: list[int]) -> EventBlock:
        """A block of the events at ``indices`` (ascending), the same bytes: no event decoded."""
        if not indices:
            return EventBlock(b"", [0], [], [], [], self._uuid_ids)
        starts, data = self.starts, self.data
        pieces = [data[starts[i]:starts[i + 1]] for i in indices]  # each line with its newline
        pick = operator.itemgetter(*indices) if len(indices) > 1 else (lambda seq: (seq[indices[0]],))
        return EventBlock(b"".join(pieces), list(itertools.accumulate(map(len, pieces), initial=0)),
                          list(pick(self.tables)), list(pick(self.txids)), list(pick(self.tenants)),
                          self._uuid_ids)

    def ids_are_uuids(self) -> bool:
        """Does every event start ``{"event_id":"<36 characters>","tenant_id":``? The reader's and the
        processors' ids are such UUIDs (they say so when they build the block); sinks then read the
        ids at that offset without decoding."""
        if self._uuid_ids is None:
            data = self.data
            self._uuid_ids = all(data[a + 49:a + 63] == b'","tenant_id":' and data[a:a + 13] == b'{"event_id":"'
                                 for a in self.starts[:-1])
        return self._uuid_ids

    def event_ids(self) -> list[bytes]:
        """Every event's ``event_id`` (UTF-8), read off the JSON without decoding it where it can be."""
        if self.ids_are_uuids():
            data = self.data
            return [data[a + 13:a + 49] for a in self.starts[:-1]]
        return [e.event_id.encode() for e in self.decoded()]

    def json_array(self) -> bytes:
        """``[e0,e1,...]``: the events as one JSON array (the processor's input)."""
        if len(self.starts) < 2:
            return b"[]"
        return b"[" + self.data[:-1].replace(b"\n", b",") + b"]"

    def decoded(self) -> list[Event]:
        if self._events is None:
            self._events = _decode_events(self.json_array())
        return self._events

    @overload
    def __getitem__(self, i: int) -> Event: ...
    @overload
    def __getitem__(self, i: slice) -> EventBlock: ...
    def __getitem__(self, i: int | slice) -> Event | EventBlock:
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("EventBlock slices are contiguous")
            hi = max(lo, hi)
            a, b = self.starts[lo], self.starts[hi]
            return EventBlock(self.data[a:b], [s - a for s in self.starts[lo:hi + 1]], self.tables[lo:hi],
                              self.txids[lo:hi], self.tenants[lo:hi], self._uuid_ids,
                              self.spans[8 * lo:8 * hi] if self.spans is not None else None)
        if self._events is not None:
            return self._events[i]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("EventBlock index out of range")
        return _decode_event(self.line(i % n))

    def __iter__(self) -> Iterator[Event]:
        return iter(self.decoded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EventBlock):
            return self.data == other.data
        if isinstance(other, list):
            return self.decoded() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EventBlock({len(self)} events, {len(self.data)} bytes)"


_decode_events = msgspec.json.Decoder(list[Event]).decode
_decode_event = msgspec.json.Decoder(Event).decode
_encoder = msgspec.json.Encoder()


class Batch(msgspec.Struct):
    """A run of events handed from one stage to the next.

    ``keys[i]`` is the ordering key of ``events[i]``; ``end`` is the position the
    sink commits together with the batch's entries. ``dead[i]`` (key ``dead_keys[i]``)
    are the batch's dead letters: every stage passes them on, the sink writes them to its
    dead-letter stream in the same commit as the events.
    """

    seq: int
    #: a list of Event objects, or an EventBlock (the reader's bytes: the hot path)
    events: list[Event] | EventBlock
    keys: list[OrderKey]
    end: Position
    #: where the batch came from, for error messages: "db.table at file:pos"
    origin: str = ""
    dead: list[DeadLetter] = msgspec.field(default_factory=list)
    dead_keys: list[OrderKey] = msgspec.field(default_factory=list)


_NAMESPACE = uuid.UUID("6f1b8c52-5d2e-4c7a-9a51-0d1e7c3b9f10")
#: the SHA-1 prefix of every event id (deltaforge.source.eventbuf computes ids from it too)
NAMESPACE_BYTES = _NAMESPACE.bytes


def event_id_hasher(server: str, file: str, pos: int) -> Any:
    """SHA-1 state over the position prefix shared by every row of one binlog event."""
    return hashlib.sha1(_NAMESPACE.bytes + f"{server}|{file}|{pos}|".encode())


def event_id_for(hasher: Any, row: int) -> str:
    """The id of row ``row`` of the event whose prefix ``hasher`` holds (see :func:`derive_event_id`)."""
    h = hasher.copy()
    h.update(str(row).encode())
    b = bytearray(h.digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50
    b[8] = (b[8] & 0x3F) | 0x80
    x = b.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def derive_event_id(server: str, file: str, pos: int, row: int) -> str:
    """Deterministic UUID (v5-shaped) from the source position of one row (sources without GTIDs).

    A replayed row gets the same id, so consumers can de-duplicate across
    at-least-once sinks and the idempotency key is stable.
    """
    return event_id_for(event_id_hasher(server, file, pos), row)


def gtid_event_id_hasher(gtid: str) -> Any:
    """SHA-1 state over the prefix shared by every row of the transaction ``gtid``."""
    return hashlib.sha1(_NAMESPACE.bytes + f"gtid|{gtid}|".encode())


def derive_gtid_event_id(gtid: str, seq: int) -> str:
    """Id of row ``seq`` (index among the captured rows) of transaction ``gtid``: the same on every server."""
    return event_id_for(gtid_event_id_hasher(gtid), seq)


def derive_synthetic_id(parent_id: str, processor_id: str, index: int) -> str:
    """Id of the ``index``-th event a processor created after ``parent_id``."""
    return derive_event_id(processor_id, parent_id, index, 0)


def idempotency_key(event: Event) -> str:
    tx = event.transaction.id if event.transaction is not None else ""
    return f"{event.tenant_id or ''}|{event.table}|{tx}|{event.event_id}"
