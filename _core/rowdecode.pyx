# cython: language_level=3
"""Binlog rows-event decoding, compiled twin of ``deltaforge.source.rowdecode``.

Contract
--------
Same API and byte-for-byte the same output as the pure module (the specification and
test oracle): ``decode_rows(schema, body, kind, present, present_after=None)`` returns
one ``(before, after)`` pair per row, row images are dicts in column order, values follow
docs/value-rendering.md. The wire layout of every type is documented once, in the pure
module's header; it is not repeated here.

Structure
---------
- A C read cursor (``Cursor``: pointer, position, end, from ``df_cursor.pxd``) over the body;
  every read goes through ``_take``, which raises on truncation instead of reading past the end.
  The digit and base64 writers come from ``df_write.pxd`` (shared with the encoders).
- A per-(table, present bitmap) plan (``_Plan``), built once and cached on the
  ``TableSchema`` under ``_df_cplans``: a C array of ``ColPlan`` (type code + metadata)
  plus tuples of the Python objects the loop needs (names, labels, codec names).
  The type code is derived from ``rowformat.column_kind`` (the one classification, shared
  with the pure twin), so both twins pick the same rendering by construction.
- One typed loop per row image; ``_value`` switches on the C type code. Integers,
  floats, DECIMAL, DATE/DATETIME2/TIME2/TIMESTAMP2, text (utf-8, cp1252, any other Python
  codec), binary (base64 written straight into an ASCII str), ENUM/SET/BIT/YEAR are
  C-level. Rare types (MySQL binary JSON, old temporal formats, unsupported types,
  charsets or metadata) call ``rowformat``'s decoder of that column (``T_PY``), the same
  function the pure twin calls. This module does not import its pure twin.

Hazards
-------
- Error messages: on any failure the row image is re-walked column by column here
  (``_locate``, as the twin does with its decoders) and the DecodeError is built by
  ``rowformat``'s message builders from positions only, so it names db.table.column,
  type and byte exactly as the twin's does.
- Host byte order does not matter: multi-byte values are assembled byte by byte.
"""

import struct

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_Decode, PyUnicode_DecodeLatin1, PyUnicode_DecodeUTF8
from libc.stdint cimport int16_t, int32_t, int64_t, int8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport strtod
from libc.string cimport memcpy, memset

from df_cursor cimport Cursor
from df_cursor cimport be as _be
from df_cursor cimport le as _le
from df_cursor cimport take as _take
from df_write cimport b64, b64_len
from df_write cimport digits as _digits

from deltaforge.errors import DecodeError
from deltaforge.source import rowformat as _F

IMPLEMENTATION = "cython"

WRITE, UPDATE, DELETE = 0, 1, 2

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    unsigned char* PyUnicode_1BYTE_DATA(object o)

cdef extern from "math.h":
    bint isinf(double x) nogil

cdef int64_t MAX_SAFE = (<int64_t>1 << 53) - 1

cdef enum TypeCode:
    T_PY = 0
    T_TINY
    T_UTINY
    T_SHORT
    T_USHORT
    T_INT24
    T_UINT24
    T_LONG
    T_ULONG
    T_LONGLONG
    T_ULONGLONG
    T_YEAR
    T_BIT
    T_FLOAT
    T_DOUBLE
    T_DECIMAL
    T_DATE
    T_DATETIME2
    T_TIME2
    T_TIMESTAMP2
    T_VARCHAR
    T_VARBINARY
    T_CHAR
    T_BINARY
    T_TEXT
    T_BLOB
    T_ENUM
    T_SET

cdef enum Charset:
    CS_NONE = 0
    CS_UTF8
    CS_CP1252
    CS_OTHER

cdef struct ColPlan:
    int code
    int width       # length-prefix bytes, value bytes (BIT/ENUM/SET/DECIMAL)
    int fsp
    int precision
    int scale
    int charset
    Py_ssize_t max_length
    Py_ssize_t nlabels

