"""The reader's output as bytes: each event's native JSON built once (pure-Python twin).

``_core/eventbuf.pyx`` is the compiled twin with identical output (:mod:`deltaforge._accel`
picks one); this module is the specification and the test oracle.

Contract
--------
:class:`BlockBuilder` accumulates the events of the batch being read as JSON lines: every
event is its native JSON (DESIGN.md §3: exactly ``msgspec.json.encode(Event)``, fields in
model order) followed by ``\\n``. Beside the bytes it keeps, per event, what later stages
need without parsing JSON: the ordering key, the ``table`` and the ``transaction.id``.
:meth:`BlockBuilder.take` cuts the first ``n`` events off as an immutable
:class:`~deltaforge.model.EventBlock`.

Event ids (model.py, DESIGN.md §3) are computed here for each row: the v5-shaped UUID of
SHA-1(namespace + prefix + decimal index), where the caller passes the prefix of the
transaction (``gtid|<gtid>|``, index = row of the transaction) or of the rows event
(``<server>|<file>|<pos>|``, index = row of the event). Both twins agree with
:func:`deltaforge.model.event_id_for`.

``transaction.end`` is known only at the commit: every row is written with ``"end":false``
and :meth:`BlockBuilder.mark_end` rewrites the tail of the newest event, which is always the
last row of the transaction being committed (the reader holds back a transaction's newest
row until its commit, see binlog.py).

Hazards
-------
* Values (``before``/``after``) are msgspec's encoding of the decoder's dicts: the rendering
  rules stay the decoder's (DESIGN.md §3). The compiled twin writes the JSON of each value
  straight from the binlog bytes (``add_rows``) and must equal this byte for byte; it falls
  back to this very encoding for what it does not render itself.
* The per-rows-event strings (table, db, pipeline name, tenant, file, GTID) are JSON-escaped
  once per rows event, not per row.
"""

from __future__ import annotations

import hashlib
import struct
import time
from typing import Any

import msgspec

from deltaforge.model import NAMESPACE_BYTES, EventBlock, OrderKey
from deltaforge.source import rowdecode

IMPLEMENTATION = "python"

_encode = msgspec.json.Encoder().encode
_TAIL_OPEN = b',"end":false},"tags":null}\n'
_TAIL_END = b',"end":true},"tags":null}\n'


