"""Differential tests of the row decoder: four independent readings of the same rows must agree.

Hypothesis generates rows over every type of the rendering table (README "Value rendering",
docs/value-rendering.md): NULLs and extremes, every fsp of TIME/DATETIME/TIMESTAMP, DECIMAL
precisions from 1 to 65, FLOAT/DOUBLE, multibyte utf8mb4 and latin1 text (the five C1 bytes
included), BLOBs, ENUM/SET (a 64-label SET: 8-byte bitmasks), BIT, MariaDB JSON (text), YEAR,
GEOMETRY, in a table of 100+ columns (every type twice: a 15-byte NULL bitmap). Each example
inserts its rows through the session MariaDB (TIMESTAMPs typed in a random session time zone),
updates one and deletes one, then reads the binlog back and checks that

- the compiled decoder (``deltaforge._core.rowdecode``), and the reader's JSON path
  (``deltaforge._core.eventbuf``'s ``add_rows``: byte for byte msgspec's encoding of it),
- its pure-Python twin (``deltaforge.source.rowdecode``),
- mysql-replication's own row decoding, normalised through the rendering table by
  ``mr_render`` below (written from the table, not from our decoder), and
- the server's own SELECT, rendered as in tests/test_rowdecode.py,

give the same row images. Example counts: ``CI_EXAMPLES`` per run of the suite, ``LONG_EXAMPLES``
in the marked long run (``pytest -m fuzz_long tests/test_decode_differential.py``).

Known mysql-replication defects are normalised away explicitly, each named in ``mr_render``:
the test says what the library gets wrong instead of silently skipping a type.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from deltaforge.source import rowdecode as pure
from deltaforge.source.schema import schema_from_table_map
from deltaforge.testing import REPL_PASSWORD, REPL_USER, MariaDBServer
from tests.test_eventbuf import compiled as compiled_eventbuf
from tests.test_eventbuf import encoded_images, json_images
from tests.test_rowdecode import _render, _select_expr, _server_ids, master_position
from tests.test_rowdecode_twins import _fresh, _norm, compiled

pytestmark = pytest.mark.integration

#: examples per Hypothesis run: every CI run of the suite, and the marked long run
CI_EXAMPLES = 12
LONG_EXAMPLES = 250

_KINDS = {WriteRowsEvent: pure.WRITE, UpdateRowsEvent: pure.UPDATE, DeleteRowsEvent: pure.DELETE}

# ------------------------------------------------------------------ value strategies


def _decimal(p: int, s: int) -> st.SearchStrategy[str]:
    top = 10**p - 1
    edges = st.sampled_from([top, -top, 0, 1, -1, 10**s if p > s else 1])
    return st.one_of(edges, st.integers(-top, top)).map(
        lambda n: f"{'-' if n < 0 else ''}{abs(n) // 10**s}" + (f".{abs(n) % 10**s:0{s}d}" if s else ""))


def _frac(fsp: int) -> st.SearchStrategy[str]:
    if not fsp:
        return st.just("")
    return st.integers(0, 10**fsp - 1).map(lambda f: f".{f:0{fsp}d}")


def _datetime(fsp: int) -> st.SearchStrategy[str]:
    base = st.one_of(
        st.sampled_from([datetime.datetime(1000, 1, 1), datetime.datetime(9999, 12, 31, 23, 59, 59)]),
        st.datetimes(datetime.datetime(1000, 1, 1), datetime.datetime(9999, 12, 31, 23, 59, 59)))
    return st.tuples(base, _frac(fsp)).map(lambda t: t[0].strftime("%Y-%m-%d %H:%M:%S") + t[1])


# a day inside the range: the server checks the limits in the session zone as well
# (the exact UTC limits are in tests/test_rowdecode.py)
_TS_MIN = datetime.datetime(1970, 1, 2, 0, 0, 0)
_TS_MAX = datetime.datetime(2038, 1, 18, 3, 14, 7)


def _timestamp(fsp: int) -> st.SearchStrategy[tuple[datetime.datetime, str]]:
    """(UTC instant, fraction text): typed in the example's session zone at insert time."""
    base = st.one_of(st.sampled_from([_TS_MIN, _TS_MAX]), st.datetimes(_TS_MIN, _TS_MAX))
    return st.tuples(base, _frac(fsp))


