"""What both row decoders share, with one owner: column classification, rare types, error messages.

Contract
--------
The compiled decoder (``_core/rowdecode.pyx``) and its pure twin (``deltaforge.source.rowdecode``)
both import this module and neither imports the other. It owns:

- ``column_kind(col)``: the one classification of a column into the decoder it needs (a short
  string: ``"long"``, ``"ulong"``, ``"varchar"``, ``"varbinary"``, ``"json"``...), from its binlog
  type and metadata. Metadata the binlog format cannot produce (DECIMAL precision > 65, fsp > 6,
  BIT wider than 64, an ENUM of more than 2 bytes...) and character sets Python cannot decode make
  the column ``"unsupported"``: decoding a value of it raises :class:`DecodeError` naming why.
- The decoders of the rare types, which both twins call as they are (``RARE_DECODERS``): MySQL
  binary JSON, the old temporal formats (MariaDB's hires variants included), unsupported columns.
  Each has the pure module's decoder signature ``(buf, pos, col) -> (value, new_pos)``.
- ``decimal_size``/``decimal_from_bin`` (DECIMAL bytes: used by JSON's opaque DECIMAL, by the twin
  and by the compiled module for corrupt digit groups) and ``utc_text`` (TIMESTAMP rendering).
- The error messages (``value_error``, ``truncated_value``...): both twins raise the same
  one-line DecodeError naming ``db.table``, the column and its type, and the byte position.

The wire layouts are documented in the pure twin's header; the JSON layout below.

Hazards
-------
- A ``new_pos`` past the end of the body is not checked here: the callers check it and report a
  truncated value (slicing ``bytes`` never raises).
- Binary JSON offsets come from the data: a corrupt document could point a container at itself.
  Nesting is limited to ``JSON_MAX_DEPTH`` (MySQL's own limit), so no input recurses without end.
"""

from __future__ import annotations

import codecs
import datetime
import struct
from base64 import b64encode
from collections.abc import Callable
from typing import Any

from deltaforge.errors import DecodeError
from deltaforge.source import schema as S
from deltaforge.source.schema import ColumnSpec, TableSchema

Decoder = Callable[[bytes, int, ColumnSpec], tuple[Any, int]]

MAX_SAFE_INT = (1 << 53) - 1

_i16 = struct.Struct("<h").unpack_from
_u16 = struct.Struct("<H").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i64 = struct.Struct("<q").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_f64 = struct.Struct("<d").unpack_from
_from = int.from_bytes


def safe_int(v: int) -> int | str:
    return v if -MAX_SAFE_INT <= v <= MAX_SAFE_INT else str(v)


# ------------------------------------------------------------------- classification

_INT_KINDS = {S.TINY: "tiny", S.SHORT: "short", S.INT24: "int24", S.LONG: "long", S.LONGLONG: "longlong"}
_BLOBS = (S.BLOB, S.TINY_BLOB, S.MEDIUM_BLOB, S.LONG_BLOB)
_TEXT_KINDS = ("varchar", "char", "text")

#: every kind ``column_kind`` returns (the compiled module maps each to a C type code)
KINDS = frozenset([
    *_INT_KINDS.values(), *("u" + k for k in _INT_KINDS.values()), "year", "bit", "float", "double", "decimal",
    "date", "datetime2", "time2", "timestamp2", "datetime_old", "datetime_hires", "time_old", "time_hires",
    "timestamp_old", "timestamp_hires", "varchar", "varbinary", "char", "binary", "text", "blob", "enum", "set",
    "json", "unsupported",
])


def _codec_ok(codec: str | None) -> bool:
    if codec is None or codec.startswith("unsupported:"):
        return False
    try:
        codecs.lookup(codec)
    except LookupError:
        return False
    return True


