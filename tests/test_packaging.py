"""The wheel's contents, checked from the packaging config (building a wheel needs a fresh
setuptools and a compile: too slow for the unit suite)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_compiled_module_has_a_stub_that_ships_in_the_wheel() -> None:
    cfg = _setuptools()
    assert "deltaforge._core" in cfg["packages"]
    core = ROOT / cfg["package-dir"]["deltaforge._core"]
    pyx = sorted(p.stem for p in core.glob("*.pyx"))
    assert pyx, f"no .pyx in {core}"
    stubs = sorted(p.name for p in core.glob("*.pyi"))
    assert stubs == [f"{name}.pyi" for name in pyx]  # one stub per compiled module, nothing stale
    patterns = cfg["package-data"]["deltaforge._core"]
    for stub in stubs:
        assert any(fnmatch.fnmatch(stub, pat) for pat in patterns), f"{stub} not in package data {patterns}"
    # the package is typed (PEP 561), so checkers read the stubs
    assert "py.typed" in cfg["package-data"]["deltaforge"]
    assert (ROOT / "deltaforge" / "py.typed").is_file()


def test_tests_do_not_ship() -> None:
    assert not any(p == "tests" or p.startswith("tests.") for p in _setuptools()["packages"])


def test_the_cache_scripts_ship_in_the_wheel() -> None:
    """LeaseCache loads its Lua with importlib.resources: without the package data it cannot start."""
    cfg = _setuptools()
    assert "deltaforge.cache" in cfg["packages"]
    pkg = ROOT / "deltaforge" / "cache"
    lua = sorted(p.relative_to(pkg).as_posix() for p in pkg.rglob("*.lua"))
    assert lua == ["lua/acquire.lua", "lua/fill.lua", "lua/release.lua"]
    patterns = cfg["package-data"]["deltaforge.cache"]
    for name in lua:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns), f"{name} not in package data {patterns}"