def _time(fsp: int) -> st.SearchStrategy[str]:
    def render(t: tuple[str, int, int, int, str]) -> str:
        sign, h, m, s, f = t
        if h == 838 and f:  # the range ends at 838:59:59 (with any fraction on MariaDB? no: keep inside)
            f = ""
        return f"{sign}{h:02d}:{m:02d}:{s:02d}{f}"
    return st.tuples(st.sampled_from(["", "-"]), st.one_of(st.sampled_from([0, 838, 24]), st.integers(0, 838)),
                     st.integers(0, 59), st.integers(0, 59), _frac(fsp)).map(render)


_UTF8 = st.characters(exclude_categories=("Cs",))
# MySQL latin1 is cp1252 with the five bytes cp1252 leaves undefined mapped to U+0081.. (as the server
# converts them): every one of the 256 bytes has a character.
_LATIN1_CHARS = []
for _b in range(256):
    try:
        _LATIN1_CHARS.append(bytes([_b]).decode("cp1252"))
    except UnicodeDecodeError:
        _LATIN1_CHARS.append(chr(_b))
_LATIN1 = st.sampled_from(_LATIN1_CHARS)

_ENUM_LABELS = ["small", "medium", "café", "🎉 party", "x"]
_SET_LABELS = [f"s{i}" for i in range(64)]


def _json_doc() -> st.SearchStrategy[str]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(_UTF8, max_size=8))
    docs = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                        st.dictionaries(st.text(_UTF8, max_size=5), kids, max_size=4)),
                        max_leaves=10)
    return docs.map(lambda d: json.dumps(d, ensure_ascii=False))


_FINITE32 = st.floats(width=32, allow_nan=False, allow_infinity=False)

# --------------------------------------------------------------------- the table

# (name, DDL type, oracle kind of tests.test_rowdecode, strategy)
Col = tuple[str, str, str, st.SearchStrategy[Any]]

BASE: list[Col] = [
    ("ti", "TINYINT", "int", st.integers(-128, 127)),
    ("tiu", "TINYINT UNSIGNED", "int", st.integers(0, 255)),
    ("si", "SMALLINT", "int", st.integers(-32768, 32767)),
    ("siu", "SMALLINT UNSIGNED", "int", st.integers(0, 65535)),
    ("mi", "MEDIUMINT", "int", st.integers(-(2**23), 2**23 - 1)),
    ("miu", "MEDIUMINT UNSIGNED", "int", st.integers(0, 2**24 - 1)),
    ("i", "INT", "int", st.integers(-(2**31), 2**31 - 1)),
    ("iu", "INT UNSIGNED", "int", st.integers(0, 2**32 - 1)),
    ("bi", "BIGINT", "int", st.one_of(st.integers(-(2**63), 2**63 - 1),
                                      st.sampled_from([2**53 - 1, 2**53, -(2**53 - 1), -(2**53)]))),
    ("biu", "BIGINT UNSIGNED", "int", st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([2**53 - 1, 2**53]))),
    *[(f"d{p}_{s}", f"DECIMAL({p},{s})", "str", _decimal(p, s))
      for p, s in [(1, 0), (5, 5), (10, 2), (18, 9), (20, 0), (38, 10), (65, 30), (65, 0), (9, 0), (19, 10)]],
    ("f", "FLOAT", "f32", _FINITE32),
    ("dbl", "DOUBLE", "float", st.floats(allow_nan=False, allow_infinity=False)),
    ("dt", "DATE", "str", st.dates(datetime.date(1000, 1, 1), datetime.date(9999, 12, 31)).map(str)),
    *[(f"dt{n}", f"DATETIME({n})", "str", _datetime(n)) for n in range(7)],
    *[(f"ts{n}", f"TIMESTAMP({n}) NULL", "ts", _timestamp(n)) for n in range(7)],
    *[(f"tm{n}", f"TIME({n})", "str", _time(n)) for n in range(7)],
    ("yr", "YEAR", "year", st.one_of(st.just(0), st.integers(1901, 2155))),
    ("u8", "VARCHAR(60) CHARACTER SET utf8mb4", "text", st.text(_UTF8, max_size=60)),
    ("u8l", "VARCHAR(300) CHARACTER SET utf8mb4", "text", st.text(_UTF8, max_size=300)),
    ("l1", "VARCHAR(40) CHARACTER SET latin1", "text", st.text(_LATIN1, max_size=40)),
    ("c8", "CHAR(8) CHARACTER SET utf8mb4", "text", st.text(_UTF8, max_size=8).map(lambda s: s.rstrip(" "))),
    ("cl", "CHAR(5) CHARACTER SET latin1", "text", st.text(_LATIN1, max_size=5).map(lambda s: s.rstrip(" "))),
    ("tx", "TEXT CHARACTER SET utf8mb4", "text", st.text(_UTF8, max_size=400)),
    ("ttx", "TINYTEXT CHARACTER SET latin1", "text", st.text(_LATIN1, max_size=255)),
    ("mtx", "MEDIUMTEXT CHARACTER SET utf8mb4", "text", st.text(_UTF8, max_size=50)),
    ("ltx", "LONGTEXT CHARACTER SET latin1", "text", st.text(_LATIN1, max_size=50)),
    ("bn", "BINARY(4)", "hex", st.binary(max_size=4)),
    ("vb", "VARBINARY(300)", "hex", st.binary(max_size=300)),
    ("bl", "BLOB", "hex", st.binary(max_size=600)),
    ("tbl", "TINYBLOB", "hex", st.binary(max_size=255)),
    ("mbl", "MEDIUMBLOB", "hex", st.binary(max_size=50)),
    ("en", "ENUM('small','medium','café','🎉 party','x') CHARACTER SET utf8mb4", "str", st.sampled_from(_ENUM_LABELS)),
    ("st", "SET(" + ",".join(f"'{s}'" for s in _SET_LABELS) + ")", "str",
     st.sets(st.sampled_from(_SET_LABELS), max_size=6).map(lambda s: ",".join(x for x in _SET_LABELS if x in s))),
    ("b1", "BIT(1)", "bit", st.integers(0, 1)),
    ("b12", "BIT(12)", "bit", st.integers(0, 2**12 - 1)),
    ("b64", "BIT(64)", "bit", st.integers(0, 2**64 - 1)),
    ("j", "JSON", "text", _json_doc()),
    ("pt", "POINT", "hex", st.tuples(st.floats(-1e9, 1e9), st.floats(-1e9, 1e9))),
]