def _kind(col: ColumnSpec) -> str:
    t = col.type
    if t in _INT_KINDS:
        return ("u" if col.unsigned else "") + _INT_KINDS[t]
    if t == S.YEAR:
        return "year"
    if t == S.BIT:
        return "bit" if 0 <= col.bits <= 64 else ""
    if t == S.FLOAT:
        return "float"
    if t == S.DOUBLE:
        return "double"
    if t == S.NEWDECIMAL:
        return "decimal" if 0 <= col.decimals <= col.precision <= 65 and col.precision else ""
    if t in (S.DATE, S.NEWDATE):
        return "date"
    if not 0 <= col.fsp <= 6 and t in (S.DATETIME2, S.TIME2, S.TIMESTAMP2, S.DATETIME, S.TIME, S.TIMESTAMP):
        return ""
    if t in (S.DATETIME2, S.TIME2, S.TIMESTAMP2):
        return {S.DATETIME2: "datetime2", S.TIME2: "time2", S.TIMESTAMP2: "timestamp2"}[t]
    if t in (S.DATETIME, S.TIME, S.TIMESTAMP):
        name = {S.DATETIME: "datetime", S.TIME: "time", S.TIMESTAMP: "timestamp"}[t]
        return name + ("_hires" if col.fsp else "_old")
    if t in (S.VARCHAR, S.VAR_STRING):
        return "varbinary" if col.charset is None else "varchar"
    if t == S.STRING:
        return "binary" if col.charset is None else "char"
    if t in _BLOBS or t in (S.GEOMETRY, S.JSON):
        if not 1 <= col.length_size <= 4:
            return ""
        if t == S.JSON:
            return "json"
        return "blob" if col.charset is None or t == S.GEOMETRY else "text"
    if t == S.ENUM:
        return "enum" if 1 <= col.size <= 2 else ""
    if t == S.SET:
        return "set" if 1 <= col.size <= 8 else ""
    return ""


def column_kind(col: ColumnSpec) -> str:
    """The decoder this column needs (one of ``KINDS``); ``"unsupported"`` when none can read it."""
    kind = _kind(col)
    if kind in _TEXT_KINDS and not _codec_ok(col.charset):
        return "unsupported"
    return kind or "unsupported"


def unsupported_detail(col: ColumnSpec) -> str:
    """Why ``column_kind(col)`` is ``"unsupported"`` (the DecodeError's text)."""
    tname = S.TYPE_NAMES.get(col.type, str(col.type))
    kind = _kind(col)
    if kind in _TEXT_KINDS:
        name = (col.charset or "").removeprefix("unsupported:")
        return f"character set {name} has no Python codec"
    if col.type not in S.TYPE_NAMES or col.type in (S.DECIMAL, S.NULL):
        return f"binlog type {col.type} ({tname}) is not supported"
    return (f"the table map's metadata for this {tname} column is out of range (precision {col.precision}, "
            f"scale {col.decimals}, fsp {col.fsp}, bits {col.bits}, size {col.size}, "
            f"length bytes {col.length_size}): it is not supported")


def unsupported_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    raise DecodeError(unsupported_detail(col))


# ---------------------------------------------------------------------- messages


def _where(schema: TableSchema, col: ColumnSpec) -> str:
    return f"{schema.qualified}.{col.name} ({S.TYPE_NAMES.get(col.type, str(col.type))})"


def value_error(schema: TableSchema, col: ColumnSpec, pos: int, detail: str, hint: str | None = None) -> DecodeError:
    """A value that cannot be decoded: names table, column, type and the value's first byte."""
    return DecodeError(f"{_where(schema, col)}: {detail}, in the value at byte {pos}", hint)


def truncated_value(schema: TableSchema, col: ColumnSpec, pos: int, body_len: int) -> DecodeError:
    return DecodeError(f"{_where(schema, col)}: rows event truncated: the value at byte {pos} runs past the "
                       f"end of the body ({body_len} bytes)")


def truncated_nulls(schema: TableSchema, start: int, body_len: int) -> DecodeError:
    return DecodeError(f"{schema.qualified}: rows event truncated inside the NULL bitmap of the row image at "
                       f"byte {start} (body of {body_len} bytes)")


def malformed_image(schema: TableSchema, start: int) -> DecodeError:
    """No single value is at fault (not expected: the re-walk finds the culprit)."""
    return DecodeError(f"{schema.qualified}: malformed row image at byte {start}")


def present_too_short(schema: TableSchema, present: bytes) -> DecodeError:
    return DecodeError(f"{schema.qualified}: the present-columns bitmap covers {len(present) * 8} columns, "
                       f"the table map has {len(schema.columns)}")


def unknown_kind(schema: TableSchema, kind: object) -> DecodeError:
    return DecodeError(f"{schema.qualified}: unknown rows-event kind {kind!r} (expected WRITE/UPDATE/DELETE)")


def no_columns(schema: TableSchema, body_len: int) -> DecodeError:
    return DecodeError(f"{schema.qualified}: the present-columns bitmap selects no columns but the rows event "
                       f"has {body_len} bytes")


def present_columns(schema: TableSchema, present: bytes) -> list[int]:
    """Indexes of the columns set in a present bitmap (raises when it is too short)."""
    n = len(schema.columns)
    if len(present) * 8 < n:
        raise present_too_short(schema, present)
    bits = _from(present, "little")
    return [i for i in range(n) if bits >> i & 1]


