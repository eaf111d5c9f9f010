# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Binlog framing in C: replication packets -> the few events the reader acts on.

The contract, the tuple shapes and the hazards are those of the pure-Python twin and oracle,
``deltaforge.source.framing`` (identical output, tested both ways). What this one adds is
where the time goes: the packet chain, the common header, heartbeats, harmless events, table
map cache hits and rows of tables that are not captured are handled on the raw buffer with
no Python object made for them. Only events the reader acts on become tuples.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memmove

from df_cursor cimport le
from df_write cimport uuid_text

from deltaforge.errors import DecodeError
from deltaforge.source import compressed

IMPLEMENTATION = "cython"

ROTATE = 4
QUERY = 2
XID = 16
FORMAT_DESCRIPTION = 15
TABLE_MAP = 19
HEARTBEAT = 27
GTID_MYSQL = 33
GTID_MARIADB = 162
ROWS_KIND = {23: 0, 24: 1, 25: 2, 30: 0, 31: 1, 32: 2}
ROWS = -10
OTHER = -11
ERROR = -1
END = -2

Q_OTHER, Q_BEGIN, Q_COMMIT, Q_ROLLBACK = 0, 1, 2, 3

cdef enum:
    _HEADER = 19
    _MAX_PACKET = 0xFFFFFF
    _INITIAL = 256 * 1024
    _TABLES_MAX = 4096
    _IGNORABLE_F = 0x80



cdef inline int _rows_kind(int etype) noexcept nogil:
    if 23 <= etype <= 25:
        return etype - 23
    if 30 <= etype <= 32:
        return etype - 30
    return -1


cdef inline int _truncated() except -1:
    raise IndexError("truncated")


cdef inline int _need(Py_ssize_t p, Py_ssize_t end) except -1:
    if p > end:
        _truncated()
    return 0


