# cython: language_level=3
"""The Redis Streams sink's commit round trip: the whole request in ONE buffer, the reply checked in C.

Request (the protocol and its reasons live in ``deltaforge/sink/redis_stream.py``'s header;
this file owns the bytes). RESP2 arrays of bulk strings, in this order::

    MULTI                                                   (exactly-once only)
    XADD <stream> [MAXLEN ~ <n>] * df-event <prefix><payload><suffix>
         event_id <id> idempotency_key <tenant>|<table>|<txid>|<id>     one per entry
    XADD <dlq stream> * df-dlq <dead letter JSON> event_id <id>          one per dead letter
    SET <checkpoint key> <checkpoint value>
    EXEC, WATCH <checkpoint key>, GET <checkpoint key>      (exactly-once only)

``encode_commit`` sizes the whole request first, allocates one ``bytes`` and writes it
through a raw pointer with the GIL released (the column views are taken under the GIL,
from private tuples, so no other thread can free what is being copied). The envelope is
``prefix + payload + suffix`` written straight into the buffer: ``native`` has an empty
prefix and suffix, ``debezium`` wraps the payload in ``{"schema":null,"payload":...}``;
``cloudevents`` payloads are built whole beforehand (from an EventBlock's bytes in C by
``eventbuf.cloudevents_block``, from Event objects by msgspec).

Inputs are *columns*: each is one value for every entry (``str``, ``bytes`` or ``None``
for empty: a static stream name costs nothing per entry) or a list/tuple with one value
per entry. Inside, a column is a C array of (pointer, length) views, so a later column
source (``(buffer, offsets, lengths)`` of the reader's batch buffer) is one more loader,
not a new encoder. ``str`` is written as UTF-8.

Reply (``scan_commit_reply``): the success shape of that round trip, checked without
creating a Python object per reply::

    exactly-once:  +OK  +QUEUED x (entries + 1)  *<entries + 1> $<id> x entries +OK  +OK  $<value>
    at-least-once: $<id> x entries  +OK

It returns the bytes consumed (> 0) when ``data`` is exactly that shape with GET returning
``expected``; 0 when ``data`` is a prefix of it (read more); -1 when it deviates (an error
reply, a nil EXEC, another GET value, trailing bytes): the caller then parses everything
with hiredis and judges it reply by reply, so every error path stays the slow, exact one.

The pure-Python twin ``deltaforge/sink/streamcommit_py.py`` has identical output;
``tests/test_streamcommit.py`` compares them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcmp

from df_resp cimport bulk, bulk_head, bulk_len, crlf, put

from deltaforge.model import EventBlock

IMPLEMENTATION = "cython"

# Constant pieces of the request (what sits between the variable bulk strings).
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
_XADD9 = b"*9\r\n$4\r\nXADD\r\n"
_XADD12 = b"*12\r\n$4\r\nXADD\r\n"
_STAR_EVENT = b"$1\r\n*\r\n$8\r\ndf-event\r\n"
_EVENT_ID = b"$8\r\nevent_id\r\n"
_IDEM_KEY = b"$15\r\nidempotency_key\r\n"
_XADD7 = b"*7\r\n$4\r\nXADD\r\n"
_STAR_DLQ = b"$1\r\n*\r\n$6\r\ndf-dlq\r\n"
_SET = b"*3\r\n$3\r\nSET\r\n"
_WATCH = b"*2\r\n$5\r\nWATCH\r\n"
_GET = b"*2\r\n$3\r\nGET\r\n"


cdef struct View:
    const char* p
    Py_ssize_t n


cdef struct Column:
    View* v
    Py_ssize_t step  # 1: one view per entry; 0: one view for all


cdef inline char* _bulk(char* p, View v) noexcept nogil:
    return bulk(p, v.p, v.n)


cdef int _view(object obj, View* out, str what, Py_ssize_t i) except -1:
    cdef Py_ssize_t size = 0
    if isinstance(obj, bytes):
        out.p = PyBytes_AS_STRING(obj)
        out.n = PyBytes_GET_SIZE(obj)
    elif isinstance(obj, str):
        out.p = PyUnicode_AsUTF8AndSize(obj, &size)
        out.n = size
    elif obj is None:
        out.p = b""
        out.n = 0
    else:
        where = what if i < 0 else f"{what}[{i}]"
        raise TypeError(f"{where} must be bytes, str or None, not {type(obj).__name__}")
    return 0


cdef int _block_column(object block, Py_ssize_t count, Column* c, str what, list keep) except -1:
    """Views into an EventBlock's bytes: each line (payloads), or the UUID at its offset 13 (event ids:
    the caller checked the shape). Nothing is copied; the block's bytes and offsets are held in ``keep``."""
    cdef bytes data = block.data
    cdef tuple starts = tuple(block.starts)
    cdef Py_ssize_t i, a, b
    cdef bint ids = what == "event_ids"
    if len(starts) - 1 != count:
        raise ValueError(f"{what} has {len(starts) - 1} values for {count} entries")
    keep.append(data)
    c.v = <View*>PyMem_Malloc((count if count > 0 else 1) * sizeof(View))
    if c.v == NULL:
        raise MemoryError()
    c.step = 1
    for i in range(count):
        a = starts[i]
        b = starts[i + 1]
        if ids:
            if b - a < 50:
                raise ValueError(f"event_ids[{i}]: the event is too short to hold an id")
            c.v[i].p = PyBytes_AS_STRING(data) + a + 13
            c.v[i].n = 36
        else:
            c.v[i].p = PyBytes_AS_STRING(data) + a
            c.v[i].n = b - a - 1
    return 0


