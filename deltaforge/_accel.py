"""The one place that imports compiled modules from ``_core``.

Each compiled module has a pure-Python twin with identical output. Environment switches:

- ``DELTAFORGE_NO_EXT=1`` forces the twins (the test suite runs both ways).
- ``DELTAFORGE_REQUIRE_EXT=1`` makes a missing or broken compiled module fatal
  (:class:`ExtensionMissing`, one line naming the module and the fix) instead of a silent,
  slower fallback. The compiled run of the test suite sets it, so a build that failed to
  compile cannot pass as green on the twins. ``NO_EXT`` wins when both are set.

``IMPLEMENTATIONS`` maps each module to the one loaded (``"cython"`` or ``"python"``);
``IMPLEMENTATION`` (the RESP encoder's) and ``ROWDECODE_IMPLEMENTATION`` are shorthands;
``streamcommit`` is the sink's commit round trip (request in one buffer, reply scan);
``ring`` the shared-memory ring between the engine's processes.
Which one loaded, and why a twin did, is logged once at debug level (``deltaforge.accel``).

Hazard: callers bind the module object (``from deltaforge._accel import rowdecode``), so
anything that wants to wrap a function must patch the attribute on *that* module object.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

from deltaforge.errors import DeltaForgeError

log = logging.getLogger("deltaforge.accel")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


_FORCE_PURE = _flag("DELTAFORGE_NO_EXT")
_REQUIRE = _flag("DELTAFORGE_REQUIRE_EXT") and not _FORCE_PURE


class ExtensionMissing(DeltaForgeError, ImportError):
    """A compiled ``_core`` module is missing or broken while ``DELTAFORGE_REQUIRE_EXT=1``."""

    exit_code = 2


def _load(name: str, compiled: str, twin: str) -> ModuleType:
    if _FORCE_PURE:
        log.debug("%s: pure-Python twin %s (DELTAFORGE_NO_EXT is set)", name, twin)
        return importlib.import_module(twin)
    try:
        module = importlib.import_module(compiled)
    except ImportError as e:
        reason = f"{type(e).__name__}: {e}"
    except Exception as e:  # a broken build may fail in its module init with anything
        if not _REQUIRE:
            raise
        reason = f"{type(e).__name__}: {e}"
    else:
        log.debug("%s: compiled %s (%s)", name, compiled, getattr(module, "__file__", "?"))
        return module
    if _REQUIRE:
        raise ExtensionMissing(
            f"DELTAFORGE_REQUIRE_EXT=1 but the compiled module {compiled} does not load ({reason})",
            "build it with `pip install -e .` or `python setup.py build_ext --inplace` (needs a C "
            "compiler, e.g. apt-get install build-essential), or unset DELTAFORGE_REQUIRE_EXT to "
            "run on the slower pure-Python twins")
    log.debug("%s: pure-Python twin %s (compiled %s not loadable: %s)", name, twin, compiled, reason)
    return importlib.import_module(twin)


#: every compiled module (in load order) and its pure-Python twin
MODULES: dict[str, str] = {
    "resp": "deltaforge.sink.resp_py",
    "rowdecode": "deltaforge.source.rowdecode",
    "framing": "deltaforge.source.framing",
    "eventbuf": "deltaforge.source.eventbuf",
    "streamcommit": "deltaforge.sink.streamcommit_py",
    "ring": "deltaforge.runtime.ring",
}

resp = _load("resp", "deltaforge._core.resp", MODULES["resp"])
rowdecode = _load("rowdecode", "deltaforge._core.rowdecode", MODULES["rowdecode"])
framing = _load("framing", "deltaforge._core.framing", MODULES["framing"])
eventbuf = _load("eventbuf", "deltaforge._core.eventbuf", MODULES["eventbuf"])
streamcommit = _load("streamcommit", "deltaforge._core.streamcommit", MODULES["streamcommit"])
ring = _load("ring", "deltaforge._core.ring", MODULES["ring"])

IMPLEMENTATIONS: dict[str, str] = {name: globals()[name].IMPLEMENTATION for name in MODULES}
IMPLEMENTATION = IMPLEMENTATIONS["resp"]
ROWDECODE_IMPLEMENTATION = IMPLEMENTATIONS["rowdecode"]