#: every type twice (names suffixed _2): more than 100 columns, a NULL bitmap of 15 bytes
COLUMNS: list[Col] = BASE + [(f"{n}_2", ddl, kind, s) for n, ddl, kind, s in BASE]
assert len(COLUMNS) > 100
ORACLE_COLUMNS = [(n, ddl, kind) for n, ddl, kind, _ in COLUMNS]
_BY_NAME = {n: (ddl, kind) for n, ddl, kind, _ in COLUMNS}

Row = dict[str, Any]


@st.composite
def rows(draw: Callable[..., Any]) -> Row:
    """One row image: each column NULL (20%), an extreme or a random value of its type."""
    return {n: draw(st.one_of(st.none(), s) if draw(st.integers(0, 4)) == 0 else s) for n, _, _, s in COLUMNS}


# ------------------------------------------------------------------- writing rows


def _sql_value(name: str, v: Any, tz_minutes: int) -> tuple[str, list[Any]]:
    """The placeholder and its arguments for one column value."""
    if v is None:
        return "%s", [None]
    ddl, _ = _BY_NAME[name]
    if ddl == "POINT":
        return "ST_GeomFromText(%s)", [f"POINT({v[0]!r} {v[1]!r})"]
    if ddl.startswith("TIMESTAMP"):
        instant, frac = v  # typed in the session zone: the binlog must still hold (and we render) UTC
        local = instant + datetime.timedelta(minutes=tz_minutes)
        return "%s", [local.strftime("%Y-%m-%d %H:%M:%S") + frac]
    if ddl == "FLOAT" or ddl == "DOUBLE":
        return "%s", [repr(v)]  # text the server parses: -0.0 and 1e-45 stay exact
    return "%s", [v]


