"""Binlog rows-event decoding into JSON-ready Python values (pure-Python twin).

Contract
--------
``decode_rows(schema, body, kind, present, present_after)`` decodes the rows part of a
WRITE/UPDATE/DELETE_ROWS event (everything after the columns-present bitmap(s)) into one
``(before, after)`` pair per row: write -> ``(None, after)``, delete -> ``(before, None)``,
update -> ``(before, after)``. Row images are dicts keyed by column name; columns absent
from the present bitmap are omitted. Values follow the rendering table of
docs/value-rendering.md (DESIGN.md §3): int (str beyond ±(2^53-1)), exact decimal str,
float, str, None - never bool, datetime, Decimal or bytes.

Wire layout (MySQL ``rows_event.h``, ``Field::pack``)
----------------------------------------------------
Each row image is ``null-bitmap`` (one bit per *present* column, LSB first, ceil(n/8)
bytes) followed by the packed values of the present, non-NULL columns in column order.
Per type (LE = little-endian, BE = big-endian):

- TINY/SHORT/INT24/LONG/LONGLONG: 1/2/3/4/8 bytes LE two's complement.
- FLOAT/DOUBLE: 4/8 bytes LE IEEE-754.
- NEWDECIMAL: MySQL ``decimal2bin``: base-10^9 groups BE (4 bytes per 9 digits, 1-4
  bytes for the leftover digits), sign in the top bit of the first byte (set =
  non-negative), negative values stored with every byte inverted.
- DATE: 3 bytes LE, ``day | month << 5 | year << 9``.
- DATETIME2: 5 bytes BE ``0x8000000000 + (((year*13+month) << 5 | day) << 17 | hour << 12 |
  minute << 6 | second)``, then ceil(fsp/2) bytes BE of fraction (in 10^-(2*ceil(fsp/2)) s).
- TIME2: 3 bytes BE ``0x800000 + sign * (hour << 12 | minute << 6 | second)`` then the
  fraction bytes; the integer and fraction together form one signed offset number.
- TIMESTAMP2: 4 bytes BE seconds since the epoch (UTC), then the fraction bytes.
- Old DATETIME (12): 8 bytes LE ``YYYYMMDDhhmmss``; old TIME (11): 3 bytes LE signed
  ``hhmmss``; old TIMESTAMP (7): 4 bytes LE seconds. MariaDB's old-format *hires*
  variants (fsp > 0, fsp known only from information_schema) are BE packed numbers,
  see ``_datetime_hires`` / ``_time_hires`` / ``_timestamp_hires``.
- YEAR: 1 byte, 0 or year-1900.
- VARCHAR/CHAR/BINARY: 1-byte length if the declared byte length < 256, else 2 bytes LE;
  CHAR drops trailing spaces and BINARY trailing NULs in the binlog (we restore the NULs
  so values equal what SELECT returns).
- BLOB/TEXT/GEOMETRY/JSON: ``length_size`` bytes LE of length, then the data.
- ENUM/SET: ``size`` bytes LE index / bitmask. BIT: ceil(bits/8) bytes BE.

Structure (ported 1:1 by the Cython twin)
-----------------------------------------
Every decoder has one signature, ``<type>_decode(buf, pos, col) -> (value, new_pos)``,
and is chosen once per column from ``DECODERS`` keyed by ``(type, variant)`` where the
variant (signedness, text vs binary, fsp class) is fixed by the column's metadata. The
per-table list and the per-present-bitmap plan are cached on the ``TableSchema``.
There is no per-value branching on type codes.

Hazards
-------
- Truncated bodies: bytes slicing never raises, so the row loop checks the final position
  and, on any failure, re-walks the row column by column to name the guilty column.
- Text that is invalid in its declared charset is decoded with U+FFFD replacements
  rather than stopping the pipeline; MySQL ``latin1``'s five bytes undefined in cp1252
  map to the same code points, as the server does.
"""

from __future__ import annotations

import base64
import datetime
import struct
from collections.abc import Callable
from typing import Any

from deltaforge.errors import DecodeError
from deltaforge.source import schema as S
from deltaforge.source.schema import ColumnSpec, TableSchema

IMPLEMENTATION = "python"

WRITE, UPDATE, DELETE = 0, 1, 2

MAX_SAFE_INT = (1 << 53) - 1

Decoder = Callable[[bytes, int, ColumnSpec], tuple[Any, int]]

