"""The shared-memory ring's layout, errors and segment handling, shared by both twins of the ring
(``deltaforge.runtime.ring`` and ``_core/ring.pyx``), so neither imports the other.

Layout (one ``multiprocessing.shared_memory`` segment; little-endian, offsets in bytes)
----------------------------------------------------------------------------------------
=======  =====  ==========================================================================
offset   size   field
=======  =====  ==========================================================================
0        8      magic ``DFRING01``
8        8      capacity of the data area (a power of two, at least 4 KiB)
64       8      head: bytes ever written (producer's, published after the record)
72       4      data_seq: bumped after every publish (the consumer's futex word)
76       4      consumer waiting (set while the consumer sleeps)
128      8      tail: bytes ever consumed (consumer's, published when a record is released)
136      4      space_seq: bumped after every release (the producer's futex word)
140      4      producer waiting
192      4      writer closed (no more records will come)
196      4      reader closed (nobody will read: a producer stops with RingClosed)
256      cap    data area
=======  =====  ==========================================================================

The cursors only grow; a byte's place is ``cursor % capacity``. A record is a header (u32
payload length, u32 kind) and the payload, padded to 8 bytes; it never wraps: when it does not
fit before the end, a padding record (kind ``PAD``) fills the rest and the record starts at 0.
A record may take at most half the ring (:class:`RecordTooLarge` otherwise), so a put can
always complete once the consumer catches up.
"""

from __future__ import annotations

import struct
from typing import Any

from deltaforge.errors import DeltaForgeError

MAGIC = b"DFRING01"
HEADER = 256
PAD = 0xFFFFFFFF
MIN_CAPACITY = 4096
OFF_CAPACITY, OFF_HEAD, OFF_DATA_SEQ, OFF_CONS_WAITING = 8, 64, 72, 76
OFF_TAIL, OFF_SPACE_SEQ, OFF_PROD_WAITING, OFF_WRITER_CLOSED, OFF_READER_CLOSED = 128, 136, 140, 192, 196

#: default size of a ring's data area (``deltaforge run --ring-mib``): a few batches of the
#: default size (2,000 events); a larger frame crosses in pieces (``frames.put_frame``), so the
#: size bounds the memory in flight, not what a batch may hold
RING_BYTES = 8 << 20

U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
REC = struct.Struct("<II")


class RingClosed(DeltaForgeError):
    """The other side of a ring closed it (the writer finished, or the reader is gone)."""


class RecordTooLarge(DeltaForgeError):
    """A record larger than half the ring."""


class AttachedSegment:
    """An existing segment mapped by name, without the resource tracker: on Python < 3.13
    ``SharedMemory(name)`` registers it there, so the tracker of a process that only attached
    would unlink the creator's segment at exit, and unregistering instead would strip a spawned
    child's shared tracker of the creator's entry (a crashed creator would then leak it)."""

    def __init__(self, name: str) -> None:
        import _posixshmem
        import mmap
        import os

        self.name = name
        fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
        try:
            self._mmap: Any = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self.buf: Any = memoryview(self._mmap)

    def close(self) -> None:
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> None:  # pragma: no cover - an attached side never owns the segment
        raise AssertionError("an attached ring segment is not its owner's to unlink")


def attach_segment(name: str) -> AttachedSegment:
    """Map an existing ring segment by name (see :class:`AttachedSegment`)."""
    return AttachedSegment(name)


def close_segment(shm: Any, owner: bool) -> None:
    """Unmap ``shm`` (left to the garbage collector while a caller still holds a view of it) and,
    for its creator, unlink it: the name goes at once, whatever views remain."""
    try:
        shm.close()
    except BufferError:
        pass
    if owner:
        shm.unlink()


def aligned(n: int) -> int:
    return (n + 7) & ~7


def check_capacity(capacity: int) -> int:
    """``capacity`` if it is a power of two of at least 4 KiB, else ValueError."""
    if capacity < MIN_CAPACITY or capacity & (capacity - 1):
        raise ValueError(f"ring capacity {capacity} must be a power of two of at least {MIN_CAPACITY}")
    return capacity