def _tz(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _write(conn: Any, db: str, table: str, ids: list[int], images: list[Row], update: Row,
           tz_minutes: int) -> tuple[dict[int, Row], dict[int, Row]]:
    """INSERT the images (one statement: one rows event of several rows), UPDATE the first id to
    ``update``, DELETE the last id. Returns the server's SELECT before and after the UPDATE."""
    names = [n for n, *_ in COLUMNS]
    with conn.cursor() as cur:
        cur.execute(f"SET time_zone = '{_tz(tz_minutes)}'")
        frags, args = [], []
        for rid, image in zip(ids, images, strict=True):
            parts = ["%s"]
            args.append(rid)
            for n in names:
                frag, a = _sql_value(n, image[n], tz_minutes)
                parts.append(frag)
                args += a
            frags.append("(" + ", ".join(parts) + ")")
        cur.execute(f"INSERT INTO `{db}`.`{table}` (id, {', '.join(f'`{n}`' for n in names)}) VALUES "
                    + ", ".join(frags), args)
        conn.commit()
        inserted = _select(conn, db, table, ids)
        sets, args = [], []
        for n in names:
            frag, a = _sql_value(n, update[n], tz_minutes)
            sets.append(f"`{n}` = {frag}")
            args += a
        cur.execute(f"UPDATE `{db}`.`{table}` SET {', '.join(sets)} WHERE id = %s", [*args, ids[0]])
        conn.commit()
        updated = _select(conn, db, table, ids)
        cur.execute(f"DELETE FROM `{db}`.`{table}` WHERE id = %s", [ids[-1]])
        conn.commit()
    return inserted, updated


def _select(conn: Any, db: str, table: str, ids: list[int]) -> dict[int, Row]:
    """The server's view of the rows, rendered by tests/test_rowdecode.py's oracle rules (in UTC).

    FLOAT is selected as ``f + 0e0``: the server's text for a FLOAT has 6 significant digits
    (lossy), the sum is the exact double of the stored 32-bit value; the rendering rule (shortest
    round-trip decimal) is then applied here.
    """
    exprs = ", ".join(f"(`{n}` + 0e0)" if kind == "f32" else _select_expr(n, kind) for n, _, kind in ORACLE_COLUMNS)
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(f"SELECT id, {exprs} FROM `{db}`.`{table}` WHERE id IN ({', '.join(map(str, ids))}) ORDER BY id")
        found = cur.fetchall()
    out: dict[int, Row] = {}
    for r in found:
        image: Row = {"id": int(r[0])}
        for (n, _, kind), v in zip(ORACLE_COLUMNS, r[1:], strict=True):
            image[n] = (None if v is None else _f32_shortest(float(v))) if kind == "f32" else _render(kind, v)
        out[int(r[0])] = image
    return out


# ----------------------------------------------------------- mysql-replication's view


def _f32_shortest(v: float) -> float:
    """The rendering rule for FLOAT, from its definition: the fewest significant digits whose
    decimal reads back as the same 32-bit float."""
    want = struct.pack("<f", v)
    for digits in range(1, 10):
        cand = float(f"{v:.{digits}g}")
        try:
            if struct.pack("<f", cand) == want:
                return cand
        except OverflowError:
            continue
    return v


def _dec_text(d: Decimal, scale: int) -> str:
    text = f"{d:.{scale}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def _frac_text(us: int, fsp: int) -> str:
    return f".{us:06d}"[: fsp + 1] if fsp else ""


#: a library value known to be wrong (each case is explained where it is returned): not compared
UNRELIABLE = object()


def mr_render(name: str, v: Any, table_col: Any) -> Any:
    """mysql-replication's Python value of one column -> the rendering table's JSON value."""
    ddl, kind = _BY_NAME.get(name, ("INT", "int"))
    if v is None:
        # Known mysql-replication defect: an empty SET comes back as None, like NULL
        return UNRELIABLE if ddl.startswith("SET") else None
    if name == "id" or kind == "int":
        return v if -(2**53 - 1) <= v <= 2**53 - 1 else str(v)
    if ddl.startswith("DECIMAL"):
        return _dec_text(v, int(ddl.split(",")[1].rstrip(")")))
    if ddl == "FLOAT":
        return _f32_shortest(v)
    if ddl == "DOUBLE":
        return v
    if ddl == "DATE":
        return v.isoformat()
    fsp = int(ddl[ddl.index("(") + 1]) if "(" in ddl and ddl[:4] in ("DATE", "TIME") else 0
    if ddl.startswith("DATETIME"):
        return v.strftime("%Y-%m-%d %H:%M:%S") + _frac_text(v.microsecond, fsp)
    if ddl.startswith("TIMESTAMP"):
        # utcfromtimestamp: a naive UTC datetime
        return v.strftime("%Y-%m-%dT%H:%M:%S") + _frac_text(v.microsecond, fsp) + "Z"
    if ddl.startswith("TIME"):
        total = v.days * 86400 * 10**6 + v.seconds * 10**6 + v.microseconds
        if total < 0 and fsp:
            # Known mysql-replication defect: a negative TIME(fsp > 0) is one offset-binary number
            # (whole seconds and fraction together), the library negates the two parts apart
            # (-32:17:43.181 comes back as -32:17:43.819).
            return UNRELIABLE
        sign = "-" if total < 0 else ""
        total = abs(total)
        secs, us = divmod(total, 10**6)
        return f"{sign}{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}" + _frac_text(us, fsp)
    if ddl == "YEAR":
        return 0 if v == 1900 else v  # the library adds 1900 to the stored 0
    if kind == "bit":
        n = int(v, 2)  # the library gives the bits as a '0'/'1' string
        return n if n <= 2**53 - 1 else str(n)
    if ddl.startswith("SET"):
        return ",".join(x for x in _SET_LABELS if x in v)
    if ddl.startswith("ENUM"):
        return v
    if kind == "hex":
        data = v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")
        if ddl.startswith("BINARY("):
            data = data.ljust(int(ddl[7:-1]), b"\x00")  # the binlog drops BINARY's NUL padding
        return base64.b64encode(data).decode()
    if "latin1" in ddl:
        return v  # decoded as cp1252 with ignore_decode_errors: see _C1 and _library_view
    if isinstance(v, bytes):
        v = v.decode("utf-8")
    return v.rstrip(" ") if ddl.startswith("CHAR") else v


# ------------------------------------------------------------------- reading back


def _read_back(server: MariaDBServer, start: tuple[str, int], db: str) -> list[tuple[Any, ...]]:
    """Every rows event of ``db`` from ``start``: (schema, body, kind, present, present2, library rows)."""
    stream = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": server.port, "user": REPL_USER, "passwd": REPL_PASSWORD},
        server_id=next(_server_ids), blocking=False, is_mariadb=False, log_file=start[0], log_pos=start[1],
        resume_stream=True, only_schemas=[db], ignore_decode_errors=True,
        only_events=[TableMapEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent])
    out: list[tuple[Any, ...]] = []
    schemas: dict[int, Any] = {}
    try:
        for ev in stream:
            if isinstance(ev, TableMapEvent):
                schemas[ev.table_id] = schema_from_table_map(ev)
                continue
            p = ev.packet.packet
            body = bytes(p._data[p._position : p._position + ev.event_size - ev.packet.read_bytes])
            kind = _KINDS[type(ev)]
            present2 = getattr(ev, "columns_present_bitmap2", None)
            out.append((schemas[ev.table_id], body, kind, bytes(ev.columns_present_bitmap), present2, ev.rows))
    finally:
        stream.close()
    return out