_i8 = struct.Struct("<b").unpack_from
_i16 = struct.Struct("<h").unpack_from
_u16 = struct.Struct("<H").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i64 = struct.Struct("<q").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_f32 = struct.Struct("<f")
_f64 = struct.Struct("<d").unpack_from
_from = int.from_bytes

_b64 = base64.b64encode
_EPOCH_ORDINAL = 719163  # datetime.date(1970, 1, 1).toordinal()


def _safe_int(v: int) -> int | str:
    return v if -MAX_SAFE_INT <= v <= MAX_SAFE_INT else str(v)


# --------------------------------------------------------------------------- integers


def tiny_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return _i8(buf, pos)[0], pos + 1


def utiny_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return buf[pos], pos + 1


def short_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return _i16(buf, pos)[0], pos + 2


def ushort_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return _u16(buf, pos)[0], pos + 2


def int24_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return _from(buf[pos : pos + 3], "little", signed=True), pos + 3


def uint24_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return _from(buf[pos : pos + 3], "little"), pos + 3


def long_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return _i32(buf, pos)[0], pos + 4


def ulong_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return _u32(buf, pos)[0], pos + 4


def longlong_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    v = _i64(buf, pos)[0]
    return (v if -MAX_SAFE_INT <= v <= MAX_SAFE_INT else str(v)), pos + 8


def ulonglong_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    v = _u64(buf, pos)[0]
    return (v if v <= MAX_SAFE_INT else str(v)), pos + 8


def year_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    v = buf[pos]
    return (v + 1900 if v else 0), pos + 1


def bit_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    n = (col.bits + 7) >> 3
    return _safe_int(_from(buf[pos : pos + n], "big")), pos + n


# ----------------------------------------------------------------------------- floats


def shortest_float32(v: float) -> float:
    """The float whose repr is the shortest decimal that reads back as the same float32."""
    pack, unpack = _f32.pack, _f32.unpack
    for digits in range(6, 10):
        # FLT_DIG=6 digits always suffice for "most" values; 9 always round-trip.
        cand = float(f"{v:.{digits}g}")
        if unpack(pack(cand))[0] == v:
            if digits == 6:
                # 6 may be longer than needed: shrink (1.1 must not be 1.10000).
                for d in range(1, 6):
                    c2 = float(f"{v:.{d}g}")
                    if unpack(pack(c2))[0] == v:
                        return c2
            return cand
    return v


def float_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return shortest_float32(_f32.unpack_from(buf, pos)[0]), pos + 4


def double_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    return _f64(buf, pos)[0], pos + 8


# ---------------------------------------------------------------------------- decimal

_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def decimal_size(precision: int, scale: int) -> int:
    intg = precision - scale
    return (intg // 9) * 4 + _DIG2BYTES[intg % 9] + (scale // 9) * 4 + _DIG2BYTES[scale % 9]


def decimal_from_bin(data: bytes, precision: int, scale: int) -> str:
    """MySQL ``decimal2bin`` bytes -> exact string with exactly ``scale`` fraction digits."""
    raw = bytearray(data)
    negative = not (raw[0] & 0x80)
    raw[0] ^= 0x80
    if negative:
        raw = bytearray(b ^ 0xFF for b in raw)
    intg = precision - scale
    lead = _DIG2BYTES[intg % 9]
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
        frac_parts.append(f"{_from(raw[p : p + _DIG2BYTES[tail]], 'big'):0{tail}d}")
    frac = "".join(frac_parts)
    if negative and ipart == 0 and not frac.strip("0"):
        negative = False  # never render "-0.00"
    sign = "-" if negative else ""
    return f"{sign}{ipart}.{frac}" if scale else f"{sign}{ipart}"


def newdecimal_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    n = decimal_size(col.precision, col.decimals)
    end = pos + n
    if end > len(buf):
        raise IndexError("decimal truncated")
    return decimal_from_bin(buf[pos:end], col.precision, col.decimals), end


# --------------------------------------------------------------------------- temporal

_FRAC_BYTES = (0, 1, 1, 2, 2, 3, 3)
# fraction bytes hold 10^-(2*ceil(fsp/2)) s units; formatting pads to that many digits
_FRAC_WIDTH = (0, 2, 2, 4, 4, 6, 6)


def _frac(buf: bytes, pos: int, fsp: int) -> tuple[str, int]:
    n = _FRAC_BYTES[fsp]
    if not n:
        return "", pos
    v = _from(buf[pos : pos + n], "big")
    return "." + f"{v:0{_FRAC_WIDTH[fsp]}d}"[:fsp], pos + n


def date_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    v = _from(buf[pos : pos + 3], "little")
    return f"{v >> 9:04d}-{(v >> 5) & 15:02d}-{v & 31:02d}", pos + 3


def datetime2_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    v = _from(buf[pos : pos + 5], "big") - 0x8000000000
    ym = (v >> 22) & 0x1FFFF
    frac, end = _frac(buf, pos + 5, col.fsp)
    return (
        f"{ym // 13:04d}-{ym % 13:02d}-{(v >> 17) & 31:02d} "
        f"{(v >> 12) & 31:02d}:{(v >> 6) & 63:02d}:{v & 63:02d}{frac}"
    ), end


def time2_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    nf = _FRAC_BYTES[col.fsp]
    end = pos + 3 + nf
    # integer part and fraction form one offset-binary fixed-point number
    v = _from(buf[pos:end], "big") - (0x800000 << (8 * nf))
    sign = "-" if v < 0 else ""
    v = -v if v < 0 else v
    hms = v >> (8 * nf)
    text = f"{sign}{(hms >> 12) & 0x3FF:02d}:{(hms >> 6) & 63:02d}:{hms & 63:02d}"
    if nf:
        fv = v & ((1 << (8 * nf)) - 1)
        text += "." + f"{fv:0{_FRAC_WIDTH[col.fsp]}d}"[: col.fsp]
    return text, end


def _utc(secs: int, frac: str) -> str:
    days, rem = divmod(secs, 86400)
    d = datetime.date.fromordinal(_EPOCH_ORDINAL + days)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
        f"{rem // 3600:02d}:{(rem // 60) % 60:02d}:{rem % 60:02d}{frac}Z"
    )


