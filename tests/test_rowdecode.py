"""Row decoding against the server's own SELECT (integration) and hand-built bytes (unit).

The oracle is independent of the decoder: expected values come from SELECT expressions
(CAST(.. AS CHAR), HEX(..), CAST(.. AS UNSIGNED)) evaluated by the server and rendered
per docs/value-rendering.md with a few lines of test code.
"""

from __future__ import annotations

import base64
import itertools
import os
import random
import struct
from collections.abc import Callable, Iterator
from decimal import Decimal, getcontext
from typing import Any

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from deltaforge.errors import DecodeError
from deltaforge.source import rowdecode
from deltaforge.source.rowdecode import (
    DELETE,
    UPDATE,
    WRITE,
    decode_rows,
    decoder_for,
    json_binary_decode,
    shortest_float32,
)
from deltaforge.source.schema import (
    ColumnSpec,
    TableSchema,
    fetch_live_columns,
    needs_live_columns,
    schema_from_table_map,
)
from deltaforge.testing import REPL_PASSWORD, REPL_USER, MariaDBServer

MAX_SAFE = 2**53 - 1
getcontext().prec = 100  # DECIMAL(65,30) needs more than the default 28 digits
_server_ids = itertools.count(4000 + os.getpid() % 1000 * 10)


# ------------------------------------------------------------------ binlog plumbing


def master_position(server: MariaDBServer) -> tuple[str, int]:
    row = server.execute("SHOW MASTER STATUS")[0]
    return str(row[0]), int(row[1])


class Change:
    def __init__(self, table: str, kind: int, before: dict | None, after: dict | None,
                 schema: TableSchema) -> None:
        self.table, self.kind, self.before, self.after, self.schema = table, kind, before, after, schema


_KINDS = {WriteRowsEvent: WRITE, UpdateRowsEvent: UPDATE, DeleteRowsEvent: DELETE}


def raw_rows(server: MariaDBServer, start: tuple[str, int], db: str,
             on_table_map: Callable[[Any, Any], TableSchema] | None = None,
             ) -> Iterator[tuple[str, TableSchema, bytes, int, bytes, bytes | None]]:
    """Every rows event of ``db`` from ``start`` (non-blocking), undecoded:
    (table, schema, body, kind, present, present_after).

    is_mariadb=False on purpose: with is_mariadb=True mysql-replication 1.0.17 sends a
    MariaDB COM_BINLOG_DUMP that ignores log_file/log_pos and always starts at the first
    binlog; the MySQL form honours the position and MariaDB serves it.
    """
    conn = server.connect()
    stream = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": server.port, "user": REPL_USER,
                             "passwd": REPL_PASSWORD},
        server_id=next(_server_ids), blocking=False, is_mariadb=False,
        log_file=start[0], log_pos=start[1], resume_stream=True, only_schemas=[db],
        only_events=[TableMapEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
    )
    schemas: dict[int, TableSchema] = {}
    try:
        for ev in stream:
            if isinstance(ev, TableMapEvent):
                if on_table_map is not None:
                    schemas[ev.table_id] = on_table_map(ev, conn)
                else:
                    live = fetch_live_columns(conn, ev.schema, ev.table) if needs_live_columns(ev) else None
                    schemas[ev.table_id] = schema_from_table_map(ev, live)
                continue
            p = ev.packet.packet
            body = bytes(p._data[p._position : p._position + ev.event_size - ev.packet.read_bytes])
            yield (ev.table, schemas[ev.table_id], body, _KINDS[type(ev)], bytes(ev.columns_present_bitmap),
                   getattr(ev, "columns_present_bitmap2", None))
    finally:
        stream.close()
        conn.close()


def read_changes(server: MariaDBServer, start: tuple[str, int], db: str,
                 on_table_map: Callable[[Any, Any], TableSchema] | None = None) -> list[Change]:
    """Read the binlog from ``start`` and decode every row of ``db``."""
    out: list[Change] = []
    for table, sch, body, kind, present, present2 in raw_rows(server, start, db, on_table_map):
        for before, after in decode_rows(sch, body, kind, present, present2):
            out.append(Change(table, kind, before, after, sch))
    return out


# ----------------------------------------------------------------------- the oracle

