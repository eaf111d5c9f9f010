# cython: language_level=3
"""Row-image values in C, included by both _core/rowdecode.pyx and _core/eventbuf.pyx.

One source for every value rendering (docs/value-rendering.md): the object path (``_value``:
Python objects, rowdecode.decode_rows) and the JSON path (``_value_json``: the value's JSON
written straight into the reader's batch buffer, eventbuf.BlockBuilder.add_rows) share the
plans and the C text writers below, so they cannot drift apart. Whatever the JSON path does
not render in C (floats, non-UTF-8 text, invalid UTF-8, SET, BINARY padding, rare types)
goes through ``_value`` and msgspec, the object path's own encoder: the JSON of a value is
by construction ``msgspec.json.encode`` of what decode_rows returns for it.

Included, not cimported: a cdef function cimported across extension modules is imported at
run time by its .pxd's package path (``_core.rowdecode``), which is not the module's name
(``deltaforge._core.rowdecode``). Each including module caches its own plans on the
TableSchema under its own key (``_PLAN_CACHE``, defined before the include).
"""

import struct

import msgspec

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
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


cdef char* decimal_write(char* w, const unsigned char* src, const ColPlan* cp) noexcept nogil:
    """The DECIMAL's text at ``w`` (at most 70 bytes: 65 digits, sign, point); NULL for a
    corrupt digit group (the caller then asks the twin's arithmetic, which decides the digits)."""
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
            return NULL
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
        memcpy(w, out, o - out)
        return w + (o - out)
    memcpy(w, out + 1, o - out - 1)
    return w + (o - out - 1)


cdef object decimal_decode(const unsigned char* src, const ColPlan* cp):
    cdef char buf[80]
    cdef char* e = decimal_write(buf, src, cp)
    if e == NULL:  # corrupt group: the twin's big-int carry arithmetic decides the digits
        return _F.decimal_from_bin(bytes(src[:cp.width]), cp.precision, cp.scale)
    return _ascii(buf, e - buf)


cdef inline char* date_write(char* o, const unsigned char* p) noexcept nogil:
    cdef uint64_t v = _le(p, 3)
    o = _digits(o, v >> 9, 4)
    o[0] = 45
    o = _digits(o + 1, (v >> 5) & 15, 2)
    o[0] = 45
    return _digits(o + 1, v & 31, 2)


cdef inline object date_decode(const unsigned char* p):
    cdef char buf[32]
    return _ascii(buf, date_write(buf, p) - buf)


cdef inline char* _hms(char* o, uint64_t h, uint64_t m, uint64_t s) noexcept nogil:
    o = _digits(o, h, 2)
    o[0] = 58
    o = _digits(o + 1, m, 2)
    o[0] = 58
    return _digits(o + 1, s, 2)


cdef char* datetime2_write(char* buf, Cursor* c, const ColPlan* cp) except NULL:
    """At most 26 bytes (every *_write of a temporal type: at most 40)."""
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
    return o


cdef object datetime2_decode(Cursor* c, const ColPlan* cp):
    cdef char buf[48]
    return _ascii(buf, datetime2_write(buf, c, cp) - buf)


cdef char* time2_write(char* buf, Cursor* c, const ColPlan* cp) except NULL:
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
    return o


cdef object time2_decode(Cursor* c, const ColPlan* cp):
    cdef char buf[48]
    return _ascii(buf, time2_write(buf, c, cp) - buf)


cdef char* timestamp2_write(char* buf, Cursor* c, const ColPlan* cp) except NULL:
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
        return o
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
    return o + 1


cdef object timestamp2_decode(Cursor* c, const ColPlan* cp):
    cdef char buf[48]
    return _ascii(buf, timestamp2_write(buf, c, cp) - buf)


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
    # the JSON path: '{"name":' / ',"name":' per column, and each ENUM label's JSON string
    cdef tuple keys_json, labels_json

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
    cdef dict plans = d.get(_PLAN_CACHE)
    if plans is None:
        plans = {}
        d[_PLAN_CACHE] = plans
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
    plan.keys_json = tuple([(b"{" if i == 0 else b",") + _jencode(plan.names[i]) + b":" for i in range(n)])
    plan.labels_json = tuple([tuple([_jencode(x) for x in labs]) if labs is not None else None for labs in labels])
    plans[bytes(present)] = plan
    return plan


# ------------------------------------------------------------------- the JSON path
#
# A row image's JSON written into a growable buffer (``JOut``: a bytearray used as raw storage,
# with our own length). Each writer reserves its worst case first, then writes through a char*.

cdef object _jencode = msgspec.json.Encoder().encode
cdef const char* _HEX = b"0123456789abcdef"


