# cython: language_level=3
"""RESP2 command encoder: many commands -> one bytes buffer, sized first, written once.

Wire format (redis.io "RESP protocol spec"), per command::

    *<argc>\r\n  then per argument  $<len>\r\n<bytes>\r\n

Arguments may be ``bytes``, ``str`` (UTF-8) or ``int``. Output is identical to
``deltaforge.sink.resp_py`` (the pure-Python twin and test oracle). The bulk-string and digit
writers are the shared ones in ``df_resp.pxd`` and ``df_write.pxd``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint64_t

from df_resp cimport bulk, bulk_len, crlf
from df_write cimport digits
from df_write cimport ndigits as _ndigits

IMPLEMENTATION = "cython"


cdef inline char* _put_int(char* p, Py_ssize_t n) noexcept nogil:
    return digits(p, <uint64_t>n, 1)


cdef inline const char* _arg_view(object arg, Py_ssize_t* size, list keep) except NULL:
    cdef const char* data
    if type(arg) is bytes:
        size[0] = PyBytes_GET_SIZE(arg)
        return PyBytes_AS_STRING(arg)
    if type(arg) is str:
        data = PyUnicode_AsUTF8AndSize(arg, size)
        return data
    if isinstance(arg, int):
        arg = str(arg).encode()
    elif isinstance(arg, (bytearray, memoryview)):
        arg = bytes(arg)
    elif isinstance(arg, str):
        arg = (<str>arg).encode()
    elif not isinstance(arg, bytes):
        raise TypeError(f"RESP argument must be bytes, str or int, not {type(arg).__name__}")
    keep.append(arg)
    size[0] = PyBytes_GET_SIZE(arg)
    return PyBytes_AS_STRING(arg)


def encode_commands(list commands):
    """Encode a list of commands (each a list/tuple of arguments) into one RESP buffer."""
    cdef Py_ssize_t total = 0, n, size, argc
    cdef list keep = []
    cdef list sizes = []
    cdef object cmd, arg
    cdef const char* data
    # pass 1: size
    for cmd in commands:
        argc = len(cmd)
        total += 3 + _ndigits(argc)
        for arg in cmd:
            _arg_view(arg, &size, keep)
            total += bulk_len(size)
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    # pass 2: write
    for cmd in commands:
        p[0] = b'*'
        p = crlf(_put_int(p + 1, len(cmd)))
        for arg in cmd:
            data = _arg_view(arg, &size, keep)
            p = bulk(p, data, size)
    return out


def encode_command(*args):
    return encode_commands([args])
