"""The bench's workload: the seed's four tables, a pre-written backlog, and the seed pipeline's config.

Contract:
- :func:`prepare_schema` creates database ``app`` and the seed's tables
  (:data:`deltaforge.demo.SCHEMA`, made ``IF NOT EXISTS``) and tops every table up to
  :data:`SEED_ROWS` rows, so updates and deletes have rows to hit. Idempotent, and safe on
  tables that already hold rows (ids continue after ``MAX(id)``).
- :func:`write_backlog` writes exactly ``rows`` row changes (every statement's row count is
  checked) between two recorded binlog positions, in one of two shapes (:data:`WORKLOADS`),
  both a configurable insert/update/delete mix over orders/inventory/users/products with
  realistic row sizes (an order row image ~60 B, a product with a description up to ~250 B):

  * ``oltp`` (the default): what an application's binlog looks like. Transactions of 1..12
    statements (mean ~4), every statement single-row; updates and deletes by primary key. Each
    statement is one TABLE_MAP + one ROWS event (+ ANNOTATE_ROWS), each transaction adds a
    GTID and an XID: about 3.5 binlog events per row change.
  * ``bulk``: many small transactions (1..50 rows, each of 1..3 multi-row statements) plus one
    large one of ``big_tx_rows`` in the middle: about 10 rows per ROWS event.
- :func:`count_binlog_events` counts the binlog events of a range (``SHOW BINLOG EVENTS``), so
  a reader's rate can be given per binlog event as well as per row.
- :func:`write_big_transaction` writes one transaction of N inserts fast
  (``INSERT ... SELECT`` from MariaDB's ``seq_1_to_N``), for the memory phase.
- :func:`seed_config` / :func:`seed_yaml` give ``conf/pipeline.yaml`` with ``start`` set to a
  recorded position, optionally without its processor and with another stream name: the
  parsed config for in-process measurements, the YAML text for ``deltaforge run`` subprocesses.

Hazards: UPDATEs always change every row they match (a version counter goes into the row),
otherwise MariaDB logs no row image and the count would be short; deletes fall back to
inserts when a table has too few live rows. The writer is single-threaded on purpose: the
backlog is written before any drain, so it never competes with the engine for the 2 cores.
The OLTP writer sends several transactions' statements in one multi-statement query (one
round trip instead of one per statement); the server still executes, and logs, each
statement on its own, so the binlog's shape is that of one statement per round trip.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deltaforge.benchkit.env import BenchEnv, BenchError, binlog_position

ROOT = Path(__file__).resolve().parent.parent.parent
SEED_YAML = ROOT / "conf" / "pipeline.yaml"
TABLES = ["app.users", "app.products", "app.orders", "app.inventory"]
SEED_ROWS = 2000
DEFAULT_MIX = {"insert": 50, "update": 40, "delete": 10}
#: share of the backlog that goes into the one large transaction when not given (bulk)
BIG_TX_SHARE = 0.05
#: ``--workload`` choices; the first is the default
WORKLOADS = ("oltp", "bulk")
#: OLTP: weights of 1..12 statements per transaction (mean ~4.1 statements, like an application's)
OLTP_TX_WEIGHTS = (22, 17, 14, 11, 9, 7, 6, 4, 3, 3, 2, 2)
#: OLTP: statements sent per multi-statement round trip (whole transactions; a bound, not exact)
OLTP_STATEMENTS_PER_QUERY = 64


@dataclass
class Backlog:
    """A binlog range holding exactly ``rows`` row changes on the seed's tables."""

    start: str
    """``binlog.000001:1234``: the position just before the backlog."""
    end: str
    """The position right after it."""
    rows: int
    counts: dict[str, int]
    """``insert``/``update``/``delete``/``transactions`` (+ ``statements``, ``big_tx_rows``)."""
    write_s: float = 0.0
    tables: list[str] = field(default_factory=lambda: list(TABLES))
    workload: str = "bulk"
    binlog_events: dict[str, int] = field(default_factory=dict)
    """Binlog events of the range by type, plus ``total`` (set by :func:`count_binlog_events`'s caller)."""