# (column, DDL type, oracle kind)
ALL_COLUMNS: list[tuple[str, str, str]] = [
    ("ti", "TINYINT", "int"), ("tiu", "TINYINT UNSIGNED", "int"),
    ("si", "SMALLINT", "int"), ("siu", "SMALLINT UNSIGNED", "int"),
    ("mi", "MEDIUMINT", "int"), ("miu", "MEDIUMINT UNSIGNED", "int"),
    ("i", "INT", "int"), ("iu", "INT UNSIGNED", "int"),
    ("bi", "BIGINT", "int"), ("biu", "BIGINT UNSIGNED", "int"),
    ("d65", "DECIMAL(65,30)", "str"), ("d10", "DECIMAL(10,2)", "str"), ("d0", "DECIMAL(20,0)", "str"),
    ("d9", "DECIMAL(18,9)", "str"),
    ("f", "FLOAT", "float"), ("dbl", "DOUBLE", "float"),
    ("dt", "DATE", "str"),
    *[(f"dt{n}", f"DATETIME({n})", "str") for n in range(7)],
    *[(f"ts{n}", f"TIMESTAMP({n}) NULL", "ts") for n in range(7)],
    ("tm0", "TIME", "str"), ("tm1", "TIME(1)", "str"), ("tm3", "TIME(3)", "str"), ("tm6", "TIME(6)", "str"),
    ("yr", "YEAR", "year"),
    ("u8", "VARCHAR(100) CHARACTER SET utf8mb4", "text"),
    ("u8l", "VARCHAR(300) CHARACTER SET utf8mb4", "text"),
    ("l1", "VARCHAR(50) CHARACTER SET latin1", "text"),
    ("c10", "CHAR(10) CHARACTER SET utf8mb4", "text"),
    ("cl1", "CHAR(5) CHARACTER SET latin1", "text"),
    ("tx", "TEXT", "text"), ("ttx", "TINYTEXT", "text"), ("mtx", "MEDIUMTEXT", "text"),
    ("ltx", "LONGTEXT CHARACTER SET latin1", "text"),
    ("bn", "BINARY(4)", "hex"), ("vb", "VARBINARY(300)", "hex"), ("bl", "BLOB", "hex"),
    ("tbl", "TINYBLOB", "hex"),
    ("en", "ENUM('small','medium','large')", "str"), ("st", "SET('a','b','c','d')", "str"),
    ("b1", "BIT(1)", "bit"), ("b10", "BIT(10)", "bit"), ("b64", "BIT(64)", "bit"),
    ("g", "GEOMETRY", "hex"), ("pt", "POINT", "hex"),
    ("j", "JSON", "text"),
]


def _safe(v: int) -> int | str:
    return v if -MAX_SAFE <= v <= MAX_SAFE else str(v)


def _select_expr(col: str, kind: str) -> str:
    if kind in ("int", "str", "ts"):
        return f"CAST(`{col}` AS CHAR)"
    if kind in ("year", "bit"):
        return f"CAST(`{col}` AS UNSIGNED)"
    if kind == "hex":
        return f"HEX(`{col}`)"
    return f"`{col}`"


def _render(kind: str, v: Any) -> Any:
    if v is None:
        return None
    if kind == "int":
        return _safe(int(v))
    if kind in ("year", "bit"):
        return _safe(int(v))
    if kind == "hex":
        return base64.b64encode(bytes.fromhex(v)).decode()
    if kind == "ts":
        return v if v.startswith("0000-00-00") else v.replace(" ", "T") + "Z"
    if kind == "float":
        return float(v)
    return v


def oracle(server: MariaDBServer, db: str, table: str, columns: list[tuple[str, str, str]]) -> dict[int, dict]:
    """{id: expected row image} computed by the server, in UTC."""
    exprs = ", ".join(_select_expr(c, k) for c, _, k in columns)
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute(f"SELECT id, {exprs} FROM `{db}`.`{table}` ORDER BY id")
            rows = cur.fetchall()
    finally:
        conn.close()
    out = {}
    for row in rows:
        out[int(row[0])] = {"id": int(row[0]),
                            **{c: _render(k, v) for (c, _, k), v in zip(columns, row[1:], strict=True)}}
    return out


def assert_rows_equal(got: dict, want: dict, where: str) -> None:
    assert set(got) == set(want), where
    for k in want:
        g, w = got[k], want[k]
        assert type(g) is type(w) and g == w, f"{where} column {k}: decoded {g!r}, server {w!r}"
        if isinstance(g, float):
            # same float32/float64 bits, and the shortest text (1.1 not 1.100000023841858)
            assert repr(g) == repr(w), f"{where} column {k}"


# --------------------------------------------------------------- integration tests

pytestmark_integration = pytest.mark.integration

BIG_TEXT = "x" * 700 + "é" * 100  # > 255 bytes: 2-byte length prefixes
BLOB_BYTES = bytes(range(256)) * 2


def _ddl(db: str, table: str, columns: list[tuple[str, str, str]]) -> str:
    cols = ", ".join(f"`{c}` {t}" for c, t, _ in columns)
    return f"CREATE TABLE `{db}`.`{table}` (id INT PRIMARY KEY, {cols})"


