# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Shared-memory ring, compiled twin of ``deltaforge.runtime.ring`` (the specification: contract
and hazards are documented there once, the layout in ``deltaforge.runtime.ringformat``; both twins
share it, so either side of a ring may be either implementation).

Here the cursors are read and written with acquire/release atomics, and a side with nothing to
do sleeps in the kernel on a futex in the shared segment (``data_seq`` for the consumer,
``space_seq`` for the producer), with the GIL released. The waiter publishes that it waits,
re-checks, then sleeps only if the futex word is still what it read before the check; the other
side bumps the word after publishing its cursor and wakes only a waiter that said so. Sleeps
are cut into 100 ms slices, so a lost wake-up could only ever cost latency, never a hang.
No fd crosses processes: attaching by name is all a child needs.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

import time

from deltaforge.runtime import ringformat as _F
from deltaforge.runtime.ringformat import (
    MAGIC,
    RecordTooLarge,
    RingClosed,
    attach_segment,
    check_capacity,
    close_segment,
)
from multiprocessing import shared_memory

IMPLEMENTATION = "cython"

cdef extern from *:
    """
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #include <time.h>
    #include <stdint.h>
    static inline uint64_t df_ld64(const char* p) { return __atomic_load_n((const uint64_t*)p, __ATOMIC_ACQUIRE); }
    static inline void df_st64(char* p, uint64_t v) { __atomic_store_n((uint64_t*)p, v, __ATOMIC_SEQ_CST); }
    static inline uint32_t df_ld32(const char* p) { return __atomic_load_n((const uint32_t*)p, __ATOMIC_SEQ_CST); }
    static inline void df_st32(char* p, uint32_t v) { __atomic_store_n((uint32_t*)p, v, __ATOMIC_SEQ_CST); }
    static inline void df_bump(char* p) { __atomic_add_fetch((uint32_t*)p, 1, __ATOMIC_SEQ_CST); }
    static inline void df_futex_wait(char* p, uint32_t expect, long ns) {
        struct timespec ts;
        ts.tv_sec = ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        syscall(SYS_futex, (uint32_t*)p, FUTEX_WAIT, expect, &ts, NULL, 0);
    }
    static inline void df_futex_wake(char* p) { syscall(SYS_futex, (uint32_t*)p, FUTEX_WAKE, 1, NULL, NULL, 0); }
    """
    uint64_t df_ld64(const char* p) nogil
    void df_st64(char* p, uint64_t v) nogil
    uint32_t df_ld32(const char* p) nogil
    void df_st32(char* p, uint32_t v) nogil
    void df_bump(char* p) nogil
    void df_futex_wait(char* p, uint32_t expect, long ns) nogil
    void df_futex_wake(char* p) nogil

# the layout of ringformat, as C constants (checked against it below)
cdef enum:
    HEADER = 256
    OFF_CAPACITY = 8
    OFF_HEAD = 64
    OFF_DATA_SEQ = 72
    OFF_CONS_WAITING = 76
    OFF_TAIL = 128
    OFF_SPACE_SEQ = 136
    OFF_PROD_WAITING = 140
    OFF_WRITER_CLOSED = 192
    OFF_READER_CLOSED = 196

if (HEADER, OFF_CAPACITY, OFF_HEAD, OFF_DATA_SEQ, OFF_CONS_WAITING, OFF_TAIL, OFF_SPACE_SEQ, OFF_PROD_WAITING,
        OFF_WRITER_CLOSED, OFF_READER_CLOSED) != (
        _F.HEADER, _F.OFF_CAPACITY, _F.OFF_HEAD, _F.OFF_DATA_SEQ, _F.OFF_CONS_WAITING, _F.OFF_TAIL, _F.OFF_SPACE_SEQ,
        _F.OFF_PROD_WAITING, _F.OFF_WRITER_CLOSED, _F.OFF_READER_CLOSED):
    raise ImportError("deltaforge._core.ring is out of date with deltaforge.runtime.ringformat: rebuild it")

