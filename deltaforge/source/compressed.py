"""Compressed binlog events back to plain ones, and the table of binlog event types.

Contract
--------
The reader (:mod:`deltaforge.source.binlog`) hands this module the raw bytes of an event it
does not decode itself (19-byte common header + body, checksum footer removed) and gets back
the plain events it already knows, byte for byte what the server would have written without
compression:

- :func:`uncompress_mariadb_event`: one MariaDB compressed query/rows event -> the equivalent
  QUERY_EVENT / WRITE|UPDATE|DELETE_ROWS event (header type and length rewritten).
- :func:`parse_transaction_payload` + :func:`split_events`: one MySQL TRANSACTION_PAYLOAD_EVENT
  -> its header fields and the complete inner events it carries.

:data:`HARMLESS` is the one list of event types that never carry row changes nor end a
transaction; every type that is neither decoded by the reader nor listed there is *unknown*
and the reader stops on it inside a transaction (DESIGN.md §5). :func:`event_name` names a
type in errors and logs.

Wire formats (from MariaDB's ``sql/log_event.cc`` compression helpers and MySQL's
``libbinlogevents`` Transaction_payload codec; described here, not copied)
------------------------------------------------------------------------------------------
**MariaDB compressed record** (``log_bin_compress=ON``; only events whose query text or row
data exceed ``log_bin_compress_min_len`` are compressed). A record is: one header byte whose
top bit is set (compressed), whose bits 4-6 name the algorithm (0 = zlib, the only one the
server defines and accepts) and whose low three bits give how many bytes (1 to 4) hold the
uncompressed length; then that length, most significant byte first; then a zlib stream
(RFC 1950, as zlib's ``compress()`` writes it) that inflates to exactly that many bytes.

Which part of an event is the record:

- QUERY_COMPRESSED_EVENT (165): the query post-header (its length comes from the format
  description event, 13 on every current server; byte 8 = database-name length, bytes 11-12
  little-endian = status-variables length), the status variables, the database name and its
  NUL terminator stay plain; the query text after them is the record. Plain twin: QUERY (2).
- WRITE/UPDATE/DELETE_ROWS_COMPRESSED_EVENT_V1 (166/167/168) and the non-V1 variants
  (169/170/171): the post-header (table id, 6 bytes; flags, 2 bytes; and, when the format
  description declares a 10-byte post-header, the variable-length extra header whose
  2-byte little-endian length counts itself), the column count (packed integer) and the
  columns-present bitmap(s) (two for updates, ceil(columns/8) bytes each) stay plain; the
  row images after them are the record. Plain twins: 23/24/25 and 30/31/32 (same order).

The checksum footer, when the server writes one, covers the compressed bytes; the reader
strips it before calling in and the rebuilt events carry none.

**MySQL TRANSACTION_PAYLOAD_EVENT** (40, ``binlog_transaction_compression=ON``, MySQL >=
8.0.20). The body has no fixed post-header. It starts with a list of fields, each written as
three MySQL packed integers - field type, value length in bytes, value - and the list ends
with a lone field type 0. Field types: 1 = payload size (required), 2 = compression type
(required; 0 = zstd, 255 = none), 3 = uncompressed size (informational, written for zstd);
other types are skipped by their length. The payload (payload-size bytes) follows the end
mark: a zstd stream, or the bytes themselves for "none". Uncompressed, it is the
transaction's events back to back (Query ``BEGIN``, Table_map, rows events, Xid/COMMIT), each
a complete event whose common header's length field (bytes 9-12, little-endian) gives its
size, and none with a checksum footer. The transaction's GTID event stays outside, before
the payload event.

MySQL packed integer: a first byte below 251 is the value; 0xFC, 0xFD, 0xFE introduce 2, 3,
8 little-endian bytes.

Hazards
-------
- Truncated or corrupt input raises :class:`DecodeError` naming ``where`` (binlog file:pos)
  and, inside a payload, the inner event's offset: never a silent skip.
- Decompression is bounded by the declared uncompressed size (a record that inflates to more
  or fewer bytes is corrupt), so a corrupt length cannot make the reader allocate without
  limit. A MySQL payload without a declared size is bounded by :data:`MAX_PAYLOAD`.
"""

from __future__ import annotations

import io
import struct
import zlib

from deltaforge.errors import DecodeError

# ------------------------------------------------------------------------ event types

QUERY_EVENT = 2
XID_EVENT = 16
TABLE_MAP_EVENT = 19
WRITE_ROWS_EVENT_V1 = 23
WRITE_ROWS_EVENT_V2 = 30
TRANSACTION_PAYLOAD_EVENT = 40
QUERY_COMPRESSED_EVENT = 165
WRITE_ROWS_COMPRESSED_EVENT_V1 = 166
WRITE_ROWS_COMPRESSED_EVENT = 169