def parse_mix(text: str) -> dict[str, int]:
    """``insert=50,update=40,delete=10`` -> weights; raises a one-line :class:`BenchError`."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, value = part.partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in DEFAULT_MIX:
            raise BenchError(f"--mix: {part!r} is not kind=weight",
                             "write e.g. --mix insert=50,update=40,delete=10")
        try:
            mix[kind] = int(value)
        except ValueError:
            raise BenchError(f"--mix: weight {value!r} of {kind} is not a whole number",
                             "write e.g. --mix insert=50,update=40,delete=10") from None
        if mix[kind] < 0:
            raise BenchError(f"--mix: weight of {kind} is negative", "use weights >= 0")
    if not mix or sum(mix.values()) <= 0:
        raise BenchError("--mix: no positive weight", "write e.g. --mix insert=50,update=40,delete=10")
    return {k: mix.get(k, 0) for k in DEFAULT_MIX}


def _schema_statements() -> list[str]:
    from deltaforge.demo import SCHEMA

    out = []
    for sql in SCHEMA:
        if sql.lstrip().upper().startswith("INSERT"):
            continue  # the demo's fixed-id rows would collide on re-runs; the bench seeds its own
        out.append(re.sub(r"^\s*CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", sql))
    return out


class _Writer:
    """Generates and applies row changes; tracks live ids so updates/deletes hit real rows."""

    WEIGHTS: ClassVar[dict[str, int]] = {"app.orders": 35, "app.inventory": 25, "app.users": 20,
                                         "app.products": 20}
    _INSERT: ClassVar[dict[str, str]] = {
        "app.users": "INSERT INTO app.users (id, email, name) VALUES (%s, %s, %s)",
        "app.products": "INSERT INTO app.products (id, category_id, sku, title, price, description) "
                        "VALUES (%s, %s, %s, %s, %s, %s)",
        "app.orders": "INSERT INTO app.orders (id, user_id, total, state, placed_at) VALUES (%s, %s, %s, %s, %s)",
        "app.inventory": "INSERT INTO app.inventory (id, product_id, warehouse, quantity) VALUES (%s, %s, %s, %s)",
    }
    _WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do")

    def __init__(self, conn: Any, rng: random.Random, mix: dict[str, int]) -> None:
        self.conn = conn
        self.rng = rng
        self.tables = list(self.WEIGHTS)
        self.weights = list(self.WEIGHTS.values())
        self.kinds = [k for k, w in mix.items() if w > 0]
        self.kind_weights = [mix[k] for k in self.kinds]
        self.live: dict[str, list[int]] = {}
        self.next_id: dict[str, int] = {}
        self.version = int(time.time()) % 1_000_000  # distinct across invocations on the same tables
        self.stats = {"insert": 0, "update": 0, "delete": 0, "transactions": 0, "statements": 0}
        with conn.cursor() as cur:
            for table in self.tables:
                cur.execute(f"SELECT id FROM {table}")
                ids = [int(r[0]) for r in cur.fetchall()]
                self.live[table] = ids
                self.next_id[table] = max(ids, default=0) + 1
        conn.commit()

    def _row(self, table: str, i: int) -> tuple[Any, ...]:
        rng = self.rng
        if table == "app.users":
            return (i, f"user{i}@example.com", f"User {i} {rng.choice(self._WORDS).title()}")
        if table == "app.products":
            desc = " ".join(rng.choices(self._WORDS, k=rng.randint(0, 40))) or None
            return (i, rng.randint(1, 40), f"SKU-{i}", f"Product {i} {rng.choice(('red', 'blue', 'XL', 'pro'))}",
                    f"{rng.uniform(1, 900):.2f}", desc)
        if table == "app.orders":
            placed = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
                seconds=rng.randint(0, 10**7), microseconds=rng.randint(0, 999999))
            return (i, rng.randint(1, 50_000), f"{rng.uniform(5, 2000):.2f}", rng.choice(("new", "paid")),
                    placed.replace(tzinfo=None))
        return (i, 10_000_000 + i, rng.choice(("AMS", "FRA", "DUB")), rng.randint(0, 500))

    def _update_sql(self, table: str, ids: str) -> str:
        # Every UPDATE changes every row it matches (the version goes into the row), so
        # rowcount == row images logged.
        v = self.version
        if table == "app.users":
            if self.rng.random() < 0.3:
                return f"UPDATE app.users SET email = CONCAT('user', id, '.v{v}@example.com') WHERE id IN ({ids})"
            return (f"UPDATE app.users SET name = CONCAT('User ', id, ' v{v}'), "
                    f"status = IF(status = 'active', 'suspended', 'active') WHERE id IN ({ids})")
        if table == "app.products":
            return (f"UPDATE app.products SET price = price + 0.01, title = CONCAT('Product ', id, ' v{v}') "
                    f"WHERE id IN ({ids})")
        if table == "app.orders":
            return (f"UPDATE app.orders SET state = ELT(1 + ({v} % 4), 'new', 'paid', 'shipped', 'cancelled'), "
                    f"total = total + 1 WHERE id IN ({ids})")
        return f"UPDATE app.inventory SET quantity = quantity - 1 + ({v} % 2) * 2 WHERE id IN ({ids})"

    def _pick(self, table: str, n: int, remove: bool) -> str:
        live = self.live[table]
        idx = sorted(self.rng.sample(range(len(live)), n), reverse=True)
        ids = [live[i] for i in idx]
        if remove:
            for i in idx:  # descending: swap-pop keeps the lower indices valid
                live[i] = live[-1]
                live.pop()
        return ",".join(map(str, ids))

    def statement(self, cur: Any, table: str, kind: str, n: int) -> None:
        if kind != "insert" and len(self.live[table]) < n + SEED_ROWS // 2:
            kind = "insert"  # keep a pool of live rows; deletes must not run the table dry
        if kind == "insert":
            start = self.next_id[table]
            self.next_id[table] = start + n
            cur.executemany(self._INSERT[table], [self._row(table, i) for i in range(start, start + n)])
            self.live[table].extend(range(start, start + n))
        else:
            self.version += 1
            ids = self._pick(table, n, remove=kind == "delete")
            sql = f"DELETE FROM {table} WHERE id IN ({ids})" if kind == "delete" else self._update_sql(table, ids)
            cur.execute(sql)
        if cur.rowcount != n:
            raise BenchError(f"workload: {kind} on {table} changed {cur.rowcount} rows, expected {n}",
                             "run the bench on tables only it writes to (a scratch database)")
        self.stats[kind] += n
        self.stats["statements"] += 1

    def single_row_sql(self, table: str, kind: str) -> tuple[str, str]:
        """(SQL with literal values, the kind actually written) of one single-row statement;
        updates and deletes address one live row by primary key."""
        if kind != "insert" and len(self.live[table]) < 1 + SEED_ROWS // 2:
            kind = "insert"  # keep a pool of live rows; deletes must not run the table dry
        if kind == "insert":
            i = self.next_id[table]
            self.next_id[table] = i + 1
            self.live[table].append(i)
            lit = self.conn.escape
            return self._INSERT[table] % tuple(lit(v) for v in self._row(table, i)), kind
        self.version += 1
        pk = self._pick(table, 1, remove=kind == "delete")
        if kind == "delete":
            return f"DELETE FROM {table} WHERE id = {pk}", kind
        return self._update_sql(table, pk).replace(f"WHERE id IN ({pk})", f"WHERE id = {pk}"), kind

    def oltp(self, rows: int, progress: Any = None) -> None:
        """``rows`` single-row statements in transactions of 1..12 (:data:`OLTP_TX_WEIGHTS`),
        sent whole transactions at a time in multi-statement queries; every result's row count
        is checked (1 per statement, 0 per COMMIT)."""
        rng = self.rng
        sizes = range(1, len(OLTP_TX_WEIGHTS) + 1)
        done = 0
        sql: list[str] = []
        expect: list[tuple[str, str, int]] = []
        with self.conn.cursor() as cur:
            while done < rows:
                size = min(rng.choices(sizes, OLTP_TX_WEIGHTS)[0], rows - done)
                for _ in range(size):
                    table = rng.choices(self.tables, self.weights)[0]
                    stmt, kind = self.single_row_sql(table, rng.choices(self.kinds, self.kind_weights)[0])
                    sql.append(stmt)
                    expect.append((kind, table, 1))
                    self.stats[kind] += 1
                    self.stats["statements"] += 1
                sql.append("COMMIT")
                expect.append(("commit", "", 0))
                self.stats["transactions"] += 1
                done += size
                if len(sql) >= OLTP_STATEMENTS_PER_QUERY or done >= rows:
                    self._send(cur, sql, expect)
                    sql, expect = [], []
                    if progress is not None:
                        progress(done)

    def _send(self, cur: Any, sql: list[str], expect: list[tuple[str, str, int]]) -> None:
        cur.execute(";\n".join(sql))
        for i, (kind, table, n) in enumerate(expect):
            if i and not cur.nextset():
                raise BenchError(f"workload: the server answered {i} of {len(expect)} statements",
                                 "run the bench against MariaDB or MySQL with multi-statement queries allowed")
            if cur.rowcount != n:
                raise BenchError(f"workload: {kind} on {table} changed {cur.rowcount} rows, expected {n}",
                                 "run the bench on tables only it writes to (a scratch database)")

    def transaction(self, cur: Any, size: int, max_stmt: int) -> None:
        """One transaction of exactly ``size`` row changes in statements of at most ``max_stmt`` rows."""
        rng = self.rng
        left = size
        while left > 0:
            n = min(left, max_stmt) if size > 50 else left
            if size <= 50:
                parts = min(n, rng.choice((1, 1, 2, 3)))
                cuts = sorted(rng.sample(range(1, n), parts - 1)) if parts > 1 else []
                pieces = [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
            else:
                pieces = [n]
            for m in pieces:
                table = rng.choices(self.tables, self.weights)[0]
                kind = rng.choices(self.kinds, self.kind_weights)[0]
                self.statement(cur, table, kind, m)
            left -= n
        self.conn.commit()
        self.stats["transactions"] += 1


def prepare_schema(env: BenchEnv) -> None:
    """Create database ``app`` and the seed's tables when missing; top each up to SEED_ROWS rows."""
    import pymysql

    conn = env.mysql()
    try:
        with conn.cursor() as cur:
            for sql in _schema_statements():
                cur.execute(sql)
        conn.commit()
        writer = _Writer(conn, random.Random(0), DEFAULT_MIX)
        with conn.cursor() as cur:
            for table in writer.tables:
                missing = SEED_ROWS - len(writer.live[table])
                if missing > 0:
                    writer.statement(cur, table, "insert", missing)
        conn.commit()
    except pymysql.err.MySQLError as e:
        raise BenchError(f"cannot create the seed's tables in database app: {e.args[-1]}",
                         "pass --mysql-admin-dsn of a user with CREATE, INSERT, UPDATE, DELETE on app.*") from None
    finally:
        conn.close()