cdef int _column(object col, Py_ssize_t count, Column* c, str what, list keep) except -1:
    cdef Py_ssize_t i
    if isinstance(col, EventBlock):
        return _block_column(col, count, c, what, keep)
    if isinstance(col, (list, tuple)):
        if len(col) != count:
            raise ValueError(f"{what} has {len(col)} values for {count} entries")
        if type(col) is not tuple:
            col = tuple(col)  # a private reference to every value: the write pass runs without the GIL
        keep.append(col)
        c.v = <View*>PyMem_Malloc((count if count > 0 else 1) * sizeof(View))
        if c.v == NULL:
            raise MemoryError()
        c.step = 1
        for i in range(count):
            _view((<tuple>col)[i], &c.v[i], what, i)
    else:
        keep.append(col)
        c.v = <View*>PyMem_Malloc(sizeof(View))
        if c.v == NULL:
            raise MemoryError()
        c.step = 0
        _view(col, c.v, what, -1)
    return 0


cdef inline View _at(Column* c, Py_ssize_t i) noexcept nogil:
    return c.v[i * c.step]


cdef inline View _bview(bytes b) noexcept:
    cdef View v
    v.p = PyBytes_AS_STRING(b)
    v.n = PyBytes_GET_SIZE(b)
    return v


# column slots
cdef enum:
    C_PAYLOAD = 0
    C_STREAM = 1
    C_ID = 2
    C_TENANT = 3
    C_TABLE = 4
    C_TXID = 5
    C_DSTREAM = 6
    C_DPAYLOAD = 7
    C_DID = 8
    N_COLS = 9