cdef struct JOut:
    void* data        # the bytearray (borrowed: the builder owns it)
    char* base
    Py_ssize_t len
    Py_ssize_t cap


cdef int _jgrow(JOut* o, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap = o.cap * 2
    if cap < o.len + n + 4096:
        cap = o.len + n + 4096
    PyByteArray_Resize(<object>o.data, cap)
    o.base = PyByteArray_AS_STRING(<object>o.data)
    o.cap = cap
    return 0


cdef inline char* _jreserve(JOut* o, Py_ssize_t n) except NULL:
    if o.len + n > o.cap:
        _jgrow(o, n)
    return o.base + o.len


cdef inline int _jput(JOut* o, const char* p, Py_ssize_t n) except -1:
    memcpy(_jreserve(o, n), p, n)
    o.len += n
    return 0


cdef inline int _jbytes(JOut* o, bytes b) except -1:
    return _jput(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef int _jobject(JOut* o, object v) except -1:
    """Anything the C writers leave to the object path: msgspec's JSON of the decoded value."""
    return _jbytes(o, <bytes>_jencode(v))


cdef inline int _junsigned(JOut* o, uint64_t u) except -1:
    cdef char* w = _jreserve(o, 24)
    if u <= <uint64_t>MAX_SAFE:
        o.len = _digits(w, u, 1) - o.base
        return 0
    w[0] = 34  # beyond 2^53 - 1: a JSON string of the digits (docs/value-rendering.md)
    w = _digits(w + 1, u, 1)
    w[0] = 34
    o.len = w + 1 - o.base
    return 0


cdef inline int _jsigned(JOut* o, int64_t v) except -1:
    cdef char* w
    cdef bint quoted = v < -MAX_SAFE or v > MAX_SAFE
    cdef uint64_t mag = <uint64_t>(-(v + 1)) + 1 if v < 0 else <uint64_t>v
    if v >= 0 and not quoted:
        return _junsigned(o, mag)
    w = _jreserve(o, 26)
    if quoted:
        w[0] = 34
        w += 1
    if v < 0:
        w[0] = 45
        w += 1
    w = _digits(w, mag, 1)
    if quoted:
        w[0] = 34
        w += 1
    o.len = w - o.base
    return 0


cdef bint _jtext(JOut* o, const unsigned char* p, Py_ssize_t n, bint ascii_only) except -1:
    """The JSON string of ``n`` bytes of text (msgspec's escaping: backslash before a quote or a
    backslash, the short forms of BS/TAB/LF/FF/CR, backslash-u00xx for the other controls, everything else as is). False,
    with nothing written, if the bytes are not strictly valid UTF-8 (Python's decoder: no
    overlong forms, no surrogates, nothing past U+10FFFF), or not ASCII with ``ascii_only``:
    the caller then takes the object path (its replacement characters, its codecs)."""
    cdef char* w = _jreserve(o, 2 + 6 * n)
    cdef Py_ssize_t i = 0, k
    cdef unsigned char b, b1
    w[0] = 34
    w += 1
    while i < n:
        b = p[i]
        if b < 0x80:
            i += 1
            if b >= 0x20 and b != 34 and b != 92:
                w[0] = b
                w += 1
                continue
            w[0] = 92
            if b == 34 or b == 92:
                w[1] = b
            elif b == 8:
                w[1] = 98
            elif b == 9:
                w[1] = 116
            elif b == 10:
                w[1] = 110
            elif b == 12:
                w[1] = 102
            elif b == 13:
                w[1] = 114
            else:
                w[1] = 117
                w[2] = 48
                w[3] = 48
                w[4] = _HEX[b >> 4]
                w[5] = _HEX[b & 15]
                w += 4
            w += 2
            continue
        if ascii_only:
            return False
        if 0xC2 <= b <= 0xDF:
            if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                return False
            k = 2
        elif 0xE0 <= b <= 0xEF:
            if i + 2 >= n:
                return False
            b1 = p[i + 1]
            if (b1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80:
                return False
            if (b == 0xE0 and b1 < 0xA0) or (b == 0xED and b1 >= 0xA0):
                return False
            k = 3
        elif 0xF0 <= b <= 0xF4:
            if i + 3 >= n:
                return False
            b1 = p[i + 1]
            if (b1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80 or (p[i + 3] & 0xC0) != 0x80:
                return False
            if (b == 0xF0 and b1 < 0x90) or (b == 0xF4 and b1 >= 0x90):
                return False
            k = 4
        else:
            return False
        memcpy(w, p + i, k)
        w += k
        i += k
    w[0] = 34
    o.len = w + 1 - o.base
    return True


cdef int _value_json(JOut* o, Cursor* c, const ColPlan* cp, _Plan plan, Py_ssize_t i, object body) except -1:
    """One value's JSON; what is not rendered here goes through ``_value`` (see the header)."""
    cdef int code = cp.code
    cdef Py_ssize_t start = c.pos, n
    cdef const unsigned char* p
    cdef uint64_t u
    cdef char* w
    cdef char* e
    if code == T_TINY:
        return _jsigned(o, <int8_t>_take(c, 1)[0])
    elif code == T_UTINY:
        return _junsigned(o, _take(c, 1)[0])
    elif code == T_SHORT:
        return _jsigned(o, <int16_t>_le(_take(c, 2), 2))
    elif code == T_USHORT:
        return _junsigned(o, _le(_take(c, 2), 2))
    elif code == T_INT24:
        u = _le(_take(c, 3), 3)
        return _jsigned(o, <int64_t>u - 0x1000000 if u & 0x800000 else <int64_t>u)
    elif code == T_UINT24:
        return _junsigned(o, _le(_take(c, 3), 3))
    elif code == T_LONG:
        return _jsigned(o, <int32_t>_le(_take(c, 4), 4))
    elif code == T_ULONG:
        return _junsigned(o, _le(_take(c, 4), 4))
    elif code == T_LONGLONG:
        return _jsigned(o, <int64_t>_le(_take(c, 8), 8))
    elif code == T_ULONGLONG:
        return _junsigned(o, _le(_take(c, 8), 8))
    elif code == T_VARCHAR or code == T_CHAR or code == T_TEXT:
        n = <Py_ssize_t>_le(_take(c, cp.width), cp.width)
        p = _take(c, n)
        if cp.charset == CS_UTF8 or cp.charset == CS_CP1252:
            if code == T_CHAR:
                while n and p[n - 1] == 32:
                    n -= 1
            if _jtext(o, p, n, cp.charset == CS_CP1252):
                return 0
    elif code == T_VARBINARY or code == T_BLOB or code == T_BINARY:
        n = <Py_ssize_t>_le(_take(c, cp.width), cp.width)
        p = _take(c, n)
        if code != T_BINARY or n >= cp.max_length:  # (BINARY's restored trailing NULs: object path)
            w = _jreserve(o, b64_len(n) + 2)
            w[0] = 34
            w = <char*>b64(<unsigned char*>w + 1, p, n)
            w[0] = 34
            o.len = w + 1 - o.base
            return 0
    elif code == T_DECIMAL:
        p = _take(c, cp.width)
        w = _jreserve(o, 82)
        e = decimal_write(w + 1, p, cp)
        if e != NULL:
            w[0] = 34
            e[0] = 34
            o.len = e + 1 - o.base
            return 0
    elif code == T_DATE or code == T_DATETIME2 or code == T_TIME2 or code == T_TIMESTAMP2:
        w = _jreserve(o, 44)
        w[0] = 34
        if code == T_DATE:
            e = date_write(w + 1, _take(c, 3))
        elif code == T_DATETIME2:
            e = datetime2_write(w + 1, c, cp)
        elif code == T_TIME2:
            e = time2_write(w + 1, c, cp)
        else:
            e = timestamp2_write(w + 1, c, cp)
        e[0] = 34
        o.len = e + 1 - o.base
        return 0
    elif code == T_YEAR:
        u = _take(c, 1)[0]
        return _junsigned(o, u + 1900 if u else 0)
    elif code == T_BIT:
        return _junsigned(o, _be(_take(c, cp.width), cp.width))
    elif code == T_ENUM:
        u = _le(_take(c, cp.width), cp.width)
        if u == 0:
            return _jput(o, b'""', 2)
        if u <= <uint64_t>cp.nlabels:
            return _jbytes(o, <bytes>(<tuple>plan.labels_json[i])[u - 1])
    # floats, SET, rare types, and the text/binary/decimal/ENUM cases above that fell through
    c.pos = start
    return _jobject(o, _value(c, cp, plan, i, body))


cdef int _image_json(JOut* o, Cursor* c, _Plan plan, object body) except -1:
    """One row image as a JSON object, keys in column order (msgspec's encoding of its dict)."""
    cdef const unsigned char* nulls = _take(c, plan.null_bytes)
    cdef Py_ssize_t i
    cdef tuple keys = plan.keys_json
    if plan.n == 0:
        return _jput(o, b"{}", 2)
    for i in range(plan.n):
        _jbytes(o, <bytes>keys[i])
        if (nulls[i >> 3] >> (i & 7)) & 1:
            _jput(o, b"null", 4)
        else:
            _value_json(o, c, &plan.cols[i], plan, i, body)
    return _jput(o, b"}", 1)


