# cython: language_level=3
"""Read cursor over a byte buffer, shared by every _core decoder (cimport only, no runtime module).

``take`` is the one way to read: it returns a pointer to the next ``n`` bytes and advances, or
raises IndexError on truncation instead of reading past ``end``. ``le``/``be`` assemble an
unsigned integer from ``n`` (<= 8) bytes byte by byte, so host byte order does not matter.
"""

from libc.stdint cimport uint64_t


cdef struct Cursor:
    const unsigned char* buf
    Py_ssize_t pos
    Py_ssize_t end


cdef inline int truncated(Cursor* c, Py_ssize_t n) except -1:
    raise IndexError(f"rows event truncated: {n} bytes needed at byte {c.pos}, body has {c.end}")


cdef inline const unsigned char* take(Cursor* c, Py_ssize_t n) except NULL:
    cdef const unsigned char* p
    if n > c.end - c.pos:
        truncated(c, n)
        return NULL
    p = c.buf + c.pos
    c.pos += n
    return p


cdef inline uint64_t le(const unsigned char* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i = n
    while i > 0:
        i -= 1
        v = (v << 8) | p[i]
    return v


cdef inline uint64_t be(const unsigned char* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v
