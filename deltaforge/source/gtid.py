"""GTID sets: their text, what a position has executed, and whether a transaction is in it.

The one owner of GTID sets (DESIGN.md §5, §8): the strict text grammar used for
``spec.source.config.start`` (:func:`check_gtid_set_text`, wrapped with the YAML path
by :mod:`deltaforge.source.grammar`) and the semantics every comparison of positions
uses (:func:`parse_gtid_set`, lenient: it also reads what servers and checkpoints
hold). Positions compare by GTID wherever the source has GTIDs, because binlog file
names and offsets mean nothing on another server of the topology. Two flavours,
told apart by their text:

* MariaDB ``domain-server-seq[,domain-server-seq]``: a *GTID position*, one entry per
  replication domain, the last transaction applied in it. Sequence numbers only grow
  within a domain across the servers of one topology (a promoted replica goes on from
  the highest number it applied), so ``d-s-n`` is executed when the position's entry
  for domain ``d`` has a sequence number ``>= n``. The server id is informative.
  Domain and server id are 32-bit unsigned, the sequence number 64-bit unsigned.
* MySQL ``uuid:1-5:7[,uuid:...]``: an explicit set of intervals per source uuid
  (canonical 8-4-4-4-12 hex), each ``n`` or ``n-m`` with ``1 <= n <= m < 2^63``;
  ``uuid:n`` is executed when ``n`` lies in an interval. Tagged GTIDs (MySQL 8.3+
  ``uuid:tag:n``) are read from servers but refused as a start: the replication
  library cannot send them.

The empty text is the empty set (a fresh server). Parsing is cached: the sink compares
every event of its first batches against one checkpoint.

Hazard: MariaDB's model assumes ``gtid_strict_mode``-like behaviour (no two servers
writing the same domain at once). A multi-master setup writing one domain from two
servers breaks "higher seq = later" for every GTID-based tool, this one included.
"""

from __future__ import annotations

import functools
import re

_UUID_TEXT = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_TAG_TEXT = r"[A-Za-z_][A-Za-z0-9_]{0,31}"
_MARIA_ENTRY = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_MYSQL_ENTRY = re.compile(rf"^({_UUID_TEXT})((?::{_TAG_TEXT})?)((?::\d+(?:-\d+)?)+)$")
_UUID = re.compile(_UUID_TEXT)
_TAG = re.compile(_TAG_TEXT)
_INTERVAL = re.compile(r"(\d+)(?:-(\d+))?")
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_I63 = 2**63 - 1


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


# --------------------------------------------------------------------------- tracking (the reader, per transaction)


class MariaGtidState:
    """MariaDB GTID position: the last ``domain-server-seq`` applied per domain."""

    __slots__ = ("domains",)

    def __init__(self, text: str | None = None) -> None:
        self.domains: dict[str, str] = {}
        for part in (text or "").split(","):
            part = part.strip()
            if part:
                self.domains[part.split("-", 1)[0]] = part

    def apply(self, gtid: str) -> str:
        """Record ``gtid`` as applied (in place); returns the new position text.

        Called once per transaction by the reader: with one domain (the usual topology) the
        text is the GTID itself, no sorting or joining.
        """
        domain = gtid[:gtid.index("-")]
        domains = self.domains
        if len(domains) <= 1 and (not domains or domain in domains):
            domains[domain] = gtid
            return gtid
        domains[domain] = gtid
        return str(self)

    def with_gtid(self, gtid: str) -> str:
        merged = dict(self.domains)
        merged[gtid.split("-", 1)[0]] = gtid
        return ",".join(merged[d] for d in sorted(merged, key=int))

    def __str__(self) -> str:
        return ",".join(self.domains[d] for d in sorted(self.domains, key=int))


