"""Event and batch structs shared by every stage.

Contract (DESIGN.md §3): the JavaScript view of an event and the ``native``
envelope are the JSON encoding of :class:`Event`, fields in this order::

    event_id, tenant_id, table, op, before, after, ts_ms, source, transaction, tags

``synthetic`` is present only on events a processor created (UNSET is never encoded).

Positions (DESIGN.md §5): a :class:`Position` is where reading resumes. For a
committed transaction it is the binlog position right after its commit event
(= where the next transaction starts) and ``skip_rows == 0``. For a transaction
split across batches it is the position of the transaction's *start* and
``skip_rows`` is the number of its (captured) rows already delivered; resume
re-reads the transaction and skips exactly those rows. ``gtid`` is the GTID state
covering every transaction *before* ``file:pos`` (MariaDB ``d-s-n[,d-s-n]``,
MySQL ``uuid:1-n[,...]``); when present it is preferred on resume.

Every event also has an ordering key ``(file_number, tx_start_pos, seq)``; a
position covers an event when the event's key sorts before the position's key.
Sinks use it to skip what their own checkpoint already holds.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

OrderKey = tuple[int, int, int]


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

    def order_key(self) -> OrderKey:
        return (binlog_file_number(self.file), self.pos, self.skip_rows)

    def covers(self, key: OrderKey) -> bool:
        """True when the event with ordering ``key`` is already delivered at this position."""
        return key < self.order_key()

    def __str__(self) -> str:
        text = f"{self.file}:{self.pos}"
        if self.skip_rows:
            text += f"+{self.skip_rows} rows"
        if self.gtid:
            text += f" (gtid {self.gtid})"
        return text


def min_position(positions: list[Position]) -> Position | None:
    if not positions:
        return None
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


class Batch(msgspec.Struct):
    """A run of events handed from one stage to the next.

    ``keys[i]`` is the ordering key of ``events[i]``; ``end`` is the position the
    sink commits together with the batch's entries. ``dead[i]`` (key ``dead_keys[i]``)
    are the batch's dead letters: every stage passes them on, the sink writes them to its
    dead-letter stream in the same commit as the events.
    """

    seq: int
    events: list[Event]
    keys: list[OrderKey]
    end: Position
    #: where the batch came from, for error messages: "db.table at file:pos"
    origin: str = ""
    dead: list[DeadLetter] = msgspec.field(default_factory=list)
    dead_keys: list[OrderKey] = msgspec.field(default_factory=list)


_NAMESPACE = uuid.UUID("6f1b8c52-5d2e-4c7a-9a51-0d1e7c3b9f10")


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
    """Deterministic UUID (v5-shaped) from the source position of one row.

    A replayed row gets the same id, so consumers can de-duplicate across
    at-least-once sinks and the idempotency key is stable.
    """
    return event_id_for(event_id_hasher(server, file, pos), row)


def derive_synthetic_id(parent_id: str, processor_id: str, index: int) -> str:
    """Id of the ``index``-th event a processor created after ``parent_id``."""
    return derive_event_id(processor_id, parent_id, index, 0)


def idempotency_key(event: Event) -> str:
    tx = event.transaction.id if event.transaction is not None else ""
    return f"{event.tenant_id or ''}|{event.table}|{tx}|{event.event_id}"
