"""Peak resident memory of a process tree, from ``/proc`` (Linux only).

:class:`PeakRss` is polled by the drain loop: every :meth:`PeakRss.sample` reads
``VmHWM`` (the kernel's own high-water mark of resident memory, so a peak between two
polls is not missed) of the root process and of every descendant alive at that moment.
A child that starts and exits between two polls is missed; engine workers live as long
as the engine, so that does not happen in practice.

Figures are MiB (2^20 bytes). The total is the sum of each process's peak: an upper
bound of the tree's simultaneous peak, which is what a memory limit must allow for.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of all its threads, recursively)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{p}/task/{tid}/children").read_text().split():
                    c = int(child)
                    if c not in found:
                        found.append(c)
                        todo.append(c)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all threads) and its reaped children (0 if gone)."""
    from deltaforge.runtime.stats import cpu_seconds as process_cpu_seconds

    return process_cpu_seconds(pid, reaped_children=True) or 0.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of its live descendants."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in descendants(pid))


def process_role(pid: int, root: int) -> str:
    """A short name for one engine process: ``deltaforge run`` for the root, else its command line."""
    try:
        args = [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        args = []
    if args and args[0].startswith("deltaforge: "):  # a stage's title (setproctitle)
        return args[0]
    if any("resource_tracker" in a for a in args):
        return "resource tracker"
    if "-m" in args:
        args = args[args.index("-m") + 1:]
    elif args:
        args = args[1:]
    text = " ".join(args[:2]) if pid == root else " ".join(args)
    return (text[:60] or _status(pid).get("Name", "?")) if pid != root else (text or "deltaforge run")


def process_cpu(root: int) -> list[dict[str, Any]]:
    """CPU seconds of each live process of a tree, root first (the root's figure includes its
    reaped children's, which ``cpu_seconds`` folds in)."""
    return [{"pid": pid, "role": process_role(pid, root), "cpu_s": round(cpu_seconds(pid), 3)}
            for pid in (root, *descendants(root))]


class PeakRss:
    """Polls a process tree; :meth:`result` gives per-process and total peaks.

    - ``peak_rss_mib``: the sum of each process's ``VmHWM`` (the kernel's own high-water mark,
      so a peak between two polls is not missed): an upper bound, which counts a shared page
      (the rings, V8's library code) once per process that maps it, and adds processes that
      never lived at the same time (``run``'s short-lived JavaScript check).
    - ``unique_mib``: the largest sum, over the polls, of the processes' resident memory at that
      moment with the shared-memory rings counted once (each process's ``VmRSS`` without its
      ``RssShmem``, plus the resident size of the ``/dev/shm`` segments they map). It counts only
      processes alive together, and still counts a library's pages in every process that maps
      it (as RSS does), so it does not depend on what else runs on the machine. Sampled every
      poll: a peak shorter than a poll can be missed.
    """

    def __init__(self, root_pid: int) -> None:
        self.root = root_pid
        self.peaks: dict[int, tuple[str, int]] = {}
        self.shmem: dict[int, int] = {}
        self.together_peak = 0

    def sample(self) -> None:
        pids = (self.root, *descendants(self.root))
        together = 0
        for pid in pids:
            st = _status(pid)
            hwm = st.get("VmHWM", "")
            if not hwm:
                continue
            kib = int(hwm.split()[0])
            prev = self.peaks.get(pid)
            name = process_role(pid, self.root)  # (a spawned stage takes its title a moment after it starts)
            self.peaks[pid] = (name, max(kib, prev[1] if prev is not None else 0))
            shm = int(st.get("RssShmem", "0 kB").split()[0])
            self.shmem[pid] = max(self.shmem.get(pid, 0), shm)
            together += int(st.get("VmRSS", "0 kB").split()[0]) - shm
        together += _segments_kib(pids)
        self.together_peak = max(self.together_peak, together)

    def result(self) -> dict[str, Any]:
        procs = [{"pid": pid, "name": name, "peak_rss_mib": round(kib / 1024, 1),
                  "peak_shared_mib": round(self.shmem.get(pid, 0) / 1024, 1)}
                 for pid, (name, kib) in sorted(self.peaks.items())]
        total = sum(kib for _, kib in self.peaks.values())
        return {
            "peak_rss_mib": round(total / 1024, 1),
            "unique_mib": round(min(self.together_peak, total) / 1024, 1),
            "processes": procs,
        }


def _segments_kib(pids: tuple[int, ...]) -> int:
    """Resident KiB of the POSIX shared-memory segments these processes map (each once)."""
    seen: set[str] = set()
    kib = 0
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            parts = line.split(None, 5)
            path = parts[5].strip() if len(parts) > 5 else ""
            if path.startswith("/dev/shm/") and path not in seen:
                seen.add(path)
                with contextlib.suppress(OSError):
                    kib += os.stat(path).st_blocks // 2
    return kib