def encode_commit(payloads, streams, event_ids, tenants, tables, txids, *,
                  prefix=b"", suffix=b"", maxlen=None,
                  dlq_streams=(), dlq_payloads=(), dlq_ids=(),
                  checkpoint_key, checkpoint_value, bint exactly_once=True):
    """The whole commit request of one batch as one ``bytes`` (module header: layout, columns)."""
    if not isinstance(payloads, (list, tuple, EventBlock)):
        raise TypeError(f"payloads must be a list or tuple, not {type(payloads).__name__}")
    if not isinstance(dlq_payloads, (list, tuple)):
        raise TypeError(f"dlq_payloads must be a list or tuple, not {type(dlq_payloads).__name__}")
    if not isinstance(prefix, bytes) or not isinstance(suffix, bytes):
        raise TypeError("prefix and suffix must be bytes")
    cdef Py_ssize_t n = len(payloads), d = len(dlq_payloads), i, total, klen
    cdef bytes mid
    if maxlen is None:
        head = _XADD9
        mid = _STAR_EVENT
    else:
        if not isinstance(maxlen, int) or isinstance(maxlen, bool) or maxlen < 0:
            raise ValueError(f"maxlen must be a non-negative int or None, not {maxlen!r}")
        limit = str(maxlen).encode()
        head = _XADD12
        mid = b"$6\r\nMAXLEN\r\n$1\r\n~\r\n$%d\r\n%b\r\n" % (len(limit), limit) + _STAR_EVENT
    cdef Column cols[N_COLS]
    for i in range(N_COLS):
        cols[i].v = NULL
    cdef list keep = []
    cdef View key, value, vhead, vmid, vpre, vsuf, vx7, vsd, vmulti, vexec, vset, vwatch, vget, vid, vik
    cdef View s, pl, ev, t, tb, tx
    cdef char* p
    cdef char* start
    try:
        _column(payloads, n, &cols[C_PAYLOAD], "payloads", keep)
        _column(streams, n, &cols[C_STREAM], "streams", keep)
        _column(event_ids, n, &cols[C_ID], "event_ids", keep)
        _column(tenants, n, &cols[C_TENANT], "tenants", keep)
        _column(tables, n, &cols[C_TABLE], "tables", keep)
        _column(txids, n, &cols[C_TXID], "txids", keep)
        _column(dlq_streams, d, &cols[C_DSTREAM], "dlq_streams", keep)
        _column(dlq_payloads, d, &cols[C_DPAYLOAD], "dlq_payloads", keep)
        _column(dlq_ids, d, &cols[C_DID], "dlq_ids", keep)
        _view(checkpoint_key, &key, "checkpoint_key", -1)
        _view(checkpoint_value, &value, "checkpoint_value", -1)
        keep.append(checkpoint_key)
        keep.append(checkpoint_value)
        vhead = _bview(head)
        vmid = _bview(mid)
        vpre = _bview(prefix)
        vsuf = _bview(suffix)
        vx7 = _bview(_XADD7)
        vsd = _bview(_STAR_DLQ)
        vmulti = _bview(_MULTI)
        vexec = _bview(_EXEC)
        vset = _bview(_SET)
        vwatch = _bview(_WATCH)
        vget = _bview(_GET)
        vid = _bview(_EVENT_ID)
        vik = _bview(_IDEM_KEY)
        # pass 1: size
        total = vset.n + bulk_len(key.n) + bulk_len(value.n)
        if exactly_once:
            total += vmulti.n + vexec.n + vwatch.n + vget.n + 2 * bulk_len(key.n)
        for i in range(n):
            s = _at(&cols[C_STREAM], i)
            pl = _at(&cols[C_PAYLOAD], i)
            ev = _at(&cols[C_ID], i)
            klen = _at(&cols[C_TENANT], i).n + _at(&cols[C_TABLE], i).n + _at(&cols[C_TXID], i).n + ev.n + 3
            total += (vhead.n + bulk_len(s.n) + vmid.n + bulk_len(vpre.n + pl.n + vsuf.n) + vid.n
                      + bulk_len(ev.n) + vik.n + bulk_len(klen))
        for i in range(d):
            total += (vx7.n + bulk_len(_at(&cols[C_DSTREAM], i).n) + vsd.n
                      + bulk_len(_at(&cols[C_DPAYLOAD], i).n) + vid.n + bulk_len(_at(&cols[C_DID], i).n))
        out = PyBytes_FromStringAndSize(NULL, total)
        start = PyBytes_AS_STRING(out)
        p = start
        # pass 2: write, without the GIL (every view points into an object ``keep`` holds)
        with nogil:
            if exactly_once:
                p = put(p, vmulti.p, vmulti.n)
            for i in range(n):
                s = _at(&cols[C_STREAM], i)
                pl = _at(&cols[C_PAYLOAD], i)
                ev = _at(&cols[C_ID], i)
                t = _at(&cols[C_TENANT], i)
                tb = _at(&cols[C_TABLE], i)
                tx = _at(&cols[C_TXID], i)
                p = put(p, vhead.p, vhead.n)
                p = _bulk(p, s)
                p = put(p, vmid.p, vmid.n)
                p = bulk_head(p, vpre.n + pl.n + vsuf.n)
                p = put(p, vpre.p, vpre.n)
                p = put(p, pl.p, pl.n)
                p = put(p, vsuf.p, vsuf.n)
                p = crlf(p)
                p = put(p, vid.p, vid.n)
                p = _bulk(p, ev)
                p = put(p, vik.p, vik.n)
                p = bulk_head(p, t.n + tb.n + tx.n + ev.n + 3)
                p = put(p, t.p, t.n)
                p[0] = b'|'
                p = put(p + 1, tb.p, tb.n)
                p[0] = b'|'
                p = put(p + 1, tx.p, tx.n)
                p[0] = b'|'
                p = put(p + 1, ev.p, ev.n)
                p = crlf(p)
            for i in range(d):
                p = put(p, vx7.p, vx7.n)
                p = _bulk(p, _at(&cols[C_DSTREAM], i))
                p = put(p, vsd.p, vsd.n)
                p = _bulk(p, _at(&cols[C_DPAYLOAD], i))
                p = put(p, vid.p, vid.n)
                p = _bulk(p, _at(&cols[C_DID], i))
            p = put(p, vset.p, vset.n)
            p = _bulk(p, key)
            p = _bulk(p, value)
            if exactly_once:
                p = put(p, vexec.p, vexec.n)
                p = put(p, vwatch.p, vwatch.n)
                p = _bulk(p, key)
                p = put(p, vget.p, vget.n)
                p = _bulk(p, key)
        if p - start != total:  # the two passes disagree: a bug, never send a torn request
            raise AssertionError(f"streamcommit: sized {total} bytes, wrote {p - start}")
        return out
    finally:
        for i in range(N_COLS):
            PyMem_Free(cols[i].v)


