"""What crosses a channel between the engine's stages (threads or processes): typed frames.

Contract
--------
- A **batch frame** is a :class:`~deltaforge.model.Batch` as bytes: a small msgpack header (seq,
  end position, origin, the block's index: starts, tables, transaction ids, tenants, spans, the
  ordering keys, dead letters) followed by the block's JSON lines unchanged. Nothing is
  pickled; the event bytes are not re-encoded (:func:`encode_batch` returns the two parts, the
  header and the block's bytes as they are). A batch of Event objects travels as its EventBlock.
- A **control frame** says what is not data: ``END`` (the producer finished), ``STOP`` (stop at
  the next boundary) and ``ERROR``, an error as a record (class, detail, hint, retriable, exit
  code) that :func:`decode_error` turns back into the same class, so ``retriable`` and the
  exit code survive the trip. No exception object or sentinel travels inside data.

Frame kinds are the ring's record kinds (:class:`Kind`). A frame larger than one ring record
may be (half the ring) travels as several records: :func:`put_frame` cuts it into ``PART``
records followed by one record of the frame's kind, and :func:`get_frame` joins them again, so
rings can stay small (memory is bounded by ring sizes) whatever a processor makes of a batch.

Hazards
-------
- :func:`decode_batch` copies the event bytes out of the view it is given (the ring reuses
  them after release); it is the one copy per batch per hop.
- An error class is rebuilt only if it is a :class:`DeltaForgeError` subclass importable by
  its module and name; anything else (a bug's ``ValueError``) arrives as :class:`RemoteError`
  naming the original class.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any

import msgspec

from deltaforge.errors import (
    INTERNAL_EXIT_CODE,
    INTERNAL_HINT,
    DeltaForgeError,
    internal_error_text,
)
from deltaforge.model import Batch, DeadLetter, EventBlock, Position

__all__ = ["ErrorRecord", "Kind", "RemoteError", "decode_batch", "decode_error", "encode_batch", "encode_error",
           "get_frame", "put_frame"]


class Kind(enum.IntEnum):
    BATCH = 1
    END = 2
    STOP = 3
    ERROR = 4
    #: a piece of a frame too large for one record; the frame's last piece has the frame's kind
    PART = 5


def put_frame(ring: Any, kind: int, head: Any, data: Any = b"", timeout: float | None = None) -> bool:
    """Put the frame ``head + data`` into ``ring``: one record when it fits, else ``PART``
    records and a last one of ``kind``. Waits for room (backpressure); False on ``timeout``
    (only before the first record: a frame is never left half-put by a timeout)."""
    most = ring.capacity // 2 - 8  # a record may take at most half the ring, header included
    n = len(head) + len(data)
    if n <= most:
        return bool(ring.put(kind, head + data if len(data) else head, timeout))
    whole = memoryview(bytes(head) + bytes(data)) if len(data) else memoryview(head).cast("B")
    if not ring.put(Kind.PART, whole[:most], timeout):
        return False
    at = most
    while n - at > most:
        ring.put(Kind.PART, whole[at:at + most])
        at += most
    ring.put(kind, whole[at:])
    return True


def get_frame(ring: Any, timeout: float | None = None) -> tuple[int, memoryview] | None:
    """The next frame of ``ring`` as ``(kind, view)``; None on ``timeout``. A one-record frame is
    a view of the ring (the caller releases it with ``ring.release()``, or the next get does);
    a frame in pieces is joined into its own buffer (its records are already released)."""
    got = ring.get(timeout)
    if got is None or got[0] != Kind.PART:
        return got
    whole = bytearray(got[1])
    del got
    ring.release()
    while True:
        kind, view = ring.get()  # the rest is on its way: the producer is in the middle of a put
        whole += view
        del view
        ring.release()
        if kind != Kind.PART:
            return kind, memoryview(whole)


class _Head(msgspec.Struct, array_like=True):
    seq: int
    end: Position
    origin: str
    starts: list[int]
    tables: list[str]
    txids: list[str]
    tenants: list[str | None]
    uuid_ids: bool | None
    spans: bytes | None
    keys: list[tuple[int, int, int, str]]
    dead: list[DeadLetter]
    dead_keys: list[tuple[int, int, int, str]]
    #: events the batch had when it entered the processors (-1: this batch's own count)
    events_in: int = -1


_encode_head = msgspec.msgpack.Encoder().encode
_decode_head = msgspec.msgpack.Decoder(_Head).decode
#: header length (u32, little-endian) first, then the header, then the block's bytes
_LEN = 4


def encode_batch(batch: Batch, events_in: int | None = None) -> tuple[bytes, bytes]:
    """(header, event bytes) of a batch frame: write both, in that order, as one record.
    ``events_in``: how many events the batch had before the processors (for the counters)."""
    block = batch.events if isinstance(batch.events, EventBlock) else EventBlock.from_events(batch.events)
    head = _encode_head(_Head(
        seq=batch.seq, end=batch.end, origin=batch.origin, starts=block.starts, tables=block.tables,
        txids=block.txids, tenants=block.tenants, uuid_ids=block.ids_are_uuids() if len(block) else None,
        spans=block.spans, keys=batch.keys, dead=batch.dead, dead_keys=batch.dead_keys,
        events_in=-1 if events_in is None else events_in))
    return len(head).to_bytes(_LEN, "little") + head, block.data


def decode_batch(frame: Any, with_input: bool = False) -> Any:
    """The Batch of a batch frame (bytes or a memoryview of a ring record); with ``with_input``,
    ``(batch, events it had before the processors)``."""
    view = memoryview(frame)
    n = int.from_bytes(view[:_LEN], "little")
    head = _decode_head(view[_LEN:_LEN + n])
    block = EventBlock(bytes(view[_LEN + n:]), head.starts, head.tables, head.txids, head.tenants,
                       head.uuid_ids, head.spans)
    batch = Batch(seq=head.seq, events=block, keys=head.keys, end=head.end, origin=head.origin,
                  dead=head.dead, dead_keys=head.dead_keys)
    if with_input:
        return batch, len(block) if head.events_in < 0 else head.events_in
    return batch


class ErrorRecord(msgspec.Struct, array_like=True):
    module: str
    name: str
    detail: str
    hint: str | None
    retriable: bool
    exit_code: int


class RemoteError(DeltaForgeError):
    """An error from another stage whose class cannot be rebuilt here (see the module hazards)."""


_encode_error = msgspec.msgpack.Encoder().encode
_decode_error = msgspec.msgpack.Decoder(ErrorRecord).decode


def encode_error(err: BaseException) -> bytes:
    """The ERROR frame of ``err``."""
    if isinstance(err, DeltaForgeError):
        rec = ErrorRecord(type(err).__module__, type(err).__qualname__, err.detail, err.hint,
                          bool(err.retriable), int(err.exit_code))
    else:
        rec = ErrorRecord(type(err).__module__, type(err).__qualname__, internal_error_text(err), INTERNAL_HINT,
                          False, INTERNAL_EXIT_CODE)
    return _encode_error(rec)


def decode_error(frame: Any) -> DeltaForgeError:
    """The error an ERROR frame carries, as its own class where it can be rebuilt."""
    rec = _decode_error(memoryview(frame))
    cls: Any = RemoteError
    try:
        found = getattr(importlib.import_module(rec.module), rec.name)
        if isinstance(found, type) and issubclass(found, DeltaForgeError):
            cls = found
    except (ImportError, AttributeError):
        pass
    err = cls.__new__(cls)
    DeltaForgeError.__init__(err, rec.detail, rec.hint)  # whatever the subclass's own signature
    if cls is RemoteError or err.retriable != rec.retriable:
        err.retriable = rec.retriable
    if cls is RemoteError or err.exit_code != rec.exit_code:
        err.exit_code = rec.exit_code
    return err