def _insert_all_types(conn: Any, db: str, table: str) -> None:
    names = ["id"] + [c for c, _, _ in ALL_COLUMNS]
    sql = f"INSERT INTO `{db}`.`{table}` ({', '.join(f'`{n}`' for n in names)}) VALUES "

    def row(**kw: Any) -> dict[str, Any]:
        return kw

    maxima = row(
        id=1, ti=127, tiu=255, si=32767, siu=65535, mi=8388607, miu=16777215, i=2147483647,
        iu=4294967295, bi=9223372036854775807, biu=18446744073709551615,
        d65="99999999999999999999999999999999999.999999999999999999999999999999",
        d10="99999999.99", d0="99999999999999999999", d9="123456789.123456789",
        f=1.1, dbl=1.7976931348623157e308, dt="9999-12-31",
        **{f"dt{n}": "9999-12-31 23:59:59.999999"[: 20 + n if n else 19] for n in range(7)},
        **{f"ts{n}": "2038-01-19 08:44:07.999999"[: 20 + n if n else 19] for n in range(7)},
        tm0="838:59:59", tm1="100:00:00.5", tm3="-12:34:56.789", tm6="-00:00:00.000001", yr=2155,
        u8="héllo 🎉 世界", u8l="é" * 300, l1="café é ü ß €", c10="ab", cl1="é  ", tx=BIG_TEXT,
        ttx="tiny", mtx="🎉" * 10, ltx="déjà vu", bn=b"ab", vb=b"\x00\xff\x00", bl=BLOB_BYTES,
        tbl=b"", en="large", st="a,c,d", b1=1, b10=0b1010101010, b64=2**64 - 1,
        g="POINT(1 2)", pt="POINT(3.5 -4)", j='{"a": [1, 2.5, "x", null, true], "b": {"c": "é"}}',
    )
    minima = row(
        id=2, ti=-128, tiu=0, si=-32768, siu=0, mi=-8388608, miu=0, i=-2147483648, iu=0,
        bi=-9223372036854775808, biu=0,
        d65="-99999999999999999999999999999999999.999999999999999999999999999999",
        d10="-0.5", d0="-99999999999999999999", d9="-0.000000001",
        f=-0.5, dbl=-2.2250738585072014e-308, dt="1000-01-01",
        **{f"dt{n}": "1000-01-01 00:00:00.000001"[: 20 + n if n else 19] for n in range(7)},
        **{f"ts{n}": "1970-01-01 05:30:01.000001"[: 20 + n if n else 19] for n in range(7)},
        tm0="-838:59:59", tm1="-00:00:00.1", tm3="00:00:00.001", tm6="-838:59:59.000000", yr=1901,
        u8="", u8l="", l1="", c10="", cl1="", tx="", ttx="", mtx="", ltx="", bn=b"\x00\x01\x02\x00",
        vb=b"", bl=b"", tbl=b"\x00", en="small", st="", b1=0, b10=0, b64=0,
        g="LINESTRING(0 0, 1 1, 2 3)", pt="POINT(0 0)", j="[]",
    )
    nulls = {"id": 3}
    misc = row(
        id=5, ti=0, tiu=1, si=-1, siu=1, mi=-1, miu=1, i=-1, iu=1, bi=MAX_SAFE, biu=MAX_SAFE + 1,
        d65="0.000000000000000000000000000001", d10="12.5", d0="0", d9="0",
        f=3.14159, dbl=0.1, dt="2024-02-29",
        **{f"dt{n}": "2024-02-29 23:59:59.123456"[: 20 + n if n else 19] for n in range(7)},
        **{f"ts{n}": "2024-03-01 05:29:59.654321"[: 20 + n if n else 19] for n in range(7)},
        tm0="00:00:00", tm1="-838:59:59.0", tm3="23:59:59.999", tm6="12:00:00.5", yr=2024,
        u8="a'b\"c\\d", u8l="z", l1="Zürich", c10="  lead", cl1="x", tx="t", ttx="", mtx="m", ltx="l",
        bn=b"\xff\xff\xff\xff", vb=b"v" * 300, bl=b"b", tbl=b"t", en="medium", st="b", b1=1, b10=1023,
        b64=2**53, g="POLYGON((0 0,1 0,1 1,0 0))", pt="POINT(-1.5 2.25)", j='"just a string"',
    )

    def values(r: dict[str, Any]) -> tuple[str, list[Any]]:
        parts, args = [], []
        for n in names:
            v = r.get(n)
            if n in ("g", "pt") and v is not None:
                parts.append("ST_GeomFromText(%s)")
            else:
                parts.append("%s")
            args.append(v)
        return "(" + ", ".join(parts) + ")", args

    with conn.cursor() as cur:
        # TIMESTAMPs are typed in +05:30: the binlog must still carry (and we render) UTC.
        cur.execute("SET time_zone = '+05:30'")
        for r in (maxima, minima, nulls, misc):
            frag, args = values(r)
            cur.execute(sql + frag, args)
        # zero dates and an invalid ENUM (index 0) need the permissive sql_mode
        cur.execute("SET sql_mode = ''")
        cur.execute(
            f"INSERT INTO `{db}`.`{table}` (id, dt, dt0, dt3, dt6, ts0, ts2, ts6, yr, en, tm0) VALUES "
            "(4, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00.000', "
            "'0000-00-00 00:00:00', 0, 0, 0, 0, 'no such label', '00:00:00')"
        )
        cur.execute("SET sql_mode = DEFAULT")


