"""Shared-memory ring: one producer process, one consumer process (pure-Python twin).

``_core/ring.pyx`` is the compiled twin: the same API and the same memory layout, so either side
may be either implementation. This module is the specification; it waits by sleeping in short
growing steps (tests only), the compiled ring sleeps in the kernel on a futex.

The layout is :mod:`deltaforge.runtime.ringformat`'s (both twins share it).

Contract
--------
- :meth:`Ring.put` blocks while the ring is full (backpressure) and returns False only on its
  timeout; it raises :class:`RingClosed` once the reader closed.
- :meth:`Ring.get` returns ``(kind, view)`` where ``view`` is a memoryview of the payload in
  shared memory (no copy), valid until :meth:`Ring.release`; ``None`` on timeout; it raises
  :class:`RingClosed` when the writer closed and everything was read.
- The segment belongs to whoever created it (:meth:`Ring.create`): it unlinks it on
  :meth:`Ring.close`. :meth:`Ring.attach` opens it by name in another process.

Hazards
-------
- Single producer, single consumer: two writers or two readers corrupt the cursors.
- A view must not outlive :meth:`Ring.release` or :meth:`Ring.close` (the bytes under it are
  reused, then unmapped): copy what must be kept.
"""

from __future__ import annotations

import time
from multiprocessing import shared_memory
from typing import Any

from deltaforge.runtime.ringformat import (
    HEADER,
    MAGIC,
    OFF_CAPACITY,
    OFF_DATA_SEQ,
    OFF_HEAD,
    OFF_READER_CLOSED,
    OFF_SPACE_SEQ,
    OFF_TAIL,
    OFF_WRITER_CLOSED,
    PAD,
    REC,
    U32,
    U64,
    RecordTooLarge,
    RingClosed,
    aligned,
    attach_segment,
    check_capacity,
    close_segment,
)

__all__ = ["RecordTooLarge", "Ring", "RingClosed"]

IMPLEMENTATION = "python"


class Ring:
    """One end (or both, in tests) of a ring; see the module docstring."""

    def __init__(self, shm: Any, owner: bool) -> None:
        self._shm: Any = shm
        self._owner = owner
        buf = shm.buf
        assert buf is not None
        if bytes(buf[0:8]) != MAGIC:
            raise ValueError(f"shared memory {shm.name} is not a DeltaForge ring")
        self._buf: Any = buf
        self.capacity = U64.unpack_from(buf, OFF_CAPACITY)[0]
        self.name = shm.name
        self._pending = 0  # bytes of the record handed out by get(), freed by release()

    @classmethod
    def create(cls, capacity: int, name: str | None = None) -> Ring:
        check_capacity(capacity)
        shm = shared_memory.SharedMemory(name=name, create=True, size=HEADER + capacity)
        assert shm.buf is not None
        shm.buf[:HEADER] = bytes(HEADER)
        U64.pack_into(shm.buf, OFF_CAPACITY, capacity)
        shm.buf[0:8] = MAGIC
        return cls(shm, True)

    @classmethod
    def attach(cls, name: str) -> Ring:
        return cls(attach_segment(name), False)

    # ---------------------------------------------------------------- shared fields

    def _u64(self, off: int) -> int:
        return int(U64.unpack_from(self._buf, off)[0])

    def _u32(self, off: int) -> int:
        return int(U32.unpack_from(self._buf, off)[0])

    def _set32(self, off: int, v: int) -> None:
        U32.pack_into(self._buf, off, v & 0xFFFFFFFF)

    @staticmethod
    def _wait(ready: Any, timeout: float | None) -> bool:
        """Sleep in growing steps (up to 5 ms) until ``ready()``; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        step = 0.0001
        while not ready():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(step)
            step = min(step * 2, 0.005)
        return True

    # ---------------------------------------------------------------- producer

    def put(self, kind: int, data: Any, timeout: float | None = None) -> bool:
        payload = memoryview(data).cast("B")
        n = len(payload)
        need = 8 + aligned(n)
        cap = self.capacity
        if need > cap // 2:
            raise RecordTooLarge(f"a record of {n} bytes does not fit in a ring of {cap} bytes",
                                 "raise the ring size (records may take at most half of it)")
        head = self._u64(OFF_HEAD)
        pos = head & (cap - 1)
        room = need if need <= cap - pos else (cap - pos) + need

        def fits() -> bool:
            if self._u32(OFF_READER_CLOSED):
                raise RingClosed(f"ring {self.name}: the reader closed it", "the consumer stopped")
            return cap - (head - self._u64(OFF_TAIL)) >= room

        if not self._wait(fits, timeout):
            return False
        buf = self._buf
        if need > cap - pos:  # pad to the end, start at 0
            REC.pack_into(buf, HEADER + pos, cap - pos - 8, PAD)
            head += cap - pos
            pos = 0
        REC.pack_into(buf, HEADER + pos, n, kind)
        buf[HEADER + pos + 8:HEADER + pos + 8 + n] = payload
        U64.pack_into(buf, OFF_HEAD, head + need)
        self._set32(OFF_DATA_SEQ, self._u32(OFF_DATA_SEQ) + 1)
        return True

    def close_writer(self) -> None:
        """No more records: the consumer gets RingClosed once it has read everything."""
        self._set32(OFF_WRITER_CLOSED, 1)
        self._set32(OFF_DATA_SEQ, self._u32(OFF_DATA_SEQ) + 1)

    # ---------------------------------------------------------------- consumer

    def get(self, timeout: float | None = None) -> tuple[int, memoryview] | None:
        if self._pending:
            self.release()
        cap = self.capacity
        while True:
            tail = self._u64(OFF_TAIL)

            def ready(tail: int = tail) -> bool:
                return self._u64(OFF_HEAD) != tail or bool(self._u32(OFF_WRITER_CLOSED))

            if not self._wait(ready, timeout):
                return None
            if self._u64(OFF_HEAD) == tail:  # closed, and everything was read
                raise RingClosed(f"ring {self.name}: the writer closed it", "every record was read")
            pos = tail & (cap - 1)
            n, kind = REC.unpack_from(self._buf, HEADER + pos)
            if kind == PAD:
                self._pending = cap - pos
                self.release()
                continue
            self._pending = 8 + aligned(n)
            return kind, self._buf[HEADER + pos + 8:HEADER + pos + 8 + n]

    def release(self) -> None:
        """Free the record get() handed out (its view must no longer be used)."""
        if self._pending:
            U64.pack_into(self._buf, OFF_TAIL, self._u64(OFF_TAIL) + self._pending)
            self._pending = 0
            self._set32(OFF_SPACE_SEQ, self._u32(OFF_SPACE_SEQ) + 1)

    def close_reader(self) -> None:
        """Nobody will read any more: the producer's put raises RingClosed."""
        self._set32(OFF_READER_CLOSED, 1)
        self._set32(OFF_SPACE_SEQ, self._u32(OFF_SPACE_SEQ) + 1)

    # ---------------------------------------------------------------- both

    def fill(self) -> float:
        """Share of the data area in use (0.0 .. 1.0), for the ring-fill gauge."""
        return (self._u64(OFF_HEAD) - self._u64(OFF_TAIL)) / self.capacity

    def close(self) -> None:
        """Unmap (and, for the creator, unlink) the segment. Views handed out become invalid."""
        if self._shm is None:
            return
        self._buf = None
        shm, self._shm = self._shm, None
        close_segment(shm, self._owner)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
