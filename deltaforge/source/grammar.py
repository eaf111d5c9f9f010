"""The two text grammars of the source config: start positions and table patterns.

This module is their only owner (DESIGN.md §8): :mod:`deltaforge.config` validates
with it, :mod:`deltaforge.preflight` checks against the server with it, and the
reader (:mod:`deltaforge.source.binlog`, :mod:`deltaforge.source.tables`) runs with
it, so a config that passes ``deltaforge check`` is read the same way at ``open()``.
GTID sets, their text included, are owned by :mod:`deltaforge.source.gtid`; this module
wraps its errors with the YAML path.
docs/configuration.md documents both grammars for users; keep the two in step.

Start position (``spec.source.config.start``), surrounding blanks ignored:

- ``latest`` | ``earliest`` (any letter case);
- ``<binlog file>:<pos>``: the file is a binlog base name ``<name>.<digits>`` (no
  directory, no blank, no ``:``), the position an integer >= 4 (the first event);
- a MariaDB GTID set ``d-s-n[,d-s-n...]``: domain and server id are 32-bit
  unsigned, the sequence number 64-bit unsigned, each domain at most once;
- a MySQL GTID set ``uuid:i[:i...][,uuid:i[:i...]...]``: ``uuid`` canonical
  8-4-4-4-12 hex, each interval ``n`` or ``n-m`` with 1 <= n <= m < 2^63, the
  intervals of one UUID not overlapping, each UUID at most once. Tagged GTIDs
  (MySQL 8.3+ ``uuid:tag:n``) are refused: the replication library cannot send them.
  Blanks and newlines after commas are allowed (``SHOW MASTER STATUS`` prints them)
  and removed.

Table pattern (each item of ``spec.source.config.tables``), surrounding blanks ignored:

- ``db.table``: exactly one ``.``; a surrounding pair of backticks on either part
  is stripped. The database part is always literal: the reader filters whole
  schemas before it looks at table names.
- ``%`` in the table part matches any run of characters (empty included), any
  number of times and anywhere (``app.order%``, ``app.%_archive``, ``app.%``);
- ``*`` only as the whole table part (``app.*``), the same as ``app.%``;
- ``_`` is a literal underscore, not SQL's one-character wildcard (table names are
  full of underscores);
- names are at most 64 characters and contain no blank, quote, slash, backslash or
  backtick; names compare case-sensitively (MySQL on Linux,
  ``lower_case_table_names=0``).

Every refusal is a :class:`~deltaforge.errors.ConfigError` naming the YAML path,
what was found and the form to write instead.
"""

from __future__ import annotations

import re

import msgspec

from deltaforge.errors import ConfigError
from deltaforge.model import Position
from deltaforge.source.gtid import GtidSyntaxError, check_gtid_set_text, looks_like_gtid_set

__all__ = [
    "START_PATH",
    "TABLES_PATH",
    "StartSpec",
    "TablePatternSpec",
    "parse_start",
    "parse_start_spec",
    "parse_table_pattern",
]

START_PATH = "spec.source.config.start"
TABLES_PATH = "spec.source.config.tables"

_FILE_POS = re.compile(r"(?P<file>[^\s:/\\]+\.\d+):(?P<pos>\d+)")
_FORMS = ("use latest, earliest, <binlog file>:<pos> (e.g. mysql-bin.000003:4) or a GTID set "
          "(MariaDB 0-1-42[,1-1-7], MySQL 3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42)")


class StartSpec(msgspec.Struct, frozen=True):
    """A parsed start position. ``kind``: latest | earliest | file | mariadb_gtid | mysql_gtid."""

    kind: str
    file: str = ""
    pos: int = 0
    gtid: str | None = None
    """Normalised GTID set text (blanks removed) for the two GTID kinds."""


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def parse_start_spec(start: object, path: str = START_PATH) -> StartSpec:
    """Parse a start position; raise :class:`ConfigError` naming ``path`` otherwise."""
    if not isinstance(start, str):
        raise ConfigError(path, f"expected a start position, found {start!r}", _FORMS)
    text = start.strip()
    low = text.lower()
    if low in ("latest", "earliest"):
        return StartSpec(kind=low)
    if not text:
        raise ConfigError(path, "the start position is empty", _FORMS)
    m = _FILE_POS.fullmatch(text)
    if m:
        pos = int(m["pos"])
        if pos < 4:
            raise ConfigError(path, f"binlog position {pos} is before the first event",
                              f"binlog positions start at 4: {m['file']}:4")
        return StartSpec(kind="file", file=m["file"], pos=pos)
    compact = re.sub(r"\s*,\s*", ",", text)
    if looks_like_gtid_set(compact):
        kind, gtid = _gtid_set(compact, start, path)
        return StartSpec(kind=kind, gtid=gtid)
    if ":" in text and not _FILE_POS.fullmatch(text):
        file, _, pos_text = text.rpartition(":")
        if pos_text.isdigit() and file and not re.search(r"\.\d+$", file):
            raise ConfigError(path, f"cannot read start position {_show(start)}: {_show(file)} is not a binlog "
                              "file name (<name>.<number>, no directory)",
                              "copy the file name from SHOW BINARY LOGS, e.g. mysql-bin.000003:4")
    raise ConfigError(path, f"cannot read start position {_show(start)}", _FORMS)