def timestamp2_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    secs = _from(buf[pos : pos + 4], "big")
    frac, end = _frac(buf, pos + 4, col.fsp)
    if secs == 0:
        # the zero TIMESTAMP: rendered as the server shows it, no zone, no 'T'
        return "0000-00-00 00:00:00" + ("." + "0" * col.fsp if col.fsp else ""), end
    return _utc(secs, frac), end


def datetime_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    v = _u64(buf, pos)[0]
    d, t = divmod(v, 1_000_000)
    return (
        f"{d // 10000:04d}-{(d // 100) % 100:02d}-{d % 100:02d} "
        f"{t // 10000:02d}:{(t // 100) % 100:02d}:{t % 100:02d}"
    ), pos + 8


def time_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    v = _from(buf[pos : pos + 3], "little", signed=True)
    sign = "-" if v < 0 else ""
    v = abs(v)
    return f"{sign}{v // 10000:02d}:{(v // 100) % 100:02d}:{v % 100:02d}", pos + 3


def timestamp_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    secs = _u32(buf, pos)[0]
    return ("0000-00-00 00:00:00" if secs == 0 else _utc(secs, "")), pos + 4


# MariaDB old-format hires temporals (sql/field.cc Field_*_hires): big-endian packed numbers.
_DATETIME_HIRES_BYTES = (5, 6, 6, 7, 7, 7, 8)
_TIME_HIRES_BYTES = (3, 4, 4, 5, 5, 5, 6)
_TIME_MAX_SECONDS = 838 * 3600 + 59 * 60 + 59


def datetime_hires_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    fsp = col.fsp
    n = _DATETIME_HIRES_BYTES[fsp]
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
    n = _TIME_HIRES_BYTES[fsp]
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
    nf = _FRAC_BYTES[fsp]
    frac = _from(buf[pos + 4 : pos + 4 + nf], "big")
    if secs == 0 and frac == 0:
        return "0000-00-00 00:00:00." + "0" * fsp, pos + 4 + nf
    return _utc(secs, f".{frac:0{fsp}d}"), pos + 4 + nf


# ---------------------------------------------------------------------------- strings


def _decode_text(data: bytes, col: ColumnSpec) -> str:
    codec = col.charset
    if codec == "cp1252":
        return data.decode("cp1252", "deltaforge.c1")
    if codec is None or codec.startswith("unsupported:"):
        raise DecodeError(f"column {col.name}: character set {codec} has no Python codec")
    return data.decode(codec, "replace")


def _var_len(buf: bytes, pos: int, col: ColumnSpec) -> tuple[int, int]:
    if col.max_length < 256:
        return buf[pos], pos + 1
    return _u16(buf, pos)[0], pos + 2


def _blob_len(buf: bytes, pos: int, col: ColumnSpec) -> tuple[int, int]:
    ls = col.length_size
    return _from(buf[pos : pos + ls], "little"), pos + ls