@pytest.mark.integration
def test_every_type_matches_the_server(mariadb: MariaDBServer, fresh_db: str) -> None:
    db = fresh_db
    mariadb.execute(_ddl(db, "all_types", ALL_COLUMNS))
    start = master_position(mariadb)
    conn = mariadb.connect()
    try:
        _insert_all_types(conn, db, "all_types")
        inserted = oracle(mariadb, db, "all_types", ALL_COLUMNS)
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+05:30'")
            cur.execute(f"UPDATE `{db}`.all_types SET u8 = 'changed 🎉', ts3 = NULL, d10 = -0.5, "
                        "bn = 'x', biu = 1, en = 'small' WHERE id = 1")
            cur.execute(f"UPDATE `{db}`.all_types SET i = 42, ts6 = '2001-02-03 04:05:06.7', "
                        "tm6 = '-1:02:03.000004', f = 2.5, j = '{\"k\": 1}' WHERE id = 3")
            updated = oracle(mariadb, db, "all_types", ALL_COLUMNS)
            cur.execute(f"DELETE FROM `{db}`.all_types WHERE id IN (2, 4)")
    finally:
        conn.close()

    changes = read_changes(mariadb, start, db)
    writes = [c for c in changes if c.kind == WRITE]
    updates = [c for c in changes if c.kind == UPDATE]
    deletes = [c for c in changes if c.kind == DELETE]
    assert [c.after["id"] for c in writes] == [1, 2, 3, 5, 4]
    assert sorted(c.after["id"] for c in updates) == [1, 3]
    assert sorted(c.before["id"] for c in deletes) == [2, 4]
    assert writes[0].schema.full_metadata is True

    for c in writes:
        assert c.before is None
        assert_rows_equal(c.after, inserted[c.after["id"]], f"insert id={c.after['id']}")
    for c in updates:
        rid = c.before["id"]
        assert_rows_equal(c.before, inserted[rid], f"update-before id={rid}")
        assert_rows_equal(c.after, updated[rid], f"update-after id={rid}")
    for c in deletes:
        assert c.after is None
        assert_rows_equal(c.before, updated[c.before["id"]], f"delete id={c.before['id']}")

    # Spot checks of the rendering table itself (the oracle could share a mistake).
    row1, row2, row4 = inserted[1], inserted[2], inserted[4]
    assert writes[0].after["biu"] == "18446744073709551615"
    assert writes[1].after["bi"] == "-9223372036854775808"
    assert writes[0].after["f"] == 1.1
    assert writes[1].after["d10"] == "-0.50"
    assert writes[0].after["ts6"] == "2038-01-19T03:14:07.999999Z" == row1["ts6"]
    assert writes[0].after["tm1"] == "100:00:00.5"
    assert writes[1].after["tm0"] == "-838:59:59" == row2["tm0"]
    assert writes[0].after["bn"] == base64.b64encode(b"ab\x00\x00").decode()
    assert writes[0].after["b64"] == str(2**64 - 1)
    zero = next(c.after for c in writes if c.after["id"] == 4)
    assert zero == row4
    assert zero["dt"] == "0000-00-00" and zero["dt0"] == "0000-00-00 00:00:00"
    assert zero["ts0"] == "0000-00-00 00:00:00" and zero["yr"] == 0 and zero["en"] == ""


# The MINIMAL-metadata and ALTER tests share a smaller table covering what the fallback
# must get from information_schema: names, signedness, charsets, ENUM/SET labels.
SMALL_COLUMNS: list[tuple[str, str, str]] = [
    ("iu", "INT UNSIGNED", "int"), ("bi", "BIGINT", "int"), ("biu", "BIGINT UNSIGNED", "int"),
    ("tiu", "TINYINT UNSIGNED", "int"), ("d", "DECIMAL(12,3)", "str"),
    ("l1", "VARCHAR(20) CHARACTER SET latin1", "text"), ("u8", "TEXT CHARACTER SET utf8mb4", "text"),
    ("bn", "BINARY(3)", "hex"), ("vb", "VARBINARY(10)", "hex"),
    ("en", "ENUM('x','it''s','z')", "str"), ("st", "SET('p','q','r')", "str"),
    ("ts", "TIMESTAMP(3) NULL", "ts"), ("tm", "TIME(2)", "str"),
    # labels that are not UTF-8 in the binlog (mysql-replication drops them; we re-read them)
    ("el", "ENUM('café','b') CHARACTER SET latin1", "str"), ("sl", "SET('é','x') CHARACTER SET latin1", "str"),
]
SMALL_ROWS = [
    "(1, 4294967295, -9223372036854775808, 18446744073709551615, 255, '-123456789.125', 'é€', "
    "'🎉 ok', 'a', x'0102', 'it''s', 'p,r', '2020-05-06 07:08:09.123', '-10:00:00.25', "
    "'café', 'é,x')",
    "(2, 0, 5, 7, 0, '0.000', 'plain', '', x'000000', '', 'x', '', NULL, '00:00:00', 'b', '')",
]


def _small_table(server: MariaDBServer, db: str, table: str) -> None:
    server.execute(_ddl(db, table, SMALL_COLUMNS))