def mysql_gtid_add(gtid_set: str | None, gtid: str) -> str:
    """Add ``uuid:n`` to a MySQL GTID set string (interval arithmetic via mysql-replication's GtidSet)."""
    if gtid_set and "," not in gtid_set:
        # The reader's case, once per transaction: one server's set "uuid:1-N" growing by uuid:N+1.
        sid, _, gno = gtid.rpartition(":")
        if gtid_set.startswith(sid + ":") and gno.isdigit():
            head, colon, last = gtid_set[len(sid) + 1:].rpartition(":")
            first, _, end = last.partition("-")
            if (end or first).isdigit() and int(end or first) + 1 == int(gno):
                return f"{sid}:{head}{colon}{first}-{gno}"
    from pymysqlreplication.gtid import Gtid, GtidSet

    current = GtidSet(gtid_set or "")
    current += Gtid(gtid)
    return str(current)


class GtidSyntaxError(ValueError):
    """A GTID set text that :func:`check_gtid_set_text` refuses: ``detail`` and the form to write (``hint``)."""

    def __init__(self, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


_MARIA_HINT = "write domain-server-sequence, comma-separated: 0-1-42,1-2-7"
_MYSQL_HINT = "write uuid:first-last[:first-last], comma-separated, e.g. 3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42"


def looks_like_gtid_set(text: str) -> bool:
    """Does ``text`` (blanks removed) start like a GTID set rather than a ``file:pos``?"""
    first = text.split(",", 1)[0]
    return bool(_UUID.match(first) or _MARIA_ENTRY.match(first))


def check_gtid_set_text(text: str) -> str:
    """The strict grammar of a GTID set given by a user; returns ``"mariadb"`` or ``"mysql"``.

    ``text`` has its blanks around commas removed. Raises :class:`GtidSyntaxError`.
    """
    parts = text.split(",")
    if _UUID.match(parts[0]):
        _check_mysql(parts)
        return "mysql"
    _check_mariadb(parts)
    return "mariadb"


def _check_mariadb(parts: list[str]) -> None:
    seen: set[int] = set()
    for part in parts:
        m = _MARIA_ENTRY.match(part)
        if m is None:
            raise GtidSyntaxError(f"cannot read MariaDB GTID {part!r}", _MARIA_HINT)
        domain, server, seq = int(m[1]), int(m[2]), int(m[3])
        if domain > _U32 or server > _U32 or seq > _U64:
            raise GtidSyntaxError(f"MariaDB GTID {part} is out of range",
                                  "domain and server id are at most 4294967295, the sequence number 2^64-1")
        if domain in seen:
            raise GtidSyntaxError(f"domain {domain} is named twice",
                                  "give one GTID per domain (the last one applied, as gtid_binlog_pos shows it)")
        seen.add(domain)


def _check_mysql(parts: list[str]) -> None:
    seen: set[str] = set()
    for part in parts:
        uuid, colon, rest = part.partition(":")
        if not _UUID.fullmatch(uuid) or not colon or not rest:
            raise GtidSyntaxError(f"cannot read MySQL GTID set element {part!r}", _MYSQL_HINT)
        key = uuid.lower()
        if key in seen:
            raise GtidSyntaxError(f"server UUID {uuid} is named twice",
                                  "list every interval of one UUID in one element: uuid:1-5:7-9")
        seen.add(key)
        last = 0
        for item in rest.split(":"):
            m = _INTERVAL.fullmatch(item)
            if m is None:
                if _TAG.fullmatch(item):
                    raise GtidSyntaxError(f"the GTID tag {item!r}: tagged GTIDs (MySQL 8.3+) are not supported",
                                          "start from untagged GTIDs or file:pos")
                raise GtidSyntaxError(f"cannot read GTID interval {item!r}", _MYSQL_HINT)
            a = int(m[1])
            b = int(m[2]) if m[2] is not None else a
            if a < 1 or b < a or b > _I63:
                raise GtidSyntaxError(f"GTID interval {item} is empty or out of range",
                                      "intervals are first-last with 1 <= first <= last")
            if a <= last:
                raise GtidSyntaxError(f"GTID intervals of {uuid} overlap or are out of order",
                                      "list intervals in ascending order without overlap: uuid:1-5:7-9")
            last = b