cdef class EventScanner:
    cdef public bint checksum
    cdef bytearray _buf
    cdef Py_ssize_t _start, _end
    cdef bytes _post_header
    cdef str _version
    cdef dict _tables
    cdef object _skip
    cdef unsigned char _skip_map[256]
    cdef Py_ssize_t _received, _events

    def __init__(self, checksum, skip_types=compressed.HARMLESS):
        cdef int t
        self.checksum = bool(checksum)
        self._skip = frozenset(skip_types)
        for t in range(256):
            self._skip_map[t] = 1 if t in self._skip else 0
        self._buf = bytearray(_INITIAL)
        self._start = 0
        self._end = 0
        self._post_header = b""
        self._version = ""
        self._tables = {}
        self._received = 0
        self._events = 0

    property received:
        def __get__(self):
            return self._received

    property events:
        def __get__(self):
            return self._events

    # ------------------------------------------------------------------ input
    cdef int _room(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t unread
        cdef char* base
        if self._start:
            unread = self._end - self._start
            base = PyByteArray_AS_STRING(self._buf)
            memmove(base, base + self._start, unread)
            self._start = 0
            self._end = unread
        if PyByteArray_GET_SIZE(self._buf) - self._end < need:
            PyByteArray_Resize(self._buf, self._end + need)
        return 0

    def feed(self, data):
        cdef bytes b = bytes(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
        if PyByteArray_GET_SIZE(self._buf) - self._end < n:
            self._room(n)
        memmove(PyByteArray_AS_STRING(self._buf) + self._end, PyBytes_AS_STRING(b), n)
        self._end += n
        self._received += n

    def recv(self, sock):
        cdef Py_ssize_t n
        if PyByteArray_GET_SIZE(self._buf) - self._end < 65536:
            self._room(max(65536, self._wanted()))
        view = memoryview(self._buf)
        try:
            n = sock.recv_into(view[self._end:])
        finally:
            view.release()
        self._end += n
        self._received += n
        return n

    cdef Py_ssize_t _wanted(self):
        cdef Py_ssize_t avail = self._end - self._start
        cdef const unsigned char* b
        if avail < 4:
            return 0
        b = <const unsigned char*>PyByteArray_AS_STRING(self._buf) + self._start
        return max(0, <Py_ssize_t>le(b, 3) + 4 - avail)

    def has_event(self):
        cdef Py_ssize_t payload
        return self._chain(&payload) >= 0

    def buffered(self):
        return self._end - self._start

    # ----------------------------------------------------------- packet level
    cdef Py_ssize_t _chain(self, Py_ssize_t* payload):
        """Bytes of the next complete packet chain (payload bytes in ``payload``), -1 if incomplete."""
        cdef const unsigned char* buf = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
        cdef Py_ssize_t pos = self._start, end = self._end, length
        payload[0] = 0
        while True:
            if end - pos < 4:
                return -1
            length = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
            if end - pos - 4 < length:
                return -1
            pos += 4 + length
            payload[0] += length
            if length < _MAX_PACKET:
                return pos - self._start

    def next(self):
        cdef Py_ssize_t total, payload_len, start, pos, length
        cdef const unsigned char* buf
        cdef object out
        cdef bytes joined
        cdef char* w
        while True:
            total = self._chain(&payload_len)
            if total < 0:
                return None
            start = self._start
            buf = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
            if total == payload_len + 4:
                self._start += total
                out = self._packet(buf + start + 4, payload_len, None)
            else:  # a continued packet: join the payloads (rare: events over 16 MiB)
                joined = PyBytes_FromStringAndSize(NULL, payload_len)
                w = PyBytes_AS_STRING(joined)
                pos = start
                while pos < start + total:
                    length = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
                    memmove(w, buf + pos + 4, length)
                    w += length
                    pos += 4 + length
                self._start += total
                out = self._packet(<const unsigned char*>PyBytes_AS_STRING(joined), payload_len, joined)
            if self._start == self._end:
                self._start = self._end = 0
                if PyByteArray_GET_SIZE(self._buf) > _INITIAL * 4:
                    self._buf = bytearray(_INITIAL)
            if out is not None:
                return out

    cdef object _packet(self, const unsigned char* p, Py_ssize_t n, object owner):
        if n == 0:
            raise DecodeError("empty packet on the binlog connection")
        if p[0] == 0xFF:
            return (ERROR, PyBytes_FromStringAndSize(<const char*>p, n))
        if p[0] == 0xFE and n < 9:
            return (END,)
        if p[0] != 0:
            raise DecodeError(f"unexpected packet on the binlog connection (first byte {p[0]:#04x})")
        return self._event(p + 1, (n - 5) if self.checksum else (n - 1))

    # ------------------------------------------------------------ event level
    def parse(self, raw):
        cdef bytes b = bytes(raw)
        return self._event(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    def post_header_len(self, int event_type):
        if 0 < event_type <= len(self._post_header):
            return self._post_header[event_type - 1]
        return None

    cdef int _post(self, int event_type) noexcept:
        if 0 < event_type <= PyBytes_GET_SIZE(self._post_header):
            return <unsigned char>PyBytes_AS_STRING(self._post_header)[event_type - 1]
        return -1

    def set_table(self, table_id, body, schema):
        if len(self._tables) >= _TABLES_MAX and table_id not in self._tables:
            self._tables.clear()
        self._tables[table_id] = (bytes(body), schema)

    def table_schema(self, table_id):
        hit = self._tables.get(table_id)
        return None if hit is None else hit[1]

    cdef object _event(self, const unsigned char* d, Py_ssize_t n):
        cdef unsigned int ts, server_id, size, next_pos, flags
        cdef int etype, kind
        cdef const unsigned char* b
        cdef Py_ssize_t blen
        self._events += 1
        if n < _HEADER:
            raise DecodeError(f"binlog event of {n} bytes is shorter than its 19-byte header")
        ts = <unsigned int>le(d, 4)
        etype = d[4]
        server_id = <unsigned int>le(d + 5, 4)
        size = <unsigned int>le(d + 9, 4)
        next_pos = <unsigned int>le(d + 13, 4)
        flags = <unsigned int>le(d + 17, 2)
        b = d + _HEADER
        blen = n - _HEADER
        try:
            kind = _rows_kind(etype)
            if kind >= 0:
                return self._rows(b, blen, etype, kind, next_pos, size, ts, server_id)
            if etype == TABLE_MAP:
                return self._table_map(b, blen, next_pos, size, ts, server_id)
            if etype == XID:
                return (etype, next_pos, size, ts, server_id)
            if etype == GTID_MARIADB:
                _need(13, blen)
                return (etype, next_pos, size, ts, server_id,
                        f"{le(b + 8, 4)}-{server_id}-{le(b, 8)}", b[12])
            if etype == QUERY:
                return self._query(b, blen, next_pos, size, ts, server_id)
            if etype == GTID_MYSQL:
                _need(25, blen)
                return (etype, next_pos, size, ts, server_id, _mysql_gtid(b + 1, le(b + 17, 8)), b[0])
            if etype == ROTATE:
                _need(8, blen)
                return (etype, next_pos, size, ts, server_id,
                        PyBytes_FromStringAndSize(<const char*>b + 8, blen - 8).decode("utf-8", "replace"),
                        le(b, 8))
            if etype == FORMAT_DESCRIPTION:
                self._format_description(b, blen)
                return None
            if etype == HEARTBEAT or self._skip_map[etype] or flags & _IGNORABLE_F:
                return None
            return (OTHER, next_pos, size, ts, server_id, flags,
                    PyBytes_FromStringAndSize(<const char*>d, n), etype)
        except IndexError:
            raise DecodeError(
                f"binlog event {compressed.event_name(etype)} ending at {next_pos} is truncated ({n} bytes)",
                "report this with the server version; nothing past this event was committed") from None

    cdef int _format_description(self, const unsigned char* b, Py_ssize_t blen) except -1:
        cdef Py_ssize_t vlen = 0, n
        cdef int major = 0, minor = 0
        _need(57, blen)
        while vlen < 50 and b[2 + vlen] != 0:
            vlen += 1
        version = PyBytes_FromStringAndSize(<const char*>b + 2, vlen).decode("ascii", "replace")
        head = version.split("-", 1)[0].split(".")
        try:
            major, minor = int(head[0]), int(head[1])
        except (ValueError, IndexError):
            major, minor = 0, 0
        aware = (major, minor) >= (5, 6) or major >= 10
        n = blen - 57 - (1 if aware else 0) - (0 if self.checksum else (4 if aware else 0))
        if n < 0:
            _truncated()
        self._version = version
        self._post_header = PyBytes_FromStringAndSize(<const char*>b + 57, n)
        return 0

    cdef object _table_map(self, const unsigned char* b, Py_ssize_t blen, unsigned int next_pos,
                           unsigned int size, unsigned int ts, unsigned int server_id):
        cdef int idlen = 4 if self._post(TABLE_MAP) == 6 else 6
        cdef Py_ssize_t p, dlen, tlen
        cdef bytes known
        _need(idlen + 3, blen)
        table_id = le(b, idlen)
        hit = self._tables.get(table_id)
        if hit is not None:
            known = <bytes>(<tuple>hit)[0]
            if PyBytes_GET_SIZE(known) == blen and memcmp(PyBytes_AS_STRING(known), b, blen) == 0:
                return None
        p = idlen + 2
        dlen = b[p]
        _need(p + 2 + dlen + 1, blen)
        db = PyBytes_FromStringAndSize(<const char*>b + p + 1, dlen).decode("utf-8", "replace")
        p += 2 + dlen
        tlen = b[p]
        _need(p + 1 + tlen, blen)
        table = PyBytes_FromStringAndSize(<const char*>b + p + 1, tlen).decode("utf-8", "replace")
        return (TABLE_MAP, next_pos, size, ts, server_id, table_id, db, table,
                PyBytes_FromStringAndSize(<const char*>b, blen))

    cdef object _rows(self, const unsigned char* b, Py_ssize_t blen, int etype, int kind,
                      unsigned int next_pos, unsigned int size, unsigned int ts, unsigned int server_id):
        cdef int idlen = 4 if self._post(etype) == 6 else 6
        cdef Py_ssize_t p, extra, width
        cdef uint64_t ncols
        cdef unsigned char first
        _need(idlen, blen)
        hit = self._tables.get(le(b, idlen))
        if hit is None:
            return None
        schema = (<tuple>hit)[1]
        if schema is None:
            return None
        p = idlen + 2
        if etype >= 30:
            _need(p + 2, blen)
            extra = <Py_ssize_t>le(b + p, 2)
            if extra < 2:
                _truncated()
            p += extra
        _need(p + 1, blen)
        first = b[p]
        if first < 251:
            ncols = first
            p += 1
        elif first == 252:
            _need(p + 3, blen)
            ncols = le(b + p + 1, 2)
            p += 3
        elif first == 253:
            _need(p + 4, blen)
            ncols = le(b + p + 1, 3)
            p += 4
        elif first == 254:
            _need(p + 9, blen)
            ncols = le(b + p + 1, 8)
            p += 9
        else:
            _truncated()
        if ncols > <uint64_t>blen * 8:
            _truncated()
        width = <Py_ssize_t>((ncols + 7) // 8)
        _need(p + width * (2 if kind == 1 else 1), blen)
        present = PyBytes_FromStringAndSize(<const char*>b + p, width)
        p += width
        present2 = None
        if kind == 1:
            present2 = PyBytes_FromStringAndSize(<const char*>b + p, width)
            p += width
        return (ROWS, next_pos, size, ts, server_id, kind, schema, present, present2,
                PyBytes_FromStringAndSize(<const char*>b + p, blen - p))

    cdef object _query(self, const unsigned char* b, Py_ssize_t blen, unsigned int next_pos,
                       unsigned int size, unsigned int ts, unsigned int server_id):
        cdef int post = self._post(QUERY)
        cdef Py_ssize_t schema_len, status_len, p, qs, qe
        if post <= 0:
            post = 13
        _need(13, blen)
        schema_len = b[8]
        status_len = <Py_ssize_t>le(b + 11, 2)
        p = post + status_len
        _need(p + schema_len + 1, blen)
        qs = p + schema_len + 1
        qe = blen
        # the reader only needs BEGIN/COMMIT/ROLLBACK told apart from everything else
        while qs < qe and b[qs] in b" \t\r\n\x0b\x0c":
            qs += 1
        while qe > qs and b[qe - 1] in b" \t\r\n\x0b\x0c":
            qe -= 1
        if _word(b + qs, qe - qs, b"BEGIN", 5):
            return (QUERY, next_pos, size, ts, server_id, Q_BEGIN, None, None)
        if _word(b + qs, qe - qs, b"COMMIT", 6):
            return (QUERY, next_pos, size, ts, server_id, Q_COMMIT, None, None)
        if _word(b + qs, qe - qs, b"ROLLBACK", 8):
            return (QUERY, next_pos, size, ts, server_id, Q_ROLLBACK, None, None)
        return (QUERY, next_pos, size, ts, server_id, Q_OTHER,
                PyBytes_FromStringAndSize(<const char*>b + p, schema_len),
                PyBytes_FromStringAndSize(<const char*>b + p + schema_len + 1,
                                          blen - p - schema_len - 1).decode("utf-8", "replace"))


cdef inline bint _word(const unsigned char* s, Py_ssize_t n, const char* upper, Py_ssize_t m) noexcept:
    """ASCII case-insensitive equality of s[:n] with the upper-case word ``upper``."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n != m:
        return False
    for i in range(n):
        c = s[i]
        if 97 <= c <= 122:
            c -= 32
        if c != <unsigned char>upper[i]:
            return False
    return True


cdef str _mysql_gtid(const unsigned char* sid, uint64_t gno):
    cdef char text[36]
    uuid_text(text, sid)
    return f"{PyBytes_FromStringAndSize(text, 36).decode('ascii')}:{gno}"