cdef long _SLICE_NS = 100000000  # longest single sleep (a lost wake-up costs at most this)
cdef uint32_t _PAD = _F.PAD
cdef Py_ssize_t _HEADER = HEADER


cdef inline uint64_t _aligned(uint64_t n) noexcept nogil:
    return (n + 7) & ~(<uint64_t>7)


cdef class Ring:
    cdef object _shm, _mv
    cdef bint _owner, _open
    cdef Py_buffer _view
    cdef char* _base
    cdef char* _data
    cdef readonly uint64_t capacity
    cdef readonly str name
    cdef uint64_t _pending

    def __init__(self, shm, bint owner):
        self._shm = shm
        self._owner = owner
        PyObject_GetBuffer(shm.buf, &self._view, PyBUF_SIMPLE)
        self._open = True
        self._base = <char*>self._view.buf
        if self._view.len < _HEADER or self._base[:8] != MAGIC:
            self.close()
            raise ValueError(f"shared memory {shm.name} is not a DeltaForge ring")
        self._data = self._base + _HEADER
        self.capacity = (<uint64_t*>(self._base + OFF_CAPACITY))[0]
        self._mv = shm.buf
        self.name = shm.name
        self._pending = 0

    @classmethod
    def create(cls, capacity, name=None):
        check_capacity(capacity)
        shm = shared_memory.SharedMemory(name=name, create=True, size=HEADER + capacity)
        shm.buf[:HEADER] = bytes(HEADER)
        shm.buf[OFF_CAPACITY:OFF_CAPACITY + 8] = (<uint64_t>capacity).to_bytes(8, "little")
        shm.buf[0:8] = MAGIC
        return cls(shm, True)

    @classmethod
    def attach(cls, name):
        return cls(attach_segment(name), False)

    cdef int _check(self) except -1:
        if not self._open:
            raise ValueError("ring is closed")
        return 0

    cdef bint _sleep(self, Py_ssize_t seq_off, Py_ssize_t waiting_off, uint32_t seen, double deadline) except -1:
        """One futex sleep on the word at ``seq_off`` while it still holds ``seen``; False once
        ``deadline`` (monotonic seconds, < 0: none) has passed."""
        cdef long ns = _SLICE_NS
        cdef double left
        if deadline >= 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if left * 1e9 < ns:
                ns = <long>(left * 1e9) + 1
        with nogil:
            df_futex_wait(self._base + seq_off, seen, ns)
        df_st32(self._base + waiting_off, 0)
        return True

    # ---------------------------------------------------------------- producer

    def put(self, int kind, data, timeout=None):
        self._check()
        cdef const unsigned char[::1] src = memoryview(data).cast("B")
        cdef uint64_t n = src.shape[0], cap = self.capacity
        cdef uint64_t need = 8 + _aligned(n)
        if need > cap // 2:
            raise RecordTooLarge(f"a record of {n} bytes does not fit in a ring of {cap} bytes",
                                 "raise the ring size (records may take at most half of it)")
        cdef char* base = self._base
        cdef uint64_t head = df_ld64(base + OFF_HEAD)
        cdef uint64_t pos = head & (cap - 1)
        cdef uint64_t room = need if need <= cap - pos else (cap - pos) + need
        cdef double deadline = -1.0 if timeout is None else time.monotonic() + timeout
        cdef uint32_t seen
        while True:
            if df_ld32(base + OFF_READER_CLOSED):
                raise RingClosed(f"ring {self.name}: the reader closed it", "the consumer stopped")
            if cap - (head - df_ld64(base + OFF_TAIL)) >= room:
                break
            seen = df_ld32(base + OFF_SPACE_SEQ)
            df_st32(base + OFF_PROD_WAITING, 1)
            if df_ld32(base + OFF_READER_CLOSED) or cap - (head - df_ld64(base + OFF_TAIL)) >= room:
                df_st32(base + OFF_PROD_WAITING, 0)
                continue
            if not self._sleep(OFF_SPACE_SEQ, OFF_PROD_WAITING, seen, deadline):
                df_st32(base + OFF_PROD_WAITING, 0)
                return False
        cdef char* w
        if need > cap - pos:  # pad to the end, start at 0
            w = self._data + pos
            (<uint32_t*>w)[0] = <uint32_t>(cap - pos - 8)
            (<uint32_t*>w)[1] = _PAD
            head += cap - pos
            pos = 0
        w = self._data + pos
        (<uint32_t*>w)[0] = <uint32_t>n
        (<uint32_t*>w)[1] = <uint32_t>kind
        if n > 65536:
            with nogil:
                memcpy(w + 8, &src[0], n)
        elif n:
            memcpy(w + 8, &src[0], n)
        df_st64(base + OFF_HEAD, head + need)
        df_bump(base + OFF_DATA_SEQ)
        if df_ld32(base + OFF_CONS_WAITING):
            df_futex_wake(base + OFF_DATA_SEQ)
        return True

    def close_writer(self):
        self._check()
        df_st32(self._base + OFF_WRITER_CLOSED, 1)
        df_bump(self._base + OFF_DATA_SEQ)
        df_futex_wake(self._base + OFF_DATA_SEQ)

    # ---------------------------------------------------------------- consumer

    def get(self, timeout=None):
        self._check()
        if self._pending:
            self.release()
        cdef char* base = self._base
        cdef uint64_t cap = self.capacity, tail, pos, n
        cdef uint32_t kind, seen
        cdef double deadline = -1.0 if timeout is None else time.monotonic() + timeout
        while True:
            tail = df_ld64(base + OFF_TAIL)
            if df_ld64(base + OFF_HEAD) == tail:
                if df_ld32(base + OFF_WRITER_CLOSED) and df_ld64(base + OFF_HEAD) == tail:
                    raise RingClosed(f"ring {self.name}: the writer closed it", "every record was read")
                seen = df_ld32(base + OFF_DATA_SEQ)
                df_st32(base + OFF_CONS_WAITING, 1)
                if df_ld64(base + OFF_HEAD) != tail or df_ld32(base + OFF_WRITER_CLOSED):
                    df_st32(base + OFF_CONS_WAITING, 0)
                    continue
                if not self._sleep(OFF_DATA_SEQ, OFF_CONS_WAITING, seen, deadline):
                    df_st32(base + OFF_CONS_WAITING, 0)
                    return None
                continue
            pos = tail & (cap - 1)
            n = (<uint32_t*>(self._data + pos))[0]
            kind = (<uint32_t*>(self._data + pos))[1]
            if kind == _PAD:
                self._pending = cap - pos
                self.release()
                continue
            self._pending = 8 + _aligned(n)
            return kind, self._mv[_HEADER + pos + 8:_HEADER + pos + 8 + n]

    def release(self):
        self._check()
        cdef char* base = self._base
        if self._pending:
            df_st64(base + OFF_TAIL, df_ld64(base + OFF_TAIL) + self._pending)
            self._pending = 0
            df_bump(base + OFF_SPACE_SEQ)
            if df_ld32(base + OFF_PROD_WAITING):
                df_futex_wake(base + OFF_SPACE_SEQ)

    def close_reader(self):
        self._check()
        df_st32(self._base + OFF_READER_CLOSED, 1)
        df_bump(self._base + OFF_SPACE_SEQ)
        df_futex_wake(self._base + OFF_SPACE_SEQ)

    # ---------------------------------------------------------------- both

    def fill(self):
        self._check()
        return (df_ld64(self._base + OFF_HEAD) - df_ld64(self._base + OFF_TAIL)) / <double>self.capacity

    def close(self):
        if not self._open:
            return
        self._open = False
        PyBuffer_Release(&self._view)
        self._base = NULL
        self._data = NULL
        self._mv = None
        shm, self._shm = self._shm, None
        close_segment(shm, self._owner)

    def __dealloc__(self):
        if self._open:
            PyBuffer_Release(&self._view)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