def _fill_small(server: MariaDBServer, db: str, table: str) -> None:
    server.execute(*[f"INSERT INTO `{db}`.`{table}` VALUES {r}" for r in SMALL_ROWS],
                   f"UPDATE `{db}`.`{table}` SET en = 'z', st = 'q', l1 = 'ü' WHERE id = 2")


@pytest.mark.integration
def test_minimal_metadata_falls_back_to_live_schema(mariadb: MariaDBServer, fresh_db: str) -> None:
    db = fresh_db
    _small_table(mariadb, db, "full_t")
    _small_table(mariadb, db, "min_t")
    start = master_position(mariadb)
    _fill_small(mariadb, db, "full_t")
    mariadb.execute("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
    try:
        _fill_small(mariadb, db, "min_t")
    finally:
        mariadb.execute("SET GLOBAL binlog_row_metadata = 'FULL'")

    refused: list[str] = []

    def on_map(tm: Any, conn: Any) -> TableSchema:
        if tm.table == "min_t":
            assert needs_live_columns(tm)
            with pytest.raises(DecodeError) as err:
                schema_from_table_map(tm)
            refused.append(str(err.value))
            return schema_from_table_map(tm, fetch_live_columns(conn, tm.schema, tm.table))
        assert not needs_live_columns(tm)
        return schema_from_table_map(tm)

    changes = read_changes(mariadb, start, db, on_map)
    assert refused and "binlog_row_metadata=FULL" in refused[0] and f"{db}.min_t" in refused[0]
    full = [(c.kind, c.before, c.after) for c in changes if c.table == "full_t"]
    minimal = [(c.kind, c.before, c.after) for c in changes if c.table == "min_t"]
    assert len(full) == 3 and full == minimal
    assert {c.schema.full_metadata for c in changes if c.table == "min_t"} == {False}
    want = oracle(mariadb, db, "full_t", SMALL_COLUMNS)
    assert_rows_equal(minimal[0][2], {**want[1]}, "minimal insert 1")
    assert minimal[0][2]["en"] == "it's" and minimal[0][2]["l1"] == "é€"
    assert full[0][2]["el"] == "café" and full[0][2]["sl"] == "é,x"
    assert_rows_equal(minimal[2][2], want[2], "minimal update after")


@pytest.mark.integration
def test_alter_table_mid_stream(mariadb: MariaDBServer, fresh_db: str) -> None:
    db = fresh_db
    mariadb.execute(f"CREATE TABLE `{db}`.t (id INT PRIMARY KEY, a VARCHAR(10))")
    start = master_position(mariadb)
    mariadb.execute(
        f"INSERT INTO `{db}`.t VALUES (1, 'one')",
        f"ALTER TABLE `{db}`.t ADD COLUMN b BIGINT UNSIGNED NOT NULL DEFAULT 18446744073709551615, "
        "ADD COLUMN c DATE NULL",
        f"INSERT INTO `{db}`.t VALUES (2, 'two', 7, '2024-01-02')",
        f"UPDATE `{db}`.t SET a = 'uno' WHERE id = 1",
        f"DELETE FROM `{db}`.t WHERE id = 2",
    )
    changes = read_changes(mariadb, start, db)
    assert [(c.kind, c.before, c.after) for c in changes] == [
        (WRITE, None, {"id": 1, "a": "one"}),
        (WRITE, None, {"id": 2, "a": "two", "b": 7, "c": "2024-01-02"}),
        (UPDATE, {"id": 1, "a": "one", "b": "18446744073709551615", "c": None},
         {"id": 1, "a": "uno", "b": "18446744073709551615", "c": None}),
        (DELETE, {"id": 2, "a": "two", "b": 7, "c": "2024-01-02"}, None),
    ]

    # The live-schema fallback cannot describe the pre-ALTER row: refused, with the fix.
    def on_map(tm: Any, conn: Any) -> TableSchema:
        live = fetch_live_columns(conn, tm.schema, tm.table)
        for col in tm.columns:
            col.name = None  # what a server without FULL metadata sends
        if len(tm.columns) != len(live):
            with pytest.raises(DecodeError, match="altered"):
                schema_from_table_map(tm, live)
            return schema_from_table_map(tm, live[: len(tm.columns)])
        return schema_from_table_map(tm, live)

    assert len(read_changes(mariadb, start, db, on_map)) == 4


@pytest.mark.integration
def test_mariadb_old_temporal_formats(mariadb: MariaDBServer, fresh_db: str) -> None:
    """Tables created with mysql56_temporal_format=OFF binlog DATETIME/TIME/TIMESTAMP as
    the old types 12/11/7, hires ones with no fsp in the table map."""
    db = fresh_db
    cols = [("a", "DATETIME", "str"), ("b", "DATETIME(3)", "str"), ("b6", "DATETIME(6)", "str"),
            ("c", "TIME", "str"), ("d", "TIME(2)", "str"), ("d5", "TIME(5)", "str"),
            ("e", "TIMESTAMP NULL", "ts"), ("f", "TIMESTAMP(6) NULL", "ts"), ("f1", "TIMESTAMP(1) NULL", "ts")]
    mariadb.execute("SET GLOBAL mysql56_temporal_format = OFF")
    try:
        mariadb.execute(_ddl(db, "old_t", cols))
    finally:
        mariadb.execute("SET GLOBAL mysql56_temporal_format = ON")
    start = master_position(mariadb)
    conn = mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '-07:00'")
            cur.execute(f"INSERT INTO `{db}`.old_t VALUES "
                        "(1, '2024-01-02 03:04:05', '2024-01-02 03:04:05.123', '9999-12-31 23:59:59.999999', "
                        "'-100:00:01', '12:00:00.25', '-838:59:59.99999', '2024-01-02 03:04:05', "
                        "'2024-01-02 03:04:05.5', '2030-01-01 00:00:00.1'), "
                        "(2, '1000-01-01 00:00:00', '1000-01-01 00:00:00.001', '2000-02-29 12:00:00.000001', "
                        "'00:00:00', '-00:00:00.01', '838:59:59', NULL, NULL, NULL)")
            cur.execute("SET sql_mode = ''")
            cur.execute(f"INSERT INTO `{db}`.old_t (id, a, b, e, f) VALUES "
                        "(3, '0000-00-00 00:00:00', '0000-00-00 00:00:00', 0, 0)")
    finally:
        conn.close()
    want = oracle(mariadb, db, "old_t", cols)
    changes = read_changes(mariadb, start, db)
    assert {c.type for c in changes[0].schema.columns[1:]} == {7, 11, 12}
    assert len(changes) == 3
    for c in changes:
        assert_rows_equal(c.after, want[c.after["id"]], f"old-format id={c.after['id']}")
    assert changes[0].after["d5"] == "-838:59:59.99999"


# ------------------------------------------------------------------ unit: decimals


def _spec(name: str, type_: int, **kw: Any) -> ColumnSpec:
    return ColumnSpec(name=name, type=type_, **kw)


def _table(*cols: ColumnSpec) -> TableSchema:
    return TableSchema(db="d", table="t", columns=list(cols), full_metadata=True)


def _decimal_to_bin(text: str, precision: int, scale: int) -> bytes:
    """Independent encoder (MySQL decimal2bin, written from the published description)."""
    d = Decimal(text)
    neg = d < 0
    digits = f"{abs(d):.{scale}f}"
    ip, _, fp = digits.partition(".")
    intg = precision - scale
    ip = ip.rjust(intg, "0")[-intg:] if intg else ""
    sizes = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    out = bytearray()
    lead = intg % 9
    if lead:
        out += int(ip[:lead]).to_bytes(sizes[lead], "big")
    for k in range(lead, intg, 9):
        out += int(ip[k : k + 9]).to_bytes(4, "big")
    for k in range(0, scale - scale % 9, 9):
        out += int(fp[k : k + 9]).to_bytes(4, "big")
    if scale % 9:
        out += int(fp[scale - scale % 9 :]).to_bytes(sizes[scale % 9], "big")
    out[0] ^= 0x80
    if neg:
        out = bytearray(b ^ 0xFF for b in out)
    return bytes(out)


def _decode_one(col: ColumnSpec, value: bytes) -> Any:
    rows = decode_rows(_table(col), b"\x00" + value, WRITE, b"\x01")
    assert len(rows) == 1
    return rows[0][1][col.name]


def test_decimal_published_vectors() -> None:
    # The worked example of MySQL's decimal.c: 1234567890.1234 as DECIMAL(14,4).
    col = _spec("d", 246, precision=14, decimals=4)
    assert _decode_one(col, bytes.fromhex("810dfb38d204d2")) == "1234567890.1234"
    assert _decode_one(col, bytes.fromhex("7ef204c72dfb2d")) == "-1234567890.1234"


@pytest.mark.parametrize(("text", "p", "s", "want"), [
    ("12.5", 10, 2, "12.50"), ("-0.5", 10, 2, "-0.50"), ("0", 10, 2, "0.00"), ("7", 5, 0, "7"),
    ("-7", 5, 0, "-7"), ("0.5", 3, 3, "0.500"),
    ("99999999999999999999999999999999999.999999999999999999999999999999", 65, 30,
     "99999999999999999999999999999999999.999999999999999999999999999999"),
    ("-0.000000000000000000000000000001", 65, 30, "-0.000000000000000000000000000001"),
    ("123456789012345678", 18, 0, "123456789012345678"), ("-1.000000001", 19, 9, "-1.000000001"),
])
def test_decimal_rendering(text: str, p: int, s: int, want: str) -> None:
    assert _decode_one(_spec("d", 246, precision=p, decimals=s), _decimal_to_bin(text, p, s)) == want


def test_decimal_random_roundtrip() -> None:
    rng = random.Random(7)
    for _ in range(500):
        p = rng.randint(1, 65)
        s = rng.randint(0, min(p, 30))
        ip = "".join(rng.choice("0123456789") for _ in range(p - s)) or "0"
        fp = "".join(rng.choice("0123456789") for _ in range(s))
        text = ("-" if rng.random() < 0.5 else "") + ip + ("." + fp if s else "")
        want = f"{Decimal(text):.{s}f}"
        if Decimal(want) == 0:
            want = want.lstrip("-")
        got = _decode_one(_spec("d", 246, precision=p, decimals=s), _decimal_to_bin(text, p, s))
        assert got == want, (text, p, s)


# ---------------------------------------------------------------- unit: binary JSON


def test_json_binary_scalars() -> None:
    assert json_binary_decode(b"\x04\x00") is None
    assert json_binary_decode(b"\x04\x01") is True
    assert json_binary_decode(b"\x04\x02") is False
    assert json_binary_decode(b"\x05\xfe\xff") == -2
    assert json_binary_decode(b"\x06\xff\xff") == 65535
    assert json_binary_decode(b"\x07" + struct.pack("<i", -70000)) == -70000
    assert json_binary_decode(b"\x08" + struct.pack("<I", 4000000000)) == 4000000000
    assert json_binary_decode(b"\x09" + struct.pack("<q", -(2**60))) == str(-(2**60))
    assert json_binary_decode(b"\x09" + struct.pack("<q", 42)) == 42
    assert json_binary_decode(b"\x0a" + struct.pack("<Q", 2**64 - 1)) == str(2**64 - 1)
    assert json_binary_decode(b"\x0b" + struct.pack("<d", 2.5)) == 2.5
    assert json_binary_decode(b"\x0c\x03abc") == "abc"
    long = "é" * 100  # 200 bytes: two-byte varlen 0xC8 0x01
    assert json_binary_decode(b"\x0c\xc8\x01" + long.encode()) == long
    assert json_binary_decode(b"") is None


def test_json_binary_small_containers() -> None:
    # [1, "ab"]: count 2, size 13, entries (int16 inline 1), (string @10), data "\x02ab"
    arr = bytes.fromhex("02" "0200" "0d00" "050100" "0c0a00" "02" "6162")
    assert json_binary_decode(arr) == [1, "ab"]
    # {"a": 1, "bc": null}: count 2, size 21, keys @18 len1 / @19 len2, values inline
    obj = bytes.fromhex("00" "0200" "1500" "1200" "0100" "1300" "0200" "050100" "040000" "616263")
    assert json_binary_decode(obj) == {"a": 1, "bc": None}
    # {"k": [true, 2.5]}: key "k" @11, the array @12 (count 2, size 18, double @10 inside it)
    inner = bytes.fromhex("0200" "1200" "040100" "0b0a00") + struct.pack("<d", 2.5)
    nested = bytes.fromhex("00" "0100" "1e00" "0b00" "0100" "020c00" "6b") + inner
    assert json_binary_decode(nested) == {"k": [True, 2.5]}
    assert json_binary_decode(bytes.fromhex("02" "0000" "0400")) == []
    assert json_binary_decode(bytes.fromhex("00" "0000" "0400")) == {}


def test_json_binary_large_containers_and_opaque() -> None:
    # large array [int32 inline -5, uint32 inline 7, "x"]: 4-byte count/size/offsets
    header = 8 + 3 * 5
    body = (struct.pack("<II", 3, header + 2)
            + b"\x07" + struct.pack("<i", -5) + b"\x08" + struct.pack("<I", 7)
            + b"\x0c" + struct.pack("<I", header) + b"\x01x")
    assert json_binary_decode(b"\x03" + body) == [-5, 7, "x"]
    # large object {"n": null}
    obj = struct.pack("<II", 1, 8 + 6 + 5 + 1) + struct.pack("<IH", 19, 1) + b"\x04" + struct.pack("<I", 0) + b"n"
    assert json_binary_decode(b"\x01" + obj) == {"n": None}
    # opaque DECIMAL(4,2) 12.50 and DATETIME 2024-01-02 03:04:05.000006, DATE, TIME
    dec = bytes([4, 2]) + _decimal_to_bin("12.50", 4, 2)
    assert json_binary_decode(b"\x0f\xf6" + bytes([len(dec)]) + dec) == 12.5
    ymd = ((2024 * 13 + 1) << 5) | 2
    packed = ((ymd << 17 | (3 << 12 | 4 << 6 | 5)) << 24) | 6
    assert json_binary_decode(b"\x0f\x0c\x08" + struct.pack("<q", packed)) == "2024-01-02 03:04:05.000006"
    assert json_binary_decode(b"\x0f\x0a\x08" + struct.pack("<q", (ymd << 17) << 24)) == "2024-01-02"
    tpacked = -(((12 << 12 | 34 << 6 | 56) << 24) | 500000)
    assert json_binary_decode(b"\x0f\x0b\x08" + struct.pack("<q", tpacked)) == "-12:34:56.500000"
    assert json_binary_decode(b"\x0f\xfc\x02hi") == "base64:type252:aGk="


def test_json_column_and_corrupt_json() -> None:
    col = _spec("j", 245, length_size=4)
    doc = bytes.fromhex("02" "0200" "0d00" "050100" "0c0a00" "02" "6162")
    assert _decode_one(col, struct.pack("<I", len(doc)) + doc) == [1, "ab"]
    bad = b"\x0c\x09abc"  # string longer than the value
    with pytest.raises(DecodeError, match=r"d\.t\.j \(JSON\)"):
        _decode_one(col, struct.pack("<I", len(bad)) + bad)


# ------------------------------------------------------------- unit: other decoders


def test_float32_shortest_repr() -> None:
    for text in ("1.1", "0.1", "-0.5", "3.14159", "1e-10", "16777216.0", "3.4028235e+38", "1e+38"):
        f32 = struct.unpack("<f", struct.pack("<f", float(text)))[0]
        got = shortest_float32(f32)
        assert repr(got) == repr(float(text))
        assert struct.pack("<f", got) == struct.pack("<f", f32)
    assert _decode_one(_spec("f", 4), struct.pack("<f", 1.1)) == 1.1


def test_temporal_hand_built() -> None:
    # TIME2 fsp 1 of -100:00:00.5 and DATETIME2 fsp 3 as MariaDB 10.11 wrote them
    assert _decode_one(_spec("t", 19, fsp=1), bytes.fromhex("79bfffce")) == "-100:00:00.5"
    assert _decode_one(_spec("t", 18, fsp=3), bytes.fromhex("99b244310504ce")) == "2024-01-02 03:04:05.123"
    assert _decode_one(_spec("t", 17, fsp=6), bytes.fromhex("65937d2501e240")) == "2024-01-02T03:04:05.123456Z"
    assert _decode_one(_spec("t", 17, fsp=2), bytes(5)) == "0000-00-00 00:00:00.00"
    assert _decode_one(_spec("t", 10), bytes(3)) == "0000-00-00"
    assert _decode_one(_spec("y", 13), b"\x00") == 0
    assert _decode_one(_spec("y", 13), b"\x7c") == 2024


def test_rows_nulls_and_present_bitmap() -> None:
    cols = [_spec("a", 3), _spec("b", 15, charset="utf-8", max_length=40), _spec("c", 1, unsigned=True)]
    sch = _table(*cols)
    # two rows: (7, NULL, 255) and (NULL, "hé", 1)
    body = b"\x02" + struct.pack("<i", 7) + b"\xff" + b"\x01" + b"\x03h\xc3\xa9" + b"\x01"
    assert decode_rows(sch, body, WRITE, b"\x07") == [
        (None, {"a": 7, "b": None, "c": 255}), (None, {"a": None, "b": "hé", "c": 1})]
    # only a and c present (binlog_row_image=MINIMAL style): b is omitted, not None
    assert decode_rows(sch, b"\x00" + struct.pack("<i", 1) + b"\x02", DELETE, b"\x05") == [
        ({"a": 1, "c": 2}, None)]
    upd = b"\x00" + struct.pack("<i", 1) + b"\x02" + b"\x00" + b"\x01x"
    assert decode_rows(sch, upd, UPDATE, b"\x05", b"\x02") == [({"a": 1, "c": 2}, {"b": "x"})]
    # per-table decoders and plans are cached on the schema
    assert sch.__dict__["_df_plans"].keys() >= {b"\x07", b"\x05", b"\x02"}


def test_truncated_and_unsupported_raise_decode_error() -> None:
    sch = _table(_spec("a", 3), _spec("name", 15, charset="utf-8", max_length=40))
    with pytest.raises(DecodeError, match=r"d\.t\.name \(VARCHAR\).*truncated"):
        decode_rows(sch, b"\x00" + struct.pack("<i", 1) + b"\x05ab", WRITE, b"\x03")
    with pytest.raises(DecodeError, match=r"d\.t\.a \(INT\)"):
        decode_rows(sch, b"\x00\x01", WRITE, b"\x03")
    old = _table(_spec("x", 0))
    with pytest.raises(DecodeError, match=r"d\.t\.x .*not supported"):
        decode_rows(old, b"\x00\x01", WRITE, b"\x01")
    assert not DecodeError.retriable
    swe7 = _table(_spec("s", 15, charset="unsupported:swe7", max_length=10))
    with pytest.raises(DecodeError, match="swe7"):
        decode_rows(swe7, b"\x00\x01a", WRITE, b"\x01")


def test_latin1_c1_bytes_and_binary_padding() -> None:
    col = _spec("l", 15, charset="cp1252", max_length=10)
    assert _decode_one(col, b"\x04\x80\x81\xe9\x9d") == "€\x81é\x9d"
    bn = _spec("b", 254, charset=None, max_length=4)
    assert decoder_for(bn) is rowdecode.binary_decode
    assert _decode_one(bn, b"\x01\x01") == base64.b64encode(b"\x01\x00\x00\x00").decode()


def test_implementation_flag() -> None:
    assert rowdecode.IMPLEMENTATION == "python"
