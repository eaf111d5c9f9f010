"""Fuzzing the row decoder: mutated rows-event bodies through both implementations.

``CI_BODIES`` mutated bodies per run of the suite (``LONG_BODIES``, ten times more, in the marked
long run: ``pytest -m fuzz_long tests/test_decode_fuzz.py``). Seeds are valid bodies of synthetic
schemas covering every decoder (tests/test_rowdecode_twins.py's ``SYNTH``, subsets of it, a table of
130 columns, a JSON-only table), for WRITE, DELETE and UPDATE (two bitmaps). Mutations: bit flips,
random bytes, truncations, extensions, inserted and deleted bytes, duplicated slices, and bodies of
random bytes and random length.

For every body, the compiled decoder, its pure twin and the compiled JSON path (the reader's
``BlockBuilder.add_rows``, which writes each value's JSON straight from the body) must

- all return rows (the same ones, compared with types and float bits; the JSON path's images
  byte for byte msgspec's encoding of the twin's) or all raise;
- raise nothing but :class:`DecodeError`, never another exception, a crash or a hang (a watchdog
  dumps the stacks and fails the run if the loop stops making progress);
- give the same one-line message, which names the table and the byte position, and the column
  (``db.table.column (TYPE)``) when one value is at fault.

The seed is fixed for CI (reproducible); ``DELTAFORGE_FUZZ_SEED`` picks another.
"""

from __future__ import annotations

import faulthandler
import os
import random
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest

from deltaforge.errors import DecodeError
from deltaforge.source import rowdecode as pure
from deltaforge.source import schema as S
from deltaforge.source.schema import ColumnSpec, TableSchema
from tests.test_eventbuf import compiled as compiled_eventbuf
from tests.test_eventbuf import encoded_images, json_images
from tests.test_rowdecode_twins import SYNTH, _norm, _row, _spec, compiled

CI_BODIES = 100_000
LONG_BODIES = 10 * CI_BODIES

Case = tuple[TableSchema, int, bytes, bytes | None, list[ColumnSpec], list[ColumnSpec]]


def _schemas(rng: random.Random) -> list[Case]:
    """(schema, kind, present, present2, columns of image 1, columns of image 2) to build seeds from."""
    cases: list[Case] = []
    full = TableSchema(db="fz", table="synth", columns=SYNTH, full_metadata=True)
    everyone = b"\xff" * ((len(SYNTH) + 7) // 8)
    for kind in (pure.WRITE, pure.DELETE):
        cases.append((full, kind, everyone, None, SYNTH, SYNTH))
    cases.append((full, pure.UPDATE, everyone, everyone, SYNTH, SYNTH))
    for k in range(12):  # small subsets: most bodies are short, so the run is quick
        chosen = sorted(rng.sample(range(len(SYNTH)), rng.randint(1, 6)))
        chosen2 = sorted(rng.sample(range(len(SYNTH)), rng.randint(1, 6)))
        bits = sum(1 << i for i in chosen).to_bytes(len(everyone), "little")
        bits2 = sum(1 << i for i in chosen2).to_bytes(len(everyone), "little")
        kind = (pure.WRITE, pure.DELETE, pure.UPDATE)[k % 3]
        sch = TableSchema(db="fz", table=f"sub{k}", columns=SYNTH, full_metadata=True)
        cases.append((sch, kind, bits, bits2 if kind == pure.UPDATE else None,
                      [SYNTH[i] for i in chosen], [SYNTH[i] for i in chosen2]))
    wide_cols = [_spec(f"w{i}_{c.name}", c.type, **{f: getattr(c, f) for f in c.__struct_fields__
                                                   if f not in ("name", "type")})
                 for i, c in enumerate(SYNTH * 2)][:130]
    wide = TableSchema(db="fz", table="wide", columns=wide_cols, full_metadata=True)
    wbits = b"\xff" * ((len(wide_cols) + 7) // 8)
    cases.append((wide, pure.WRITE, wbits, None, wide_cols, wide_cols))
    js = [_spec("id", S.LONG), _spec("j", S.JSON, length_size=4), _spec("j2", S.JSON, length_size=2)]
    jsch = TableSchema(db="fz", table="json", columns=js, full_metadata=True)
    cases.append((jsch, pure.WRITE, b"\x07", None, js, js))
    return cases


_JSON_DOCS = [
    b"\x04\x01", b"\x0c\x03abc", b"\x05\x07\x00", b"\x02\x01\x00\x07\x00\x05\x2a\x00",
    bytes.fromhex("00" "0200" "1500" "1200" "0100" "1300" "0200" "050100" "040000" "616263"),
    bytes.fromhex("00" "0100" "1e00" "0b00" "0100" "020c00" "6b" "0200" "1200" "040100" "0b0a00")
    + b"\x00\x00\x00\x00\x00\x00\x04\x40",
    b"\x0f\xfc\x02hi", b"\x0b" + b"\x00" * 7 + b"\x40",
]


def _json_value(col: ColumnSpec, rng: random.Random) -> bytes:
    doc = rng.choice(_JSON_DOCS)
    return len(doc).to_bytes(col.length_size, "little") + doc


def _image(cols: list[ColumnSpec], rng: random.Random) -> bytes:
    if all(c.type != S.JSON for c in cols):
        return _row(cols, rng)
    nulls, vals = 0, b""
    for i, c in enumerate(cols):
        if rng.random() < 0.1:
            nulls |= 1 << i
        elif c.type == S.JSON:
            vals += _json_value(c, rng)
        else:
            vals += _row([c], rng)[1:]
    return nulls.to_bytes((len(cols) + 7) // 8, "little") + vals


def _seed_body(case: Case, rng: random.Random) -> bytes:
    _, kind, _, _, cols, cols2 = case
    out = b""
    for _ in range(rng.randint(1, 3)):
        out += _image(cols, rng)
        if kind == pure.UPDATE:
            out += _image(cols2, rng)
    return out


def _mutate(body: bytes, rng: random.Random) -> bytes:
    b = bytearray(body)
    how = rng.randrange(9)
    if how == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b) * 8)
            b[i >> 3] ^= 1 << (i & 7)
    elif how == 1 and b:  # random bytes, often 0x00/0xff/0x80
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice([0, 0xFF, 0x80, 0x7F, rng.randrange(256)])
    elif how == 2:  # truncation
        del b[rng.randrange(len(b) + 1):]
    elif how == 3:  # extension
        b += rng.randbytes(rng.randint(1, 64))
    elif how == 4 and b:  # inserted bytes
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 4))
    elif how == 5 and b:  # deleted bytes
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 4)]
    elif how == 6 and b:  # a duplicated slice
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 32))
        b[j:j] = b[i:j]
    elif how == 7:  # random bytes of a random length
        return rng.randbytes(rng.choice([rng.randrange(8), rng.randrange(64), rng.randrange(600)]))
    else:  # a length prefix or count made huge: a word of 0xff somewhere
        if b:
            i = rng.randrange(len(b))
            b[i : i + 4] = b"\xff\xff\xff\x7f"
    return bytes(b)