# rowformat.column_kind(col) -> our C type code (kinds missing here are rowformat's: T_PY)
cdef dict _CODES = {
    "tiny": T_TINY, "utiny": T_UTINY, "short": T_SHORT, "ushort": T_USHORT,
    "int24": T_INT24, "uint24": T_UINT24, "long": T_LONG, "ulong": T_ULONG,
    "longlong": T_LONGLONG, "ulonglong": T_ULONGLONG, "year": T_YEAR, "bit": T_BIT,
    "float": T_FLOAT, "double": T_DOUBLE, "decimal": T_DECIMAL, "date": T_DATE,
    "datetime2": T_DATETIME2, "time2": T_TIME2, "timestamp2": T_TIMESTAMP2,
    "varchar": T_VARCHAR, "varbinary": T_VARBINARY, "char": T_CHAR, "binary": T_BINARY,
    "text": T_TEXT, "blob": T_BLOB, "enum": T_ENUM, "set": T_SET,
}
if set(_CODES) | set(_F.RARE_DECODERS) != _F.KINDS:
    raise ImportError("deltaforge._core.rowdecode is out of date with deltaforge.source.rowformat.KINDS: rebuild it")

cdef tuple _CAUGHT = (IndexError, ValueError, struct.error, UnicodeError, OverflowError, KeyError)
cdef int[7] _FRAC_BYTES = [0, 1, 1, 2, 2, 3, 3]
cdef int[7] _FRAC_WIDTH = [0, 2, 2, 4, 4, 6, 6]
cdef int[10] _DIG2BYTES = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
cdef str _EMPTY = ""


# ------------------------------------------------------------------------ writers


cdef inline char* _frac(char* p, uint64_t v, int fsp) noexcept nogil:
    """'.' + f"{v:0{width}d}"[:fsp] for the fraction units of ``fsp``."""
    cdef char tmp[24]
    cdef char* e = _digits(tmp, v, _FRAC_WIDTH[fsp])
    cdef int n = <int>(e - tmp)
    if n > fsp:
        n = fsp
    p[0] = 46
    memcpy(p + 1, tmp, n)
    return p + 1 + n


cdef inline object _ascii(const char* p, Py_ssize_t n):
    cdef object s = PyUnicode_New(n, 127)
    memcpy(PyUnicode_1BYTE_DATA(s), p, n)
    return s


cdef object _b64(const unsigned char* p, Py_ssize_t n):
    cdef object s = PyUnicode_New(b64_len(n), 127)
    b64(PyUnicode_1BYTE_DATA(s), p, n)
    return s


cdef inline object _safe_signed(int64_t v):
    if -MAX_SAFE <= v <= MAX_SAFE:
        return v
    cdef char buf[24]
    cdef int n = snprintf(buf, 24, "%lld", <long long>v)
    return _ascii(buf, n)


cdef inline object _safe_unsigned(uint64_t v):
    if v <= <uint64_t>MAX_SAFE:
        return v
    cdef char buf[24]
    return _ascii(buf, _digits(buf, v, 1) - buf)


# ------------------------------------------------------------------------- values


cdef bint _f32_same(double cand, double v) except -1:
    # struct.pack("<f") semantics: a finite double that overflows float32 raises
    cdef float y = <float>cand
    if isinf(y) and not isinf(cand):
        raise OverflowError("float too large to pack with f format")
    return <double>y == v


cdef object float_decode(const unsigned char* p):
    """The shortest %g text (1..9 digits, the twin's search order) that reads back as
    the same float32."""
    cdef uint32_t bits = <uint32_t>_le(p, 4)
    cdef float f
    memcpy(&f, &bits, 4)
    cdef double v = f, cand, c2
    cdef char tmp[64]
    cdef int d, d2
    for d in range(6, 10):
        snprintf(tmp, 64, "%.*g", d, v)
        cand = strtod(tmp, NULL)
        if _f32_same(cand, v):
            if d == 6:
                for d2 in range(1, 6):
                    snprintf(tmp, 64, "%.*g", d2, v)
                    c2 = strtod(tmp, NULL)
                    if _f32_same(c2, v):
                        return c2
            return cand
    return v


