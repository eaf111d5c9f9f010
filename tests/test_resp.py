"""The compiled RESP encoder and its pure-Python twin produce identical bytes.

The twin is the oracle; ``deltaforge._accel`` is the only production import and
must load the compiled module unless ``DELTAFORGE_NO_EXT=1``.
"""

from __future__ import annotations

import importlib
import os
import random

import hiredis
import pytest

from deltaforge import _accel
from deltaforge.sink import resp_py

compiled = importlib.import_module("deltaforge._core.resp")

CASES: list[list[list[object]]] = [
    [],
    [[]],
    [[b""]],
    [[""]],
    [["PING"]],
    [[b"SET", "k", 0]],
    [[b"XADD", "s", b"*", b"df-event", b'{"a":1}', "event_id", "e1"]],
    [["SET", "ключ", "värde ✓ 🚀"]],
    [["SET", "k", -1], ["SET", "k", 2**63 - 1], ["SET", "k", -(2**63)], ["SET", "k", 10**30]],
    [["SET", "k", b"\r\n\x00\xff"]],
    [["SET", "k", b"x" * 1_000_000]],
    [["SET", "k", "é" * 300_000]],
    [[bytearray(b"ba"), memoryview(b"mv")]],
    [["MULTI"], *[["XADD", f"s{i}", "*", "f", str(i) * i] for i in range(200)], ["EXEC"]],
]


@pytest.mark.parametrize("commands", CASES, ids=lambda c: f"{len(c)}cmds")
def test_identical_bytes(commands: list[list[object]]) -> None:
    expected = resp_py.encode_commands(commands)
    assert compiled.encode_commands(commands) == expected


def test_identical_on_random_inputs() -> None:
    rng = random.Random(1234)

    def arg() -> object:
        kind = rng.randrange(4)
        if kind == 0:
            return rng.randbytes(rng.randrange(0, 300))
        if kind == 1:
            return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0xA0, 0x2FFF), 0x1F600)))
                           for _ in range(rng.randrange(0, 60)))
        if kind == 2:
            return rng.randrange(-(2**70), 2**70)
        return rng.randrange(0, 10)

    for _ in range(300):
        commands = [[arg() for _ in range(rng.randrange(0, 12))] for _ in range(rng.randrange(0, 20))]
        assert compiled.encode_commands(commands) == resp_py.encode_commands(commands)


def test_output_parses_as_resp_arrays() -> None:
    # Requests are arrays of bulk strings; hiredis parses them back to the arguments.
    commands = [["SET", "ключ", 42], [b"GET", b"\r\n"]]
    reader = hiredis.Reader()
    reader.feed(compiled.encode_commands(commands))
    assert reader.gets() == [b"SET", "ключ".encode(), b"42"]
    assert reader.gets() == [b"GET", b"\r\n"]
    assert reader.gets() is False


def test_encode_command_matches() -> None:
    assert compiled.encode_command("SET", "k", 1) == resp_py.encode_command("SET", "k", 1) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n"
    )


@pytest.mark.parametrize("mod", [compiled, resp_py], ids=["cython", "python"])
def test_rejects_other_types(mod: object) -> None:
    with pytest.raises(TypeError, match="RESP argument"):
        mod.encode_commands([["SET", "k", 1.5]])  # type: ignore[attr-defined]


def test_accel_loads_the_expected_implementation() -> None:
    forced_pure = os.environ.get("DELTAFORGE_NO_EXT", "") not in ("", "0")
    expected = "python" if forced_pure else "cython"
    assert _accel.IMPLEMENTATION == expected
    assert _accel.resp.IMPLEMENTATION == expected
    assert compiled.IMPLEMENTATION == "cython"
    assert resp_py.IMPLEMENTATION == "python"