def write_backlog(env: BenchEnv, rows: int, seed: int = 1, big_tx_rows: int = 0,
                  mix: dict[str, int] | None = None,
                  progress: Any = None, workload: str = "oltp") -> Backlog:
    """Write exactly ``rows`` row changes and return the binlog range that holds them.

    ``workload``: ``oltp`` or ``bulk`` (module docstring). ``big_tx_rows`` (bulk only): size of
    the one large transaction (0: ~5% of ``rows``; it is part of ``rows``, not added to it).
    ``progress(done_rows)`` is called as transactions are committed.
    """
    import pymysql

    if workload not in WORKLOADS:
        raise BenchError(f"--workload {workload!r} is unknown", f"choose one of {', '.join(WORKLOADS)}")
    if rows < 1:
        raise BenchError(f"--rows {rows}: the backlog needs at least 1 row change", "pass --rows 1000 or more")
    big = big_tx_rows if big_tx_rows > 0 else (int(rows * BIG_TX_SHARE) if rows >= 1000 else 0)
    big = min(big, rows) if workload == "bulk" else 0
    prepare_schema(env)
    conn = env.mysql(multi_statements=workload == "oltp")
    rng = random.Random(seed)
    try:
        writer = _Writer(conn, rng, mix or DEFAULT_MIX)
        start = binlog_position(env)
        t0 = time.perf_counter()
        done = 0
        big_at = (rows - big) // 2  # the large transaction sits in the middle of the backlog
        big_done = big == 0
        if workload == "oltp":
            writer.oltp(rows, progress)
            done = rows
        with conn.cursor() as cur:
            while done < rows:
                if not big_done and done >= big_at:
                    writer.transaction(cur, big, max_stmt=1000)
                    done += big
                    big_done = True
                else:
                    size = rng.randint(1, 5) if rng.random() < 0.75 else rng.randint(6, 50)
                    limit = (big_at - done) if not big_done else (rows - done)
                    writer.transaction(cur, min(size, limit), max_stmt=50)
                    done += min(size, limit)
                if progress is not None:
                    progress(done)
        write_s = time.perf_counter() - t0
        end = binlog_position(env)
    except pymysql.err.MySQLError as e:
        raise BenchError(f"writing the workload failed: {e.args[-1]}",
                         "pass --mysql-admin-dsn of a user with INSERT, UPDATE, DELETE on app.*") from None
    finally:
        conn.close()
    counts = dict(writer.stats)
    counts["big_tx_rows"] = big
    return Backlog(start=start, end=end, rows=rows, counts=counts, write_s=round(write_s, 3), workload=workload)


