# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The reader's output as bytes, in C: each event's native JSON written once into one buffer.

Contract, layout and hazards: the pure-Python twin and oracle ``deltaforge.source.eventbuf``
(identical output, tested both ways). Here the per-row work is C: the event id (SHA-1 of a
prefix of at most a few blocks, our own implementation of FIPS 180-4, then the v5 UUID
text), the digits, the fixed JSON pieces, and (``add_rows``) the row images: the rows
event's body is decoded straight into JSON by the value writers of ``rowvalues.pxi``, the
same source as the object decoder (_core/rowdecode.pyx), so no dict, str or int is built
per value. ``append_rows`` (already decoded rows) encodes them with msgspec.

The buffer is a bytearray used as raw storage (``JOut``: our own length, its size is the
capacity), so a write is a bounds check and a memcpy, not a resize.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove

from df_write cimport digits, ndigits, uuid_text

import msgspec

from deltaforge.model import NAMESPACE_BYTES, EventBlock

IMPLEMENTATION = "cython"

if len(NAMESPACE_BYTES) != 16:
    raise ImportError("deltaforge.model.NAMESPACE_BYTES must be a UUID's 16 bytes")

cdef object _encode = msgspec.json.Encoder().encode
cdef bytes _TAIL_OPEN = b',"end":false},"tags":null}\n'
cdef bytes _TAIL_END = b',"end":true},"tags":null}\n'
cdef bytes _ID_HEAD = b'{"event_id":"'
cdef bytes _AFTER = b',"after":'
cdef bytes _NULL_AFTER = b'null,"after":'
cdef bytes _AFTER_NULL = b',"after":null'


# ----------------------------------------------------------------------------- SHA-1

cdef inline uint32_t _rol(uint32_t x, int n) noexcept nogil:
    return (x << n) | (x >> (32 - n))


cdef void _sha1_block(uint32_t* h, const uint8_t* p) noexcept nogil:
    cdef uint32_t w[80]
    cdef uint32_t a, b, c, d, e, f, k, t
    cdef int i
    for i in range(16):
        w[i] = (<uint32_t>p[4 * i] << 24) | (<uint32_t>p[4 * i + 1] << 16) | (<uint32_t>p[4 * i + 2] << 8) | p[4 * i + 3]
    for i in range(16, 80):
        w[i] = _rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1)
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]
    for i in range(80):
        if i < 20:
            f = (b & c) | ((~b) & d)
            k = 0x5A827999
        elif i < 40:
            f = b ^ c ^ d
            k = 0x6ED9EBA1
        elif i < 60:
            f = (b & c) | (b & d) | (c & d)
            k = 0x8F1BBCDC
        else:
            f = b ^ c ^ d
            k = 0xCA62C1D6
        t = _rol(a, 5) + f + e + k + w[i]
        e = d; d = c; c = _rol(b, 30); b = a; a = t
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e


cdef void _sha1(const uint8_t* msg, Py_ssize_t n, uint8_t* out) noexcept nogil:
    """SHA-1 of a short message (any length; the ids hash under 100 bytes)."""
    cdef uint32_t h[5]
    cdef uint8_t block[64]
    cdef Py_ssize_t done = 0, rest, i
    cdef uint64_t bits = <uint64_t>n * 8
    h[0] = 0x67452301; h[1] = 0xEFCDAB89; h[2] = 0x98BADCFE; h[3] = 0x10325476; h[4] = 0xC3D2E1F0
    while n - done >= 64:
        _sha1_block(h, msg + done)
        done += 64
    rest = n - done
    memcpy(block, msg + done, rest)
    block[rest] = 0x80
    for i in range(rest + 1, 64):
        block[i] = 0
    if rest >= 56:
        _sha1_block(h, block)
        for i in range(64):
            block[i] = 0
    for i in range(8):
        block[63 - i] = <uint8_t>(bits >> (8 * i))
    _sha1_block(h, block)
    for i in range(5):
        out[4 * i] = <uint8_t>(h[i] >> 24)
        out[4 * i + 1] = <uint8_t>(h[i] >> 16)
        out[4 * i + 2] = <uint8_t>(h[i] >> 8)
        out[4 * i + 3] = <uint8_t>h[i]


