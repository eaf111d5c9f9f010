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
and is chosen once per column from ``DECODERS`` keyed by the column's kind, which
``rowformat.column_kind`` (shared with the compiled twin: one classification) fixes from
its type and metadata. The rare kinds (binary JSON, old temporal formats, unsupported
columns) are decoded by ``rowformat``'s own functions in both twins; error messages are
built there too. The per-table list and the per-present-bitmap plan are cached on the
``TableSchema``. There is no per-value branching on type codes.

Hazards
-------
- Truncated bodies: bytes slicing never raises, so the row loop checks the final position
  and, on any failure, re-walks the row column by column to name the guilty column and
  the byte its value starts at (tests/test_decode_fuzz.py mutates bodies by the 100,000).
- Text that is invalid in its declared charset is decoded with U+FFFD replacements
  rather than stopping the pipeline; MySQL ``latin1``'s five bytes undefined in cp1252
  map to the same code points, as the server does.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from deltaforge.errors import DecodeError
from deltaforge.source import rowformat as F
from deltaforge.source.rowformat import (  # re-exported: the shared pieces, owned by rowformat
    DATETIME_HIRES_BYTES as _DATETIME_HIRES_BYTES,
)
from deltaforge.source.rowformat import DIG2BYTES as _DIG2BYTES
from deltaforge.source.rowformat import FRAC_BYTES as _FRAC_BYTES
from deltaforge.source.rowformat import FRAC_WIDTH as _FRAC_WIDTH
from deltaforge.source.rowformat import TIME_HIRES_BYTES as _TIME_HIRES_BYTES
from deltaforge.source.rowformat import (
    Decoder,
    column_kind,
    decimal_from_bin,
    decimal_size,
    json_binary_decode,
    utc_text,
)
from deltaforge.source.schema import ColumnSpec, TableSchema

__all__ = [
    "DELETE",
    "IMPLEMENTATION",
    "UPDATE",
    "WRITE",
    "_DATETIME_HIRES_BYTES",
    "_DIG2BYTES",
    "_TIME_HIRES_BYTES",
    "Decoder",
    "decimal_from_bin",
    "decode_rows",
    "decoder_for",
    "json_binary_decode",
    "shortest_float32",
]

IMPLEMENTATION = "python"

WRITE, UPDATE, DELETE = 0, 1, 2

MAX_SAFE_INT = F.MAX_SAFE_INT

_i8 = struct.Struct("<b").unpack_from
# one owner of the fixed-width readers: rowformat (the twins' shared module)
_i16, _u16, _i32, _u32, _i64, _u64 = F._i16, F._u16, F._i32, F._u32, F._i64, F._u64
_f32 = struct.Struct("<f")
_f64 = F._f64
_from = int.from_bytes

_b64 = base64.b64encode


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


def newdecimal_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    n = decimal_size(col.precision, col.decimals)
    end = pos + n
    if end > len(buf):
        raise IndexError("decimal truncated")
    return decimal_from_bin(buf[pos:end], col.precision, col.decimals), end


# --------------------------------------------------------------------------- temporal
# (the old formats, MariaDB's hires ones included, are rowformat's: both twins call them)


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


def timestamp2_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    secs = _from(buf[pos : pos + 4], "big")
    frac, end = _frac(buf, pos + 4, col.fsp)
    if secs == 0:
        # the zero TIMESTAMP: rendered as the server shows it, no zone, no 'T'
        return "0000-00-00 00:00:00" + ("." + "0" * col.fsp if col.fsp else ""), end
    return utc_text(secs, frac), end


# ---------------------------------------------------------------------------- strings


def _decode_text(data: bytes, col: ColumnSpec) -> str:
    # a charset Python cannot decode makes the column "unsupported" (rowformat.column_kind)
    codec: str = col.charset  # type: ignore[assignment]
    if codec == "cp1252":
        return data.decode("cp1252", "deltaforge.c1")
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
        raise DecodeError(f"ENUM index {idx} beyond its {len(labels)} labels")
    return labels[idx - 1], pos + size


def set_decode(buf: bytes, pos: int, col: ColumnSpec) -> tuple[Any, int]:
    size = col.size
    mask = _from(buf[pos : pos + size], "little")
    labels = col.set_values or ()
    if mask >> len(labels):
        raise DecodeError(f"SET bitmask {mask:#x} beyond its {len(labels)} labels")
    return ",".join([lab for i, lab in enumerate(labels) if mask >> i & 1]), pos + size


# ------------------------------------------------------------------- dispatch and plans

#: rowformat.column_kind(col) -> this twin's decoder (the rare kinds are rowformat's own)
DECODERS: dict[str, Decoder] = {
    "tiny": tiny_decode, "utiny": utiny_decode, "short": short_decode, "ushort": ushort_decode,
    "int24": int24_decode, "uint24": uint24_decode, "long": long_decode, "ulong": ulong_decode,
    "longlong": longlong_decode, "ulonglong": ulonglong_decode,
    "year": year_decode, "bit": bit_decode, "float": float_decode, "double": double_decode,
    "decimal": newdecimal_decode, "date": date_decode,
    "datetime2": datetime2_decode, "time2": time2_decode, "timestamp2": timestamp2_decode,
    "varchar": varchar_decode, "varbinary": varbinary_decode, "char": char_decode, "binary": binary_decode,
    "text": text_decode, "blob": blob_decode, "enum": enum_decode, "set": set_decode,
    **F.RARE_DECODERS,
}
assert set(DECODERS) == F.KINDS


def decoder_for(col: ColumnSpec) -> Decoder:
    return DECODERS[column_kind(col)]


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
    cols = schema.columns
    plan = _Plan([(cols[i].name, decoders[i], cols[i]) for i in F.present_columns(schema, present)])
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


def _locate(schema: TableSchema, plan: _Plan, body: bytes, start: int) -> DecodeError:
    """Slow path after a failure: re-walk the image column by column to name the culprit.

    The compiled twin does the same walk with its own decoders; both build the message with
    rowformat's builders from positions only, so the two say the same thing."""
    pos = start + plan.null_bytes
    if pos > len(body):
        return F.truncated_nulls(schema, start, len(body))
    nulls = _from(body[start:pos], "little")
    for i, (_name, dec, col) in enumerate(plan.cols):
        if nulls >> i & 1:
            continue
        try:
            _, end = dec(body, pos, col)
        except DecodeError as err:
            return F.value_error(schema, col, pos, err.detail, err.hint)
        except (IndexError, struct.error):
            return F.truncated_value(schema, col, pos, len(body))
        except Exception as err:  # noqa: BLE001 - any other failure here is a malformed value
            return F.value_error(schema, col, pos, f"malformed value ({type(err).__name__})")
        if end > len(body):
            return F.truncated_value(schema, col, pos, len(body))
        pos = end
    return F.malformed_image(schema, start)


def decode_rows(
    schema: TableSchema,
    body: bytes,
    kind: int,
    present: bytes,
    present_after: bytes | None = None,
) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """Decode every row of one rows-event body; see the module docstring."""
    if kind not in (WRITE, UPDATE, DELETE):
        raise F.unknown_kind(schema, kind)
    plan = _plan(schema, present)
    plan_after = _plan(schema, present_after if present_after is not None else present) if kind == UPDATE else plan
    out: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []
    append = out.append
    end = len(body)
    if end and not plan.cols and not plan_after.cols:
        # an image of no columns consumes no bytes: the loop below would never end
        raise F.no_columns(schema, end)
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
        except (DecodeError, IndexError, ValueError, struct.error, UnicodeError, OverflowError, KeyError) as err:
            raise _locate(schema, cur, body, start) from err
    return out
