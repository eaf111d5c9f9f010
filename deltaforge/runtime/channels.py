"""Hand-offs between the stages of one process: bounded channels and wake-able stop flags.

Idle waits block in the kernel, never poll: the stages hand batches over through
:class:`Channel` (condition waits, woken by an item or by the run's ``halt``), and the reader
selects on the binlog socket plus :meth:`AnyStop.wake_fileno`, a socket that the stop and halt
events write to when set (:class:`WakeEvent`). An idle engine wakes only for the server's
heartbeats. Between processes the same role is played by the shared-memory rings
(``deltaforge._accel.ring``).
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

#: batches read ahead of the processor/sink stage: bounds memory, lets decoding overlap V8 and Redis waits
READ_AHEAD = 2
END = object()
#: what a channel's get returns once the run is halted and nothing is left in it
HALTED = object()
#: what a channel's get with a timeout returns when nothing came in time
IDLE = object()
#: how often an idle writer checks that Redis has not closed its connection (sink ``probe_idle``)
IDLE_PROBE_S = 1.0


class WakeEvent(threading.Event):
    """A ``threading.Event`` whose ``set()`` also runs wake-up hooks, so the threads waiting on it
    can block in the kernel (a select, a condition wait) instead of polling ``is_set()``.

    Hazard: hooks run in the thread that calls ``set()``, which for the supervisor's stop is a
    signal handler. A hook on such an event must not take a lock the interrupted code may hold
    (AnyStop's hook only writes one byte to a non-blocking socket).
    """

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[Callable[[], None]] = []

    def add_hook(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)
        if self.is_set():
            hook()

    def remove_hook(self, hook: Callable[[], None]) -> None:
        if hook in self._hooks:
            self._hooks.remove(hook)

    def set(self) -> None:
        super().set()
        for hook in tuple(self._hooks):
            hook()


class AnyStop:
    """Stop flag that is set when any of its events is (the supervisor's stop, or this run's halt).

    When every event is a :class:`WakeEvent`, :meth:`wake_fileno` is a descriptor that turns
    readable once any of them is set (the reader adds it to its select); otherwise it is None
    and waiters poll :meth:`is_set`. Close it once its waiters are gone.
    """

    def __init__(self, *events: threading.Event) -> None:
        self.events = events
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        #: set once any event is (hooked events only: they call _wake; the reader asks per transaction)
        self._flag = False
        self._hooked = bool(events) and all(isinstance(e, WakeEvent) for e in events)
        if self._hooked:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            for e in events:
                e.add_hook(self._wake)  # type: ignore[attr-defined]
            # (after the hooks: an event set in between is seen by one or the other)
            self._flag = any(e.is_set() for e in events)

    def is_set(self) -> bool:
        if self._flag:
            return True
        if self._hooked:
            return False
        return any(e.is_set() for e in self.events)

    def wake_fileno(self) -> int | None:
        return self._wake_r.fileno() if self._wake_r is not None else None

    def _wake(self) -> None:
        self._flag = True
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"!")  # never drained: the events stay set for this object's lifetime
            except OSError:
                pass  # buffer full (already readable) or closed

    def close(self) -> None:
        for e in self.events:
            if isinstance(e, WakeEvent):
                e.remove_hook(self._wake)
        r, w = self._wake_r, self._wake_w
        self._wake_r = self._wake_w = None
        for sock in (w, r):
            if sock is not None:
                sock.close()


class Channel:
    """Bounded FIFO between two stage threads: ``put``/``get`` wait on a condition (no timeout)
    until there is room/an item, or the run is halted.

    Halt does not discard anything: ``get`` returns the items left before ``HALTED``, and
    ``put`` succeeds while there is room (the same order of events as the former 0.2 s polls).
    """

    def __init__(self, maxsize: int, halt: WakeEvent) -> None:
        self._items: deque[Any] = deque()
        self._maxsize = maxsize
        self._cond = threading.Condition(threading.Lock())
        self._halt = halt
        #: condition waits that returned (tests count them: an idle channel never wakes)
        self.wakeups = 0
        #: gets with a timeout that returned IDLE (the writer's once-a-second Redis probe)
        self.idle_timeouts = 0
        halt.add_hook(self._wake_all)

    def _wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def put(self, item: Any) -> bool:
        """Append ``item``; False (item dropped) if the run is halted while the channel is full."""
        with self._cond:
            while len(self._items) >= self._maxsize:
                if self._halt.is_set():
                    return False
                self._cond.wait()
                self.wakeups += 1
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Any:
        """The next item, or ``HALTED`` once the run is halted and the channel is empty, or ``IDLE``
        when ``timeout`` seconds passed without one."""
        with self._cond:
            while not self._items:
                if self._halt.is_set():
                    return HALTED
                if not self._cond.wait(timeout) and not self._items:
                    self.idle_timeouts += 1
                    return IDLE
                self.wakeups += 1
            item = self._items.popleft()
            self._cond.notify_all()
            return item
