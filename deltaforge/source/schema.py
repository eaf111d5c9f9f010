"""Table schemas for row decoding: what the decoder needs to know about each column.

Contract
--------
``schema_from_table_map(tm, live)`` turns a mysql-replication ``TableMapEvent`` into a
:class:`TableSchema`. The binlog itself carries the column *types* and their per-type
metadata (lengths, fsp, precision/scale, bit widths) in every table map; everything
else (names, signedness, character sets, ENUM/SET labels) is only there when the
server runs with ``binlog_row_metadata=FULL`` (``full_metadata=True``). Without it the
caller fetches the table's current definition from ``information_schema``
(:func:`fetch_live_columns`) and passes it as ``live``.

Hazards
-------
- ``live`` describes the table *now*, the binlog describes it *when the row was
  written*. After an ALTER the two can disagree; a column-count mismatch is detected
  and refused, a same-count type change cannot be. ``binlog_row_metadata=FULL`` is the
  fix, and the error messages say so.
- MariaDB tables created with ``mysql56_temporal_format=OFF`` use the old DATETIME /
  TIME / TIMESTAMP binlog types (12/11/7) *with* fractional seconds, and the table map
  carries no fsp for them. Only ``live`` (``datetime(3)``) has it: call
  :func:`needs_live_columns` to know when to fetch it. Without ``live`` those columns
  are assumed to have fsp 0 (always true on MySQL, which never writes the old types
  with fractions).
- mysql-replication decodes ENUM/SET labels as UTF-8 and blanks any other label (a
  latin1 ``ENUM('café')``); when a blank shows up we re-read the labels from the raw
  table map and decode them in the column's charset (``_raw_enum_set_labels``).
- Character sets are kept as Python codec names (``None`` = binary: rendered base64).
  MySQL ``latin1`` is Windows-1252 plus the five C1 bytes it leaves undefined; the
  decoder handles those.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import msgspec

from deltaforge.errors import DecodeError

# Binlog column type codes (MySQL ``enum_field_types``), the keys of the decoder table.
DECIMAL = 0
TINY = 1
SHORT = 2
LONG = 3
FLOAT = 4
DOUBLE = 5
NULL = 6
TIMESTAMP = 7
LONGLONG = 8
INT24 = 9
DATE = 10
TIME = 11
DATETIME = 12
YEAR = 13
NEWDATE = 14
VARCHAR = 15
BIT = 16
TIMESTAMP2 = 17
DATETIME2 = 18
TIME2 = 19
JSON = 245
NEWDECIMAL = 246
ENUM = 247
SET = 248
TINY_BLOB = 249
MEDIUM_BLOB = 250
LONG_BLOB = 251
BLOB = 252
VAR_STRING = 253
STRING = 254
GEOMETRY = 255

TYPE_NAMES: dict[int, str] = {
    DECIMAL: "DECIMAL(old)", TINY: "TINYINT", SHORT: "SMALLINT", LONG: "INT", FLOAT: "FLOAT",
    DOUBLE: "DOUBLE", NULL: "NULL", TIMESTAMP: "TIMESTAMP(old)", LONGLONG: "BIGINT",
    INT24: "MEDIUMINT", DATE: "DATE", TIME: "TIME(old)", DATETIME: "DATETIME(old)", YEAR: "YEAR",
    NEWDATE: "NEWDATE", VARCHAR: "VARCHAR", BIT: "BIT", TIMESTAMP2: "TIMESTAMP", DATETIME2: "DATETIME",
    TIME2: "TIME", JSON: "JSON", NEWDECIMAL: "DECIMAL", ENUM: "ENUM", SET: "SET",
    TINY_BLOB: "TINYBLOB", MEDIUM_BLOB: "MEDIUMBLOB", LONG_BLOB: "LONGBLOB", BLOB: "BLOB/TEXT",
    VAR_STRING: "VAR_STRING", STRING: "CHAR/BINARY", GEOMETRY: "GEOMETRY",
}

_OLD_TEMPORAL = (TIMESTAMP, TIME, DATETIME)
_INT_TYPES = (TINY, SHORT, INT24, LONG, LONGLONG)

FULL_METADATA_HINT = "SET GLOBAL binlog_row_metadata=FULL on the source server (and in its my.cnf)"


class ColumnSpec(msgspec.Struct):
    """One column as the decoder sees it. ``charset`` is a Python codec, None = binary."""

    name: str
    type: int
    unsigned: bool = False
    charset: str | None = None
    max_length: int = 0  # CHAR/VARCHAR/BINARY: declared length in bytes (picks the 1/2-byte prefix)
    length_size: int = 0  # BLOB/TEXT/GEOMETRY/JSON: bytes of the length prefix
    fsp: int = 0  # temporal fractional digits
    precision: int = 0  # NEWDECIMAL
    decimals: int = 0  # NEWDECIMAL scale
    bits: int = 0  # BIT width
    size: int = 0  # ENUM/SET: bytes of the stored index/bitmask
    enum_values: list[str] | None = None  # ENUM labels, index 1.. (index 0 is the '' error value)
    set_values: list[str] | None = None


class TableSchema(msgspec.Struct, dict=True):
    """A table as of one table map. ``dict=True`` lets the decoder cache its per-table
    plans on the instance (``_df_plans``) without those caches being part of the struct."""

    db: str
    table: str
    columns: list[ColumnSpec]
    full_metadata: bool

    @property
    def qualified(self) -> str:
        return f"{self.db}.{self.table}"


class LiveColumn(msgspec.Struct):
    """One ``information_schema.COLUMNS`` row."""

    name: str
    data_type: str
    column_type: str
    charset: str | None


def _c1_passthrough(err: UnicodeError) -> tuple[str, int]:
    # MySQL latin1 is cp1252 with 0x81 0x8D 0x8F 0x90 0x9D mapped to U+0081.. (as the
    # server converts them); Python's cp1252 leaves those undefined.
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return "".join(chr(b) for b in err.object[err.start : err.end]), err.end


#: error handler for decoding MySQL latin1 with Python's cp1252
codecs.register_error("deltaforge.c1", _c1_passthrough)

# MySQL/MariaDB character set name -> Python codec. pymysqlreplication already hands out
# 'utf8' / 'cp1252' / 'koi8_r' / 'koi8_u' for some of them; those map to themselves.
_CHARSET_CODECS: dict[str, str | None] = {
    "binary": None,
    "utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf8": "utf-8",
    "latin1": "cp1252", "cp1252": "cp1252",
    "ascii": "ascii", "latin2": "iso8859_2", "latin5": "iso8859_9", "latin7": "iso8859_13",
    "greek": "iso8859_7", "hebrew": "iso8859_8", "tis620": "tis_620",
    "koi8r": "koi8_r", "koi8_r": "koi8_r", "koi8u": "koi8_u", "koi8_u": "koi8_u",
    "cp850": "cp850", "cp852": "cp852", "cp866": "cp866", "cp1250": "cp1250", "cp1251": "cp1251",
    "cp1256": "cp1256", "cp1257": "cp1257", "macce": "mac_latin2", "macroman": "mac_roman",
    "big5": "big5", "gbk": "gbk", "gb2312": "gb2312", "gb18030": "gb18030",
    "sjis": "shift_jis", "cp932": "cp932", "ujis": "euc_jp", "eucjpms": "euc_jp", "euckr": "euc_kr",
    "ucs2": "utf-16-be", "utf16": "utf-16-be", "utf16le": "utf-16-le", "utf32": "utf-32-be",
}


def charset_codec(name: str | None) -> str | None:
    """Python codec for a MySQL character set name (None/'binary' -> None = bytes).

    A charset Python cannot decode (swe7, dec8, hp8, armscii8, geostd8, keybcs2) maps to
    ``"unsupported:<name>"``: the column's decoder raises DecodeError only if a value of
    it is actually decoded, so an unrelated exotic column does not stop the pipeline.
    """
    if name is None:
        return None
    key = name.lower()
    if key in _CHARSET_CODECS:
        return _CHARSET_CODECS[key]
    try:
        return codecs.lookup(key).name
    except LookupError:
        return f"unsupported:{name}"


def fetch_live_columns(conn: Any, db: str, table: str) -> list[LiveColumn]:
    """The table's current columns from information_schema, in ordinal order.

    A failure is classified by :mod:`deltaforge.source.mysql_errors`: a missing SELECT
    grant is fatal (information_schema shows no columns without it), a lost
    connection retriable.
    """
    import pymysql

    from deltaforge.source.mysql_errors import mysql_error

    sql = (
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
        "ORDER BY ORDINAL_POSITION"
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql, (db, table))
            rows = cur.fetchall()
    except (pymysql.err.MySQLError, OSError) as e:
        raise mysql_error(e, f"reading the columns of {db}.{table} from information_schema",
                          grant=f"SELECT ON `{db}`.*") from None
    out: list[LiveColumn] = []
    for row in rows:
        vals = list(row.values()) if isinstance(row, dict) else list(row)
        name, data_type, column_type, charset = (
            v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else v for v in vals
        )
        out.append(LiveColumn(name=name, data_type=data_type, column_type=column_type, charset=charset))
    return out


def needs_live_columns(tm: Any) -> bool:
    """True when this table map cannot be decoded from the binlog alone: no column
    names (binlog_row_metadata below FULL), or MariaDB old-format temporal columns whose
    fractional-second precision only information_schema knows."""
    if any(getattr(c, "name", None) in (None, "") for c in tm.columns):
        return True
    return any(c.type in _OLD_TEMPORAL for c in tm.columns)


_QUOTED = re.compile(r"'((?:[^'\\]|''|\\.)*)'")
_PAREN_INT = re.compile(r"\((\d+)\)")


def _labels(column_type: str) -> list[str]:
    """ENUM/SET labels from COLUMN_TYPE, e.g. ``enum('a','it''s')`` -> ['a', "it's"]."""
    body = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    return [m.group(1).replace("''", "'").replace("\\\\", "\\") for m in _QUOTED.finditer(body)]


def _live_fsp(column_type: str) -> int:
    m = _PAREN_INT.search(column_type)
    return int(m.group(1)) if m else 0


def _col_attr(col: Any, name: str, default: Any) -> Any:
    val = getattr(col, name, default)
    return default if val is None else val


def _lenenc(buf: bytes, pos: int) -> tuple[int, int]:
    first = buf[pos]
    if first < 251:
        return first, pos + 1
    width = {252: 2, 253: 3, 254: 8}[first]
    return int.from_bytes(buf[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


def _raw_enum_set_labels(tm: Any) -> tuple[list[list[bytes]], list[list[bytes]]] | None:
    """ENUM and SET labels as raw bytes, re-read from the table map's optional metadata.

    mysql-replication decodes labels as UTF-8 and turns any other byte sequence into ''
    (a latin1 ``ENUM('café')`` would lose its label); the labels are written in the
    column's own charset, so we re-read them and decode them ourselves. Layout
    (``Table_map_log_event``): table_id(6) flags(2) db(len, bytes, NUL) table(len, bytes,
    NUL) lenenc column count, types[n], lenenc metadata length + metadata, null bitmap,
    then TLVs (type 1 byte, lenenc length, value); SET_STR_VALUE=5, ENUM_STR_VALUE=6 hold
    per column a lenenc label count and lenenc-length labels. Returns None if unreadable.
    """
    try:
        p = tm.packet.packet
        body = bytes(p._data[20 : 20 + tm.event_size])  # after the OK byte + 19-byte header
        pos = 8
        pos += 1 + body[pos] + 1
        pos += 1 + body[pos] + 1
        ncols, pos = _lenenc(body, pos)
        pos += ncols
        meta_len, pos = _lenenc(body, pos)
        pos += meta_len + (ncols + 7) // 8
        found: dict[int, list[list[bytes]]] = {5: [], 6: []}
        while pos < len(body):
            kind = body[pos]
            length, pos = _lenenc(body, pos + 1)
            end = pos + length
            if kind in found:
                while pos < end:
                    count, pos = _lenenc(body, pos)
                    labels = []
                    for _ in range(count):
                        n, pos = _lenenc(body, pos)
                        labels.append(body[pos : pos + n])
                        pos += n
                    found[kind].append(labels)
            pos = end
        return found[6], found[5]
    except Exception:  # noqa: BLE001 - best effort; the library's labels remain
        return None


def _fix_labels(tm: Any, specs: list[ColumnSpec]) -> None:
    """Replace labels the library could not decode (see _raw_enum_set_labels)."""
    suspect = [s for s in specs if "" in (s.enum_values or ()) or "" in (s.set_values or ())]
    if not suspect:
        return
    raw = _raw_enum_set_labels(tm)
    if raw is None:
        return
    enums, sets = raw
    ei = si = 0
    for spec in specs:
        codec = spec.charset if spec.charset and not spec.charset.startswith("unsupported:") else "utf-8"
        errors = "deltaforge.c1" if codec == "cp1252" else "replace"
        if spec.type == ENUM and ei < len(enums):
            spec.enum_values = [b.decode(codec, errors) for b in enums[ei]]
            ei += 1
        elif spec.type == SET and si < len(sets):
            spec.set_values = [b.decode(codec, errors) for b in sets[si]]
            si += 1


def schema_from_table_map(tm: Any, live: list[LiveColumn] | None = None) -> TableSchema:
    """Build the decoder's schema from a TableMapEvent (plus the live schema when the
    binlog lacks names, or for MariaDB old-format temporal precision)."""
    db, table = tm.schema, tm.table
    cols = list(tm.columns)
    full = bool(cols) and all(getattr(c, "name", None) not in (None, "") for c in cols)
    if not full and live is None:
        raise DecodeError(
            f"{db}.{table}: the binlog carries no column names (binlog_row_metadata is not FULL) "
            "and no live schema was supplied",
            FULL_METADATA_HINT,
        )
    if live is not None and len(live) != len(cols) and (not full or any(c.type in _OLD_TEMPORAL for c in cols)):
        raise DecodeError(
            f"{db}.{table}: the binlog row has {len(cols)} columns but the table now has {len(live)} "
            "(it was altered since); the live schema cannot describe this row",
            FULL_METADATA_HINT,
        )
    specs: list[ColumnSpec] = []
    for i, col in enumerate(cols):
        ctype = int(col.type)
        lv = live[i] if live is not None and i < len(live) else None
        spec = ColumnSpec(
            name=col.name if full or lv is None else lv.name,
            type=ctype,
            max_length=int(_col_attr(col, "max_length", 0)),
            length_size=int(_col_attr(col, "length_size", 0)),
            fsp=int(_col_attr(col, "fsp", 0)),
            precision=int(_col_attr(col, "precision", 0)),
            decimals=int(_col_attr(col, "decimals", 0)),
            bits=int(_col_attr(col, "bits", 0)),
            size=int(_col_attr(col, "size", 0)),
        )
        if full:
            spec.unsigned = bool(col.unsigned) and ctype in _INT_TYPES
            spec.charset = charset_codec(col.character_set_name)
            if ctype == ENUM:
                labels = list(col.enum_values or [])
                # pymysqlreplication prepends the '' of index 0; we keep labels 1.. only.
                spec.enum_values = labels[1:] if labels[:1] == [""] else labels
            elif ctype == SET:
                spec.set_values = list(col.set_values or [])
        elif lv is not None:
            ltype = lv.column_type.lower()
            spec.unsigned = "unsigned" in ltype and ctype in _INT_TYPES
            spec.charset = charset_codec(lv.charset)
            if ctype == ENUM:
                spec.enum_values = _labels(lv.column_type)
            elif ctype == SET:
                spec.set_values = _labels(lv.column_type)
        if ctype in _OLD_TEMPORAL and lv is not None:
            # MariaDB old-format hires temporal: the table map has no fsp, information_schema does.
            spec.fsp = _live_fsp(lv.column_type)
        specs.append(spec)
    if full:
        _fix_labels(tm, specs)
    return TableSchema(db=db, table=table, columns=specs, full_metadata=full)
