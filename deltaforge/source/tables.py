"""Which tables a pipeline captures: ``spec.source.config.tables``.

Pattern grammar (one string per list item):

- ``db.table``   exactly that table;
- ``db.*``       every table of ``db``;
- ``db.pre%``    ``%`` (or ``*``) matches any run of characters, anywhere in the table
  part (``app.order%``, ``app.%_archive``); ``_`` is a literal underscore, not
  SQL's single-character wildcard, because table names are full of underscores.

The database part must be a literal name: the reader filters whole schemas early
(``schemas()``) before it looks at table names, and a preflight can only list
tables of databases it knows. Names compare case-sensitively, like MySQL on Linux
with ``lower_case_table_names=0``; a surrounding pair of backticks is stripped.

Hazard: the first ``.`` separates database and table, so a database name cannot
contain a dot (MySQL allows it quoted; nobody does it).

``matches`` is called once per rows event on the hot path: results are cached
per ``(db, table)``. The cache is bounded by the number of tables the server
writes to, so it does not need eviction in practice; it is cleared if it ever
grows past ``_CACHE_LIMIT`` to keep memory bounded against pathological servers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from deltaforge.errors import ConfigError

_CACHE_LIMIT = 100_000
_WILDCARDS = ("%", "*")
_PATH = "spec.source.config.tables"


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == "`" and name[-1] == "`":
        return name[1:-1]
    return name


class TablePattern:
    """One parsed item of ``spec.source.config.tables``."""

    __slots__ = ("db", "index", "regex", "table", "text")

    def __init__(self, text: str, index: int = 0) -> None:
        path = f"{_PATH}[{index}]"
        if not isinstance(text, str):
            raise ConfigError(path, f"expected a string like app.users, found {text!r}",
                              "write db.table, db.* or db.prefix%")
        self.text = text.strip()
        self.index = index
        db, dot, table = self.text.partition(".")
        db, table = _unquote(db.strip()), _unquote(table.strip())
        if not dot or not db or not table:
            raise ConfigError(path, f"{text!r} is not db.table",
                              "write db.table, db.* or db.prefix% (the database is required)")
        if any(w in db for w in _WILDCARDS):
            raise ConfigError(path, f"{text!r} has a wildcard in the database name",
                              "name the database literally and list one pattern per database")
        self.db = db
        self.table = table
        self.regex: re.Pattern[str] | None = None
        if any(w in table for w in _WILDCARDS):
            # Escape everything, then turn each wildcard into ".*": "_" stays literal.
            body = "".join(".*" if ch in _WILDCARDS else re.escape(ch) for ch in table)
            self.regex = re.compile(body, re.DOTALL)

    @property
    def is_exact(self) -> bool:
        return self.regex is None

    def matches(self, db: str, table: str) -> bool:
        if db != self.db:
            return False
        if self.regex is None:
            return table == self.table
        return self.regex.fullmatch(table) is not None

    def __repr__(self) -> str:
        return f"TablePattern({self.text!r})"

    def __str__(self) -> str:
        return self.text


class TableFilter:
    """The union of the configured patterns."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = [TablePattern(p, i) for i, p in enumerate(patterns)]
        if not self.patterns:
            raise ConfigError(_PATH, "no tables listed", "list at least one table, e.g. - app.users")
        self._exact: set[tuple[str, str]] = set()
        self._wildcards: dict[str, list[re.Pattern[str]]] = {}
        for p in self.patterns:
            if p.regex is None:
                self._exact.add((p.db, p.table))
            else:
                self._wildcards.setdefault(p.db, []).append(p.regex)
        self._schemas = frozenset(p.db for p in self.patterns)
        self._cache: dict[tuple[str, str], bool] = {}

    def matches(self, db: str, table: str) -> bool:
        key = (db, table)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = self._compute(db, table)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _compute(self, db: str, table: str) -> bool:
        if (db, table) in self._exact:
            return True
        regexes = self._wildcards.get(db)
        return regexes is not None and any(r.fullmatch(table) for r in regexes)

    def schemas(self) -> set[str]:
        """The databases named by any pattern (a copy: callers may mutate it)."""
        return set(self._schemas)

    def __str__(self) -> str:
        return ", ".join(p.text for p in self.patterns)

    def __repr__(self) -> str:
        return f"TableFilter([{', '.join(repr(p.text) for p in self.patterns)}])"