@dataclass
class BinlogEvents:
    """The binlog events of a range: counts by type, and each event's end as (file number, end_log_pos)."""

    by_type: dict[str, int]
    ends: list[tuple[int, int]]

    @property
    def total(self) -> int:
        return len(self.ends)

    def between(self, after: tuple[int, int], upto: tuple[int, int]) -> int:
        """Events ending in ``(after, upto]``: what a reader went through between two positions."""
        return max(0, bisect_right(self.ends, upto) - bisect_right(self.ends, after))


def position_key(position: str | tuple[str, int]) -> tuple[int, int]:
    """``binlog.000007:1234`` (or ``("binlog.000007", 1234)``) -> ``(7, 1234)``, ordered like the binlog."""
    file, pos = position.rsplit(":", 1) if isinstance(position, str) else position
    return (int(file.rsplit(".", 1)[-1]), int(pos))


def count_binlog_events(env: BenchEnv, start: str, end: str, page: int = 50_000) -> BinlogEvents:
    """Every binlog event in ``[start, end)`` (``SHOW BINLOG EVENTS``, paged; rotations followed)."""
    import pymysql

    first, last = position_key(start), position_key(end)
    file, pos = start.rsplit(":", 1)
    by_type: dict[str, int] = {}
    ends: list[tuple[int, int]] = []
    conn = env.mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            files = [r[0] for r in cur.fetchall() if first[0] <= position_key((r[0], 0))[0] <= last[0]]
            for name in files:
                offset = int(pos) if name == file else 4
                num = position_key((name, 0))[0]
                while True:
                    cur.execute(f"SHOW BINLOG EVENTS IN {conn.escape(name)} FROM {offset} LIMIT {page}")
                    got = cur.fetchall()
                    stop = len(got) < page
                    for _log, _pos, etype, _sid, end_pos, _info in got:
                        key = (num, int(end_pos))
                        if key > last:
                            stop = True
                            break
                        by_type[etype] = by_type.get(etype, 0) + 1
                        ends.append(key)
                    if stop:
                        break
                    offset = int(got[-1][4])
    except pymysql.err.MySQLError as e:
        raise BenchError(f"cannot count the backlog's binlog events: {e.args[-1]}",
                         "grant REPLICATION SLAVE / BINLOG MONITOR to the --mysql-admin-dsn user") from None
    finally:
        conn.close()
    return BinlogEvents(by_type=dict(sorted(by_type.items(), key=lambda kv: -kv[1])), ends=ends)


