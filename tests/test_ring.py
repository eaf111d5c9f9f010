"""The shared-memory ring: both twins, one process and across processes, mixed twins included.

What is checked: every record comes out once, whole and in order, across many wrap-arounds and
padding records; a full ring pushes back (put times out, then succeeds once the consumer frees
room); the close semantics on both sides; a record too large is refused; a consumer blocked on
an empty ring wakes when a record arrives from another process; an idle waiter burns no CPU;
no segment is left in /dev/shm, and a process that attaches and exits does not unlink its
creator's segment.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import random
import time
from typing import Any

import pytest

from deltaforge import _accel
from deltaforge.runtime import ring as pure
from deltaforge.runtime.ringformat import RecordTooLarge, RingClosed

compiled = importlib.import_module("deltaforge._core.ring")
IMPLS = [pytest.param(pure, id="python"), pytest.param(compiled, id="cython")]
PAIRS = [pytest.param(p, c, id=f"{p.IMPLEMENTATION}-to-{c.IMPLEMENTATION}")
         for p in (pure, compiled) for c in (pure, compiled)]


def _segment_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name.lstrip('/')}")


def test_the_loaded_implementation_is_the_expected_one() -> None:
    expected = "python" if os.environ.get("DELTAFORGE_NO_EXT", "") not in ("", "0") else "cython"
    assert _accel.IMPLEMENTATIONS["ring"] == expected == _accel.ring.IMPLEMENTATION
    assert compiled.IMPLEMENTATION == "cython" and pure.IMPLEMENTATION == "python"


def _payload(rnd: random.Random, k: int, biggest: int) -> bytes:
    n = rnd.choice([0, 1, 7, 8, 9, rnd.randrange(biggest + 1)])
    return (k.to_bytes(4, "little") + rnd.randbytes(max(0, n - 4)))[:n]


@pytest.mark.parametrize("impl", IMPLS)
def test_records_come_out_whole_and_in_order_across_wraps(impl: Any) -> None:
    rnd = random.Random(1)
    with impl.Ring.create(4096) as ring:
        name = ring.name
        queued: list[tuple[int, bytes]] = []
        for k in range(3000):
            if rnd.random() < 0.55:
                data = _payload(rnd, k, 4096 // 2 - 8)
                if ring.put(k % 7, data, timeout=0):
                    queued.append((k % 7, data))
                else:  # full: nothing was written, the consumer must free room first
                    assert ring.fill() > 0
            elif queued:
                got = ring.get(timeout=0)
                assert got is not None
                kind, view = got
                assert (kind, bytes(view)) == queued.pop(0)
                del got, view  # a view must not outlive its release (nor keep the segment mapped)
                ring.release()
            else:
                assert ring.get(timeout=0) is None
        while queued:
            kind, view = ring.get(timeout=0)
            assert (kind, bytes(view)) == queued.pop(0)
            del view
        assert ring.get(timeout=0) is None and ring.fill() == 0.0
    assert not _segment_exists(name)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_full_ring_pushes_back_until_the_consumer_frees_room(impl: Any) -> None:
    with impl.Ring.create(4096) as ring:
        record = b"x" * 1000
        puts = 0
        while ring.put(1, record, timeout=0.01):
            puts += 1
        assert puts == 4096 // 1008 and ring.fill() > 0.9
        kind, view = ring.get()
        assert kind == 1 and bytes(view) == record
        del view
        ring.release()
        assert ring.put(1, record, timeout=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_close_semantics_and_limits(impl: Any) -> None:
    with impl.Ring.create(8192) as ring:
        with pytest.raises(RecordTooLarge, match="does not fit in a ring of 8192 bytes"):
            ring.put(1, b"y" * 4096)
        ring.put(2, b"last")
        ring.close_writer()
        kind, view = ring.get()
        assert (kind, bytes(view)) == (2, b"last")
        del view
        with pytest.raises(RingClosed, match="the writer closed it"):
            ring.get()
    with impl.Ring.create(4096) as ring:
        ring.close_reader()
        with pytest.raises(RingClosed, match="the reader closed it"):
            ring.put(1, b"z")
    with pytest.raises(ValueError, match="power of two"):
        impl.Ring.create(5000)


def _produce(impl_name: str, name: str, count: int, seed: int, delay: float) -> None:
    impl = compiled if impl_name == "cython" else pure
    ring = impl.Ring.attach(name)
    rnd = random.Random(seed)
    time.sleep(delay)
    for k in range(count):
        data = _payload(rnd, k, 20000)
        ring.put(k % 3, hashlib.sha1(data).digest() + data)
    ring.close_writer()
    ring.close()


@pytest.mark.parametrize(("producer", "consumer"), PAIRS)
def test_across_processes_every_record_arrives_once_in_order(producer: Any, consumer: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    with consumer.Ring.create(1 << 16) as ring:
        child = ctx.Process(target=_produce, args=(producer.IMPLEMENTATION, ring.name, 3000, 5, 0.3))
        child.start()
        rnd = random.Random(5)
        k = 0
        try:
            while True:
                try:
                    got = ring.get()  # blocks (the producer starts late): woken by its records
                except RingClosed:
                    break
                assert got is not None
                kind, view = got
                data = _payload(rnd, k, 20000)
                assert kind == k % 3 and bytes(view[:20]) == hashlib.sha1(data).digest() and bytes(view[20:]) == data
                del got, view
                k += 1
        finally:
            child.join(60)
        assert child.exitcode == 0 and k == 3000
        assert _segment_exists(ring.name)  # the attached child's exit did not unlink it
        name = ring.name
    assert not _segment_exists(name)


@pytest.mark.parametrize("impl", IMPLS)
def test_an_idle_consumer_sleeps_in_the_kernel(impl: Any) -> None:
    """Not a speed figure: a waiter that spins would use about a second of CPU here."""
    with impl.Ring.create(4096) as ring:
        before = time.process_time()
        assert ring.get(timeout=1.0) is None
        assert time.process_time() - before < 0.25


@pytest.mark.parametrize("impl", IMPLS)
def test_frames_larger_than_a_record_cross_in_pieces(impl: Any) -> None:
    """``put_frame``/``get_frame``: a frame of any size (here up to 5x the ring) arrives whole,
    in order among small ones, while the ring never holds more than its capacity."""
    import threading

    from deltaforge.runtime.frames import Kind, get_frame, put_frame

    rnd = random.Random(7)
    cap = 1 << 14
    sizes = [0, 1, cap // 2 - 8, cap // 2 - 7, cap, 5 * cap + 3, 17, 3 * cap // 2]
    frames = [(i.to_bytes(4, "little") + rnd.randbytes(max(0, n - 4)))[:n] for i, n in enumerate(sizes)]
    with impl.Ring.create(cap) as ring:
        def produce() -> None:
            for i, f in enumerate(frames):
                cut = rnd.randrange(len(f) + 1)  # head and data split anywhere
                put_frame(ring, Kind.BATCH if i % 2 else Kind.ERROR, f[:cut], f[cut:])
            put_frame(ring, Kind.END, b"")

        t = threading.Thread(target=produce)
        t.start()
        got = []
        while True:
            kind, view = get_frame(ring, timeout=10)  # type: ignore[misc]
            if kind == Kind.END:
                break
            assert kind == (Kind.BATCH if len(got) % 2 else Kind.ERROR)
            got.append(bytes(view))
            del view
            ring.release()
        t.join()
        assert [hashlib.sha1(f).hexdigest() for f in got] == [hashlib.sha1(f).hexdigest() for f in frames]
