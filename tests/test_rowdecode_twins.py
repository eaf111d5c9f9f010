"""The compiled row decoder and its pure-Python twin are interchangeable.

The twin (``deltaforge.source.rowdecode``) is the specification and the oracle: on every
input both return identical rows (same key order, value types and values, floats compared
by their repr) or both raise DecodeError with the same message. Inputs: real binlog rows
of a table with every type (insert/update/delete), 2,000 random rows written to MariaDB,
every prefix of a few bodies, random byte corruption, and hand-built bodies of synthetic
schemas (no server needed).
"""

from __future__ import annotations

import base64
import importlib
import os
import random
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from deltaforge import _accel
from deltaforge.errors import DecodeError
from deltaforge.source import rowdecode as pure
from deltaforge.source import schema as S
from deltaforge.source.schema import (
    ColumnSpec,
    TableSchema,
)
from deltaforge.testing import MariaDBServer
from tests.test_rowdecode import ALL_COLUMNS, _ddl, _insert_all_types, master_position, raw_rows

compiled = importlib.import_module("deltaforge._core.rowdecode")


Raw = tuple[TableSchema, bytes, int, bytes, "bytes | None"]


# ---------------------------------------------------------------------------- helpers


def _norm(v: Any) -> Any:
    """A comparable form that keeps dict key order, value types and float bits."""
    if isinstance(v, dict):
        return ("dict", [(k, _norm(x)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [_norm(x) for x in v])
    if isinstance(v, float):
        return ("float", repr(v))
    return (type(v).__name__, v)


def _fresh(schema: TableSchema) -> TableSchema:
    """A copy without cached plans, so each twin builds its own from scratch."""
    return TableSchema(db=schema.db, table=schema.table, columns=schema.columns,
                       full_metadata=schema.full_metadata)


def _outcome(mod: Any, schema: TableSchema, body: bytes, kind: int, present: bytes,
             present2: bytes | None) -> tuple[str, Any]:
    try:
        return "ok", _norm(mod.decode_rows(schema, body, kind, present, present2))
    except DecodeError as err:
        return "error", str(err)


def assert_twins_agree(schema: TableSchema, body: bytes, kind: int, present: bytes,
                       present2: bytes | None = None) -> str:
    """Both twins give the same rows or the same DecodeError; returns which it was."""
    want = _outcome(pure, schema, body, kind, present, present2)
    got = _outcome(compiled, schema, body, kind, present, present2)
    assert got == want, f"{schema.qualified} kind {kind} body {body.hex()}"
    return want[0]


def read_raw(server: MariaDBServer, start: tuple[str, int], db: str) -> list[Raw]:
    """Every rows event of ``db`` from ``start`` as (schema, body, kind, present, present2)."""
    return [(sch, body, kind, present, present2)
            for _table, sch, body, kind, present, present2 in raw_rows(server, start, db)]


def _truncations_and_corruptions(raws: list[Raw], rng: random.Random, corruptions: int) -> dict[str, int]:
    seen = {"ok": 0, "error": 0}
    for schema, body, kind, present, present2 in raws:
        for cut in range(len(body)):
            seen[assert_twins_agree(_fresh(schema), body[:cut], kind, present, present2)] += 1
        for _ in range(corruptions):
            bad = bytearray(body)
            for _ in range(rng.randint(1, 4)):
                bad[rng.randrange(len(bad))] = rng.randrange(256)
            seen[assert_twins_agree(schema, bytes(bad), kind, present, present2)] += 1
    return seen


# ------------------------------------------------------------------------- unit tests


def test_the_loaded_implementation() -> None:
    forced = os.environ.get("DELTAFORGE_NO_EXT", "") not in ("", "0")
    want = "python" if forced else "cython"
    assert _accel.ROWDECODE_IMPLEMENTATION == want
    assert _accel.IMPLEMENTATIONS["rowdecode"] == want
    assert _accel.rowdecode.IMPLEMENTATION == want
    assert _accel.rowdecode is (pure if forced else compiled)
    # the engine decodes through the builder _accel chose (whose JSON path is rowdecode's, see
    # test_eventbuf.py), and its error messages come from the matching decoder
    from deltaforge.source import binlog
    assert binlog.eventbuf is _accel.eventbuf
    assert _accel.eventbuf.IMPLEMENTATION == want
    assert compiled.IMPLEMENTATION == "cython" and pure.IMPLEMENTATION == "python"
    assert (compiled.WRITE, compiled.UPDATE, compiled.DELETE) == (pure.WRITE, pure.UPDATE, pure.DELETE)


def _spec(name: str, type_: int, **kw: Any) -> ColumnSpec:
    return ColumnSpec(name=name, type=type_, **kw)


# Synthetic columns covering every decoder (and the compiled module's T_PY fallbacks).
SYNTH: list[ColumnSpec] = [
    _spec("ti", S.TINY), _spec("tiu", S.TINY, unsigned=True),
    _spec("si", S.SHORT), _spec("siu", S.SHORT, unsigned=True),
    _spec("mi", S.INT24), _spec("miu", S.INT24, unsigned=True),
    _spec("i", S.LONG), _spec("iu", S.LONG, unsigned=True),
    _spec("bi", S.LONGLONG), _spec("biu", S.LONGLONG, unsigned=True),
    _spec("yr", S.YEAR), _spec("b1", S.BIT, bits=1), _spec("b10", S.BIT, bits=10),
    _spec("b64", S.BIT, bits=64), _spec("f", S.FLOAT), _spec("dbl", S.DOUBLE),
    _spec("d65", S.NEWDECIMAL, precision=65, decimals=30), _spec("d10", S.NEWDECIMAL, precision=10, decimals=2),
    _spec("d0", S.NEWDECIMAL, precision=20, decimals=0), _spec("d9", S.NEWDECIMAL, precision=18, decimals=9),
    _spec("d1", S.NEWDECIMAL, precision=1, decimals=1),
    _spec("dt", S.DATE), _spec("nd", S.NEWDATE),
    *[_spec(f"dt{n}", S.DATETIME2, fsp=n) for n in range(7)],
    *[_spec(f"ts{n}", S.TIMESTAMP2, fsp=n) for n in range(7)],
    *[_spec(f"tm{n}", S.TIME2, fsp=n) for n in range(7)],
    _spec("odt", S.DATETIME), _spec("odt3", S.DATETIME, fsp=3), _spec("otm", S.TIME),
    _spec("otm2", S.TIME, fsp=2), _spec("ots", S.TIMESTAMP), _spec("ots6", S.TIMESTAMP, fsp=6),
    _spec("u8", S.VARCHAR, charset="utf-8", max_length=40),
    _spec("u8l", S.VARCHAR, charset="utf-8", max_length=1200),
    _spec("l1", S.VARCHAR, charset="cp1252", max_length=50),
    _spec("gbk", S.VARCHAR, charset="gbk", max_length=50),
    _spec("u16", S.STRING, charset="utf-16-be", max_length=20),
    _spec("c10", S.STRING, charset="utf-8", max_length=40),
    _spec("cl1", S.STRING, charset="cp1252", max_length=5),
    _spec("tx", S.BLOB, charset="utf-8", length_size=2), _spec("ttx", S.BLOB, charset="cp1252", length_size=1),
    _spec("mtx", S.BLOB, charset="koi8_r", length_size=3),
    _spec("bn", S.STRING, max_length=4), _spec("vb", S.VARCHAR, max_length=300),
    _spec("bl", S.BLOB, length_size=2), _spec("lbl", S.BLOB, length_size=4),
    _spec("en", S.ENUM, size=1, enum_values=["small", "medium", "large"]),
    _spec("st", S.SET, size=1, set_values=["a", "b", "c", "d"]),
    _spec("g", S.GEOMETRY, length_size=4), _spec("j", S.JSON, length_size=4),
]


def _pack(col: ColumnSpec, rng: random.Random) -> bytes:
    """A random, mostly valid packed value of ``col`` (the pure module documents the layouts)."""
    t = col.type
    sizes = {S.TINY: 1, S.SHORT: 2, S.INT24: 3, S.LONG: 4, S.LONGLONG: 8, S.YEAR: 1, S.FLOAT: 4,
             S.DOUBLE: 8, S.DATE: 3, S.NEWDATE: 3, S.DATETIME: 8, S.TIME: 3, S.TIMESTAMP: 4}
    if t == S.FLOAT and rng.random() < 0.7:
        return struct.pack("<f", rng.choice([1.1, -0.5, 3.14159, 0.0, -0.0, 1e-40, 3.39e38,
                                             float("inf"), rng.uniform(-1e6, 1e6)]))
    if t == S.DOUBLE and rng.random() < 0.7:
        return struct.pack("<d", rng.choice([0.1, -2.2250738585072014e-308, rng.uniform(-1e300, 1e300)]))
    if t in (S.DATETIME, S.TIME, S.TIMESTAMP) and col.fsp:
        n = {S.DATETIME: pure._DATETIME_HIRES_BYTES, S.TIME: pure._TIME_HIRES_BYTES}.get(t)
        return rng.randbytes(n[col.fsp] if n else 4 + pure._FRAC_BYTES[col.fsp])
    if t in sizes:
        return rng.randbytes(sizes[t])
    if t == S.BIT:
        return rng.randbytes((col.bits + 7) >> 3)
    if t == S.NEWDECIMAL:
        intg = col.precision - col.decimals
        whole = rng.randrange(10**intg) if intg else 0
        frac = rng.randrange(10**col.decimals) if col.decimals else 0
        text = f"{'-' if rng.random() < 0.5 else ''}{whole}" + (f".{frac:0{col.decimals}d}" if col.decimals else "")
        return _decimal_bin(text, col.precision, col.decimals)
    if t in (S.DATETIME2, S.TIMESTAMP2, S.TIME2):
        base = {S.DATETIME2: 5, S.TIMESTAMP2: 4, S.TIME2: 3}[t]
        raw = bytearray(rng.randbytes(base + (col.fsp + 1) // 2))
        if t != S.TIMESTAMP2:
            raw[0] = 0x80 | raw[0] & 0x7F if rng.random() < 0.8 else raw[0]
        if t == S.TIMESTAMP2 and rng.random() < 0.1:
            raw[:4] = bytes(4)
        return bytes(raw)
    if t in (S.ENUM, S.SET):
        bad = rng.random() < 0.02  # an index/bitmask beyond the labels: DecodeError
        return bytes([(4 if bad else rng.randrange(4)) if t == S.ENUM else (16 if bad else rng.randrange(16))])
    if t == S.JSON:
        doc = rng.choice([b"\x04\x01", b"\x0c\x03abc", b"\x05\x07\x00", b"\x02\x01\x00\x07\x00\x05\x2a\x00"])
        return struct.pack("<I", len(doc)) + doc
    # strings and blobs
    alphabet = ["a", " ", "é", "🎉", "世", "\x00", "€"]
    if col.charset is None or t == S.GEOMETRY:
        data = rng.randbytes(rng.randrange(8))
    elif rng.random() < 0.2:
        data = rng.randbytes(rng.randrange(8))  # invalid in the charset: U+FFFD replacements
    else:
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(6)))
        if t == S.STRING:
            text = text.rstrip(" ")
        data = text.encode(col.charset, "replace")
    if t in (S.VARCHAR, S.STRING):
        prefix = bytes([len(data)]) if col.max_length < 256 else struct.pack("<H", len(data))
    else:
        prefix = len(data).to_bytes(col.length_size, "little")
    return prefix + data


def _decimal_bin(text: str, precision: int, scale: int) -> bytes:
    d = Decimal(text)
    digits = f"{abs(d):.{scale}f}"
    ip, _, fp = digits.partition(".")
    intg = precision - scale
    ip = ip.rjust(intg, "0")[-intg:] if intg else ""
    out = bytearray()
    lead = intg % 9
    if lead:
        out += int(ip[:lead]).to_bytes(pure._DIG2BYTES[lead], "big")
    for k in range(lead, intg, 9):
        out += int(ip[k : k + 9]).to_bytes(4, "big")
    for k in range(0, scale - scale % 9, 9):
        out += int(fp[k : k + 9]).to_bytes(4, "big")
    if scale % 9:
        out += int(fp[scale - scale % 9 :]).to_bytes(pure._DIG2BYTES[scale % 9], "big")
    out[0] ^= 0x80
    if d < 0:
        out = bytearray(b ^ 0xFF for b in out)
    return bytes(out)


def _row(cols: list[ColumnSpec], rng: random.Random) -> bytes:
    nulls = 0
    vals = b""
    for i, col in enumerate(cols):
        if rng.random() < 0.15:
            nulls |= 1 << i
        else:
            vals += _pack(col, rng)
    return nulls.to_bytes((len(cols) + 7) // 8, "little") + vals


def test_synthetic_rows_agree() -> None:
    rng = random.Random(7)
    schema = TableSchema(db="d", table="synth", columns=SYNTH, full_metadata=True)
    everyone = b"\xff" * ((len(SYNTH) + 7) // 8)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        body = b"".join(_row(SYNTH, rng) for _ in range(rng.randint(1, 3)))
        outcomes[assert_twins_agree(schema, body, pure.WRITE, everyone)] += 1
        outcomes[assert_twins_agree(schema, body, pure.DELETE, everyone)] += 1
    # both outcomes occur: random ENUM/SET indexes, JSON and old temporals are sometimes invalid
    assert outcomes["ok"] > 100 and outcomes["error"] > 10, outcomes


def test_synthetic_subsets_updates_truncation_and_corruption() -> None:
    rng = random.Random(11)
    raws: list[Raw] = []
    for _ in range(40):
        chosen = [i for i in range(len(SYNTH)) if rng.random() < 0.3] or [0]
        bits = sum(1 << i for i in chosen)
        present = bits.to_bytes((len(SYNTH) + 7) // 8, "little")
        chosen2 = [i for i in range(len(SYNTH)) if rng.random() < 0.3] or [1]
        present2 = sum(1 << i for i in chosen2).to_bytes((len(SYNTH) + 7) // 8, "little")
        sub = [SYNTH[i] for i in chosen]
        sub2 = [SYNTH[i] for i in chosen2]
        body = _row(sub, rng) + _row(sub2, rng)
        schema = TableSchema(db="d", table="synth", columns=SYNTH, full_metadata=True)
        assert_twins_agree(schema, body, pure.UPDATE, present, present2)
        raws.append((schema, body, pure.UPDATE, present, present2))
    seen = _truncations_and_corruptions(raws[:12], rng, 60)
    assert seen["error"] > 100 and seen["ok"] > 0, seen


def test_hand_built_edges_agree() -> None:
    f = _spec("f", S.FLOAT)
    sch = TableSchema(db="d", table="t", columns=[f], full_metadata=True)
    # float32 values at the edges of the shortest-repr search (overflow on FLT_MAX's neighbours)
    for v in [1.1, 3.4028234663852886e38, 3.4028e38, 3.40280e38, 1e-45, float("nan"), -0.0, 16777217.0]:
        assert_twins_agree(sch, b"\x00" + struct.pack("<f", v), pure.WRITE, b"\x01")
    for bits in range(0x7F7FFF00, 0x7F800001, 7):
        assert_twins_agree(sch, b"\x00" + struct.pack("<I", bits), pure.WRITE, b"\x01")
    # a corrupt DECIMAL group >= 10^9 and negative zero
    d = _spec("d", S.NEWDECIMAL, precision=20, decimals=2)
    dsch = TableSchema(db="d", table="t", columns=[d], full_metadata=True)
    for raw in [b"\x80" + b"\xff" * 9, b"\x7f" + b"\xff" * 9, bytes(10), b"\x80\xff\xff\xff\xff\x00\x00\x00\x00\x63"]:
        assert_twins_agree(dsch, b"\x00" + raw, pure.WRITE, b"\x01")
    # unknown kind, short present bitmap, unsupported charset and type: same errors
    two = TableSchema(db="d", table="t", columns=[_spec(f"c{i}", S.TINY) for i in range(9)], full_metadata=True)
    assert assert_twins_agree(two, b"\x00\x00\x01", pure.WRITE, b"\xff") == "error"
    for mod in (pure, compiled):
        with pytest.raises(DecodeError, match="unknown rows-event kind 7"):
            mod.decode_rows(sch, b"", 7, b"\x01")
    swe7 = TableSchema(db="d", table="t", columns=[_spec("s", S.VARCHAR, charset="unsupported:swe7",
                                                         max_length=9)], full_metadata=True)
    assert assert_twins_agree(swe7, b"\x00\x01a", pure.WRITE, b"\x01") == "error"
    old = TableSchema(db="d", table="t", columns=[_spec("x", S.DECIMAL)], full_metadata=True)
    assert assert_twins_agree(old, b"\x00\x01", pure.WRITE, b"\x01") == "error"
    # BINARY padding and latin1's C1 bytes
    bn = TableSchema(db="d", table="t", columns=[_spec("b", S.STRING, max_length=4),
                                                 _spec("l", S.VARCHAR, charset="cp1252", max_length=9)],
                     full_metadata=True)
    rows = compiled.decode_rows(bn, b"\x00\x01\x01\x04\x80\x81\xe9\x9d", pure.WRITE, b"\x03")
    assert rows == [(None, {"b": base64.b64encode(b"\x01\x00\x00\x00").decode(), "l": "€\x81é\x9d"})]
    assert_twins_agree(bn, b"\x00\x01\x01\x04\x80\x81\xe9\x9d", pure.WRITE, b"\x03")
    # the error names db.table.column and the type, as the twin's does
    tr = TableSchema(db="d", table="t", columns=[_spec("a", S.LONG), _spec("name", S.VARCHAR, charset="utf-8",
                                                                          max_length=40)], full_metadata=True)
    with pytest.raises(DecodeError, match=r"d\.t\.name \(VARCHAR\).*truncated"):
        compiled.decode_rows(tr, b"\x00" + struct.pack("<i", 1) + b"\x05ab", pure.WRITE, b"\x03")
    # plans are cached on the schema, separately from the twin's
    assert b"\x03" in tr.__dict__["_df_cplans"]
    # no columns present over a non-empty body: an error (the twin would never finish)
    with pytest.raises(DecodeError, match="selects no columns"):
        compiled.decode_rows(tr, b"\x00", pure.WRITE, b"\x00")


# ------------------------------------------------------------------ integration tests


@pytest.mark.integration
def test_every_type_table_agrees(mariadb: MariaDBServer, fresh_db: str) -> None:
    db = fresh_db
    mariadb.execute(_ddl(db, "all_types", ALL_COLUMNS))
    start = master_position(mariadb)
    conn = mariadb.connect()
    try:
        _insert_all_types(conn, db, "all_types")
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+05:30'")
            cur.execute(f"UPDATE `{db}`.all_types SET u8 = 'changed 🎉', ts3 = NULL, d10 = -0.5, "
                        "bn = 'x', biu = 1, en = 'small' WHERE id = 1")
            cur.execute(f"UPDATE `{db}`.all_types SET f = 2.5, j = '[1]' WHERE id IN (2, 5)")
            cur.execute(f"DELETE FROM `{db}`.all_types WHERE id IN (2, 3)")
        conn.commit()
    finally:
        conn.close()
    raws = read_raw(mariadb, start, db)
    kinds = {kind for _, _, kind, _, _ in raws}
    assert kinds == {pure.WRITE, pure.UPDATE, pure.DELETE}
    counts = {pure.WRITE: 0, pure.UPDATE: 0, pure.DELETE: 0}
    for schema, body, kind, present, present2 in raws:
        assert assert_twins_agree(_fresh(schema), body, kind, present, present2) == "ok"
        assert assert_twins_agree(schema, body, kind, present, present2) == "ok"  # cached plans
        counts[kind] += len(compiled.decode_rows(schema, body, kind, present, present2))
    assert counts == {pure.WRITE: 5, pure.UPDATE: 3, pure.DELETE: 2}
    seen = _truncations_and_corruptions(raws, random.Random(3), 200)
    assert seen["error"] > 0 and seen["ok"] > 0, seen


def _random_value(kind: str, rng: random.Random) -> Any:
    pick: dict[str, Callable[[], Any]] = {
        "ti": lambda: rng.randint(-128, 127), "tiu": lambda: rng.randint(0, 255),
        "si": lambda: rng.randint(-32768, 32767), "mi": lambda: rng.randint(-(2**23), 2**23 - 1),
        "i": lambda: rng.randint(-(2**31), 2**31 - 1), "iu": lambda: rng.randint(0, 2**32 - 1),
        "bi": lambda: rng.choice([rng.randint(-(2**63), 2**63 - 1), rng.randint(-(2**53), 2**53)]),
        "biu": lambda: rng.choice([rng.randint(0, 2**64 - 1), rng.randint(0, 2**53 + 5)]),
        "d65": lambda: f"{rng.choice('-+')}{rng.randrange(10**35)}.{rng.randrange(10**30):030d}",
        "d10": lambda: f"{rng.choice('-+')}{rng.randrange(10**8)}.{rng.randrange(100):02d}",
        "f": lambda: rng.choice([rng.uniform(-1e6, 1e6), rng.uniform(-1, 1), round(rng.uniform(-100, 100), 2)]),
        "dbl": lambda: rng.choice([rng.uniform(-1e300, 1e300), rng.uniform(-1, 1)]),
        "dt": lambda: f"{rng.randint(1000, 9999)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "dt6": lambda: f"{rng.randint(1000, 9999)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                       f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}."
                       f"{rng.randrange(10**6):06d}",
        "ts3": lambda: f"{rng.randint(1971, 2037)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                       f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}."
                       f"{rng.randrange(1000):03d}",
        "tm2": lambda: f"{rng.choice(['-', ''])}{rng.randint(0, 838)}:{rng.randint(0, 59):02d}:"
                       f"{rng.randint(0, 59):02d}.{rng.randrange(100):02d}",
        "yr": lambda: rng.choice([0, rng.randint(1901, 2155)]),
        "u8": lambda: "".join(rng.choice(["a", "é", "🎉", "世", " ", "'", "\\"]) for _ in range(rng.randrange(20))),
        "l1": lambda: "".join(rng.choice(["a", "é", "€", "ß", " "]) for _ in range(rng.randrange(20))),
        "c8": lambda: "".join(rng.choice(["a", "é", " "]) for _ in range(rng.randrange(8))),
        "bn": lambda: rng.randbytes(rng.randrange(5)),
        "bl": lambda: rng.randbytes(rng.randrange(300)),
        "en": lambda: rng.choice(["x", "yy", "zzz"]),
        "st": lambda: ",".join(sorted(rng.sample(["a", "b", "c", "d"], rng.randrange(5)))),
        "b12": lambda: rng.randrange(2**12),
        "b64": lambda: rng.randrange(2**64),
    }
    return None if rng.random() < 0.1 else pick[kind]()


RANDOM_COLUMNS: list[tuple[str, str]] = [
    ("ti", "TINYINT"), ("tiu", "TINYINT UNSIGNED"), ("si", "SMALLINT"), ("mi", "MEDIUMINT"),
    ("i", "INT"), ("iu", "INT UNSIGNED"), ("bi", "BIGINT"), ("biu", "BIGINT UNSIGNED"),
    ("d65", "DECIMAL(65,30)"), ("d10", "DECIMAL(10,2)"), ("f", "FLOAT"), ("dbl", "DOUBLE"),
    ("dt", "DATE"), ("dt6", "DATETIME(6)"), ("ts3", "TIMESTAMP(3) NULL"), ("tm2", "TIME(2)"),
    ("yr", "YEAR"), ("u8", "VARCHAR(300) CHARACTER SET utf8mb4"), ("l1", "VARCHAR(40) CHARACTER SET latin1"),
    ("c8", "CHAR(8) CHARACTER SET utf8mb4"), ("bn", "BINARY(4)"), ("bl", "BLOB"),
    ("en", "ENUM('x','yy','zzz')"), ("st", "SET('a','b','c','d')"), ("b12", "BIT(12)"), ("b64", "BIT(64)"),
]


@pytest.mark.integration
def test_random_rows_agree(mariadb: MariaDBServer, fresh_db: str) -> None:
    db = fresh_db
    cols = ", ".join(f"`{c}` {t}" for c, t in RANDOM_COLUMNS)
    mariadb.execute(f"CREATE TABLE `{db}`.r (id INT PRIMARY KEY, {cols})")
    start = master_position(mariadb)
    rng = random.Random(2024)
    names = ["id"] + [c for c, _ in RANDOM_COLUMNS]
    sql = (f"INSERT INTO `{db}`.r ({', '.join(f'`{n}`' for n in names)}) "
           f"VALUES ({', '.join(['%s'] * len(names))})")
    conn = mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            for chunk in range(0, 2000, 250):
                rows = [[i] + [_random_value(c, rng) for c, _ in RANDOM_COLUMNS] for i in range(chunk, chunk + 250)]
                cur.executemany(sql, rows)
                conn.commit()
            cur.execute(f"UPDATE `{db}`.r SET u8 = CONCAT(u8, 'é'), f = f * 2, d10 = -d10 WHERE id % 3 = 0")
            cur.execute(f"DELETE FROM `{db}`.r WHERE id % 5 = 0")
        conn.commit()
    finally:
        conn.close()
    raws = read_raw(mariadb, start, db)
    counts = {pure.WRITE: 0, pure.UPDATE: 0, pure.DELETE: 0}
    for schema, body, kind, present, present2 in raws:
        assert assert_twins_agree(_fresh(schema), body, kind, present, present2) == "ok"
        counts[kind] += len(compiled.decode_rows(schema, body, kind, present, present2))
    # an UPDATE that changes nothing (all three columns NULL) writes no row image
    assert counts[pure.WRITE] == 2000 and counts[pure.DELETE] == 400 and 600 < counts[pure.UPDATE] <= 667
    # corruption of the real bodies: a few per event (each event holds many rows)
    rng2 = random.Random(5)
    for schema, body, kind, present, present2 in raws[:20]:
        for _ in range(20):
            bad = bytearray(body)
            bad[rng2.randrange(len(bad))] = rng2.randrange(256)
            assert_twins_agree(schema, bytes(bad), kind, present, present2)


def test_a_bitmap_selecting_no_columns_is_an_error_not_a_hang() -> None:
    schema = TableSchema(db="d", table="t", columns=[_spec("a", S.LONG), _spec("b", S.LONG)], full_metadata=True)
    for kind in (pure.WRITE, pure.DELETE, pure.UPDATE):
        assert assert_twins_agree(_fresh(schema), b"\x00\x01\x00\x00\x00", kind, b"\x00", b"\x00") == "error"
    with pytest.raises(DecodeError, match="selects no columns"):
        pure.decode_rows(_fresh(schema), b"\x00\x01", pure.WRITE, b"\x00")
    # an empty body with no columns is simply no rows
    assert pure.decode_rows(_fresh(schema), b"", pure.WRITE, b"\x00") == []
