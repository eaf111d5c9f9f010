"""Which tables a pipeline captures: ``spec.source.config.tables``.

The pattern grammar (``db.table``, ``db.*``, ``%`` anywhere in the table part,
literal ``_``, literal database) is owned by :mod:`deltaforge.source.grammar`;
this module only matches parsed patterns against ``(db, table)`` pairs.

``matches`` is called once per rows event on the hot path: results are cached
per ``(db, table)``. The cache is bounded by the number of tables the server
writes to, so it does not need eviction in practice; it is cleared if it ever
grows past ``_CACHE_LIMIT`` to keep memory bounded against pathological servers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from deltaforge.errors import ConfigError
from deltaforge.source.grammar import TABLES_PATH, parse_table_pattern

_CACHE_LIMIT = 100_000
_PATH = TABLES_PATH


class TablePattern:
    """One parsed item of ``spec.source.config.tables``."""

    __slots__ = ("db", "index", "regex", "table", "text")

    def __init__(self, text: str, index: int = 0) -> None:
        spec = parse_table_pattern(text, f"{_PATH}[{index}]")
        self.text = spec.text
        self.index = index
        self.db = spec.db
        self.table = spec.table
        self.regex: re.Pattern[str] | None = re.compile(spec.regex, re.DOTALL) if spec.regex is not None else None

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
