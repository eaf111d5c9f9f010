"""Cache-side helpers for applications whose caches DeltaForge invalidates.

:class:`LeaseCache` fills the cache under a lease that any delete of the key revokes, so a reader
that loaded a row before a commit cannot write it back after the commit's invalidation
(``deltaforge/cache/lease.py``; the protocol for other languages: ``docs/cache-protocol.md``).
"""

from __future__ import annotations

from deltaforge.cache.lease import (
    LEASE_PREFIX,
    NEGATIVE_MARKER,
    RESERVED_PREFIX,
    SCRIPT_NAMES,
    LeaseCache,
    LeaseStats,
    LoaderValueError,
    lua_source,
)

__all__ = [
    "LEASE_PREFIX",
    "NEGATIVE_MARKER",
    "RESERVED_PREFIX",
    "SCRIPT_NAMES",
    "LeaseCache",
    "LeaseStats",
    "LoaderValueError",
    "lua_source",
]