# ----------------------------------------------------------------------- decimal

DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def decimal_size(precision: int, scale: int) -> int:
    intg = precision - scale
    return (intg // 9) * 4 + DIG2BYTES[intg % 9] + (scale // 9) * 4 + DIG2BYTES[scale % 9]


def decimal_from_bin(data: bytes, precision: int, scale: int) -> str:
    """MySQL ``decimal2bin`` bytes -> exact string with exactly ``scale`` fraction digits."""
    raw = bytearray(data)
    negative = not (raw[0] & 0x80)
    raw[0] ^= 0x80
    if negative:
        raw = bytearray(b ^ 0xFF for b in raw)
    intg = precision - scale
    lead = DIG2BYTES[intg % 9]
    p = lead
    ipart = _from(raw[:lead], "big") if lead else 0
    for _ in range(intg // 9):
        ipart = ipart * 1_000_000_000 + _from(raw[p : p + 4], "big")
        p += 4
    frac_parts = []
    for _ in range(scale // 9):
        frac_parts.append(f"{_from(raw[p : p + 4], 'big'):09d}")
        p += 4
    tail = scale % 9
    if tail:
        frac_parts.append(f"{_from(raw[p : p + DIG2BYTES[tail]], 'big'):0{tail}d}")
    frac = "".join(frac_parts)
    if negative and ipart == 0 and not frac.strip("0"):
        negative = False  # never render "-0.00"
    sign = "-" if negative else ""
    return f"{sign}{ipart}.{frac}" if scale else f"{sign}{ipart}"


# ---------------------------------------------------------------------- temporal

FRAC_BYTES = (0, 1, 1, 2, 2, 3, 3)
# fraction bytes hold 10^-(2*ceil(fsp/2)) s units; formatting pads to that many digits
FRAC_WIDTH = (0, 2, 2, 4, 4, 6, 6)
_EPOCH_ORDINAL = 719163  # datetime.date(1970, 1, 1).toordinal()


def utc_text(secs: int, frac: str) -> str:
    """Seconds since the epoch (UTC) + fraction text -> ``YYYY-MM-DDTHH:MM:SS[.f]Z``."""
    days, rem = divmod(secs, 86400)
    d = datetime.date.fromordinal(_EPOCH_ORDINAL + days)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
        f"{rem // 3600:02d}:{(rem // 60) % 60:02d}:{rem % 60:02d}{frac}Z"
    )


def datetime_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    """Old DATETIME (12): 8 bytes LE ``YYYYMMDDhhmmss``."""
    v = _u64(buf, pos)[0]
    d, t = divmod(v, 1_000_000)
    return (
        f"{d // 10000:04d}-{(d // 100) % 100:02d}-{d % 100:02d} "
        f"{t // 10000:02d}:{(t // 100) % 100:02d}:{t % 100:02d}"
    ), pos + 8


def time_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    """Old TIME (11): 3 bytes LE signed ``hhmmss``."""
    v = _from(buf[pos : pos + 3], "little", signed=True)
    sign = "-" if v < 0 else ""
    v = abs(v)
    return f"{sign}{v // 10000:02d}:{(v // 100) % 100:02d}:{v % 100:02d}", pos + 3


def timestamp_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    """Old TIMESTAMP (7): 4 bytes LE seconds."""
    secs = _u32(buf, pos)[0]
    return ("0000-00-00 00:00:00" if secs == 0 else utc_text(secs, "")), pos + 4


# MariaDB old-format hires temporals (sql/field.cc Field_*_hires): big-endian packed numbers.
DATETIME_HIRES_BYTES = (5, 6, 6, 7, 7, 7, 8)
TIME_HIRES_BYTES = (3, 4, 4, 5, 5, 5, 6)
_TIME_MAX_SECONDS = 838 * 3600 + 59 * 60 + 59


def datetime_hires_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    fsp = col.fsp
    n = DATETIME_HIRES_BYTES[fsp]
    # packed = pack_time(ltime) / 10^(6-fsp); pack_time nests year*13+month, *32+day, *24+h...
    v = _from(buf[pos : pos + n], "big")
    v, frac = divmod(v, 10**fsp)
    v, sec = divmod(v, 60)
    v, minute = divmod(v, 60)
    v, hour = divmod(v, 24)
    v, day = divmod(v, 32)
    year, month = divmod(v, 13)
    return (
        f"{year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{sec:02d}.{frac:0{fsp}d}"
    ), pos + n


def time_hires_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    fsp = col.fsp
    n = TIME_HIRES_BYTES[fsp]
    unit = 10**fsp
    v = _from(buf[pos : pos + n], "big") - (_TIME_MAX_SECONDS + 1) * unit
    sign = "-" if v < 0 else ""
    secs, frac = divmod(abs(v), unit)
    return (
        f"{sign}{secs // 3600:02d}:{(secs // 60) % 60:02d}:{secs % 60:02d}.{frac:0{fsp}d}"
    ), pos + n


def timestamp_hires_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    fsp = col.fsp
    secs = _from(buf[pos : pos + 4], "big")
    nf = FRAC_BYTES[fsp]
    frac = _from(buf[pos + 4 : pos + 4 + nf], "big")
    if secs == 0 and frac == 0:
        return "0000-00-00 00:00:00." + "0" * fsp, pos + 4 + nf
    return utc_text(secs, f".{frac:0{fsp}d}"), pos + 4 + nf


# ------------------------------------------------------------------------ binary JSON
#
# MySQL json_binary (sql/json_binary.h): a type byte, then the value.
#   0x00/0x01 small/large object, 0x02/0x03 small/large array:
#       count, byte size (2 or 4 bytes LE each), key entries (object only: offset 2|4,
#       length 2), value entries (type 1 + offset-or-inline 2|4); offsets are relative to
#       the start of the object/array (just after its type byte).
#   0x04 literal (0 null, 1 true, 2 false), 0x05/0x06 int16/uint16, 0x07/0x08 int32/uint32,
#   0x09/0x0a int64/uint64, 0x0b double, 0x0c string (varlen length + utf8mb4),
#   0x0f opaque (field type byte, varlen length, data).
#   Inline in value entries: literal, int16, uint16 always; int32, uint32 in large format.
#   varlen: 7 bits per byte, low group first, high bit = more bytes follow.

_J_SMALL_OBJ, _J_LARGE_OBJ, _J_SMALL_ARR, _J_LARGE_ARR = 0, 1, 2, 3
_J_LITERAL, _J_INT16, _J_UINT16, _J_INT32, _J_UINT32 = 4, 5, 6, 7, 8
_J_INT64, _J_UINT64, _J_DOUBLE, _J_STRING, _J_OPAQUE = 9, 10, 11, 12, 15
JSON_MAX_DEPTH = 100  # MySQL's JSON_DOCUMENT_MAX_DEPTH
_J_LITERALS = {0: None, 1: True, 2: False}


class _Corrupt(ValueError):
    """A binary JSON document that breaks its format (the reason is the message)."""


def _j_varlen(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    for _ in range(5):
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
    raise _Corrupt("a length is longer than 5 bytes")


def _j_packed_datetime(packed: int, with_time: bool) -> str:
    ymdhms, usec = packed >> 24, packed & 0xFFFFFF
    ymd, hms = ymdhms >> 17, ymdhms & 0x1FFFF
    ym = ymd >> 5
    date = f"{ym // 13:04d}-{ym % 13:02d}-{ymd & 31:02d}"
    if not with_time:
        return date
    return f"{date} {hms >> 12:02d}:{(hms >> 6) & 63:02d}:{hms & 63:02d}.{usec:06d}"


def _j_opaque(ftype: int, data: bytes) -> Any:
    if ftype == S.NEWDECIMAL:
        if len(data) < 3 or not 0 <= data[1] <= data[0] <= 65 or not data[0]:
            raise _Corrupt("an opaque DECIMAL has no valid precision and scale")
        text = decimal_from_bin(data[2:], data[0], data[1])
        return float(text)  # JSON numbers: a JSON DECIMAL is a number in the document
    if ftype in (S.DATE, S.DATETIME, S.TIMESTAMP, S.DATETIME2, S.TIMESTAMP2):
        return _j_packed_datetime(_i64(data, 0)[0], ftype != S.DATE)
    if ftype in (S.TIME, S.TIME2):
        packed = _i64(data, 0)[0]
        sign = "-" if packed < 0 else ""
        packed = abs(packed)
        hms, usec = packed >> 24, packed & 0xFFFFFF
        return f"{sign}{(hms >> 12) & 0x3FF:02d}:{(hms >> 6) & 63:02d}:{hms & 63:02d}.{usec:06d}"
    # what JSON_UNQUOTE shows for other opaque scalars (bit, blob, geometry...)
    return f"base64:type{ftype}:{b64encode(data).decode('ascii')}"


def _j_scalar(t: int, buf: bytes, pos: int) -> Any:
    if t == _J_STRING:
        n, p = _j_varlen(buf, pos)
        if p + n > len(buf):
            raise _Corrupt("a string runs past the document")
        return buf[p : p + n].decode("utf-8")
    if t == _J_INT64:
        return safe_int(_i64(buf, pos)[0])
    if t == _J_UINT64:
        return safe_int(_u64(buf, pos)[0])
    if t == _J_DOUBLE:
        return _f64(buf, pos)[0]
    if t == _J_INT32:
        return _i32(buf, pos)[0]
    if t == _J_UINT32:
        return _u32(buf, pos)[0]
    if t == _J_INT16:
        return _i16(buf, pos)[0]
    if t == _J_UINT16:
        return _u16(buf, pos)[0]
    if t == _J_LITERAL:
        lit = buf[pos]
        if lit not in _J_LITERALS:
            raise _Corrupt(f"unknown literal {lit:#x}")
        return _J_LITERALS[lit]
    if t == _J_OPAQUE:
        ftype = buf[pos]
        n, p = _j_varlen(buf, pos + 1)
        if p + n > len(buf):
            raise _Corrupt("an opaque value runs past the document")
        return _j_opaque(ftype, buf[p : p + n])
    raise _Corrupt(f"unknown value type {t:#x}")


def _j_container(t: int, buf: bytes, base: int, depth: int) -> Any:
    if depth > JSON_MAX_DEPTH:
        raise _Corrupt(f"nested deeper than {JSON_MAX_DEPTH} levels")
    large = t in (_J_LARGE_OBJ, _J_LARGE_ARR)
    w = 4 if large else 2
    rd = _u32 if large else _u16
    count = rd(buf, base)[0]
    size = rd(buf, base + w)[0]
    if base + size > len(buf):
        raise _Corrupt("a container runs past the document")
    is_obj = t in (_J_SMALL_OBJ, _J_LARGE_OBJ)
    entries = base + 2 * w
    values_at = entries + (count * (w + 2) if is_obj else 0)
    if values_at + count * (1 + w) > base + size:
        raise _Corrupt("a container's entries run past its size")
    vals = []
    for i in range(count):
        e = values_at + i * (1 + w)
        vt = buf[e]
        if vt in (_J_LITERAL, _J_INT16, _J_UINT16) or (large and vt in (_J_INT32, _J_UINT32)):
            vals.append(_j_scalar(vt, buf, e + 1))  # inlined in the entry
        else:
            off = rd(buf, e + 1)[0]
            vals.append(_j_value(vt, buf, base + off, depth + 1))
    if not is_obj:
        return vals
    out = {}
    for i in range(count):
        k = entries + i * (w + 2)
        koff = rd(buf, k)[0]
        klen = _u16(buf, k + w)[0]
        if base + koff + klen > len(buf):
            raise _Corrupt("a key runs past the document")
        out[buf[base + koff : base + koff + klen].decode("utf-8")] = vals[i]
    return out


def _j_value(t: int, buf: bytes, pos: int, depth: int) -> Any:
    if t <= _J_LARGE_ARR:
        return _j_container(t, buf, pos, depth)
    return _j_scalar(t, buf, pos)


def json_binary_decode(data: bytes) -> Any:
    """A MySQL binary JSON document -> Python (dict/list/str/int/float/bool/None).

    Raises ValueError (its message says what is corrupt) on a document that breaks the format."""
    if not data:
        return None  # MySQL writes an empty value for JSON null set by some paths
    try:
        return _j_value(data[0], data, 1, 1)
    except _Corrupt:
        raise
    except (IndexError, struct.error) as exc:
        raise _Corrupt("a value runs past the document") from exc
    except UnicodeDecodeError as exc:
        raise _Corrupt("a key or string is not UTF-8") from exc


def json_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    ls = col.length_size
    n = _from(buf[pos : pos + ls], "little")
    start = pos + ls
    end = start + n
    if end > len(buf):
        raise IndexError("JSON value truncated")
    try:
        return json_binary_decode(buf[start:end]), end
    except _Corrupt as exc:
        raise DecodeError(f"corrupt binary JSON: {exc}") from exc


#: the decoders of the kinds both twins take from here
RARE_DECODERS: dict[str, Decoder] = {
    "datetime_old": datetime_decode, "datetime_hires": datetime_hires_decode,
    "time_old": time_decode, "time_hires": time_hires_decode,
    "timestamp_old": timestamp_decode, "timestamp_hires": timestamp_hires_decode,
    "json": json_decode, "unsupported": unsupported_decode,
}
