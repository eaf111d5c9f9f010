# cython: language_level=3
"""RESP2 bulk-string writers through a raw ``char*``, shared by the _core encoders (cimport only).

A bulk string is ``$<len>\r\n<bytes>\r\n``: ``bulk_len(n)`` bytes on the wire. Like
``df_write``, each writer writes at ``p`` into a buffer the caller sized first and returns
the end of what it wrote; nothing allocates or touches Python objects, so all are nogil.
"""

from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from df_write cimport digits, ndigits


cdef inline Py_ssize_t bulk_len(Py_ssize_t n) noexcept nogil:
    """Wire size of a bulk string of ``n`` bytes."""
    return 5 + ndigits(<uint64_t>n) + n


cdef inline char* put(char* p, const char* s, Py_ssize_t n) noexcept nogil:
    memcpy(p, s, n)
    return p + n


cdef inline char* crlf(char* p) noexcept nogil:
    p[0] = b'\r'
    p[1] = b'\n'
    return p + 2


cdef inline char* bulk_head(char* p, Py_ssize_t n) noexcept nogil:
    """``$<n>\r\n``: the header of a bulk string whose ``n`` bytes the caller writes next."""
    p[0] = b'$'
    return crlf(digits(p + 1, <uint64_t>n, 1))


cdef inline char* bulk(char* p, const char* s, Py_ssize_t n) noexcept nogil:
    return crlf(put(bulk_head(p, n), s, n))
