"""Binlog framing: replication packets -> the few events the reader acts on (pure-Python twin).

``_core/framing.pyx`` is the compiled twin with identical output; :mod:`deltaforge._accel`
picks one. This module is also the test oracle and the specification.

Contract
--------
A :class:`EventScanner` owns a receive buffer. Bytes go in through :meth:`EventScanner.recv`
(one ``recv_into`` of whatever the socket holds) or :meth:`EventScanner.feed`; :meth:`next`
returns the next event the reader must see, or ``None`` when the buffer holds no complete
packet. Packets are MySQL client/server packets (3-byte length, sequence id, payload; a
payload of 0xFFFFFF bytes continues in the next packet); an event packet is an OK byte,
the 19-byte common header (timestamp 4, type 1, server id 4, event size 4, next position 4,
flags 2), the body and, when the dump runs with checksums, a 4-byte CRC32 footer that is
stripped (not verified: TCP and TLS already check the transport).

Handled inside the scanner, never returned (so no Python object exists for them):

* FORMAT_DESCRIPTION: post-header lengths and server version (:meth:`post_header_len`);
* HEARTBEAT, every type in :data:`compressed.HARMLESS`, any event with the ignorable flag;
* TABLE_MAP whose bytes equal the last map seen for its table id: the cache hit;
* rows events of table ids mapped to ``None`` (not captured) or never mapped.

Returned, as tuples whose first five items are ``(type, next_pos, size, timestamp,
server_id)``:

===================  ===========================================================
``ROTATE``           ``+ (next_file: str, position: int)``
``GTID_MARIADB``     ``+ (gtid "domain-server-seq": str, flags: int)``
``GTID_MYSQL``       ``+ (gtid "uuid:gno": str, flags: int)``
``QUERY``            ``+ (kind, schema: bytes | None, query: str | None)``; ``kind`` is
                     ``Q_BEGIN``/``Q_COMMIT``/``Q_ROLLBACK`` (schema and query None) or
                     ``Q_OTHER``
``XID``              nothing more
``TABLE_MAP``        ``+ (table_id, db: str, table: str, body: bytes)``: a map not seen
                     before; the reader answers with :meth:`set_table` (schema or None)
``ROWS``             ``+ (kind, schema, present: bytes, present_after: bytes | None,
                     body: bytes)``; ``kind`` is rowdecode's WRITE/UPDATE/DELETE and
                     ``body`` the row images (what ``decode_rows`` takes)
``OTHER``            ``+ (flags, raw: bytes, type)``: any other type, header + body, for
                     :meth:`BinlogSource._other_event` (compressed events, payloads,
                     unknown types)
``ERROR``            ``(ERROR, payload: bytes)``: an error packet from the server
``END``              ``(END,)``: an EOF packet (the server ended the dump)
===================  ===========================================================

:meth:`parse` runs the same dispatch on one plain event (header + body, no checksum), for
events expanded from compressed events and transaction payloads.

Hazards
-------
* Rows events may not use the 4-byte table ids of 5.0-era servers' post-header (length 6):
  handled by :meth:`post_header_len`, as the format description says.
* A rows event refers to the latest TABLE_MAP of its table id; the cache key is the map's
  whole body (table id included), so a reused id with another table is a miss, not a hit.
* Memory: the buffer grows to hold the largest event (bounded by the server's
  ``max_allowed_packet``) and is compacted, never kept larger than needed plus 256 KiB
  after a big event has been consumed.
"""

from __future__ import annotations

from typing import Any

from deltaforge.errors import DecodeError
from deltaforge.source import compressed

IMPLEMENTATION = "python"

# event types
ROTATE = 4
QUERY = 2
XID = 16
FORMAT_DESCRIPTION = 15
TABLE_MAP = 19
HEARTBEAT = 27
GTID_MYSQL = 33
GTID_MARIADB = 162
#: rows events v1 (MariaDB, MySQL 5.x) and v2 (MySQL 5.6+): type -> rowdecode kind
ROWS_KIND: dict[int, int] = {23: 0, 24: 1, 25: 2, 30: 0, 31: 1, 32: 2}
ROWS = -10  # the tuple tag of a rows event (its real type is folded into ``kind``)
OTHER = -11
ERROR = -1
END = -2