def event_uuid(prefix: bytes, index: int) -> bytes:
    """The event id of row ``index`` under ``prefix`` (the namespace is prepended here), ASCII."""
    b = bytearray(hashlib.sha1(NAMESPACE_BYTES + prefix + str(index).encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50
    b[8] = (b[8] & 0x3F) | 0x80
    x = b.hex().encode()
    return x[:8] + b"-" + x[8:12] + b"-" + x[12:16] + b"-" + x[16:20] + b"-" + x[20:]


_OPS = ("c", "u", "d")  # by rowdecode kind: WRITE, UPDATE, DELETE
_SPAN = struct.Struct("=ii")


class Tx:
    """The transaction being read: where it starts, its GTID (and the GTID set before it), its id
    (the GTID, else ``<file>:<pos>``), how many rows of captured tables it has had so far, whether
    it is a standalone statement (DDL), and the ordering key of its rows but their seq
    (model.py OrderKey)."""

    __slots__ = ("file", "gtid", "gtid_before", "id", "key_head", "pos", "rows", "standalone")

    def __init__(self, file: str, file_no: int, pos: int, gtid: str | None, gtid_before: str | None,
                 standalone: bool) -> None:
        self.file = file
        self.pos = pos
        self.gtid = gtid
        self.gtid_before = gtid_before
        self.id = gtid or f"{file}:{pos}"
        self.rows = 0
        self.standalone = standalone
        self.key_head = (file_no, pos)


class BlockBuilder:
    """The events of the batch being read, as JSON lines plus their index (see the module docstring).

    ``server`` is the identity event ids use without GTIDs (``<server>|<file>|<pos>|``).
    """

    def __init__(self, pipeline: str, tenant: str | None, server: str = "") -> None:
        self._name = _encode(pipeline)
        self._tenant = _encode(tenant)
        self._tenant_id = tenant
        self._server = server
        self._data = bytearray()
        self._starts: list[int] = [0]
        self._spans = bytearray()  # per event: native int32 offsets of `before` and of `,"ts_ms":` in its line
        self.keys: list[OrderKey] = []
        self.tables: list[str] = []
        self.txids: list[str] = []
        self.tenants: list[str | None] = []
        #: (schema, file, pos) of the newest rows event that added events (names a batch's origin)
        self.origin: tuple[Any, str, int] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return len(self._data)

    def append_rows(self, rows: list[tuple[Any, Any]], kind: int, schema: Any, ts: int, server_id: int,
                    file: str, pos: int, tx: Any, row0: int, skip: int) -> int:
        """Append the events of one rows event; returns how many rows it consumed (all of ``rows``).

        ``tx`` is the reader's transaction (``gtid``, ``id``, ``key_head``, and ``rows``: the
        seq of the first row here). Row ``k`` has seq ``tx.rows + k`` and event row
        ``row0 + k``; rows whose seq is below ``skip`` were delivered before a restart and are
        not written. Ids are of the prefix ``gtid|<gtid>|`` indexed by seq (GTID transactions),
        else of the rows event's position prefix by event row. ``ts`` is the event's timestamp
        in seconds.
        """
        table = f"{schema.db}.{schema.table}"
        ts_ms = str(ts * 1000).encode()
        head = (b'","tenant_id":' + self._tenant + b',"table":' + _encode(table) + b',"op":"'
                + _OPS[kind].encode() + b'","before":')
        src = (b',"ts_ms":' + ts_ms + b',"source":{"connector":"mysql","name":' + self._name
               + b',"server_id":' + str(server_id).encode() + b',"db":' + _encode(schema.db) + b',"table":'
               + _encode(schema.table) + b',"file":' + _encode(file) + b',"pos":' + str(pos).encode() + b',"row":')
        txh = (b',"gtid":' + _encode(tx.gtid) + b',"ts_ms":' + ts_ms + b'},"transaction":{"id":'
               + _encode(tx.id) + b',"seq":')
        by_seq = bool(tx.gtid)
        prefix = f"gtid|{tx.gtid}|".encode() if by_seq else f"{self._server}|{file}|{pos}|".encode()
        seq0, key_head, key_gtid, txid = tx.rows, tx.key_head, tx.gtid or "", tx.id
        data = self._data
        for k, (before, after) in enumerate(rows):
            seq = seq0 + k
            if seq < skip:
                continue
            row = row0 + k
            line = len(data)
            data += b'{"event_id":"'
            data += event_uuid(prefix, seq if by_seq else row)
            data += head
            before_at = len(data) - line
            data += _encode(before)
            data += b',"after":'
            data += _encode(after)
            self._spans += _SPAN.pack(before_at, len(data) - line)
            data += src
            data += str(row).encode()
            data += txh
            data += str(seq).encode()
            data += _TAIL_OPEN
            self._starts.append(len(data))
            self.keys.append((key_head[0], key_head[1], seq, key_gtid))
            self.tables.append(table)
            self.txids.append(txid)
            self.tenants.append(self._tenant_id)
        return len(rows)

    def add_rows(self, ev: tuple[Any, ...], tx: Tx, file: str, in_payload: bool, skip: int) -> int:
        """Append the events of one rows event of the scanner (framing.py: ``(ROWS, next, size, ts,
        server_id, kind, schema, present, present_after, body)``), decoding its body here.

        Rows are numbered from ``tx.rows`` (seq) and, inside a transaction payload
        (``in_payload``: its events share one position), from ``tx.rows`` too (event row), else
        from 0; ``tx.rows`` is advanced past every row of the event, skipped ones included. Rows
        whose seq is below ``skip`` are decoded but not written. On a decode failure nothing of
        the event stays and the decoder's DecodeError (table, column, byte) is raised. Returns the
        batch-size cost of what was added (the body's bytes per row, times the rows added), 0 when
        nothing was; ``origin`` then names this event.
        """
        kind, schema, body = ev[5], ev[6], ev[9]
        rows = rowdecode.decode_rows(schema, body, kind, ev[7], ev[8])
        if not rows:
            return 0
        before = len(self.keys)
        pos = ev[1] - ev[2]
        self.append_rows(rows, kind, schema, ev[3], ev[4], file, pos, tx, tx.rows if in_payload else 0, skip)
        tx.rows += len(rows)
        added = len(self.keys) - before
        if not added:
            return 0
        self.origin = (schema, file, pos)
        return (len(body) // len(rows) + 1) * added

    def mark_end(self, txid: str) -> bool:
        """Set ``transaction.end`` on the newest event if it belongs to ``txid``; True if it did."""
        if not self.txids or self.txids[-1] != txid:
            return False
        data = self._data
        if not data.endswith(_TAIL_OPEN):  # pragma: no cover - every row is written open
            raise AssertionError("the newest event is already closed")
        del data[len(data) - len(_TAIL_OPEN):]
        data += _TAIL_END
        self._starts[-1] = len(data)
        return True

    def take(self, n: int) -> tuple[EventBlock, list[OrderKey]]:
        """Cut the first ``n`` events off: their :class:`EventBlock` and their ordering keys."""
        end = self._starts[n]
        block = EventBlock(bytes(self._data[:end]), self._starts[:n + 1], self.tables[:n], self.txids[:n],
                           self.tenants[:n], True, bytes(self._spans[:8 * n]))
        del self._spans[:8 * n]
        keys = self.keys[:n]
        del self._data[:end]
        self._starts = [s - end for s in self._starts[n:]]
        del self.keys[:n], self.tables[:n], self.txids[:n], self.tenants[:n]
        return block, keys


# ----------------------------------------------------------------------------- processor answers


class _Fixed(msgspec.Struct):
    """The fields of an input event a processor cannot change, as their raw JSON."""

    event_id: msgspec.Raw
    tenant_id: msgspec.Raw
    table: msgspec.Raw
    op: msgspec.Raw
    ts_ms: msgspec.Raw
    source: msgspec.Raw
    transaction: msgspec.Raw
    synthetic: msgspec.Raw = msgspec.Raw()


_decode_fixed = msgspec.json.Decoder(list[_Fixed]).decode
_decode_answer = msgspec.json.Decoder(list[tuple[int, msgspec.Raw, msgspec.Raw, msgspec.Raw]]).decode


def splice_answer(block: EventBlock, keys: list[OrderKey], answer: bytes,
                  created: Any) -> tuple[EventBlock, list[OrderKey]]:
    """The processor's output block from its harness answer (deltaforge/process/js.py).

    ``answer`` is a JSON array with one element per output event: ``[i, before, after, tags]``
    for an event that kept input ``i``'s event_id (its JSON is input ``i``'s with those three
    values put in: every other field restored as it came in), or ``[-1 - p, event, 0, 0]`` for
    a created event whose parent is input ``p``: ``created(k, p, raw_event)`` returns its
    ``(line, table, txid, tenant)``. Output keys are the input's (the parent's).
    """
    items = _decode_answer(answer)
    fixed = _decode_fixed(block.json_array()) if any(i >= 0 for i, *_ in items) else []
    lines: list[bytes] = []
    out_keys: list[OrderKey] = []
    tables: list[str] = []
    txids: list[str] = []
    tenants: list[str | None] = []
    for k, (i, before, after, tags) in enumerate(items):
        if i >= 0:
            f = fixed[i]
            lines.append(b"".join((
                b'{"event_id":', f.event_id, b',"tenant_id":', f.tenant_id, b',"table":', f.table,
                b',"op":', f.op, b',"before":', before, b',"after":', after, b',"ts_ms":', f.ts_ms,
                b',"source":', f.source, b',"transaction":', f.transaction, b',"tags":', tags,
                b',"synthetic":' + bytes(f.synthetic) + b"}" if len(f.synthetic) else b"}")))
            out_keys.append(keys[i])
            tables.append(block.tables[i])
            txids.append(block.txids[i])
            tenants.append(block.tenants[i])
            continue
        p = -1 - i
        line, table, txid, tenant = created(k, p, bytes(before))
        lines.append(line)
        out_keys.append(keys[p])
        tables.append(table)
        txids.append(txid)
        tenants.append(tenant)
    # kept events keep their input's id and created ones get a derived UUID: the input's shape holds
    return EventBlock.from_lines(lines, tables, txids, tenants, block.ids_are_uuids() or None), out_keys


# ----------------------------------------------------------------------------- CloudEvents

_CE_TYPES = {b"c": b"insert", b"u": b"update", b"d": b"delete", b"r": b"snapshot"}


class _CeFields(msgspec.Struct):
    """What a CloudEvents envelope takes from a native event line, as raw JSON."""

    event_id: msgspec.Raw
    op: str
    before: msgspec.Raw
    after: msgspec.Raw
    ts_ms: int


_decode_ce = msgspec.json.Decoder(list[_CeFields]).decode


def _rfc3339_ms(ts_ms: int) -> bytes:
    secs, ms = divmod(ts_ms, 1000)
    t = time.gmtime(secs)
    return b"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, ms)


def cloudevents_block(block: EventBlock, pipeline: str) -> EventBlock:
    """The CloudEvents 1.0 envelopes of a block's events (envelope.py has the layout), built from the
    events' own bytes: ``before``/``after``/``id`` copied as they are, not decoded and encoded again.
    ``tenant`` and ``txid`` are left out when null (an empty transaction id counts as null)."""
    fields = _decode_ce(block.json_array()) if len(block) else []
    lines: list[bytes] = []
    for i, f in enumerate(fields):
        table = block.tables[i]
        op = f.op.encode()
        parts = [b'{"specversion":"1.0","id":', bytes(f.event_id), b',"source":',
                 _encode(f"/deltaforge/{pipeline}/{table}"), b',"type":"io.deltaforge.change.',
                 _encode(f.op)[1:-1] if op not in _CE_TYPES else _CE_TYPES[op], b'","subject":', _encode(table),
                 b',"time":"', _rfc3339_ms(f.ts_ms), b'","datacontenttype":"application/json","data":{"before":',
                 bytes(f.before), b',"after":', bytes(f.after), b',"op":', _encode(f.op), b"}"]
        if block.tenants[i] is not None:
            parts += [b',"tenant":', _encode(block.tenants[i])]
        if block.txids[i]:
            parts += [b',"txid":', _encode(block.txids[i])]
        parts.append(b"}")
        lines.append(b"".join(parts))
    return EventBlock.from_lines(lines, block.tables, block.txids, block.tenants)