#: Known mysql-replication defect: it decodes MySQL latin1 as strict cp1252, so the five bytes cp1252
#: leaves undefined (which the server maps to U+0081 U+008D U+008F U+0090 U+009D) raise
#: UnicodeDecodeError; with ``ignore_decode_errors`` they are dropped. Our value is compared to the
#: library's with those five characters removed, in latin1 columns only.
_C1 = str.maketrans("", "", "\x81\x8d\x8f\x90\x9d")


def _library_view(pairs: list[tuple[Row | None, Row | None]]) -> list[tuple[Row | None, Row | None]]:
    """Our images as the library can show them (see _C1)."""
    def image(r: Row | None) -> Row | None:
        if r is None:
            return None
        return {k: v.translate(_C1) if isinstance(v, str) and "latin1" in _BY_NAME.get(k, ("", ""))[0] else v
                for k, v in r.items()}
    return [(image(b), image(a)) for b, a in pairs]


def _library_pairs(kind: int, lib_rows: list[dict]) -> list[tuple[Row | None, Row | None]]:
    def image(values: dict) -> Row:
        return {k: mr_render(k, v, None) for k, v in values.items()}
    if kind == pure.WRITE:
        return [(None, image(r["values"])) for r in lib_rows]
    if kind == pure.DELETE:
        return [(image(r["values"]), None) for r in lib_rows]
    return [(image(r["before_values"]), image(r["after_values"])) for r in lib_rows]