cdef object decimal_decode(const unsigned char* src, const ColPlan* cp):
    cdef unsigned char raw[64]
    cdef char ipart[160]
    cdef char out[260]
    cdef int size = cp.width, prec = cp.precision, scale = cp.scale
    cdef int intg = prec - scale, lead, k, tail, i
    cdef bint negative
    cdef uint64_t g
    cdef char* ip = ipart
    cdef char* o
    cdef char* istart
    cdef char* fstart
    cdef Py_ssize_t pos = 0
    memcpy(raw, src, size)
    negative = not (raw[0] & 0x80)
    raw[0] ^= 0x80
    if negative:
        for i in range(size):
            raw[i] ^= 0xFF
    lead = _DIG2BYTES[intg % 9]
    if lead:
        ip = _digits(ip, _be(raw, lead), 1)
        pos = lead
    for k in range(intg // 9):
        g = _be(raw + pos, 4)
        if g >= 1000000000:
            # corrupt group: the twin's big-int carry arithmetic decides the digits
            return _F.decimal_from_bin(bytes(src[:size]), prec, scale)
        ip = _digits(ip, g, 9)
        pos += 4
    # strip leading zeros of the integer part ("0" if nothing is left)
    istart = ipart
    while istart < ip and istart[0] == 48:
        istart += 1
    o = out
    o[0] = 45  # '-' placeholder, dropped below when not negative
    o += 1
    if istart == ip:
        o[0] = 48
        o += 1
    else:
        memcpy(o, istart, ip - istart)
        o += ip - istart
    fstart = NULL
    if scale:
        o[0] = 46
        o += 1
        fstart = o
        for k in range(scale // 9):
            o = _digits(o, _be(raw + pos, 4), 9)
            pos += 4
        tail = scale % 9
        if tail:
            o = _digits(o, _be(raw + pos, _DIG2BYTES[tail]), tail)
    if negative and istart == ip:
        # never render "-0.00"
        negative = False
        if fstart != NULL:
            istart = fstart
            while istart < o:
                if istart[0] != 48:
                    negative = True
                    break
                istart += 1
    if negative:
        return _ascii(out, o - out)
    return _ascii(out + 1, o - out - 1)


cdef inline object date_decode(const unsigned char* p):
    cdef char buf[32]
    cdef uint64_t v = _le(p, 3)
    cdef char* o = _digits(buf, v >> 9, 4)
    o[0] = 45
    o = _digits(o + 1, (v >> 5) & 15, 2)
    o[0] = 45
    o = _digits(o + 1, v & 31, 2)
    return _ascii(buf, o - buf)


cdef inline char* _hms(char* o, uint64_t h, uint64_t m, uint64_t s) noexcept nogil:
    o = _digits(o, h, 2)
    o[0] = 58
    o = _digits(o + 1, m, 2)
    o[0] = 58
    return _digits(o + 1, s, 2)


cdef object datetime2_decode(Cursor* c, const ColPlan* cp):
    cdef char buf[48]
    cdef int64_t v = <int64_t>_be(_take(c, 5), 5) - <int64_t>0x8000000000
    cdef uint64_t ym = <uint64_t>((v >> 22) & 0x1FFFF)
    cdef char* o = _digits(buf, ym // 13, 4)
    o[0] = 45
    o = _digits(o + 1, ym % 13, 2)
    o[0] = 45
    o = _digits(o + 1, (v >> 17) & 31, 2)
    o[0] = 32
    o = _hms(o + 1, (v >> 12) & 31, (v >> 6) & 63, v & 63)
    cdef int nf = _FRAC_BYTES[cp.fsp]
    if nf:
        o = _frac(o, _be(_take(c, nf), nf), cp.fsp)
    return _ascii(buf, o - buf)


cdef object time2_decode(Cursor* c, const ColPlan* cp):
    cdef char buf[48]
    cdef int nf = _FRAC_BYTES[cp.fsp]
    cdef int64_t v = <int64_t>_be(_take(c, 3 + nf), 3 + nf) - (<int64_t>0x800000 << (8 * nf))
    cdef char* o = buf
    if v < 0:
        o[0] = 45
        o += 1
        v = -v
    cdef int64_t hms = v >> (8 * nf)
    o = _hms(o, (hms >> 12) & 0x3FF, (hms >> 6) & 63, hms & 63)
    if nf:
        o = _frac(o, v & ((<int64_t>1 << (8 * nf)) - 1), cp.fsp)
    return _ascii(buf, o - buf)


cdef object timestamp2_decode(Cursor* c, const ColPlan* cp):
    cdef char buf[48]
    cdef uint64_t secs = _be(_take(c, 4), 4)
    cdef int nf = _FRAC_BYTES[cp.fsp]
    cdef uint64_t fv = _be(_take(c, nf), nf) if nf else 0
    cdef char* o
    cdef int k
    if secs == 0:
        # the zero TIMESTAMP: rendered as the server shows it, no zone, no 'T'
        memcpy(buf, b"0000-00-00 00:00:00", 19)
        o = buf + 19
        if cp.fsp:
            o[0] = 46
            o += 1
            for k in range(cp.fsp):
                o[0] = 48
                o += 1
        return _ascii(buf, o - buf)
    # civil date from days since 1970-01-01 (H. Hinnant's algorithm), days >= 0 here
    cdef uint64_t days = secs // 86400, rem = secs % 86400
    cdef uint64_t z = days + 719468
    cdef uint64_t era = z // 146097
    cdef uint64_t doe = z - era * 146097
    cdef uint64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef uint64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef uint64_t mp = (5 * doy + 2) // 153
    cdef uint64_t day = doy - (153 * mp + 2) // 5 + 1
    cdef uint64_t month = mp + 3 if mp < 10 else mp - 9
    cdef uint64_t year = yoe + era * 400 + (1 if month <= 2 else 0)
    o = _digits(buf, year, 4)
    o[0] = 45
    o = _digits(o + 1, month, 2)
    o[0] = 45
    o = _digits(o + 1, day, 2)
    o[0] = 84
    o = _hms(o + 1, rem // 3600, (rem // 60) % 60, rem % 60)
    if nf:
        o = _frac(o, fv, cp.fsp)
    o[0] = 90
    return _ascii(buf, o + 1 - buf)


cdef object _text(const unsigned char* p, Py_ssize_t n, const ColPlan* cp, object codec, bint strip):
    cdef Py_ssize_t i
    cdef object s
    if cp.charset == CS_UTF8:
        # a 0x20 byte is always a whole U+0020 in UTF-8 (even after an invalid sequence)
        if strip:
            while n and p[n - 1] == 32:
                n -= 1
        return PyUnicode_DecodeUTF8(<const char*>p, n, "replace")
    if cp.charset == CS_CP1252:
        if strip:
            while n and p[n - 1] == 32:
                n -= 1
        for i in range(n):
            if p[i] >= 0x80:
                return PyUnicode_Decode(<const char*>p, n, "cp1252", "deltaforge.c1")
        return PyUnicode_DecodeLatin1(<const char*>p, n, NULL)  # pure ASCII
    s = PyUnicode_Decode(<const char*>p, n, <const char*>(<bytes>codec), "replace")
    if strip:
        s = (<str>s).rstrip(" ")
    return s


cdef object binary_decode(const unsigned char* p, Py_ssize_t n, Py_ssize_t pad_to):
    cdef unsigned char* tmp
    if n >= pad_to:
        return _b64(p, n)
    # BINARY(n): the binlog drops the trailing NULs SELECT returns; restore them
    tmp = <unsigned char*>PyMem_Malloc(pad_to)
    if tmp == NULL:
        raise MemoryError()
    try:
        memcpy(tmp, p, n)
        memset(tmp + n, 0, pad_to - n)
        return _b64(tmp, pad_to)
    finally:
        PyMem_Free(tmp)


cdef object set_decode(uint64_t mask, tuple labels, Py_ssize_t nlabels):
    cdef list parts = []
    cdef Py_ssize_t i
    if nlabels < 64 and (mask >> nlabels):
        raise DecodeError(f"SET bitmask {mask:#x} beyond its {nlabels} labels")
    for i in range(nlabels):
        if (mask >> i) & 1:
            parts.append(labels[i])
    return ",".join(parts)


cdef object _value(Cursor* c, const ColPlan* cp, _Plan plan, Py_ssize_t i, object body):
    cdef int code = cp.code
    cdef const unsigned char* p
    cdef Py_ssize_t n
    cdef uint64_t u
    cdef double dv
    cdef object v
    if code == T_TINY:
        return <int8_t>_take(c, 1)[0]
    elif code == T_UTINY:
        return _take(c, 1)[0]
    elif code == T_SHORT:
        return <int16_t>_le(_take(c, 2), 2)
    elif code == T_USHORT:
        return <long>_le(_take(c, 2), 2)
    elif code == T_INT24:
        u = _le(_take(c, 3), 3)
        return <long>u - 0x1000000 if u & 0x800000 else <long>u
    elif code == T_UINT24:
        return <long>_le(_take(c, 3), 3)
    elif code == T_LONG:
        return <int32_t>_le(_take(c, 4), 4)
    elif code == T_ULONG:
        return <uint64_t>_le(_take(c, 4), 4)
    elif code == T_LONGLONG:
        return _safe_signed(<int64_t>_le(_take(c, 8), 8))
    elif code == T_ULONGLONG:
        return _safe_unsigned(_le(_take(c, 8), 8))
    elif code == T_VARCHAR or code == T_CHAR:
        n = <Py_ssize_t>_le(_take(c, cp.width), cp.width)
        return _text(_take(c, n), n, cp, plan.codecs[i], code == T_CHAR)
    elif code == T_TEXT:
        n = <Py_ssize_t>_le(_take(c, cp.width), cp.width)
        return _text(_take(c, n), n, cp, plan.codecs[i], False)
    elif code == T_VARBINARY or code == T_BLOB:
        n = <Py_ssize_t>_le(_take(c, cp.width), cp.width)
        return _b64(_take(c, n), n)
    elif code == T_BINARY:
        n = <Py_ssize_t>_le(_take(c, cp.width), cp.width)
        return binary_decode(_take(c, n), n, cp.max_length)
    elif code == T_DECIMAL:
        return decimal_decode(_take(c, cp.width), cp)
    elif code == T_DOUBLE:
        u = _le(_take(c, 8), 8)
        memcpy(&dv, &u, 8)
        return dv
    elif code == T_FLOAT:
        return float_decode(_take(c, 4))
    elif code == T_DATETIME2:
        return datetime2_decode(c, cp)
    elif code == T_TIMESTAMP2:
        return timestamp2_decode(c, cp)
    elif code == T_DATE:
        return date_decode(_take(c, 3))
    elif code == T_TIME2:
        return time2_decode(c, cp)
    elif code == T_YEAR:
        u = _take(c, 1)[0]
        return <long>(u + 1900) if u else 0
    elif code == T_ENUM:
        u = _le(_take(c, cp.width), cp.width)
        if u == 0:
            return _EMPTY  # the server's '' error value (invalid input in non-strict mode)
        if u > <uint64_t>cp.nlabels:
            raise DecodeError(f"ENUM index {u} beyond its {cp.nlabels} labels")
        return (<tuple>plan.labels[i])[u - 1]
    elif code == T_SET:
        return set_decode(_le(_take(c, cp.width), cp.width), <tuple>plan.labels[i], cp.nlabels)
    elif code == T_BIT:
        return _safe_unsigned(_be(_take(c, cp.width), cp.width))
    # T_PY: rowformat's decoder for this column (rare types), as the twin calls it
    v, n = plan.decoders[i](body, c.pos, plan.specs[i])
    if n > c.end:
        raise IndexError("value runs past the rows event")
    c.pos = n
    return v


# -------------------------------------------------------------------------- plans


cdef class _Plan:
    """The columns present in one row image: C type codes + the Python objects they need."""

    cdef ColPlan* cols
    cdef Py_ssize_t n
    cdef Py_ssize_t null_bytes
    cdef tuple names, specs, decoders, codecs, labels

    def __dealloc__(self):
        PyMem_Free(self.cols)


cdef int _setup(ColPlan* cp, object col, str kind, list codecs, list labels) except -1:
    # rowformat.column_kind validated the metadata: every width and fsp here is in range
    cdef int code = _CODES.get(kind, T_PY)
    cdef object codec = None
    cdef object labs = None
    memset(cp, 0, sizeof(ColPlan))
    if code in (T_VARCHAR, T_VARBINARY, T_CHAR, T_BINARY):
        cp.max_length = col.max_length
        cp.width = 1 if col.max_length < 256 else 2
    elif code == T_TEXT or code == T_BLOB:
        cp.width = col.length_size
    elif code == T_DECIMAL:
        cp.precision = col.precision
        cp.scale = col.decimals
        cp.width = _F.decimal_size(cp.precision, cp.scale)
    elif code in (T_DATETIME2, T_TIME2, T_TIMESTAMP2):
        cp.fsp = col.fsp
    elif code == T_ENUM or code == T_SET:
        labs = tuple((col.enum_values if code == T_ENUM else col.set_values) or ())
        cp.nlabels = len(labs)
        cp.width = col.size
    elif code == T_BIT:
        cp.width = (col.bits + 7) >> 3
    if code in (T_VARCHAR, T_CHAR, T_TEXT):
        cs = col.charset
        if cs == "utf-8":
            cp.charset = CS_UTF8
        elif cs == "cp1252":
            cp.charset = CS_CP1252
        else:
            cp.charset = CS_OTHER
            codec = cs.encode("ascii")
    cp.code = code
    codecs.append(codec)
    labels.append(labs)
    return 0


cdef _Plan _get_plan(object schema, object present):
    cdef dict d = schema.__dict__
    cdef dict plans = d.get("_df_cplans")
    if plans is None:
        plans = {}
        d["_df_cplans"] = plans
    cdef _Plan plan = plans.get(present)
    if plan is not None:
        return plan
    cdef list kinds = d.get("_df_ckinds")
    if kinds is None:
        kinds = [_F.column_kind(c) for c in schema.columns]
        d["_df_ckinds"] = kinds
    cdef list idx = _F.present_columns(schema, present)  # validates the bitmap
    cdef list all_cols = schema.columns
    cdef list cols = [all_cols[i] for i in idx]
    cdef Py_ssize_t n = len(cols), i
    plan = _Plan.__new__(_Plan)
    plan.cols = <ColPlan*>PyMem_Malloc(sizeof(ColPlan) * (n if n else 1))
    if plan.cols == NULL:
        raise MemoryError()
    plan.n = n
    plan.null_bytes = (n + 7) >> 3
    plan.names = tuple([c.name for c in cols])
    plan.specs = tuple(cols)
    plan.decoders = tuple([_F.RARE_DECODERS.get(kinds[i]) for i in idx])
    codecs: list = []
    labels: list = []
    for i in range(n):
        _setup(&plan.cols[i], cols[i], kinds[idx[i]], codecs, labels)
    plan.codecs = tuple(codecs)
    plan.labels = tuple(labels)
    plans[bytes(present)] = plan
    return plan


# --------------------------------------------------------------------------- rows


cdef dict _image(Cursor* c, _Plan plan, object body):
    cdef const unsigned char* nulls = _take(c, plan.null_bytes)
    cdef dict row = {}
    cdef Py_ssize_t i
    cdef tuple names = plan.names
    for i in range(plan.n):
        if (nulls[i >> 3] >> (i & 7)) & 1:
            row[names[i]] = None
        else:
            row[names[i]] = _value(c, &plan.cols[i], plan, i, body)
    return row


cdef object _locate(object schema, _Plan plan, bytes data, Py_ssize_t start):
    """Slow path after a failure: re-walk the image column by column to name the culprit
    (the twin's ``_locate`` with our decoders; messages from rowformat, positions only)."""
    cdef Cursor c
    cdef Py_ssize_t i, pos
    cdef const unsigned char* nulls
    c.buf = <const unsigned char*>(<char*>data)
    c.end = len(data)
    c.pos = start + plan.null_bytes
    if c.pos > c.end:
        return _F.truncated_nulls(schema, start, c.end)
    nulls = c.buf + start
    for i in range(plan.n):
        if (nulls[i >> 3] >> (i & 7)) & 1:
            continue
        pos = c.pos
        col = plan.specs[i]
        try:
            _value(&c, &plan.cols[i], plan, i, data)
        except DecodeError as err:
            return _F.value_error(schema, col, pos, err.detail, err.hint)
        except (IndexError, struct.error):
            return _F.truncated_value(schema, col, pos, c.end)
        except Exception as err:  # any other failure here is a malformed value
            return _F.value_error(schema, col, pos, f"malformed value ({type(err).__name__})")
    return _F.malformed_image(schema, start)


def decode_rows(schema, body, kind, present, present_after=None):
    """Decode every row of one rows-event body; see deltaforge.source.rowdecode."""
    if kind not in (WRITE, UPDATE, DELETE):
        raise _F.unknown_kind(schema, kind)
    cdef int k = kind
    cdef _Plan plan = _get_plan(schema, present)
    cdef _Plan plan_after = plan
    if k == UPDATE:
        plan_after = _get_plan(schema, present_after if present_after is not None else present)
    if type(body) is not bytes:
        body = bytes(body)
    cdef bytes data = body
    cdef Cursor c
    c.buf = <const unsigned char*>(<char*>data)
    c.pos = 0
    c.end = len(data)
    cdef list out = []
    cdef Py_ssize_t start
    cdef _Plan cur
    cdef dict row, after
    if c.end and plan.n == 0 and plan_after.n == 0:
        raise _F.no_columns(schema, c.end)
    while c.pos < c.end:
        start = c.pos
        cur = plan
        try:
            row = _image(&c, plan, data)
            if k == WRITE:
                out.append((None, row))
            elif k == DELETE:
                out.append((row, None))
            else:
                start = c.pos
                cur = plan_after
                after = _image(&c, plan_after, data)
                out.append((row, after))
        except DecodeError as err:
            raise _locate(schema, cur, data, start) from err
        except _CAUGHT as err:
            raise _locate(schema, cur, data, start) from err
    return out