#: MariaDB compressed rows events -> their plain twins (write, update, delete keep their order)
ROWS_COMPRESSED: dict[int, int] = {
    **{WRITE_ROWS_COMPRESSED_EVENT_V1 + i: WRITE_ROWS_EVENT_V1 + i for i in range(3)},
    **{WRITE_ROWS_COMPRESSED_EVENT + i: WRITE_ROWS_EVENT_V2 + i for i in range(3)},
}
#: every compressed MariaDB type the reader expands
MARIADB_COMPRESSED = frozenset((QUERY_COMPRESSED_EVENT, *ROWS_COMPRESSED))

#: header flag: "a replica that does not know this event type may skip it" (set by the server)
LOG_EVENT_IGNORABLE_F = 0x80

EVENT_NAMES: dict[int, str] = {
    0: "Unknown", 1: "Start_v3", 2: "Query", 3: "Stop", 4: "Rotate", 5: "Intvar", 6: "Load",
    7: "Slave", 8: "Create_file", 9: "Append_block", 10: "Exec_load", 11: "Delete_file",
    12: "New_load", 13: "Rand", 14: "User_var", 15: "Format_desc", 16: "Xid",
    17: "Begin_load_query", 18: "Execute_load_query", 19: "Table_map",
    20: "Write_rows_pre_ga", 21: "Update_rows_pre_ga", 22: "Delete_rows_pre_ga",
    23: "Write_rows_v1", 24: "Update_rows_v1", 25: "Delete_rows_v1", 26: "Incident",
    27: "Heartbeat", 28: "Ignorable", 29: "Rows_query", 30: "Write_rows", 31: "Update_rows",
    32: "Delete_rows", 33: "Gtid", 34: "Anonymous_gtid", 35: "Previous_gtids",
    36: "Transaction_context", 37: "View_change", 38: "XA_prepare", 39: "Partial_update_rows",
    40: "Transaction_payload", 41: "Heartbeat_v2", 42: "Gtid_tagged",
    160: "Annotate_rows", 161: "Binlog_checkpoint", 162: "Gtid (MariaDB)", 163: "Gtid_list",
    164: "Start_encryption", 165: "Query_compressed",
    166: "Write_rows_compressed_v1", 167: "Update_rows_compressed_v1",
    168: "Delete_rows_compressed_v1", 169: "Write_rows_compressed",
    170: "Update_rows_compressed", 171: "Delete_rows_compressed",
}

#: Types that carry no row change and do not end a transaction: skipped wherever they appear.
#: (Statement-context events - intvar, rand, user var - only matter to a statement-format
#: change, which the reader already refuses through its Query event.)
HARMLESS: frozenset[int] = frozenset((
    3,    # Stop: the server shut down; the next file follows
    5,    # Intvar: LAST_INSERT_ID/INSERT_ID context of the next statement
    13,   # Rand: RAND() seeds of the next statement
    14,   # User_var: @variables of the next statement
    15,   # Format_desc: start of every binlog file
    27,   # Heartbeat: the dump thread is idle
    28,   # Ignorable: explicitly skippable by replicas
    29,   # Rows_query: the SQL text of the next rows events (informational)
    34,   # Anonymous_gtid: MySQL transaction start without GTID (its BEGIN follows)
    35,   # Previous_gtids: MySQL GTID state at the start of a file
    36,   # Transaction_context: group replication certification data
    37,   # View_change: group replication membership
    41,   # Heartbeat_v2
    160,  # Annotate_rows: the SQL text of the next rows events (informational)
    161,  # Binlog_checkpoint: MariaDB crash-recovery marker
    163,  # Gtid_list: MariaDB GTID state at the start of a file
    164,  # Start_encryption: the dump thread sends decrypted events after it
))


def event_name(event_type: int) -> str:
    """``"Write_rows_compressed_v1 (166)"``: how errors and logs name an event type."""
    return f"{EVENT_NAMES.get(event_type, 'unknown type')} ({event_type})"


# ----------------------------------------------------------------------------- bytes

HEADER_LEN = 19
_EVENT_LEN = struct.Struct("<I")  # at offset 9 of the common header
_ROWS_V1_POST_HEADER = 8
_ROWS_V2_POST_HEADER = 10
_QUERY_POST_HEADER = 13
_ZSTD, _NONE = 0, 255
#: bound on a MySQL payload that does not declare its uncompressed size
MAX_PAYLOAD = 1 << 32


