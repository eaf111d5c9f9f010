"""GTID sets: what a position has executed, and whether a transaction is in it.

The one owner of GTID *semantics* (DESIGN.md §5): positions compare by GTID wherever
the source has GTIDs, because binlog file names and offsets mean nothing on another
server of the topology. Two flavours, told apart by their text:

* MariaDB ``domain-server-seq[,domain-server-seq]``: a *GTID position*, one entry per
  replication domain, the last transaction applied in it. Sequence numbers only grow
  within a domain across the servers of one topology (a promoted replica goes on from
  the highest number it applied), so ``d-s-n`` is executed when the position's entry
  for domain ``d`` has a sequence number ``>= n``. The server id is informative.
* MySQL ``uuid:1-5:7[,uuid:...]`` (optionally ``uuid:tag:1-5``): an explicit set of
  intervals per source uuid; ``uuid:n`` is executed when ``n`` lies in an interval.

The empty text is the empty set (a fresh server). Parsing is cached: the sink compares
every event of its first batches against one checkpoint.

Hazard: MariaDB's model assumes ``gtid_strict_mode``-like behaviour (no two servers
writing the same domain at once). A multi-master setup writing one domain from two
servers breaks "higher seq = later" for every GTID-based tool, this one included.
"""

from __future__ import annotations

import functools
import re

_MARIA_ENTRY = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_MYSQL_ENTRY = re.compile(r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
                          r"((?::[A-Za-z_][A-Za-z0-9_]{0,31})?)((?::\d+(?:-\d+)?)+)$")


class GtidSet:
    """Executed transactions of one flavour. Immutable; build with :func:`parse_gtid_set`."""

    __slots__ = ("flavor", "mariadb", "mysql")

    def __init__(self, flavor: str, mariadb: dict[int, tuple[int, int]] | None = None,
                 mysql: dict[str, tuple[tuple[int, int], ...]] | None = None) -> None:
        self.flavor = flavor  # "mariadb" | "mysql" | "" (empty, either)
        self.mariadb = mariadb or {}  # domain -> (server, seq)
        self.mysql = mysql or {}  # "uuid[:tag]" -> sorted, merged closed intervals

    # -------------------------------------------------------------- queries
    def contains(self, gtid: str) -> bool:
        """Is the single transaction ``gtid`` (``d-s-n`` or ``uuid:n``) executed in this set?"""
        m = _MARIA_ENTRY.match(gtid)
        if m is not None:
            entry = self.mariadb.get(int(m[1]))
            return entry is not None and entry[1] >= int(m[3])
        source, _, number = gtid.rpartition(":")
        if not source or not number.isdigit():
            raise ValueError(f"not a single GTID: {gtid!r}")
        n = int(number)
        return any(lo <= n <= hi for lo, hi in self.mysql.get(source.lower(), ()))

    def issubset(self, other: GtidSet) -> bool:
        for domain, (_, seq) in self.mariadb.items():
            theirs = other.mariadb.get(domain)
            if theirs is None or theirs[1] < seq:
                return False
        for source, intervals in self.mysql.items():
            theirs_iv = other.mysql.get(source, ())
            for lo, hi in intervals:
                if not any(a <= lo and hi <= b for a, b in theirs_iv):
                    return False
        return True

    def intersection(self, other: GtidSet) -> GtidSet:
        maria: dict[int, tuple[int, int]] = {}
        for domain, mine in self.mariadb.items():
            theirs = other.mariadb.get(domain)
            if theirs is not None:
                maria[domain] = mine if mine[1] <= theirs[1] else theirs
        mysql: dict[str, tuple[tuple[int, int], ...]] = {}
        for source, intervals in self.mysql.items():
            out = [(max(lo, a), min(hi, b)) for lo, hi in intervals for a, b in other.mysql.get(source, ())
                   if max(lo, a) <= min(hi, b)]
            if out:
                mysql[source] = tuple(sorted(out))
        return GtidSet(self.flavor or other.flavor, maria, mysql)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GtidSet) and self.mariadb == other.mariadb and self.mysql == other.mysql

    def __hash__(self) -> int:
        return hash(str(self))

    def __bool__(self) -> bool:
        return bool(self.mariadb or self.mysql)

    def __str__(self) -> str:
        if self.mariadb:
            return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self.mariadb.items()))
        return ",".join(source + "".join(f":{lo}" if lo == hi else f":{lo}-{hi}" for lo, hi in iv)
                        for source, iv in sorted(self.mysql.items()))

    def __repr__(self) -> str:
        return f"GtidSet({str(self)!r})"


def _merge(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def parse_gtid_set(text: str) -> GtidSet:
    """Parse a MariaDB GTID position or a MySQL GTID set. Raises ValueError naming the bad part."""
    maria: dict[int, tuple[int, int]] = {}
    mysql: dict[str, list[tuple[int, int]]] = {}
    for raw in text.replace("\n", "").split(","):
        part = raw.strip()
        if not part:
            continue
        m = _MARIA_ENTRY.match(part)
        if m is not None:
            domain, server, seq = int(m[1]), int(m[2]), int(m[3])
            if domain not in maria or maria[domain][1] < seq:
                maria[domain] = (server, seq)
            continue
        m = _MYSQL_ENTRY.match(part)
        if m is None:
            raise ValueError(f"{part!r} is neither a MariaDB GTID (domain-server-seq) nor a MySQL GTID "
                             f"set entry (uuid:1-5)")
        source = (m[1] + m[2]).lower()
        for iv in m[3].split(":")[1:]:
            lo, _, hi = iv.partition("-")
            a, b = int(lo), int(hi or lo)
            if a == 0 or b < a:
                raise ValueError(f"{part!r}: interval {iv!r} must be n or n-m with 1 <= n <= m")
            mysql.setdefault(source, []).append((a, b))
    if maria and mysql:
        raise ValueError(f"{text!r} mixes MariaDB and MySQL GTIDs")
    flavor = "mariadb" if maria else "mysql" if mysql else ""
    return GtidSet(flavor, maria, {k: _merge(v) for k, v in mysql.items()})


def gtid_set_contains(gtid_set: str, gtid: str) -> bool:
    return parse_gtid_set(gtid_set).contains(gtid)