def parse_start(start: object, path: str = START_PATH) -> Position | str:
    """``latest`` | ``earliest`` (the keyword, lowercase) or the :class:`Position` to start at.

    A GTID start has ``file=""``: the reader asks the server where that set ends.
    """
    spec = parse_start_spec(start, path)
    if spec.kind in ("latest", "earliest"):
        return spec.kind
    if spec.kind == "file":
        return Position(file=spec.file, pos=spec.pos)
    return Position(file="", pos=0, gtid=spec.gtid)


def _gtid_set(text: str, original: str, path: str) -> tuple[str, str]:
    """(kind, text) of a GTID start, the grammar being :func:`deltaforge.source.gtid.check_gtid_set_text`."""
    try:
        flavor = check_gtid_set_text(text)
    except GtidSyntaxError as e:
        raise ConfigError(path, f"{e.detail} in start {_show(original)}", e.hint) from None
    return f"{flavor}_gtid", text


# --------------------------------------------------------------------------- table patterns

_BAD_NAME_CHARS = re.compile(r"[\s`'\"\\/]")
_MAX_IDENT = 64  # MySQL identifier length limit
_PATTERN_FORMS = "write db.table, db.* or a table name with % wildcards (db.order%, db.%_archive)"


class TablePatternSpec(msgspec.Struct, frozen=True):
    """A parsed table pattern: literal ``db``; ``table`` literal, or ``regex`` for wildcards."""

    text: str
    db: str
    table: str
    regex: str | None = None
    """Anchored-by-fullmatch regular expression of the table part, None for an exact name."""


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == "`" and name[-1] == "`":
        return name[1:-1]
    return name


def parse_table_pattern(pattern: object, path: str) -> TablePatternSpec:
    """Parse one ``spec.source.config.tables`` item; raise :class:`ConfigError` naming ``path``."""
    if not isinstance(pattern, str):
        raise ConfigError(path, f"expected a table pattern like app.users, found {pattern!r}", _PATTERN_FORMS)
    text = pattern.strip()
    db, dot, table = text.partition(".")
    db, table = _unquote(db.strip()), _unquote(table.strip())
    if not dot:
        raise ConfigError(path, f"table pattern {_show(text)} has no database",
                          f"qualify it: <db>.{text}" if text else _PATTERN_FORMS)
    if not db:
        raise ConfigError(path, f"table pattern {_show(text)} has an empty database name", _PATTERN_FORMS)
    if not table:
        raise ConfigError(path, f"table pattern {_show(text)} has an empty table name",
                          f"write {db}.<table> or {db}.* for every table")
    if "%" in db or "*" in db:
        raise ConfigError(path, f"table pattern {_show(text)} has a wildcard in the database name",
                          "name the database literally; list one pattern per database")
    if "." in table:
        raise ConfigError(path, f"table pattern {_show(text)} has more than one '.'", _PATTERN_FORMS)
    if table == "*":
        table = "%"
    elif "*" in table:
        raise ConfigError(path, f"table pattern {_show(text)}: '*' only stands for a whole table name",
                          f"write {db}.* for every table, or use % as the wildcard: "
                          f"{db}.{table.replace('*', '%')}")
    for part, what in ((db, "database"), (table.replace("%", ""), "table")):
        if _BAD_NAME_CHARS.search(part):
            raise ConfigError(path, f"table pattern {_show(text)}: the {what} name contains a space, "
                              "quote, slash or backtick", _PATTERN_FORMS)
        if len(part) > _MAX_IDENT:
            raise ConfigError(path, f"table pattern {_show(text)}: the {what} name is longer than "
                              f"{_MAX_IDENT} characters", "MySQL names are at most 64 characters")
    regex = None
    if "%" in table:
        # every character literal ("_" included), each % any run
        regex = ".*".join(re.escape(piece) for piece in table.split("%"))
    return TablePatternSpec(text=text, db=db, table=table, regex=regex)