Q_OTHER, Q_BEGIN, Q_COMMIT, Q_ROLLBACK = 0, 1, 2, 3

_HEADER = 19
_MAX_PACKET = 0xFFFFFF
_INITIAL = 256 * 1024
_TABLES_MAX = 4096


def _le(b: bytes | bytearray | memoryview, pos: int, n: int) -> int:
    return int.from_bytes(b[pos:pos + n], "little")


class EventScanner:
    """Receive buffer + event dispatch of one dump connection (see the module docstring)."""

    def __init__(self, checksum: bool, skip_types: frozenset[int] = compressed.HARMLESS) -> None:
        self.checksum = bool(checksum)
        self._skip = frozenset(skip_types)
        self._buf = bytearray(_INITIAL)
        self._start = 0
        self._end = 0
        self._post_header: bytes = b""
        self._version = ""
        #: table id -> (map body, schema or None)
        self._tables: dict[int, tuple[bytes, Any]] = {}
        #: bytes received so far (tests and metrics)
        self.received = 0
        #: events framed so far, returned or not
        self.events = 0

    # ------------------------------------------------------------------ input
    def _room(self, need: int) -> None:
        """Make room for ``need`` more bytes after the unread ones (compact, then grow)."""
        if self._start:
            unread = self._end - self._start
            self._buf[:unread] = self._buf[self._start:self._end]
            self._start, self._end = 0, unread
        if len(self._buf) - self._end < need:
            self._buf.extend(bytes(need - (len(self._buf) - self._end)))

    def feed(self, data: bytes) -> None:
        """Append received bytes (tests, and what pymysql had buffered before the takeover)."""
        if len(self._buf) - self._end < len(data):
            self._room(len(data))
        self._buf[self._end:self._end + len(data)] = data
        self._end += len(data)
        self.received += len(data)

    def recv(self, sock: Any) -> int:
        """One ``sock.recv_into`` into the buffer; returns the byte count (0: the peer closed)."""
        if len(self._buf) - self._end < 65536:
            self._room(max(65536, self._wanted()))
        view = memoryview(self._buf)
        try:
            n = sock.recv_into(view[self._end:])
        finally:
            view.release()
        self._end += n
        self.received += n
        return int(n)

    def _wanted(self) -> int:
        """Bytes the next packet chain still needs (0 when unknown), so one event never needs many grows."""
        avail = self._end - self._start
        if avail < 4:
            return 0
        length = _le(self._buf, self._start, 3)
        return max(0, length + 4 - avail)

    def has_event(self) -> bool:
        """True when a whole packet is buffered (:meth:`next` will not return None for lack of bytes)."""
        return self._chain() is not None

    def buffered(self) -> int:
        return self._end - self._start

    # ----------------------------------------------------------- packet level
    def _chain(self) -> tuple[int, int] | None:
        """(total bytes of the next packet chain, payload bytes) if it is complete, else None."""
        pos, end, payload = self._start, self._end, 0
        buf = self._buf
        while True:
            if end - pos < 4:
                return None
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            if end - pos - 4 < length:
                return None
            pos += 4 + length
            payload += length
            if length < _MAX_PACKET:
                return pos - self._start, payload

    def next(self) -> tuple[Any, ...] | None:
        """The next event the reader acts on, or None when no complete packet is buffered."""
        while True:
            chain = self._chain()
            if chain is None:
                return None
            total, payload_len = chain
            start = self._start
            if total == payload_len + 4:
                payload = bytes(self._buf[start + 4:start + total])
            else:  # a continued packet: join the payloads
                parts, pos = [], start
                while pos < start + total:
                    length = _le(self._buf, pos, 3)
                    parts.append(bytes(self._buf[pos + 4:pos + 4 + length]))
                    pos += 4 + length
                payload = b"".join(parts)
            self._start += total
            if self._start == self._end:
                self._start = self._end = 0
                if len(self._buf) > _INITIAL * 4:
                    self._buf = bytearray(_INITIAL)  # a big event has gone: give the memory back
            out = self._packet(payload)
            if out is not None:
                return out

    def _packet(self, payload: bytes) -> tuple[Any, ...] | None:
        if not payload:
            raise DecodeError("empty packet on the binlog connection")
        first = payload[0]
        if first == 0xFF:
            return (ERROR, payload)
        if first == 0xFE and len(payload) < 9:
            return (END,)
        if first != 0:
            raise DecodeError(f"unexpected packet on the binlog connection (first byte {first:#04x})")
        end = len(payload) - 4 if self.checksum else len(payload)
        return self._event(payload, 1, end)

    # ------------------------------------------------------------ event level
    def parse(self, raw: bytes) -> tuple[Any, ...] | None:
        """Dispatch one plain event (header + body, no checksum footer), as :meth:`next` does."""
        return self._event(raw, 0, len(raw))

    def post_header_len(self, event_type: int) -> int | None:
        """The post-header length the format description declares for a type (None: unknown)."""
        if 0 < event_type <= len(self._post_header):
            return self._post_header[event_type - 1]
        return None

    def set_table(self, table_id: int, body: bytes, schema: Any) -> None:
        """Record the reader's decision for a TABLE_MAP returned by :meth:`next` (schema or None)."""
        if len(self._tables) >= _TABLES_MAX and table_id not in self._tables:
            self._tables.clear()
        self._tables[table_id] = (body, schema)

    def table_schema(self, table_id: int) -> Any:
        """The schema mapped to a table id (None: not captured or not mapped)."""
        hit = self._tables.get(table_id)
        return None if hit is None else hit[1]

    def _table_id_len(self, event_type: int) -> int:
        return 4 if self.post_header_len(event_type) == 6 else 6

    def _event(self, data: bytes, at: int, end: int) -> tuple[Any, ...] | None:
        self.events += 1
        if end - at < _HEADER:
            raise DecodeError(f"binlog event of {end - at} bytes is shorter than its 19-byte header")
        ts = _le(data, at, 4)
        etype = data[at + 4]
        server_id = _le(data, at + 5, 4)
        size = _le(data, at + 9, 4)
        next_pos = _le(data, at + 13, 4)
        flags = _le(data, at + 17, 2)
        b = at + _HEADER  # body start
        where = f"binlog event {compressed.event_name(etype)} ending at {next_pos}"
        try:
            kind = ROWS_KIND.get(etype)
            if kind is not None:
                return self._rows(data, b, end, etype, kind, (etype, next_pos, size, ts, server_id))
            if etype == TABLE_MAP:
                return self._table_map(data, b, end, (etype, next_pos, size, ts, server_id))
            if etype == XID:
                return (etype, next_pos, size, ts, server_id)
            if etype == GTID_MARIADB:
                _need(b + 13, end)
                seq = _le(data, b, 8)
                domain = _le(data, b + 8, 4)
                gflags = data[b + 12]
                return (etype, next_pos, size, ts, server_id, f"{domain}-{server_id}-{seq}", gflags)
            if etype == QUERY:
                return self._query(data, b, end, (etype, next_pos, size, ts, server_id))
            if etype == GTID_MYSQL:
                _need(b + 25, end)
                gflags = data[b]
                sid = bytes(data[b + 1:b + 17]).hex()
                gno = _le(data, b + 17, 8)
                gtid = f"{sid[:8]}-{sid[8:12]}-{sid[12:16]}-{sid[16:20]}-{sid[20:]}:{gno}"
                return (etype, next_pos, size, ts, server_id, gtid, gflags)
            if etype == ROTATE:
                _need(b + 8, end)
                position = _le(data, b, 8)
                name = bytes(data[b + 8:end]).decode("utf-8", "replace")
                return (etype, next_pos, size, ts, server_id, name, position)
            if etype == FORMAT_DESCRIPTION:
                self._format_description(data, b, end)
                return None
            if etype == HEARTBEAT or etype in self._skip or flags & compressed.LOG_EVENT_IGNORABLE_F:
                return None
            return (OTHER, next_pos, size, ts, server_id, flags, bytes(data[at:end]), etype)
        except IndexError:
            raise DecodeError(f"{where} is truncated ({end - at} bytes)",
                              "report this with the server version; nothing past this event was committed") from None

    def _format_description(self, data: bytes, b: int, end: int) -> None:
        _need(b + 57, end)
        version = bytes(data[b + 2:b + 52]).split(b"\0", 1)[0].decode("ascii", "replace")
        head = version.split("-", 1)[0].split(".")
        try:
            major, minor = int(head[0]), int(head[1])
        except (ValueError, IndexError):
            major, minor = 0, 0
        aware = (major, minor) >= (5, 6) or major >= 10
        n = end - b - 57 - (1 if aware else 0) - (0 if self.checksum else (4 if aware else 0))
        if n < 0:
            raise IndexError("truncated")
        self._version = version
        self._post_header = bytes(data[b + 57:b + 57 + n])

    def _table_map(self, data: bytes, b: int, end: int, head: tuple[int, ...]) -> tuple[Any, ...] | None:
        idlen = self._table_id_len(TABLE_MAP)
        _need(b + idlen + 3, end)
        table_id = _le(data, b, idlen)
        hit = self._tables.get(table_id)
        body = data[b:end]
        if hit is not None and hit[0] == body:
            return None
        p = b + idlen + 2
        dlen = data[p]
        _need(p + 2 + dlen + 1, end)
        db = bytes(data[p + 1:p + 1 + dlen]).decode("utf-8", "replace")
        p += 2 + dlen
        tlen = data[p]
        _need(p + 1 + tlen, end)
        table = bytes(data[p + 1:p + 1 + tlen]).decode("utf-8", "replace")
        return (*head, table_id, db, table, bytes(body))

    def _rows(self, data: bytes, b: int, end: int, etype: int, kind: int,
              head: tuple[int, ...]) -> tuple[Any, ...] | None:
        idlen = self._table_id_len(etype)
        _need(b + idlen, end)
        table_id = _le(data, b, idlen)
        hit = self._tables.get(table_id)
        if hit is None or hit[1] is None:
            return None
        p = b + idlen + 2
        if etype >= 30:  # v2: extra data, its length counts its own two bytes
            _need(p + 2, end)
            extra = _le(data, p, 2)
            if extra < 2:
                raise IndexError("bad extra data length")
            p += extra
        ncols, p = _lenenc(data, p, end)
        if ncols > (end - b) * 8:
            raise IndexError("column count beyond the event")
        width = (ncols + 7) // 8
        _need(p + width * (2 if kind == 1 else 1), end)
        present = bytes(data[p:p + width])
        p += width
        present2 = None
        if kind == 1:
            present2 = bytes(data[p:p + width])
            p += width
        return (ROWS, *head[1:], kind, hit[1], present, present2, bytes(data[p:end]))

    def _query(self, data: bytes, b: int, end: int, head: tuple[int, ...]) -> tuple[Any, ...]:
        post = self.post_header_len(QUERY) or 13
        _need(b + 13, end)
        schema_len = data[b + 8]
        status_len = _le(data, b + 11, 2)
        p = b + post + status_len
        _need(p + schema_len + 1, end)
        schema = bytes(data[p:p + schema_len])
        p += schema_len + 1
        query = bytes(data[p:end])
        word = query.strip().upper()
        if word == b"BEGIN":
            return (*head, Q_BEGIN, None, None)
        if word == b"COMMIT":
            return (*head, Q_COMMIT, None, None)
        if word == b"ROLLBACK":
            return (*head, Q_ROLLBACK, None, None)
        return (*head, Q_OTHER, schema, query.decode("utf-8", "replace"))


def _need(p: int, end: int) -> None:
    if p > end:
        raise IndexError("truncated")


def _lenenc(data: bytes, p: int, end: int) -> tuple[int, int]:
    _need(p + 1, end)
    first = data[p]
    if first < 251:
        return first, p + 1
    width = {252: 2, 253: 3, 254: 8}.get(first)
    if width is None:
        raise IndexError("bad length-encoded integer")
    _need(p + 1 + width, end)
    return _le(data, p + 1, width), p + 1 + width
