# cython: language_level=3
"""Writers through a raw ``char*``, shared by the _core decoder and encoders (cimport only).

Each writes at ``p`` and returns the end of what it wrote; the caller sized the buffer first
(``ndigits``, ``b64_len``). Nothing here allocates or touches Python objects, so all are nogil.
"""

from libc.stdint cimport uint32_t, uint64_t


cdef inline Py_ssize_t ndigits(uint64_t v) noexcept nogil:
    """Number of decimal digits of ``v`` (1 for 0)."""
    cdef Py_ssize_t d = 1
    while v >= 10:
        v //= 10
        d += 1
    return d


cdef inline char* digits(char* p, uint64_t v, int width) noexcept nogil:
    """v in decimal, zero-padded to at least ``width`` digits (Python's ``:0{width}d``)."""
    cdef char tmp[24]
    cdef int n = 0
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n < width:
        tmp[n] = 48
        n += 1
    while n > 0:
        n -= 1
        p[0] = tmp[n]
        p += 1
    return p


cdef inline Py_ssize_t b64_len(Py_ssize_t n) noexcept nogil:
    return ((n + 2) // 3) * 4


cdef inline unsigned char* b64(unsigned char* o, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Standard base64 (RFC 4648 alphabet, '=' padding) of ``n`` bytes: ``b64_len(n)`` bytes."""
    cdef const char* alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    cdef Py_ssize_t i = 0
    cdef uint32_t v
    while i + 3 <= n:
        v = (<uint32_t>p[i] << 16) | (<uint32_t>p[i + 1] << 8) | p[i + 2]
        o[0] = alphabet[(v >> 18) & 63]
        o[1] = alphabet[(v >> 12) & 63]
        o[2] = alphabet[(v >> 6) & 63]
        o[3] = alphabet[v & 63]
        o += 4
        i += 3
    if n - i == 1:
        v = <uint32_t>p[i] << 16
        o[0] = alphabet[(v >> 18) & 63]
        o[1] = alphabet[(v >> 12) & 63]
        o[2] = 61
        o[3] = 61
        o += 4
    elif n - i == 2:
        v = (<uint32_t>p[i] << 16) | (<uint32_t>p[i + 1] << 8)
        o[0] = alphabet[(v >> 18) & 63]
        o[1] = alphabet[(v >> 12) & 63]
        o[2] = alphabet[(v >> 6) & 63]
        o[3] = 61
        o += 4
    return o


cdef inline char* uuid_text(char* w, const unsigned char* b) noexcept nogil:
    """The 16 bytes at ``b`` as a lower-case 8-4-4-4-12 UUID: 36 characters at ``w``."""
    cdef const char* hexdigits = b"0123456789abcdef"
    cdef int i
    for i in range(16):
        if i == 4 or i == 6 or i == 8 or i == 10:
            w[0] = b'-'
            w += 1
        w[0] = hexdigits[b[i] >> 4]
        w[1] = hexdigits[b[i] & 15]
        w += 2
    return w