def _assert_same(what: str, got: Any, want: Any) -> None:
    if _norm(got) == _norm(want):
        return
    # name the first differing column (the whole images are 100+ columns)
    for (g_before, g_after), (w_before, w_after) in zip(got, want, strict=True):
        for g, w in ((g_before, w_before), (g_after, w_after)):
            for k in (w or {}):
                gv, wv = (g or {}).get(k, "<missing>"), w[k]
                if _norm(gv) != _norm(wv):
                    raise AssertionError(f"{what}: column {k}: got {gv!r}, want {wv!r} (DDL {_BY_NAME.get(k)})")
    raise AssertionError(f"{what}: images differ: {got!r} != {want!r}")


# -------------------------------------------------------------------------- the test

_ids = itertools.count(1)


@pytest.mark.parametrize("examples", [
    pytest.param(CI_EXAMPLES, id="ci"),
    pytest.param(LONG_EXAMPLES, id="long", marks=pytest.mark.fuzz_long),
])
def test_compiled_twin_library_and_select_agree(mariadb: MariaDBServer, fresh_db: str, examples: int) -> None:
    db, table = fresh_db, "diff"
    cols = ", ".join(f"`{n}` {ddl}" for n, ddl, _, _ in COLUMNS)
    mariadb.execute(f"CREATE TABLE `{db}`.`{table}` (id INT PRIMARY KEY, {cols}) ROW_FORMAT=DYNAMIC")
    conn = mariadb.connect()
    seen = {"examples": 0, "rows": 0, "unreliable": 0}

    @settings(max_examples=examples, deadline=None, phases=(Phase.explicit, Phase.generate), database=None, derandomize=examples == CI_EXAMPLES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(images=st.lists(rows(), min_size=1, max_size=3), update=rows(),
           tz_minutes=st.sampled_from([0, 330, -420, 780, -720, 345]))
    def check(images: list[Row], update: Row, tz_minutes: int) -> None:
        ids = [next(_ids) for _ in images]
        start = master_position(mariadb)
        inserted, updated = _write(conn, db, table, ids, images, update, tz_minutes)
        events = _read_back(mariadb, start, db)
        changed = inserted[ids[0]] != updated[ids[0]]  # an UPDATE that changes nothing logs no row
        assert [e[2] for e in events] == [pure.WRITE, *([pure.UPDATE] if changed else []), pure.DELETE]
        select = [[(None, inserted[i]) for i in ids],
                  *([[(inserted[ids[0]], updated[ids[0]])]] if changed else []),
                  [(updated[ids[-1]], None)]]
        for (schema, body, kind, present, present2, lib_rows), want in zip(events, select, strict=True):
            twin = pure.decode_rows(_fresh(schema), body, kind, present, present2)
            ours = compiled.decode_rows(_fresh(schema), body, kind, present, present2)
            _assert_same(f"compiled vs twin, kind {kind}", ours, twin)
            # the reader's JSON path (values written straight from the body) is the twin's encoding
            as_json = json_images(compiled_eventbuf, _fresh(schema), body, kind, present, present2)
            assert as_json == encoded_images(twin), f"JSON path vs twin, kind {kind}"
            _assert_same(f"twin vs SELECT, kind {kind}", twin, want)
            lib = _library_pairs(kind, lib_rows)
            theirs = _library_view(twin)
            for lib_pair, our_pair in zip(lib, theirs, strict=True):
                for lib_image, our_image in zip(lib_pair, our_pair, strict=True):
                    for k, v in (lib_image or {}).items():
                        if v is UNRELIABLE:
                            our_image[k] = v
                            seen["unreliable"] += 1
            _assert_same(f"mysql-replication vs twin, kind {kind}", lib, theirs)
            seen["rows"] += len(twin)
        seen["examples"] += 1

    try:
        check()
    finally:
        conn.close()
    assert seen["examples"] >= examples // 2 and seen["rows"] >= 3 * seen["examples"], seen