def varchar_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    n, pos = _var_len(buf, pos, col)
    return _decode_text(buf[pos : pos + n], col), pos + n


def varbinary_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    n, pos = _var_len(buf, pos, col)
    return _b64(buf[pos : pos + n]).decode("ascii"), pos + n


def char_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    # The binlog strips CHAR's trailing spaces already (so does SELECT); rstrip covers
    # multi-byte charsets (ucs2/utf16/utf32) whose pad may have been kept.
    n, pos = _var_len(buf, pos, col)
    return _decode_text(buf[pos : pos + n], col).rstrip(" "), pos + n


def binary_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    # BINARY(n) is NUL-padded to n bytes in the table and in SELECT, but the binlog drops the
    # trailing NULs: restore them so the value equals what the server returns.
    n, pos = _var_len(buf, pos, col)
    data = buf[pos : pos + n]
    if n < col.max_length:
        data = data + b"\x00" * (col.max_length - n)
    return _b64(data).decode("ascii"), pos + n


def text_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    n, pos = _blob_len(buf, pos, col)
    return _decode_text(buf[pos : pos + n], col), pos + n


def blob_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    n, pos = _blob_len(buf, pos, col)
    return _b64(buf[pos : pos + n]).decode("ascii"), pos + n


def enum_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    size = col.size
    idx = _from(buf[pos : pos + size], "little")
    if idx == 0:
        return "", pos + size  # the server's '' error value (invalid input in non-strict mode)
    labels = col.enum_values or ()
    if idx > len(labels):
        raise DecodeError(f"column {col.name}: ENUM index {idx} beyond its {len(labels)} labels")
    return labels[idx - 1], pos + size


def set_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    size = col.size
    mask = _from(buf[pos : pos + size], "little")
    labels = col.set_values or ()
    if mask >> len(labels):
        raise DecodeError(f"column {col.name}: SET bitmask {mask:#x} beyond its {len(labels)} labels")
    return ",".join([lab for i, lab in enumerate(labels) if mask >> i & 1]), pos + size


# ------------------------------------------------------------------------ binary JSON
#
# MySQL json_binary (sql-common/json_binary.h): a type byte, then the value.
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