cdef char* _uuid_text(char* w, const uint8_t* prefix, Py_ssize_t plen, uint64_t index) noexcept nogil:
    """Write the 36-character id of ``index`` under ``prefix`` (namespace included) at ``w``."""
    cdef uint8_t msg[512]
    cdef uint8_t dig[20]
    cdef char* end
    memcpy(msg, prefix, plen)
    end = digits(<char*>msg + plen, index, 1)
    _sha1(msg, end - <char*>msg, dig)
    dig[6] = (dig[6] & 0x0F) | 0x50
    dig[8] = (dig[8] & 0x3F) | 0x80
    return uuid_text(w, dig)


def event_uuid(bytes prefix, index):
    """The event id of row ``index`` under ``prefix`` (the namespace is prepended here), ASCII."""
    cdef bytes full = NAMESPACE_BYTES + prefix
    if PyBytes_GET_SIZE(full) > 480:
        raise ValueError("event id prefix too long")
    out = PyBytes_FromStringAndSize(NULL, 36)
    _uuid_text(PyBytes_AS_STRING(out), <const uint8_t*>PyBytes_AS_STRING(full), PyBytes_GET_SIZE(full), index)
    return out


# ----------------------------------------------------------------------------- builder

cdef str _PLAN_CACHE = "_df_jplans"

include "rowvalues.pxi"


cdef inline char* _reserve(bytearray data, Py_ssize_t extra) except NULL:
    """Grow ``data`` by ``extra`` bytes; returns where they start."""
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(data)
    PyByteArray_Resize(data, n + extra)
    return PyByteArray_AS_STRING(data) + n


