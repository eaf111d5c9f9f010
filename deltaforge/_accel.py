"""The one place that imports compiled modules from ``_core``.

Each compiled module has a pure-Python twin with identical output. Set
``DELTAFORGE_NO_EXT=1`` to force the twins (the test suite runs both ways).
``IMPLEMENTATION`` says which one is loaded (``"cython"`` or ``"python"``).
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

IMPLEMENTATION = "python" if _FORCE_PURE else resp.IMPLEMENTATION