def read_packed_int(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    """MySQL packed (length-encoded) integer at ``pos`` -> (value, position after it)."""
    if pos >= len(buf):
        raise DecodeError(f"{where}: truncated event: a packed integer is missing at byte {pos}")
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None:
        raise DecodeError(f"{where}: corrupt event: byte {first:#x} at {pos} cannot start a packed integer")
    if pos + 1 + size > len(buf):
        raise DecodeError(f"{where}: truncated event: a {size}-byte packed integer at byte {pos} is cut")
    return int.from_bytes(buf[pos + 1:pos + 1 + size], "little"), pos + 1 + size


def uncompress_record(buf: bytes, pos: int, where: str) -> bytes:
    """Inflate the MariaDB compressed record that fills ``buf[pos:]``."""
    if pos >= len(buf):
        raise DecodeError(f"{where}: truncated compressed event: no record header at byte {pos}")
    head = buf[pos]
    if not head & 0x80:
        raise DecodeError(f"{where}: corrupt compressed event: record header {head:#04x} at byte {pos} "
                          "lacks the compressed bit")
    algorithm = (head >> 4) & 0x07
    if algorithm != 0:
        raise DecodeError(f"{where}: compressed event uses algorithm {algorithm}; only zlib (0) is defined",
                          "report the server version; nothing past this event was committed")
    nlen = head & 0x07
    if not 1 <= nlen <= 4:
        raise DecodeError(f"{where}: corrupt compressed event: {nlen} length bytes in record header {head:#04x}")
    start = pos + 1 + nlen
    if start > len(buf):
        raise DecodeError(f"{where}: truncated compressed event: the record's length is cut at byte {pos + 1}")
    size = int.from_bytes(buf[pos + 1:start], "big")
    if size == 0:
        raise DecodeError(f"{where}: corrupt compressed event: the record declares 0 bytes")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(buf[start:], size)
        if len(out) == size and not inflater.eof and inflater.decompress(inflater.unconsumed_tail, 1):
            raise DecodeError(f"{where}: corrupt compressed event: inflates past its declared {size} bytes")
    except zlib.error as e:
        raise DecodeError(f"{where}: corrupt compressed event: zlib: {e}") from None
    if not inflater.eof:
        raise DecodeError(f"{where}: truncated compressed event: the zlib stream ends early "
                          f"({len(out)} of {size} bytes)")
    if len(out) != size:
        raise DecodeError(f"{where}: corrupt compressed event: inflates to {len(out)} bytes, declared {size}")
    return out


def _rebuild(event: bytes, plain_type: int, head_end: int, tail: bytes) -> bytes:
    """The event with its type replaced, ``event[:head_end] + tail`` as body, length fixed."""
    out = bytearray(event[:head_end])
    out += tail
    out[4] = plain_type
    out[9:13] = _EVENT_LEN.pack(len(out))
    return bytes(out)


def uncompress_mariadb_event(event: bytes, where: str, post_header_len: int | None = None) -> bytes:
    """A MariaDB compressed query/rows event (no checksum footer) -> its plain twin.

    ``post_header_len``: the format description's post-header length for this type (None:
    the defaults every current server declares).
    """
    if len(event) < HEADER_LEN:
        raise DecodeError(f"{where}: truncated event: {len(event)} bytes, shorter than a header")
    etype = event[4]
    if etype == QUERY_COMPRESSED_EVENT:
        post = post_header_len or _QUERY_POST_HEADER
        if len(event) < HEADER_LEN + post:
            raise DecodeError(f"{where}: truncated compressed query event: the post-header is cut")
        db_len = event[HEADER_LEN + 8]
        status_len = int.from_bytes(event[HEADER_LEN + 11:HEADER_LEN + 13], "little")
        head_end = HEADER_LEN + post + status_len + db_len + 1
        if head_end > len(event):
            raise DecodeError(f"{where}: truncated compressed query event: the database name is cut")
        return _rebuild(event, QUERY_EVENT, head_end, uncompress_record(event, head_end, where))
    plain = ROWS_COMPRESSED.get(etype)
    if plain is None:
        raise DecodeError(f"{where}: {event_name(etype)} is not a MariaDB compressed event")
    post = post_header_len or (_ROWS_V1_POST_HEADER if plain < WRITE_ROWS_EVENT_V2 else _ROWS_V2_POST_HEADER)
    pos = HEADER_LEN + _ROWS_V1_POST_HEADER
    if post == _ROWS_V2_POST_HEADER:
        if pos + 2 > len(event):
            raise DecodeError(f"{where}: truncated compressed rows event: the extra header is cut")
        extra = int.from_bytes(event[pos:pos + 2], "little")
        if extra < 2:
            raise DecodeError(f"{where}: corrupt compressed rows event: extra header length {extra}")
        pos += extra
    columns, pos = read_packed_int(event, pos, where)
    pos += (columns + 7) // 8 * (2 if plain in (WRITE_ROWS_EVENT_V1 + 1, WRITE_ROWS_EVENT_V2 + 1) else 1)
    if pos > len(event):
        raise DecodeError(f"{where}: truncated compressed rows event: the column bitmaps are cut")
    return _rebuild(event, plain, pos, uncompress_record(event, pos, where))


# ------------------------------------------------------------- MySQL transaction payload

class TransactionPayload:
    """A decoded TRANSACTION_PAYLOAD_EVENT: header fields and the uncompressed inner events."""

    __slots__ = ("compression", "payload", "payload_size", "uncompressed_size")

    def __init__(self, payload_size: int, compression: int, uncompressed_size: int, payload: bytes) -> None:
        self.payload_size = payload_size
        self.compression = compression
        self.uncompressed_size = uncompressed_size
        #: the inner events back to back, uncompressed
        self.payload = payload

    @property
    def compression_name(self) -> str:
        return {_ZSTD: "zstd", _NONE: "none"}.get(self.compression, str(self.compression))


def parse_transaction_payload(body: bytes, where: str) -> TransactionPayload:
    """Body of a TRANSACTION_PAYLOAD_EVENT (after the common header, no checksum) -> payload."""
    fields: dict[int, int] = {}
    pos = 0
    while True:
        kind, pos = read_packed_int(body, pos, where)
        if kind == 0:
            break
        length, pos = read_packed_int(body, pos, where)
        if kind in (1, 2, 3):
            fields[kind], end = read_packed_int(body, pos, where)
            if end - pos != length:
                raise DecodeError(f"{where}: corrupt transaction payload: field {kind} declares {length} bytes "
                                  f"and holds {end - pos}")
        if pos + length > len(body):
            raise DecodeError(f"{where}: truncated transaction payload: field {kind} at byte {pos} is cut")
        pos += length
    if 1 not in fields or 2 not in fields:
        raise DecodeError(f"{where}: corrupt transaction payload: the header lacks the "
                          f"{'payload size' if 1 not in fields else 'compression type'}")
    size, compression, declared = fields[1], fields[2], fields.get(3, 0)
    data = body[pos:pos + size]
    if len(data) != size:
        raise DecodeError(f"{where}: truncated transaction payload: {len(data)} of its {size} bytes are here")
    if compression == _NONE:
        payload = data
    elif compression == _ZSTD:
        payload = _zstd_decompress(data, declared, where)
    else:
        raise DecodeError(f"{where}: transaction payload uses compression type {compression}; "
                          "only zstd (0) and none (255) are defined",
                          "report the server version; nothing past this event was committed")
    if declared and len(payload) != declared:
        raise DecodeError(f"{where}: corrupt transaction payload: {len(payload)} bytes uncompressed, "
                          f"declared {declared}")
    return TransactionPayload(size, compression, declared or len(payload), payload)


def _zstd_decompress(data: bytes, declared: int, where: str) -> bytes:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a declared dependency
        raise DecodeError(f"{where}: a zstd-compressed transaction payload needs the zstandard package",
                          "pip install zstandard (a dependency of deltaforge: reinstall it)") from None
    limit = declared or MAX_PAYLOAD
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    try:
        out = reader.read(limit + 1)
    except zstandard.ZstdError as e:
        raise DecodeError(f"{where}: corrupt transaction payload: zstd: {e}") from None
    if len(out) > limit:
        raise DecodeError(f"{where}: corrupt transaction payload: inflates past {limit} bytes")
    if declared and len(out) < declared:
        raise DecodeError(f"{where}: truncated transaction payload: zstd gives {len(out)} of {declared} bytes")
    return out


def split_events(payload: bytes, where: str) -> list[tuple[int, bytes]]:
    """Inner events of a payload (no checksum footers) -> [(offset in payload, event bytes)]."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(payload):
        if pos + HEADER_LEN > len(payload):
            raise DecodeError(f"{where}: truncated transaction payload: inner event at offset {pos} "
                              f"has {len(payload) - pos} bytes, shorter than a header")
        (size,) = _EVENT_LEN.unpack_from(payload, pos + 9)
        if size < HEADER_LEN or pos + size > len(payload):
            raise DecodeError(f"{where}: truncated transaction payload: inner event at offset {pos} "
                              f"declares {size} bytes, {len(payload) - pos} remain")
        out.append((pos, payload[pos:pos + size]))
        pos += size
    return out