class JsonPath:
    """The compiled reader's JSON path as a decoder: its images, or its error."""

    @staticmethod
    def decode_rows(schema: TableSchema, body: bytes, kind: int, present: bytes, present2: bytes | None) -> Any:
        return json_images(compiled_eventbuf, schema, body, kind, present, present2)


def _run(mod: Any, case: Case, body: bytes) -> tuple[str, Any]:
    schema, kind, present, present2, _, _ = case
    try:
        rows = mod.decode_rows(schema, body, kind, present, present2)
        return "ok", rows if mod is JsonPath else _norm(rows)
    except DecodeError as err:
        return "error", str(err)
    except BaseException as err:
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return "crash", f"{type(err).__name__}: {err}"


_COLUMN_MSG = re.compile(r"^fz\.(\w+)\.(\w+) \(([A-Z/()0-9_ ]+)\): ")


def _check_message(case: Case, msg: str) -> None:
    schema = case[0]
    assert "\n" not in msg, msg
    assert msg.startswith(f"fz.{schema.table}"), msg
    assert re.search(r"\bbyte \d+", msg), msg
    m = _COLUMN_MSG.match(msg)
    if m is not None:
        assert m.group(1) == schema.table and m.group(2) in {c.name for c in schema.columns}, msg


def fuzz(n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    cases = _schemas(rng)
    # fewer seeds of the big tables: most bodies are short, which keeps the CI run to seconds
    seeds = [(case, _seed_body(case, rng)) for case in cases for _ in range(2 if len(case[4]) > 20 else 8)]
    seen = {"ok": 0, "error": 0, "column_errors": 0}
    for k in range(n):
        case, body = seeds[rng.randrange(len(seeds))]
        bad = _mutate(body, rng)
        if rng.random() < 0.2:
            bad = _mutate(bad, rng)
        want = _run(pure, case, bad)
        got = _run(compiled, case, bad)
        as_json = _run(JsonPath, case, bad)
        where = f"seed {seed}, body {k}, table {case[0].table}, kind {case[1]}, body {bad.hex()}"
        assert want[0] != "crash", f"pure twin: {want[1]} ({where})"
        assert got[0] != "crash", f"compiled: {got[1]} ({where})"
        assert as_json[0] != "crash", f"JSON path: {as_json[1]} ({where})"
        assert got == want, f"{got} != {want} ({where})"
        if want[0] == "ok":
            images = encoded_images(pure.decode_rows(case[0], bad, case[1], case[2], case[3]))
            assert as_json == ("ok", images), f"JSON path: {as_json} != {images} ({where})"
        else:
            assert as_json == want, f"JSON path: {as_json} != {want} ({where})"
        if want[0] == "error":
            _check_message(case, want[1])
            seen["column_errors"] += bool(_COLUMN_MSG.match(want[1]))
        seen[want[0]] += 1
    return seen


@pytest.mark.parametrize("bodies", [
    pytest.param(CI_BODIES, id="ci"),
    pytest.param(LONG_BODIES, id="long", marks=pytest.mark.fuzz_long),
])
def test_mutated_bodies_agree_and_fail_clearly(bodies: int) -> None:
    seed = int(os.environ.get("DELTAFORGE_FUZZ_SEED", "20261130"))
    # a hang in either decoder: dump every thread's stack and end the run (not a speed assertion:
    # the CI amount takes seconds, the limit is far above it)
    faulthandler.dump_traceback_later(60 * bodies // 10_000 + 300, exit=True, file=sys.stderr)
    try:
        seen = fuzz(bodies, seed)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert seen["ok"] + seen["error"] == bodies
    # both outcomes are common, and many errors are pinned on one column
    assert seen["ok"] > bodies // 20 and seen["error"] > bodies // 4 and seen["column_errors"] > bodies // 10, seen


def test_the_fuzzer_finds_what_it_should() -> None:
    """The harness itself: a crash of either twin and a disagreement are caught, not swallowed."""
    case = _schemas(random.Random(1))[0]
    boom: Callable[..., Any] = lambda *a: 1 // 0  # noqa: E731

    class Fake:
        decode_rows = staticmethod(boom)

    assert _run(Fake, case, b"")[0] == "crash"
    assert _run(pure, case, b"\x00")[0] == "error"
    _check_message(case, _run(pure, case, b"\x00")[1])
