"""The one place that imports compiled modules from ``_core``.

Each compiled module has a pure-Python twin with identical output. Set
``DELTAFORGE_NO_EXT=1`` to force the twins (the test suite runs both ways).
``IMPLEMENTATIONS`` maps each module to the one loaded (``"cython"`` or ``"python"``);
``IMPLEMENTATION`` (the RESP encoder's) and ``ROWDECODE_IMPLEMENTATION`` are shorthands.

Hazard: callers bind the module object (``from deltaforge._accel import rowdecode``), so
anything that wants to wrap a function must patch the attribute on *that* module object.
"""

from __future__ import annotations

import os
from types import ModuleType

_FORCE_PURE = os.environ.get("DELTAFORGE_NO_EXT", "") not in ("", "0")


def _load(compiled: str, twin: str) -> ModuleType:
    import importlib

    if not _FORCE_PURE:
        try:
            return importlib.import_module(compiled)
        except ImportError:
            pass
    return importlib.import_module(twin)


resp = _load("deltaforge._core.resp", "deltaforge.sink.resp_py")
rowdecode = _load("deltaforge._core.rowdecode", "deltaforge.source.rowdecode")

IMPLEMENTATIONS: dict[str, str] = {
    "resp": "python" if _FORCE_PURE else resp.IMPLEMENTATION,
    "rowdecode": "python" if _FORCE_PURE else rowdecode.IMPLEMENTATION,
}
IMPLEMENTATION = IMPLEMENTATIONS["resp"]
ROWDECODE_IMPLEMENTATION = IMPLEMENTATIONS["rowdecode"]