# ------------------------------------------------------------------------------------------ reply


cdef inline Py_ssize_t _lit(const char* p, const char* end, const char* lit, Py_ssize_t n) noexcept nogil:
    """``lit`` at ``p``: its length; 0: ``data`` ends inside a matching prefix; -1: mismatch."""
    cdef Py_ssize_t avail = end - p
    if avail >= n:
        return n if memcmp(p, lit, n) == 0 else -1
    return 0 if memcmp(p, lit, avail) == 0 else -1


cdef inline Py_ssize_t _bulk_reply(const char* p, const char* end, const char** val,
                                   Py_ssize_t* vlen) noexcept nogil:
    """A non-nil bulk string at ``p``: its total length; 0: incomplete; -1: something else."""
    cdef const char* q = p + 1
    cdef Py_ssize_t v = 0, nd = 0
    if p >= end:
        return 0
    if p[0] != b'$':
        return -1
    while q < end and b'0' <= q[0] <= b'9':
        v = v * 10 + (q[0] - 48)
        nd += 1
        if nd > 15:
            return -1
        q += 1
    if q >= end:
        return 0
    if nd == 0 or q[0] != b'\r':
        return -1
    if q + 1 >= end:
        return 0
    if q[1] != b'\n':
        return -1
    q += 2
    if end - q < v + 2:
        return 0
    if q[v] != b'\r' or q[v + 1] != b'\n':
        return -1
    val[0] = q
    vlen[0] = v
    return (q + v + 2) - p


cdef Py_ssize_t _scan(const char* p, const char* end, Py_ssize_t entries, const char* hp, Py_ssize_t hn,
                      const char* exp, Py_ssize_t explen, bint exactly_once) noexcept nogil:
    cdef const char* begin = p
    cdef const char* val = NULL
    cdef Py_ssize_t vlen = 0, r, i
    if exactly_once:
        r = _lit(p, end, b"+OK\r\n", 5)
        if r <= 0:
            return r
        p += r
        for i in range(entries + 1):
            r = _lit(p, end, b"+QUEUED\r\n", 9)
            if r <= 0:
                return r
            p += r
        r = _lit(p, end, hp, hn)
        if r <= 0:
            return r
        p += r
    for i in range(entries):
        r = _bulk_reply(p, end, &val, &vlen)
        if r <= 0:
            return r
        p += r
    r = _lit(p, end, b"+OK\r\n", 5)
    if r <= 0:
        return r
    p += r
    if exactly_once:
        r = _lit(p, end, b"+OK\r\n", 5)
        if r <= 0:
            return r
        p += r
        r = _bulk_reply(p, end, &val, &vlen)
        if r <= 0:
            return r
        if vlen != explen or memcmp(val, exp, vlen) != 0:
            return -1
        p += r
    if p != end:
        return -1
    return p - begin


def scan_commit_reply(data, Py_ssize_t entries, expected, bint exactly_once):
    """Bytes consumed when ``data`` is exactly the success reply; 0: incomplete; -1: deviates."""
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    cdef const char* exp = NULL
    cdef Py_ssize_t explen = 0
    if entries < 0:
        raise ValueError(f"entries must be >= 0, not {entries}")
    if exactly_once:
        if not isinstance(expected, bytes):
            raise TypeError(f"expected must be bytes in exactly-once mode, not {type(expected).__name__}")
        exp = PyBytes_AS_STRING(expected)
        explen = PyBytes_GET_SIZE(expected)
    cdef bytes head = b"*%d\r\n" % (entries + 1)
    return _scan(PyBytes_AS_STRING(data), PyBytes_AS_STRING(data) + PyBytes_GET_SIZE(data), entries,
                 PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head), exp, explen, exactly_once)