def write_big_transaction(env: BenchEnv, rows: int) -> Backlog:
    """One transaction inserting ``rows`` orders, written server-side (seconds for 1M rows)."""
    import pymysql

    prepare_schema(env)
    conn = env.mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COALESCE(MAX(id), 0) FROM app.orders")
            base = int(cur.fetchone()[0]) + 1_000_000  # clear of ids the backlog writer hands out next
        start = binlog_position(env)
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            try:
                inserted = cur.execute(
                    f"INSERT INTO app.orders (id, user_id, total, state, placed_at) "
                    f"SELECT {base} + seq, 1 + seq % 50000, 5 + (seq % 200000) / 100, "
                    f"ELT(1 + seq % 2, 'new', 'paid'), TIMESTAMP'2024-05-01 00:00:00' + INTERVAL seq SECOND "
                    f"FROM seq_1_to_{int(rows)}")
            except pymysql.err.ProgrammingError:
                # No SEQUENCE engine (MySQL): same rows from the client, still one transaction.
                conn.rollback()
                inserted = _client_side_big_insert(cur, base, rows)
            if inserted != rows:
                raise BenchError(f"big transaction inserted {inserted} rows, expected {rows}",
                                 "run the bench on a scratch database")
        conn.commit()
        write_s = time.perf_counter() - t0
        end = binlog_position(env)
    except pymysql.err.MySQLError as e:
        raise BenchError(f"writing the {rows}-row transaction failed: {e.args[-1]}",
                         "raise max_binlog_cache_size / free disk space, or pass a smaller --big-tx-rows") from None
    finally:
        conn.close()
    return Backlog(start=start, end=end, rows=rows,
                   counts={"insert": rows, "update": 0, "delete": 0, "transactions": 1, "big_tx_rows": rows},
                   write_s=round(write_s, 3), tables=["app.orders"])


