"""``deltaforge._accel``: which implementation loads, the debug log line, DELTAFORGE_REQUIRE_EXT.

Each case runs in a fresh interpreter (``_accel`` decides once, at import), with an import
hook that makes the compiled modules missing (ImportError) or broken (their init raises).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from deltaforge._accel import MODULES

_PROBE = r'''
import importlib.abc, importlib.machinery, json, logging, sys
mode, targets = sys.argv[1], set(sys.argv[2].split(",")) if sys.argv[2] else set()

class Hook(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in targets:
            return None
        if mode == "missing":
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise RuntimeError("broken build (raised by the test)")

sys.meta_path.insert(0, Hook())
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logger = logging.getLogger("deltaforge.accel")
logger.setLevel(logging.DEBUG)
logger.addHandler(Keep())
try:
    from deltaforge import _accel
except Exception as e:
    from deltaforge.errors import DeltaForgeError
    print(json.dumps({"error": str(e), "type": type(e).__name__,
                      "deltaforge_error": isinstance(e, DeltaForgeError), "log": records}))
else:
    print(json.dumps({"impl": _accel.IMPLEMENTATIONS, "log": records}))
'''

RESP, ROWS, COMMIT = "deltaforge._core.resp", "deltaforge._core.rowdecode", "deltaforge._core.streamcommit"


def _probe(mode: str, blocked: list[str], **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("DELTAFORGE_NO_EXT", "DELTAFORGE_REQUIRE_EXT")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, ",".join(blocked)], env={**base, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compiled_modules_load_and_say_so_once() -> None:
    got = _probe("missing", [], DELTAFORGE_REQUIRE_EXT="1")
    assert got["impl"] == {name: "cython" for name in MODULES}
    assert len(got["log"]) == len(MODULES)  # one line per module, at import only
    for line, name in zip(got["log"], MODULES, strict=True):
        assert line.startswith(f"{name}: compiled deltaforge._core.{name} ("), line


def test_a_missing_extension_falls_back_to_its_twin_and_logs_why() -> None:
    got = _probe("missing", [ROWS])
    assert got["impl"] == {**{name: "cython" for name in MODULES}, "rowdecode": "python"}
    assert any(line.startswith("rowdecode: pure-Python twin deltaforge.source.rowdecode (compiled "
                               f"{ROWS} not loadable: ImportError") for line in got["log"]), got["log"]


@pytest.mark.parametrize(("mode", "cause"), [("missing", "ImportError"), ("broken", "RuntimeError")])
def test_require_ext_makes_a_missing_or_broken_extension_fatal(mode: str, cause: str) -> None:
    got = _probe(mode, [RESP], DELTAFORGE_REQUIRE_EXT="1")
    assert got["type"] == "ExtensionMissing" and got["deltaforge_error"], got
    msg = got["error"]
    assert "\n" not in msg
    assert f"compiled module {RESP} does not load ({cause}:" in msg
    assert "pip install -e ." in msg and "python setup.py build_ext --inplace" in msg
    assert "C compiler" in msg


def test_a_broken_extension_without_require_ext_is_not_hidden() -> None:
    # only a missing module (ImportError) falls back silently; a crash in its init is a bug to see
    got = _probe("broken", [RESP])
    assert got["type"] == "RuntimeError" and "broken build" in got["error"]


def test_no_ext_wins_over_require_ext() -> None:
    got = _probe("missing", [f"deltaforge._core.{name}" for name in MODULES], DELTAFORGE_NO_EXT="1",
                 DELTAFORGE_REQUIRE_EXT="1")
    assert got["impl"] == {name: "python" for name in MODULES}
    assert all("DELTAFORGE_NO_EXT is set" in line for line in got["log"]) and len(got["log"]) == len(MODULES)


@pytest.mark.parametrize("name", ["framing", "eventbuf", "streamcommit"])
def test_the_new_compiled_modules_do_not_import_their_twins(name: str) -> None:
    got = _probe("missing", [MODULES[name]], DELTAFORGE_REQUIRE_EXT="1")
    assert got["impl"][name] == "cython"


def test_the_compiled_modules_do_not_import_their_twins() -> None:
    # with both twins unimportable, both compiled modules still load (the row decoder shares
    # its classification, rare types and messages with its twin through source/rowformat.py)
    got = _probe("missing", ["deltaforge.sink.resp_py", "deltaforge.source.rowdecode"], DELTAFORGE_REQUIRE_EXT="1")
    assert got["impl"]["resp"] == got["impl"]["rowdecode"] == "cython", got


def test_the_twins_share_rowformat_and_not_each_other() -> None:
    code = r"""
import json, sys
from deltaforge._core import rowdecode
before = set(sys.modules)
import deltaforge.source.rowdecode
print(json.dumps({"compiled_loaded_twin": "deltaforge.source.rowdecode" in before,
                  "shared": "deltaforge.source.rowformat" in before}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"compiled_loaded_twin": False, "shared": True}


def test_a_missing_commit_encoder_falls_back_to_its_twin_or_is_fatal() -> None:
    got = _probe("missing", [COMMIT])
    assert got["impl"]["streamcommit"] == "python"
    got = _probe("missing", [COMMIT], DELTAFORGE_REQUIRE_EXT="1")
    assert got["type"] == "ExtensionMissing" and f"compiled module {COMMIT} does not load" in got["error"]