cdef inline char* _put(char* w, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(w, PyBytes_AS_STRING(b), n)
    return w + n


cdef tuple _OPS = (b"c", b"u", b"d")
cdef bytes _TS = b',"ts_ms":'
cdef bytes _ROW = b',"row":'
cdef bytes _SEQ = b',"seq":'
cdef bytes _GTID = b',"gtid":'
cdef bytes _TXID = b'},"transaction":{"id":'
#: what the buffer keeps allocated after a take (a huge transaction's buffer is given back)
cdef Py_ssize_t _KEEP = 4 << 20


cdef class Tx:
    """The transaction being read (the reader's state; see the twin)."""

    cdef public str file, id
    cdef public long long pos, rows
    cdef public object gtid, gtid_before
    cdef public bint standalone
    cdef public tuple key_head

    def __init__(self, str file, long long file_no, long long pos, gtid, gtid_before, bint standalone):
        self.file = file
        self.pos = pos
        self.gtid = gtid
        self.gtid_before = gtid_before
        self.id = gtid if gtid else f"{file}:{pos}"
        self.rows = 0
        self.standalone = standalone
        self.key_head = (file_no, pos)


cdef class BlockBuilder:
    cdef bytes _name, _tenant
    cdef str _server
    cdef bytearray _data          # raw storage of _out (its size is the capacity)
    cdef JOut _out
    cdef bytearray _spdata        # raw storage of _sp: two int32 per event (EventBlock.spans)
    cdef JOut _sp
    cdef Py_ssize_t _line, _before_at
    cdef list _starts
    cdef public list keys, tables, txids, tenants
    cdef public object origin
    cdef object _tenant_id
    # per-table pieces, by id(schema): [schema, table, [head per op], db json, table json,
    # server id, file, source piece of that server id and file]
    cdef dict _tables
    cdef bytes _src               # the source piece of the current rows event
    # the transaction pieces of the last transaction object: its GTID and id as JSON, and the
    # event-id prefix (namespace + "gtid|<gtid>|", or per rows event namespace + "<server>|<file>|<pos>|")
    cdef object _tx
    cdef bytes _gtid_json, _txid_json
    cdef bint _by_seq
    cdef Py_ssize_t _pfx_len, _pfx_tx
    cdef uint8_t _pfx[512]
    cdef str _key_gtid

    def __init__(self, pipeline, tenant, server=""):
        self._name = _encode(pipeline)
        self._tenant = _encode(tenant)
        self._tenant_id = tenant
        self._server = str(server)
        self.tenants = []
        self._data = bytearray()
        self._out.data = <void*>self._data
        self._out.base = PyByteArray_AS_STRING(self._data)
        self._out.len = 0
        self._out.cap = 0
        self._spdata = bytearray()
        self._sp.data = <void*>self._spdata
        self._sp.base = PyByteArray_AS_STRING(self._spdata)
        self._sp.len = 0
        self._sp.cap = 0
        self._starts = [0]
        self.keys = []
        self.tables = []
        self.txids = []
        self.origin = None
        self._tables = {}
        self._tx = None
        memcpy(self._pfx, PyBytes_AS_STRING(NAMESPACE_BYTES), PyBytes_GET_SIZE(NAMESPACE_BYTES))
        self._pfx_tx = self._pfx_len = PyBytes_GET_SIZE(NAMESPACE_BYTES)

    def __len__(self):
        return len(self.keys)

    @property
    def nbytes(self):
        return self._out.len

    cdef list _table(self, schema):
        cdef list hit = self._tables.get(id(schema))
        if hit is not None and hit[0] is schema:
            return hit
        table = f"{schema.db}.{schema.table}"
        tj = _encode(table)
        heads = [b'","tenant_id":' + self._tenant + b',"table":' + tj + b',"op":"' + op + b'","before":'
                 for op in _OPS]
        if len(self._tables) > 4096:
            self._tables.clear()
        hit = [schema, table, heads, _encode(schema.db), _encode(schema.table), None, None, None]
        self._tables[id(schema)] = hit
        return hit

    cdef int _pfx_add(self, Py_ssize_t at, str text) except -1:
        """Append ``text`` + "|" to the id prefix at byte ``at``."""
        cdef Py_ssize_t n
        cdef const char* p = PyUnicode_AsUTF8AndSize(text, &n)
        if at + n + 1 > 480:
            raise ValueError("event id prefix too long")
        memcpy(self._pfx + at, p, n)
        self._pfx[at + n] = 124
        self._pfx_len = at + n + 1
        return 0

    cdef int _pieces(self, schema, list t, long long server_id, str file, tx, long long pos) except -1:
        """The JSON pieces and the id prefix shared by the rows of one rows event (cached)."""
        cdef char tmp[24]
        cdef char* e
        if t[5] is None or <long long>t[5] != server_id or t[6] is not file:
            t[7] = (b',"source":{"connector":"mysql","name":' + self._name + b',"server_id":'
                    + str(server_id).encode() + b',"db":' + <bytes>t[3] + b',"table":' + <bytes>t[4]
                    + b',"file":' + _encode(file) + b',"pos":')
            t[5], t[6] = server_id, file
        self._src = <bytes>t[7]
        if self._tx is not tx:
            self._gtid_json = _encode(tx.gtid)
            self._txid_json = _encode(tx.id)
            self._by_seq = bool(tx.gtid)
            self._key_gtid = tx.gtid or ""
            if self._by_seq:
                memcpy(self._pfx + 16, b"gtid|", 5)
                self._pfx_add(21, tx.gtid)
                self._pfx_tx = self._pfx_len
            self._tx = tx
        if self._by_seq:
            self._pfx_len = self._pfx_tx
        else:
            self._pfx_add(16, self._server)
            self._pfx_add(self._pfx_len, file)
            e = digits(tmp, <uint64_t>pos, 1)
            memcpy(self._pfx + self._pfx_len, tmp, e - tmp)
            self._pfx[self._pfx_len + (e - tmp)] = 124
            self._pfx_len += (e - tmp) + 1
            if self._pfx_len > 480:
                raise ValueError("event id prefix too long")
        return 0

    cdef inline int _head(self, long long seq, long long row, bytes head) except -1:
        """``{"event_id":"<id>","tenant_id":...,"before":`` of one row."""
        cdef char* w = _jreserve(&self._out, 13 + 36 + PyBytes_GET_SIZE(head))
        self._line = self._out.len
        w = _put(w, _ID_HEAD)
        w = _uuid_text(w, self._pfx, self._pfx_len, <uint64_t>(seq if self._by_seq else row))
        self._out.len = _put(w, head) - self._out.base
        self._before_at = self._out.len - self._line
        return 0

    cdef inline int _tail(self, uint64_t ts_ms, long long pos, long long row, long long seq) except -1:
        """``,"ts_ms":...,"source":{...},"transaction":{...},"tags":null}\\n`` of one row."""
        cdef int32_t* sp = <int32_t*>_jreserve(&self._sp, 8)
        sp[0] = <int32_t>self._before_at
        sp[1] = <int32_t>(self._out.len - self._line)
        self._sp.len += 8
        cdef char* w = _jreserve(&self._out, PyBytes_GET_SIZE(_TS) + 20 + PyBytes_GET_SIZE(self._src) + 20
                                 + PyBytes_GET_SIZE(_ROW) + 20 + PyBytes_GET_SIZE(self._gtid_json) + 36
                                 + PyBytes_GET_SIZE(self._txid_json) + 20 + PyBytes_GET_SIZE(_TAIL_OPEN))
        w = _put(w, _TS)
        w = digits(w, ts_ms, 1)
        w = _put(w, self._src)
        w = digits(w, <uint64_t>pos, 1)
        w = _put(w, _ROW)
        w = digits(w, <uint64_t>row, 1)
        w = _put(w, _GTID)
        w = _put(w, self._gtid_json)
        w = _put(w, _TS)
        w = digits(w, ts_ms, 1)
        w = _put(w, _TXID)
        w = _put(w, self._txid_json)
        w = _put(w, _SEQ)
        w = digits(w, <uint64_t>seq, 1)
        self._out.len = _put(w, _TAIL_OPEN) - self._out.base
        return 0

    cdef inline int _index(self, tuple key, str table, str txid) except -1:
        self._starts.append(self._out.len)
        self.keys.append(key)
        self.tables.append(table)
        self.txids.append(txid)
        self.tenants.append(self._tenant_id)
        return 0

    cdef int _truncate(self, Py_ssize_t count, Py_ssize_t length) except -1:
        """Back to ``count`` events of ``length`` bytes (a rows event that failed half-way)."""
        self._out.len = length
        self._sp.len = 8 * count
        del self._starts[count + 1:], self.keys[count:], self.tables[count:], self.txids[count:]
        del self.tenants[count:]
        return 0

    def append_rows(self, list rows, int kind, schema, long long ts, long long server_id, str file,
                    long long pos, tx, long long row0, long long skip):
        cdef list t = self._table(schema)
        cdef str table = <str>t[1]
        cdef bytes head = <bytes>(<list>t[2])[kind]
        self._pieces(schema, t, server_id, file, tx, pos)
        cdef str txid = tx.id, key_gtid = self._key_gtid
        cdef long long seq0 = tx.rows
        cdef uint64_t ts_ms = <uint64_t>(ts * 1000)
        cdef object key_head = tx.key_head
        cdef object k0 = key_head[0], k1 = key_head[1]
        cdef Py_ssize_t k = 0
        cdef long long seq, row
        cdef object pair
        for pair in rows:
            seq = seq0 + k
            row = row0 + k
            k += 1
            if seq < skip:
                continue
            self._head(seq, row, head)
            _jobject(&self._out, (<tuple>pair)[0])
            _jbytes(&self._out, _AFTER)
            _jobject(&self._out, (<tuple>pair)[1])
            self._tail(ts_ms, pos, row, seq)
            self._index((k0, k1, seq, key_gtid), table, txid)
        return len(rows)

    def add_rows(self, tuple ev, Tx tx, str file, bint in_payload, long long skip):
        """Decode one rows event of the scanner straight into event JSON (see the twin)."""
        cdef int kind = ev[5]
        schema = ev[6]
        body = ev[9]
        if kind != 0 and kind != 1 and kind != 2:
            raise _F.unknown_kind(schema, kind)
        cdef _Plan plan = _get_plan(schema, ev[7])
        cdef _Plan plan_after = plan
        if kind == 1:
            plan_after = _get_plan(schema, ev[8] if ev[8] is not None else ev[7])
        if type(body) is not bytes:
            body = bytes(body)
        cdef bytes data = body
        cdef Cursor c
        c.buf = <const unsigned char*>PyBytes_AS_STRING(data)
        c.pos = 0
        c.end = PyBytes_GET_SIZE(data)
        if c.end == 0:
            return 0
        if plan.n == 0 and plan_after.n == 0:
            raise _F.no_columns(schema, c.end)
        cdef long long pos = <long long>ev[1] - <long long>ev[2]
        cdef list t = self._table(schema)
        cdef str table = <str>t[1]
        cdef bytes head = <bytes>(<list>t[2])[kind]
        self._pieces(schema, t, ev[4], file, tx, pos)
        cdef str txid = tx.id, key_gtid = self._key_gtid
        cdef long long seq0 = tx.rows, row0 = tx.rows if in_payload else 0
        cdef uint64_t ts_ms = <uint64_t>(<long long>ev[3] * 1000)
        cdef object k0 = tx.key_head[0], k1 = tx.key_head[1]
        cdef Py_ssize_t count0 = len(self.keys), len0 = self._out.len, mark
        cdef long long k = 0, seq, row
        cdef JOut* o = &self._out
        try:
            while c.pos < c.end:
                seq = seq0 + k
                row = row0 + k
                k += 1
                mark = o.len
                self._head(seq, row, head)
                if kind == 0:
                    _jbytes(o, _NULL_AFTER)
                    _image_json(o, &c, plan, data)
                else:
                    _image_json(o, &c, plan, data)
                    if kind == 2:
                        _jbytes(o, _AFTER_NULL)
                    else:
                        _jbytes(o, _AFTER)
                        _image_json(o, &c, plan_after, data)
                if seq < skip:  # delivered before a restart in the middle of this transaction
                    o.len = mark
                    continue
                self._tail(ts_ms, pos, row, seq)
                self._index((k0, k1, seq, key_gtid), table, txid)
        except Exception:
            self._truncate(count0, len0)
            # the object decoder owns the error messages: it names table, column and byte
            from deltaforge._core.rowdecode import decode_rows
            decode_rows(schema, data, kind, ev[7], ev[8])
            raise
        tx.rows = seq0 + k
        if len(self.keys) == count0:
            return 0
        self.origin = (schema, file, pos)
        return (c.end // k + 1) * (len(self.keys) - count0)

    def mark_end(self, str txid):
        cdef Py_ssize_t t = PyBytes_GET_SIZE(_TAIL_OPEN)
        cdef Py_ssize_t last = len(self.txids) - 1
        if last < 0 or self.txids[last] != txid:
            return False
        self._out.len -= t
        _jbytes(&self._out, _TAIL_END)
        self._starts[last + 1] = self._out.len
        return True

    def take(self, Py_ssize_t n):
        cdef Py_ssize_t end = self._starts[n], size = self._out.len
        cdef char* base = self._out.base
        block = EventBlock(PyBytes_FromStringAndSize(base, end), self._starts[:n + 1], self.tables[:n],
                           self.txids[:n], self.tenants[:n], True, PyBytes_FromStringAndSize(self._sp.base, 8 * n))
        memmove(self._sp.base, self._sp.base + 8 * n, self._sp.len - 8 * n)
        self._sp.len -= 8 * n
        keys = self.keys[:n]
        memmove(base, base + end, size - end)
        self._out.len = size - end
        if self._out.cap > _KEEP and self._out.len < _KEEP // 2:
            PyByteArray_Resize(self._data, _KEEP)
            self._out.base = PyByteArray_AS_STRING(self._data)
            self._out.cap = _KEEP
        self._starts = [s - end for s in self._starts[n:]]
        del self.keys[:n], self.tables[:n], self.txids[:n], self.tenants[:n]
        return block, keys


# ----------------------------------------------------------------------------- processor answers
#
# A small scanner over compact JSON produced by V8's JSON.stringify or by us: it finds value
# boundaries (strings with escapes, nesting) without building anything. Input lines have the
# fixed native shape; anything unexpected raises ValueError (the caller reports it).

cdef Py_ssize_t _skip_value(const unsigned char* s, Py_ssize_t p, Py_ssize_t end) except -1:
    """Index just past the JSON value starting at ``p``."""
    cdef unsigned char c
    cdef int depth
    if p >= end:
        raise ValueError("JSON value expected")
    c = s[p]
    if c == b'"':
        p += 1
        while p < end:
            c = s[p]
            if c == b'\\':
                p += 2
            elif c == b'"':
                return p + 1
            else:
                p += 1
        raise ValueError("unterminated JSON string")
    if c == b'{' or c == b'[':
        depth = 0
        while p < end:
            c = s[p]
            if c == b'"':
                p = _skip_value(s, p, end)
                continue
            if c == b'{' or c == b'[':
                depth += 1
            elif c == b'}' or c == b']':
                depth -= 1
                if depth == 0:
                    return p + 1
            p += 1
        raise ValueError("unterminated JSON container")
    while p < end and s[p] != b',' and s[p] != b'}' and s[p] != b']':
        p += 1
    return p


cdef inline bint _key_is(const unsigned char* s, Py_ssize_t a, Py_ssize_t b, const char* key, Py_ssize_t n) noexcept:
    # s[a:b] is a key with its quotes
    return b - a == n + 2 and memcmp(s + a + 1, key, n) == 0


cdef int _field_spans(const unsigned char* s, Py_ssize_t start, Py_ssize_t end, tuple keys,
                      Py_ssize_t* out) except -1:
    """Value spans of the top-level ``keys`` (bytes, in any order) of one event line:
    ``out[2k], out[2k + 1]`` for ``keys[k]``. Every key must be there."""
    cdef Py_ssize_t p = start + 1, ka, kb, va, vb, k, nkeys = len(keys)
    cdef unsigned int found = 0
    cdef bytes key
    if end <= start or s[start] != b'{':
        raise ValueError("an event is not a JSON object")
    while p < end and s[p] != b'}':
        ka = p
        kb = _skip_value(s, p, end)
        if kb >= end or s[kb] != b':':
            raise ValueError("malformed event")
        va = kb + 1
        vb = _skip_value(s, va, end)
        for k in range(nkeys):
            key = <bytes>keys[k]
            if _key_is(s, ka, kb, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)):
                out[2 * k] = va
                out[2 * k + 1] = vb
                found |= 1u << k
                break
        p = vb
        if p < end and s[p] == b',':
            p += 1
    if found != (1u << nkeys) - 1:
        raise ValueError(f"an event lacks one of {b', '.join(keys).decode()}")
    return 0


cdef tuple _SPLICE_KEYS = (b"before", b"after", b"tags")
cdef tuple _CE_KEYS = (b"event_id", b"op", b"before", b"after", b"ts_ms")


cdef inline char* _put_span(char* w, const unsigned char* s, Py_ssize_t a, Py_ssize_t b) noexcept:
    memcpy(w, s + a, b - a)
    return w + (b - a)


def splice_answer(block, list keys, bytes answer, created):
    """The processor's output block from its harness answer (see the pure twin for the contract)."""
    cdef const unsigned char* ans = <const unsigned char*>PyBytes_AS_STRING(answer)
    cdef Py_ssize_t alen = PyBytes_GET_SIZE(answer), p = 0, q, k = 0, i, e0, e1
    cdef Py_ssize_t ba, bb, aa, ab, ta, tb, n
    cdef Py_ssize_t sp[6]
    cdef const unsigned char* mid
    cdef Py_ssize_t mid_n
    cdef bytes data = block.data
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef list starts = block.starts, in_tables = block.tables, in_txids = block.txids, in_tenants = block.tenants
    cdef bytearray out = bytearray()
    cdef JOut o                   # `out` as raw storage, sized once for the usual case
    o.data = <void*>out
    o.base = PyByteArray_AS_STRING(out)
    o.len = o.cap = 0
    cdef list out_starts = [0], out_keys = [], tables = [], txids = [], tenants = []
    cdef char* w
    cdef object spans = block.spans
    cdef const int32_t* known = <const int32_t*>PyBytes_AS_STRING(spans) if spans is not None else NULL
    if alen < 2 or ans[0] != b'[':
        raise ValueError("the processor's answer is not a JSON array")
    _jreserve(&o, PyBytes_GET_SIZE(data) + alen)
    p = 1
    while p < alen and ans[p] != b']':
        if ans[p] != b'[':
            raise ValueError("malformed processor answer")
        q = _skip_value(ans, p + 1, alen)  # the index
        i = int(PyBytes_FromStringAndSize(<const char*>ans + p + 1, q - p - 1))
        ba = q + 1
        bb = _skip_value(ans, ba, alen)
        aa = bb + 1
        ab = _skip_value(ans, aa, alen)
        ta = ab + 1
        tb = _skip_value(ans, ta, alen)
        if tb >= alen or ans[tb] != b']':
            raise ValueError("malformed processor answer")
        p = tb + 1
        if p < alen and ans[p] == b',':
            p += 1
        if i >= 0:
            e0 = starts[i]
            e1 = <Py_ssize_t>starts[i + 1] - 1
            if known != NULL and e1 - e0 > 14 and memcmp(src + e1 - 13, b',"tags":null}', 13) == 0:
                # the reader's line: `before` at a known offset and `,"after":` right after it (where
                # `before` ends is not needed: both values are replaced), `after` ends at `,"ts_ms":`,
                # tags are last
                sp[0] = e0 + known[2 * i]
                sp[3] = e0 + known[2 * i + 1]
                sp[4] = e1 - 5
                sp[5] = e1 - 1
                mid = <const unsigned char*>PyBytes_AS_STRING(_AFTER)
                mid_n = PyBytes_GET_SIZE(_AFTER)
            else:
                _field_spans(src, e0, e1, _SPLICE_KEYS, sp)
                mid = src + sp[1]
                mid_n = sp[2] - sp[1]
            n = (sp[0] - e0) + (bb - ba) + mid_n + (ab - aa) + (sp[4] - sp[3]) + (tb - ta) + (e1 - sp[5]) + 1
            w = _jreserve(&o, n)
            w = _put_span(w, src, e0, sp[0])
            w = _put_span(w, ans, ba, bb)
            w = _put_span(w, mid, 0, mid_n)
            w = _put_span(w, ans, aa, ab)
            w = _put_span(w, src, sp[3], sp[4])
            w = _put_span(w, ans, ta, tb)
            w = _put_span(w, src, sp[5], e1)
            w[0] = b'\n'
            o.len = w + 1 - o.base
            out_keys.append(keys[i])
            tables.append(in_tables[i])
            txids.append(in_txids[i])
            tenants.append(in_tenants[i])
        else:
            line, table, txid, tenant = created(k, -1 - i, PyBytes_FromStringAndSize(<const char*>ans + ba, bb - ba))
            w = _jreserve(&o, PyBytes_GET_SIZE(line) + 1)
            w = _put(w, line)
            w[0] = b'\n'
            o.len = w + 1 - o.base
            out_keys.append(keys[-1 - i])
            tables.append(table)
            txids.append(txid)
            tenants.append(tenant)
        out_starts.append(o.len)
        k += 1
    # kept events keep their input's id and created ones get a derived UUID: the input's shape holds
    return EventBlock(PyBytes_FromStringAndSize(o.base, o.len), out_starts, tables, txids, tenants, block.ids_are_uuids() or None), out_keys


# ----------------------------------------------------------------------------- CloudEvents

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct tm:
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
    tm* gmtime_r(const time_t* t, tm* out)

cdef dict _CE_TYPES = {b"c": b"insert", b"u": b"update", b"d": b"delete", b"r": b"snapshot"}


cdef char* _time_text(char* w, long long ts_ms) except NULL:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC) of a millisecond timestamp: 24 characters."""
    cdef time_t secs = <time_t>(ts_ms // 1000)
    cdef tm t
    if gmtime_r(&secs, &t) == NULL:
        raise ValueError(f"ts_ms {ts_ms} is out of range")
    w = digits(w, <uint64_t>(t.tm_year + 1900), 4); w[0] = b'-'
    w = digits(w + 1, <uint64_t>(t.tm_mon + 1), 2); w[0] = b'-'
    w = digits(w + 1, <uint64_t>t.tm_mday, 2); w[0] = b'T'
    w = digits(w + 1, <uint64_t>t.tm_hour, 2); w[0] = b':'
    w = digits(w + 1, <uint64_t>t.tm_min, 2); w[0] = b':'
    w = digits(w + 1, <uint64_t>t.tm_sec, 2); w[0] = b'.'
    w = digits(w + 1, <uint64_t>(ts_ms % 1000), 3); w[0] = b'Z'
    return w + 1


def cloudevents_block(block, str pipeline):
    """The CloudEvents 1.0 envelopes of a block's events (see the pure twin for the contract)."""
    cdef bytes data = block.data
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef list starts = block.starts, tables = block.tables, txids = block.txids, tenants = block.tenants
    cdef Py_ssize_t n = len(starts) - 1, i, e0, e1
    cdef Py_ssize_t sp[10]
    cdef bytearray out = bytearray()
    cdef list out_starts = [0]
    cdef dict per_table = {}, per_tenant = {}
    cdef tuple tj
    cdef bytes opname, op_json, tenant_json, txid_json = b"", last_txid_json = b""
    cdef object last_txid = None
    cdef char* w
    cdef long long ts
    for i in range(n):
        e0 = starts[i]
        e1 = <Py_ssize_t>starts[i + 1] - 1
        _field_spans(src, e0, e1, _CE_KEYS, sp)
        table = tables[i]
        tj = per_table.get(table)
        if tj is None:
            tj = (_encode(f"/deltaforge/{pipeline}/{table}"), _encode(table))
            per_table[table] = tj
        opname = None
        if sp[3] - sp[2] >= 2 and src[sp[2]] == b'"':
            opname = _CE_TYPES.get(PyBytes_FromStringAndSize(<const char*>src + sp[2] + 1, sp[3] - sp[2] - 2))
        if opname is None:  # an op of no known type is used verbatim (envelope.py)
            op_json = _encode(msgspec.json.decode(PyBytes_FromStringAndSize(<const char*>src + sp[2], sp[3] - sp[2]),
                                                  type=str))
            opname = op_json[1:PyBytes_GET_SIZE(op_json) - 1]
        ts = int(PyBytes_FromStringAndSize(<const char*>src + sp[8], sp[9] - sp[8]))
        tenant = tenants[i]
        tenant_json = b""
        if tenant is not None:
            tenant_json = per_tenant.get(tenant)
            if tenant_json is None:
                tenant_json = b',"tenant":' + _encode(tenant)
                per_tenant[tenant] = tenant_json
        txid = txids[i]
        if txid is not last_txid:
            last_txid = txid
            last_txid_json = b',"txid":' + _encode(txid) if txid else b""
        txid_json = last_txid_json
        w = _reserve(out, 26 + (sp[1] - sp[0]) + 10 + PyBytes_GET_SIZE(<bytes>tj[0]) + 31 + PyBytes_GET_SIZE(opname)
                     + 13 + PyBytes_GET_SIZE(<bytes>tj[1]) + 9 + 24 + 56 + (sp[5] - sp[4]) + 9 + (sp[7] - sp[6])
                     + 6 + (sp[3] - sp[2]) + 1 + PyBytes_GET_SIZE(tenant_json) + PyBytes_GET_SIZE(txid_json) + 2)
        w = _put(w, b'{"specversion":"1.0","id":')
        w = _put_span(w, src, sp[0], sp[1])
        w = _put(w, b',"source":')
        w = _put(w, <bytes>tj[0])
        w = _put(w, b',"type":"io.deltaforge.change.')
        w = _put(w, opname)
        w = _put(w, b'","subject":')
        w = _put(w, <bytes>tj[1])
        w = _put(w, b',"time":"')
        w = _time_text(w, ts)
        w = _put(w, b'","datacontenttype":"application/json","data":{"before":')
        w = _put_span(w, src, sp[4], sp[5])
        w = _put(w, b',"after":')
        w = _put_span(w, src, sp[6], sp[7])
        w = _put(w, b',"op":')
        w = _put_span(w, src, sp[2], sp[3])
        w[0] = b'}'
        w = _put(w + 1, tenant_json)
        w = _put(w, txid_json)
        w[0] = b'}'
        w[1] = b'\n'
        w += 2
        PyByteArray_Resize(out, w - PyByteArray_AS_STRING(out))
        out_starts.append(PyByteArray_GET_SIZE(out))
    return EventBlock(bytes(out), out_starts, tables, txids, tenants)