def _j_varlen(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    for _ in range(5):
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
    raise ValueError("JSON varlen longer than 5 bytes")


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
    return f"base64:type{ftype}:{_b64(data).decode('ascii')}"


def _j_scalar(t: int, buf: bytes, pos: int) -> Any:
    if t == _J_STRING:
        n, p = _j_varlen(buf, pos)
        if p + n > len(buf):
            raise ValueError("JSON string runs past the value")
        return buf[p : p + n].decode("utf-8")
    if t == _J_INT64:
        return _safe_int(_i64(buf, pos)[0])
    if t == _J_UINT64:
        return _safe_int(_u64(buf, pos)[0])
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
        return _J_LITERALS[buf[pos]]
    if t == _J_OPAQUE:
        ftype = buf[pos]
        n, p = _j_varlen(buf, pos + 1)
        if p + n > len(buf):
            raise ValueError("JSON opaque value runs past the value")
        return _j_opaque(ftype, buf[p : p + n])
    raise ValueError(f"unknown JSON value type {t:#x}")


_J_LITERALS = {0: None, 1: True, 2: False}


def _j_container(t: int, buf: bytes, base: int) -> Any:
    large = t in (_J_LARGE_OBJ, _J_LARGE_ARR)
    w = 4 if large else 2
    rd = _u32 if large else _u16
    count = rd(buf, base)[0]
    size = rd(buf, base + w)[0]
    if base + size > len(buf):
        raise ValueError("JSON container runs past the value")
    is_obj = t in (_J_SMALL_OBJ, _J_LARGE_OBJ)
    entries = base + 2 * w
    values_at = entries + (count * (w + 2) if is_obj else 0)
    vals = []
    for i in range(count):
        e = values_at + i * (1 + w)
        vt = buf[e]
        if vt in (_J_LITERAL, _J_INT16, _J_UINT16) or (large and vt in (_J_INT32, _J_UINT32)):
            vals.append(_j_scalar(vt, buf, e + 1))  # inlined in the entry
        else:
            off = rd(buf, e + 1)[0]
            vals.append(_j_value(vt, buf, base + off))
    if not is_obj:
        return vals
    out = {}
    for i in range(count):
        k = entries + i * (w + 2)
        koff = rd(buf, k)[0]
        klen = _u16(buf, k + w)[0]
        out[buf[base + koff : base + koff + klen].decode("utf-8")] = vals[i]
    return out


def _j_value(t: int, buf: bytes, pos: int) -> Any:
    if t <= _J_LARGE_ARR:
        return _j_container(t, buf, pos)
    return _j_scalar(t, buf, pos)


def json_binary_decode(data: bytes) -> Any:
    """A MySQL binary JSON document -> Python (dict/list/str/int/float/bool/None)."""
    if not data:
        return None  # MySQL writes an empty value for JSON null set by some paths
    return _j_value(data[0], data, 1)


def json_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    n, pos = _blob_len(buf, pos, col)
    end = pos + n
    if end > len(buf):
        raise IndexError("JSON value truncated")
    try:
        return json_binary_decode(buf[pos:end]), end
    except (ValueError, IndexError, struct.error, UnicodeDecodeError, KeyError) as exc:
        raise DecodeError(f"column {col.name}: corrupt binary JSON: {exc}") from exc


def unsupported_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    raise DecodeError(f"column {col.name}: binlog type {col.type} is not supported")


# ------------------------------------------------------------------- dispatch and plans

# variant: 0 = plain; for ints 1 = unsigned; for strings 1 = binary charset;
# for old temporals 1 = MariaDB hires (fsp > 0)
DECODERS: dict[tuple[int, int], Decoder] = {
    (S.TINY, 0): tiny_decode, (S.TINY, 1): utiny_decode,
    (S.SHORT, 0): short_decode, (S.SHORT, 1): ushort_decode,
    (S.INT24, 0): int24_decode, (S.INT24, 1): uint24_decode,
    (S.LONG, 0): long_decode, (S.LONG, 1): ulong_decode,
    (S.LONGLONG, 0): longlong_decode, (S.LONGLONG, 1): ulonglong_decode,
    (S.YEAR, 0): year_decode,
    (S.BIT, 0): bit_decode,
    (S.FLOAT, 0): float_decode,
    (S.DOUBLE, 0): double_decode,
    (S.NEWDECIMAL, 0): newdecimal_decode,
    (S.DATE, 0): date_decode, (S.NEWDATE, 0): date_decode,
    (S.DATETIME2, 0): datetime2_decode,
    (S.TIME2, 0): time2_decode,
    (S.TIMESTAMP2, 0): timestamp2_decode,
    (S.DATETIME, 0): datetime_decode, (S.DATETIME, 1): datetime_hires_decode,
    (S.TIME, 0): time_decode, (S.TIME, 1): time_hires_decode,
    (S.TIMESTAMP, 0): timestamp_decode, (S.TIMESTAMP, 1): timestamp_hires_decode,
    (S.VARCHAR, 0): varchar_decode, (S.VARCHAR, 1): varbinary_decode,
    (S.VAR_STRING, 0): varchar_decode, (S.VAR_STRING, 1): varbinary_decode,
    (S.STRING, 0): char_decode, (S.STRING, 1): binary_decode,
    (S.BLOB, 0): text_decode, (S.BLOB, 1): blob_decode,
    (S.TINY_BLOB, 0): text_decode, (S.TINY_BLOB, 1): blob_decode,
    (S.MEDIUM_BLOB, 0): text_decode, (S.MEDIUM_BLOB, 1): blob_decode,
    (S.LONG_BLOB, 0): text_decode, (S.LONG_BLOB, 1): blob_decode,
    (S.GEOMETRY, 0): blob_decode, (S.GEOMETRY, 1): blob_decode,
    (S.JSON, 0): json_decode, (S.JSON, 1): json_decode,
    (S.ENUM, 0): enum_decode,
    (S.SET, 0): set_decode,
}

_INTS = (S.TINY, S.SHORT, S.INT24, S.LONG, S.LONGLONG)
_STRINGS = (S.VARCHAR, S.VAR_STRING, S.STRING, S.BLOB, S.TINY_BLOB, S.MEDIUM_BLOB, S.LONG_BLOB,
            S.GEOMETRY, S.JSON)
_OLD_TEMPORAL = (S.DATETIME, S.TIME, S.TIMESTAMP)


def _variant(col: ColumnSpec) -> int:
    t = col.type
    if t in _INTS:
        return 1 if col.unsigned else 0
    if t in _STRINGS:
        return 1 if col.charset is None else 0
    if t in _OLD_TEMPORAL:
        return 1 if col.fsp else 0
    return 0


def decoder_for(col: ColumnSpec) -> Decoder:
    return DECODERS.get((col.type, _variant(col)), unsupported_decode)


class _Plan:
    """Decoders of the columns present in one row image, in column order."""

    __slots__ = ("cols", "null_bytes")

    def __init__(self, cols: list[tuple[str, Decoder, ColumnSpec]]) -> None:
        self.cols = cols
        self.null_bytes = (len(cols) + 7) >> 3


def _plan(schema: TableSchema, present: bytes) -> _Plan:
    plans: dict[bytes, _Plan] | None = schema.__dict__.get("_df_plans")
    if plans is None:
        plans = {}
        schema.__dict__["_df_plans"] = plans
        schema.__dict__["_df_decoders"] = [decoder_for(c) for c in schema.columns]
    plan = plans.get(present)
    if plan is not None:
        return plan
    decoders: list[Decoder] = schema.__dict__["_df_decoders"]
    n = len(schema.columns)
    if len(present) * 8 < n:
        raise DecodeError(
            f"{schema.qualified}: the present-columns bitmap covers {len(present) * 8} columns, "
            f"the table map has {n}"
        )
    bits = _from(present, "little")
    plan = _Plan([(c.name, decoders[i], c) for i, c in enumerate(schema.columns) if bits >> i & 1])
    plans[bytes(present)] = plan
    return plan


def _image(plan: _Plan, body: bytes, pos: int) -> tuple[dict[str, Any], int]:
    nb = plan.null_bytes
    nulls = _from(body[pos : pos + nb], "little")
    pos += nb
    row: dict[str, Any] = {}
    bit = 1
    for name, dec, col in plan.cols:
        if nulls & bit:
            row[name] = None
        else:
            row[name], pos = dec(body, pos, col)
        bit <<= 1
    return row, pos


def _locate(schema: TableSchema, plan: _Plan, body: bytes, start: int, exc: Exception | None) -> DecodeError:
    """Slow path after a failure: re-walk the image column by column to name the culprit."""
    pos = start + plan.null_bytes
    if pos > len(body):
        return DecodeError(f"{schema.qualified}: rows event truncated inside the NULL bitmap at byte {start}")
    nulls = _from(body[start:pos], "little")
    for i, (name, dec, col) in enumerate(plan.cols):
        if nulls >> i & 1:
            continue
        tname = S.TYPE_NAMES.get(col.type, str(col.type))
        try:
            _, end = dec(body, pos, col)
        except DecodeError as err:
            return DecodeError(f"{schema.qualified}.{name} ({tname}): {err.detail}", err.hint)
        except Exception as err:  # noqa: BLE001 - any failure here is a malformed value
            return DecodeError(f"{schema.qualified}.{name} ({tname}): malformed value at byte {pos}: {err}")
        if end > len(body):
            return DecodeError(
                f"{schema.qualified}.{name} ({tname}): rows event truncated: value needs "
                f"{end - pos} bytes at byte {pos}, body has {len(body)}"
            )
        pos = end
    return DecodeError(f"{schema.qualified}: malformed rows event at byte {start}: {exc}")


def decode_rows(
    schema: TableSchema,
    body: bytes,
    kind: int,
    present: bytes,
    present_after: bytes | None = None,
) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """Decode every row of one rows-event body; see the module docstring."""
    if kind not in (WRITE, UPDATE, DELETE):
        raise DecodeError(f"{schema.qualified}: unknown rows-event kind {kind!r} (expected WRITE/UPDATE/DELETE)")
    plan = _plan(schema, present)
    plan_after = _plan(schema, present_after if present_after is not None else present) if kind == UPDATE else plan
    out: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []
    append = out.append
    end = len(body)
    if end and not plan.cols and not plan_after.cols:
        # an image of no columns consumes no bytes: the loop below would never end
        raise DecodeError(
            f"{schema.qualified}: the present-columns bitmap selects no columns but the rows event "
            f"has {end} bytes")
    pos = 0
    while pos < end:
        start, cur = pos, plan
        try:
            row, pos = _image(plan, body, pos)
            if pos > end:
                raise IndexError("past end")
            if kind == WRITE:
                append((None, row))
            elif kind == DELETE:
                append((row, None))
            else:
                start, cur = pos, plan_after
                after, pos = _image(plan_after, body, pos)
                if pos > end:
                    raise IndexError("past end")
                append((row, after))
        except DecodeError as err:
            located = _locate(schema, cur, body, start, err)
            raise located from err
        except (IndexError, ValueError, struct.error, UnicodeError, OverflowError, KeyError) as err:
            raise _locate(schema, cur, body, start, err) from err
    return out