def _client_side_big_insert(cur: Any, base: int, rows: int) -> int:
    sql = "INSERT INTO app.orders (id, user_id, total, state, placed_at) VALUES (%s, %s, %s, %s, %s)"
    t = dt.datetime(2024, 5, 1)  # a naive DATETIME value, as MySQL stores it
    done = 0
    for lo in range(1, rows + 1, 10_000):
        hi = min(rows, lo + 9_999)
        done += cur.executemany(sql, [(base + s, 1 + s % 50000, f"{5 + (s % 200000) / 100:.2f}",
                               ("new", "paid")[s % 2], t + dt.timedelta(seconds=s)) for s in range(lo, hi + 1)])
    return done


# --------------------------------------------------------------------------- the seed pipeline


def _seed_text() -> str:
    try:
        return SEED_YAML.read_text(encoding="utf-8")
    except OSError:
        raise BenchError(f"the seed pipeline {SEED_YAML} is missing",
                         "run the bench from a DeltaForge checkout (it drains conf/pipeline.yaml)") from None


def seed_yaml(start: str, processors: bool = True, stream: str = "cache:invalidations") -> str:
    """``conf/pipeline.yaml``'s text with ``start: <start>`` added, the processor optionally
    removed (``processors: []``) and the stream renamed; ``${MYSQL_DSN}``/``${REDIS_URI}`` stay."""
    text = _seed_text()
    new, n = re.subn(r"^(\s*)dsn: \$\{MYSQL_DSN\}\n", lambda m: f"{m.group(0)}{m.group(1)}start: {start}\n",
                     text, count=1, flags=re.M)
    if n != 1:
        raise BenchError(f"{SEED_YAML}: no 'dsn: ${{MYSQL_DSN}}' line to put 'start:' after",
                         "restore conf/pipeline.yaml from git")
    text = new
    if not processors:
        new, n = re.subn(r"^  processors:\n.*?(?=^  sinks:)", "  processors: []\n\n", text, count=1,
                         flags=re.M | re.S)
        if n != 1:
            raise BenchError(f"{SEED_YAML}: no 'processors:' block before 'sinks:'", "restore conf/pipeline.yaml from git")
        text = new
    if stream != "cache:invalidations":
        new, n = re.subn(r"^(\s*)stream: cache:invalidations$", lambda m: f"{m.group(1)}stream: {stream}",
                         text, count=1, flags=re.M)
        if n != 1:
            raise BenchError(f"{SEED_YAML}: no 'stream: cache:invalidations' line", "restore conf/pipeline.yaml from git")
        text = new
    return text


def engine_environ(env: BenchEnv) -> dict[str, str]:
    """``os.environ`` plus the two variables the seed's YAML reads."""
    return {**os.environ, "MYSQL_DSN": env.mysql_dsn, "REDIS_URI": env.redis_uri}


def seed_config(env: BenchEnv, start: str, processors: bool = True, stream: str = "cache:invalidations") -> Any:
    """The seed's ``PipelineConfig``, ``start`` overridden, processors optionally emptied."""
    from deltaforge.config import load_config_text

    return load_config_text(seed_yaml(start, processors, stream), base_dir=SEED_YAML.parent,
                            env=engine_environ(env), path=str(SEED_YAML))
