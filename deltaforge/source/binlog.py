"""Reader stage: one replication connection -> batches of events (DESIGN.md §2, §3, §5).

mysql-replication does the transport, event framing and table-map parsing; row
bodies are decoded by our own decoder from the raw packet bytes, so values render
exactly as DESIGN.md §3 says: ``_core/rowdecode.pyx``, or its pure-Python twin
:mod:`deltaforge.source.rowdecode` (chosen in :mod:`deltaforge._accel`).

Batching contract
-----------------
* A batch ends at a transaction boundary (``respect_source_tx``) once
  ``max_events``/``max_bytes``/``max_ms`` is reached, or as soon as the socket has
  nothing more buffered (so latency at low traffic is milliseconds).
* A transaction bigger than the limits is split. The split batch's end position
  is the transaction's start plus the rows delivered so far (``skip_rows``); the
  reader always holds back the newest row of an open transaction because only the
  commit event tells whether it was the last (``transaction.end``). A cut never
  falls inside an earlier, complete transaction (its start is not kept): those go
  out whole, in a batch that ends after them. Proven by
  ``tests/test_split_batches.py`` (stop after every batch, resume from its end).
* Memory is bounded by one batch: nothing else is buffered here.

Positions: ``file:pos`` of the binlog always; MariaDB GTID state (``d-s-n`` per
domain) tracked per transaction and preferred on resume. MySQL ``uuid:n`` GTIDs are
carried in ``source.gtid``/``transaction.id``.

Hazards
-------
* mysql-replication silently reconnects after errors 2006/2013 from the *last event*
  (possibly mid-transaction, without its table map). We refuse that: the connection
  factory raises :class:`SourceUnavailable` on a reconnect and the pipeline restarts
  from its checkpoint instead.
* MariaDB file:pos dumps must use the plain COM_BINLOG_DUMP path (the library's
  MariaDB path sends an empty file name), so ``is_mariadb`` is set only for GTID starts.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from deltaforge._accel import rowdecode
from deltaforge.dsn import MySQLDSN, parse_mysql_dsn
from deltaforge.errors import (
    ConfigError,
    DecodeError,
    DeltaForgeError,
    SourceError,
    SourceUnavailable,
)
from deltaforge.model import (
    Batch,
    Event,
    OrderKey,
    Position,
    Source,
    Transaction,
    binlog_file_number,
    event_id_for,
    event_id_hasher,
)
from deltaforge.source.schema import (
    TableSchema,
    fetch_live_columns,
    needs_live_columns,
    schema_from_table_map,
)
from deltaforge.source.tables import TableFilter

log = logging.getLogger("deltaforge.source")

_KIND = {WriteRowsEvent: rowdecode.WRITE, UpdateRowsEvent: rowdecode.UPDATE, DeleteRowsEvent: rowdecode.DELETE}
_OP = {rowdecode.WRITE: "c", rowdecode.UPDATE: "u", rowdecode.DELETE: "d"}
_MARIADB_GTID_STANDALONE = 0x01
_HEARTBEAT_S = 5.0
#: no byte from the server for this long (heartbeats included) = connection dead
_SILENCE_S = 30.0
_DML = ("INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD DATA")
_FILE_POS = re.compile(r"^(?P<file>[^:\s]+):(?P<pos>\d+)$")
_MARIADB_GTID = re.compile(r"^\d+-\d+-\d+(,\d+-\d+-\d+)*$")
_MYSQL_GTID = re.compile(r"^[0-9a-fA-F-]{36}:\d+(-\d+)?(:\d+(-\d+)?)*(,[0-9a-fA-F-]{36}:\d+(-\d+)?(:\d+(-\d+)?)*)*$")


_tm_cache_local = threading.local()
_TM_CACHE_MAX = 2048


def _install_table_map_cache() -> None:
    """Reuse mysql-replication's parse of a table map whose exact bytes were seen before.

    The server re-sends a table's map before every rows event, and the library parses
    each one in full (columns, FULL row metadata, charsets): measured as the reader's
    largest single cost with small transactions. Identical bytes (the table id included)
    parse identically, so the parsed attributes are copied from the first parse; the
    per-packet fields are still set by ``BinLogEvent.__init__``. Active only in threads
    that set ``_tm_cache_local.cache`` (our reader); anything else parses as before.
    """
    if getattr(TableMapEvent, "_deltaforge_cache", False):
        return
    from pymysqlreplication.event import BinLogEvent

    original = TableMapEvent.__init__

    def cached_init(self: Any, from_packet: Any, event_size: int, table_map: Any, ctl_connection: Any,
                    **kw: Any) -> None:
        cache: dict[bytes, dict[str, Any]] | None = getattr(_tm_cache_local, "cache", None)
        if cache is None:
            original(self, from_packet, event_size, table_map, ctl_connection, **kw)
            return
        p = from_packet.packet
        key = p._data[p._position:p._position + event_size]
        hit = cache.get(key)
        if hit is None:
            original(self, from_packet, event_size, table_map, ctl_connection, **kw)
            if len(cache) >= _TM_CACHE_MAX:
                cache.clear()
            # the event's own dict: what the reader attaches to it (its schema) is shared by later hits
            cache[key] = self.__dict__
            return
        BinLogEvent.__init__(self, from_packet, event_size, table_map, ctl_connection, **kw)
        per_packet = self.__dict__.copy()
        self.__dict__.update(hit)
        self.__dict__.update(per_packet)
        self._processed = hit["_processed"]
        if self._processed:
            table_map[self.table_id] = self.table_obj

    TableMapEvent.__init__ = cached_init  # type: ignore[method-assign]
    TableMapEvent._deltaforge_cache = True  # type: ignore[attr-defined]


def default_replica_server_id(pipeline: str) -> int:
    """A stable server id for the binlog connection, unlikely to collide with real servers."""
    return 0x40000000 + (zlib.crc32(pipeline.encode()) & 0x3FFFFFFF)


def parse_start(start: str, path: str = "spec.source.config.start") -> Position | str:
    """``latest`` | ``earliest`` | ``file:pos`` | GTID set -> a Position or the keyword."""
    text = start.strip()
    if text in ("latest", "earliest"):
        return text
    # GTIDs first: a MySQL "uuid:23" would also read as file:pos
    if _MARIADB_GTID.match(text) or _MYSQL_GTID.match(text):
        return Position(file="", pos=0, gtid=text)
    m = _FILE_POS.match(text)
    if m:
        return Position(file=m["file"], pos=int(m["pos"]))
    raise ConfigError(path, f"cannot read start position {start!r}",
                      "use latest, earliest, <binlog file>:<pos> (binlog.000003:4) or a GTID set (0-1-42)")


class MariaGtidState:
    """MariaDB GTID position: the last ``domain-server-seq`` applied per domain."""

    __slots__ = ("domains",)

    def __init__(self, text: str | None = None) -> None:
        self.domains: dict[str, str] = {}
        for part in (text or "").split(","):
            part = part.strip()
            if part:
                self.domains[part.split("-", 1)[0]] = part

    def with_gtid(self, gtid: str) -> str:
        merged = dict(self.domains)
        merged[gtid.split("-", 1)[0]] = gtid
        return ",".join(merged[d] for d in sorted(merged, key=int))

    def __str__(self) -> str:
        return ",".join(self.domains[d] for d in sorted(self.domains, key=int))


class _OneShotConnect:
    """pymysql connection factory for BinLogStreamReader that refuses silent reconnects."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.made += 1
        if self.made > 2:  # 1 control + 1 stream connection
            raise SourceUnavailable("the binlog connection was lost", "the pipeline restarts from its checkpoint")
        kwargs.setdefault("connect_timeout", 10)
        # mysql-replication still passes pymysql's deprecated spellings
        if "passwd" in kwargs:
            kwargs["password"] = kwargs.pop("passwd")
        if "db" in kwargs:
            kwargs["database"] = kwargs.pop("db")
        try:
            return pymysql.connect(**kwargs)
        except pymysql.err.OperationalError as e:
            raise SourceUnavailable(f"cannot connect to MySQL: {e.args[-1]}",
                                    "check that the server is up and spec.source.config.dsn") from None


class _Tx:
    """State of the transaction being read."""

    __slots__ = ("file", "gtid", "gtid_before", "id", "pos", "rows", "standalone")

    def __init__(self, file: str, pos: int, gtid: str | None, gtid_before: str | None, standalone: bool) -> None:
        self.file = file
        self.pos = pos
        self.gtid = gtid
        self.gtid_before = gtid_before
        self.id = gtid or f"{file}:{pos}"
        self.rows = 0  # rows of this transaction read so far (captured tables only)
        self.standalone = standalone


class BinlogSource:
    """Reads the binlog from a start position and yields :class:`Batch` objects."""

    def __init__(
        self,
        *,
        dsn: str,
        tables: list[str],
        pipeline: str,
        tenant: str | None,
        start: str = "latest",
        server_id: int | None = None,
        max_events: int = 2000,
        max_bytes: int = 16 * 1024 * 1024,
        max_ms: int = 50,
        respect_source_tx: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        self.dsn: MySQLDSN = parse_mysql_dsn(dsn)
        self.filter = TableFilter(tables)
        self.pipeline = pipeline
        self.tenant = tenant
        self.start_spec = parse_start(start)
        self.replica_id = server_id or default_replica_server_id(pipeline)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_s = max_ms / 1000.0
        self.respect_tx = respect_source_tx
        self.stop = stop or threading.Event()

        self._stream: BinLogStreamReader | None = None
        self._ctl: Any = None
        self._schemas: dict[int, TableSchema] = {}
        self._tm_cache: dict[bytes, dict[str, Any]] = {}
        self._warned_minimal: set[str] = set()
        self.flavor = "mysql"
        self.server_identity = ""
        self.full_metadata = True
        self.start_position: Position | None = None
        self._seq = 0
        self._last_data = time.monotonic()

    # ------------------------------------------------------------------ open
    def _control(self) -> Any:
        if self._ctl is None:
            self._ctl = _OneShotConnect()(**self.dsn.connect_kwargs(), autocommit=True)
        return self._ctl

    def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._control().cursor() as cur:
            cur.execute(sql, args or None)
            return list(cur.fetchall())

    def _server_facts(self) -> None:
        version = str(self._query("SELECT VERSION()")[0][0])
        self.flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
        server_id = int(self._query("SELECT @@server_id")[0][0])
        uuid = None
        if self.flavor == "mysql":
            uuid = str(self._query("SELECT @@server_uuid")[0][0])
        self.server_identity = uuid or f"{self.flavor}-{server_id}"
        meta = self._query("SHOW GLOBAL VARIABLES LIKE 'binlog_row_metadata'")
        self.full_metadata = bool(meta) and str(meta[0][1]).upper() == "FULL"
        if not self.full_metadata:
            log.warning("binlog_row_metadata is not FULL: column names come from the live schema "
                        "(information_schema); an ALTER TABLE while rows of the old shape are still being read "
                        "can mislabel them (fix: SET GLOBAL binlog_row_metadata=FULL)")

    def _binlog_end(self) -> Position:
        rows = self._query("SHOW MASTER STATUS")
        if not rows:
            raise SourceError("the binary log is off on the source server",
                              "start mysqld with log_bin (and binlog_format=ROW)")
        file, pos = str(rows[0][0]), int(rows[0][1])
        return Position(file=file, pos=pos, gtid=self._gtid_at(file, pos))

    def _binlog_first(self) -> Position:
        rows = self._query("SHOW BINARY LOGS")
        if not rows:
            raise SourceError("the binary log is off on the source server", "start mysqld with log_bin")
        file = str(rows[0][0])
        return Position(file=file, pos=4, gtid=self._gtid_at(file, 4))

    def _gtid_at(self, file: str, pos: int) -> str | None:
        if self.flavor != "mariadb":
            return None
        try:
            value = self._query("SELECT BINLOG_GTID_POS(%s, %s)", file, pos)[0][0]
        except pymysql.err.MySQLError:
            return None
        return None if value is None else str(value)

    def open(self, resume: Position | None) -> Position:
        """Connect and position the stream; returns where reading starts."""
        self._server_facts()
        if resume is not None:
            start = resume
        elif isinstance(self.start_spec, Position):
            start = self.start_spec
            if start.file and start.gtid is None:
                start = Position(file=start.file, pos=start.pos, gtid=self._gtid_at(start.file, start.pos))
        elif self.start_spec == "earliest":
            start = self._binlog_first()
        else:
            start = self._binlog_end()
        self.start_position = start
        self._connect(start)
        return start

    def _connect(self, start: Position) -> None:
        kwargs: dict[str, Any] = {}
        use_gtid = bool(start.gtid) and self.flavor == "mariadb"
        if use_gtid:
            kwargs.update(is_mariadb=True, auto_position=start.gtid)
        elif start.gtid and not start.file:
            if self.flavor == "mysql":
                kwargs.update(auto_position=start.gtid)
            else:
                raise SourceError(f"cannot start from GTID {start.gtid} on this server", "use a file:pos start")
        else:
            kwargs.update(log_file=start.file, log_pos=start.pos, resume_stream=True)
        self._gtid_state = MariaGtidState(start.gtid if self.flavor == "mariadb" else None)
        self._mysql_gtid = start.gtid if self.flavor == "mysql" else None
        self._skip_rows = start.skip_rows
        self._stream = BinLogStreamReader(
            connection_settings={**self.dsn.connect_kwargs(), "connect_timeout": 10},
            server_id=self.replica_id,
            blocking=True,
            only_events=[TableMapEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent,
                         MariadbGtidEvent, GtidEvent, RotateEvent, HeartbeatLogEvent],
            only_schemas=sorted(self.filter.schemas()) or None,
            slave_heartbeat=_HEARTBEAT_S,
            pymysql_wrapper=_OneShotConnect(),
            **kwargs,
        )
        self._file = start.file

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 - closing a dead socket must not mask the real error
                pass
            self._stream = None
        if self._ctl is not None:
            try:
                self._ctl.close()
            except Exception:  # noqa: BLE001
                pass
            self._ctl = None

    # --------------------------------------------------------------- reading
    def _buffered(self) -> bool:
        """True when the next packet is (at least partly) already here: reading won't block long."""
        conn = getattr(self._stream, "_stream_connection", None)
        sock = getattr(conn, "_sock", None)
        rfile = getattr(conn, "_rfile", None)
        if sock is None or rfile is None:
            return True  # not connected yet: the first fetch connects and gets the fake rotate at once
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            return len(rfile.peek(1)) > 0
        except (BlockingIOError, TypeError, ValueError):
            return False
        except OSError as e:
            raise SourceUnavailable(f"the binlog connection failed: {e}", "the pipeline restarts from its checkpoint") from None
        finally:
            try:
                sock.settimeout(timeout)
            except OSError:
                pass

    def _wait_readable(self) -> bool:
        """Block until data arrives or a stop is requested (checked every 200 ms). False on stop."""
        conn = getattr(self._stream, "_stream_connection", None)
        sock = getattr(conn, "_sock", None)
        while not self.stop.is_set():
            if sock is None or self._buffered():
                self._last_data = time.monotonic()
                return True
            try:
                ready, _, _ = select.select([sock], [], [], 0.2)
            except (OSError, ValueError) as e:
                raise SourceUnavailable(f"the binlog connection failed: {e}", "the pipeline restarts from its checkpoint") from None
            if ready:
                self._last_data = time.monotonic()
                return True
            if time.monotonic() - self._last_data > _SILENCE_S:
                raise SourceUnavailable(f"no data nor heartbeat from the source for {_SILENCE_S:.0f}s",
                                        "check the network to the MySQL server; the pipeline restarts from its checkpoint")
        return False

    def _fetch(self) -> Any:
        assert self._stream is not None
        try:
            return self._stream.fetchone()
        except SourceUnavailable:
            raise
        except pymysql.err.OperationalError as e:
            code = e.args[0] if e.args else 0
            msg = e.args[-1] if e.args else str(e)
            if code in (1236,):  # ER_MASTER_FATAL_ERROR_READING_BINLOG: position purged or invalid
                raise SourceError(f"the server cannot send the binlog from the requested position: {msg}",
                                  "the checkpoint's binlog was purged; reset the checkpoint or set "
                                  "spec.source.config.start") from None
            raise SourceUnavailable(f"the binlog connection failed: {msg}",
                                    "the pipeline restarts from its checkpoint") from None
        except (pymysql.err.InterfaceError, OSError, ConnectionError) as e:
            raise SourceUnavailable(f"the binlog connection failed: {e}", "the pipeline restarts from its checkpoint") from None

    def _schema_for(self, tm: TableMapEvent) -> TableSchema | None:
        """The decoding schema of a table map (None: table not captured), built once per distinct map."""
        # With the table-map cache, every map parsed from the same bytes shares the first one's
        # attributes, including the schema stored here on first sight.
        cached = tm.__dict__.get("_df_schema")
        if cached is not None and cached[0] is self:
            schema: TableSchema | None = cached[1]
        else:
            schema = self._build_schema(tm)
            tm._df_schema = (self, schema)  # type: ignore[attr-defined]
        if schema is None:
            self._schemas.pop(tm.table_id, None)
        else:
            self._schemas[tm.table_id] = schema
        return schema

    def _build_schema(self, tm: TableMapEvent) -> TableSchema | None:
        if not self.filter.matches(tm.schema, tm.table):
            return None
        live = None
        if needs_live_columns(tm):
            name = f"{tm.schema}.{tm.table}"
            if name not in self._warned_minimal:
                self._warned_minimal.add(name)
                log.warning("%s: the binlog lacks column names or fractional-second digits "
                            "(binlog_row_metadata is not FULL, or old temporal formats); using the live schema "
                            "from information_schema (fix: SET GLOBAL binlog_row_metadata=FULL)", name)
            live = fetch_live_columns(self._control(), tm.schema, tm.table)
        return schema_from_table_map(tm, live)

    def batches(self) -> Iterator[Batch]:
        """Yield batches until stop is requested. Raises SourceUnavailable/SourceError/DecodeError."""
        if self._stream is None:
            raise SourceError("BinlogSource.batches() called before open()")
        _install_table_map_cache()
        _tm_cache_local.cache = self._tm_cache  # this thread reads the binlog: its maps are cached
        try:
            yield from self._batches()
        finally:
            _tm_cache_local.cache = None

    def _batches(self) -> Iterator[Batch]:
        events: list[Event] = []
        keys: list[OrderKey] = []
        nbytes = 0
        started = time.monotonic()
        last_yield = time.monotonic()
        tx: _Tx | None = None
        #: end of the last complete transaction read (where a batch of everything so far would end)
        boundary: Position | None = None
        #: how many of `events` belong to complete transactions
        boundary_count = 0
        committed = self.start_position
        skip = self._skip_rows
        origin = ""
        ident = self.server_identity
        name = self.pipeline

        def take(n: int, end: Position) -> Batch:
            nonlocal events, keys, nbytes, started, last_yield, committed, boundary_count
            self._seq += 1
            batch = Batch(seq=self._seq, events=events[:n], keys=keys[:n], end=end, origin=origin)
            rest = len(events) - n
            nbytes = nbytes * rest // len(events) if events else 0
            del events[:n], keys[:n]
            boundary_count = max(0, boundary_count - n)
            started = last_yield = time.monotonic()
            committed = end
            return batch

        try:
            while True:
                if tx is None:
                    idle = not self._buffered()
                    if boundary is not None and boundary_count:
                        if (idle or boundary_count >= self.max_events or nbytes >= self.max_bytes
                                or time.monotonic() - started >= self.max_s):
                            yield take(boundary_count, boundary)
                    elif (idle and boundary is not None and not events and committed is not None
                          and boundary.order_key() > committed.order_key() and time.monotonic() - last_yield >= 1.0):
                        # Only other tables changed: commit the position alone so a restart need not re-read them.
                        yield take(0, boundary)
                    if self.stop.is_set():
                        break
                    if idle and not self._wait_readable():
                        break
                elif self.stop.is_set():
                    break  # the open transaction is re-read after a restart; nothing partial is handed out
                ev = self._fetch()
                if ev is None:
                    continue
                cls = type(ev)
                pkt = ev.packet
                if cls is RotateEvent:
                    self._file = ev.next_binlog
                    continue
                if cls is HeartbeatLogEvent:
                    continue
                start_pos = pkt.log_pos - pkt.event_size
                if cls is MariadbGtidEvent or cls is GtidEvent:
                    if cls is MariadbGtidEvent:
                        tx = _Tx(self._file, start_pos, ev.gtid, str(self._gtid_state) or None,
                                 bool(ev.flags & _MARIADB_GTID_STANDALONE))
                    else:
                        tx = _Tx(self._file, start_pos, ev.gtid, self._mysql_gtid, False)
                    continue
                if cls is TableMapEvent:
                    self._schema_for(ev)
                    continue
                if cls is QueryEvent:
                    query = ev.query.strip().upper() if isinstance(ev.query, str) else ""
                    if query == "BEGIN":
                        if tx is None:
                            tx = _Tx(self._file, start_pos, None, self._gtid_or_none(), False)
                        continue
                    if query.startswith(_DML) and self._captures_statement(ev):
                        raise SourceError(
                            f"a change to a captured table was logged as a statement, not as rows, at "
                            f"{self._file}:{start_pos} (schema {_query_schema(ev)}): it cannot be captured",
                            "set binlog_format=ROW on the server (MIXED logs some changes as statements); to go on "
                            "without this change, set spec.source.config.start past it and reset the checkpoint")
                    if tx is not None and not tx.standalone and query not in ("COMMIT", "ROLLBACK"):
                        continue  # a statement inside a transaction
                    # COMMIT, or a standalone statement (DDL): falls through to the commit handling
                elif cls is not XidEvent:
                    # ---- a rows event
                    schema = self._schemas.get(ev.table_id)
                    if schema is None:
                        continue
                    if tx is None:  # rows outside any transaction marker: treat the event as its own transaction
                        tx = _Tx(self._file, start_pos, None, self._gtid_or_none(), False)
                    kind = _KIND[cls]
                    p = pkt.packet
                    body = p._data[p._position:p._position + ev.event_size - pkt.read_bytes]
                    try:
                        rows = rowdecode.decode_rows(
                            schema, body, kind, ev.columns_present_bitmap,
                            ev.columns_present_bitmap2 if kind == rowdecode.UPDATE else None,
                        )
                    except DecodeError:
                        raise
                    except Exception as e:  # noqa: BLE001 - any decoder failure is a poison row: name it
                        raise DecodeError(
                            f"{schema.db}.{schema.table} at {self._file}:{start_pos}: cannot decode row: {e}",
                            "report this with the table definition; nothing past this row was committed") from None
                    if not rows:
                        continue
                    table = f"{schema.db}.{schema.table}"
                    op = _OP[kind]
                    ts_ms = ev.timestamp * 1000
                    per_row = len(body) // len(rows) + 1
                    file = self._file
                    file_no = binlog_file_number(tx.file)
                    if not events:
                        started = time.monotonic()
                    origin = f"{table} at {file}:{start_pos}"
                    hasher = event_id_hasher(ident, file, start_pos)
                    for i, (before, after) in enumerate(rows):
                        seq = tx.rows
                        tx.rows += 1
                        if seq < skip:  # delivered before a restart in the middle of this transaction
                            continue
                        events.append(Event(
                            event_id=event_id_for(hasher, i),
                            tenant_id=self.tenant,
                            table=table,
                            op=op,
                            before=before,
                            after=after,
                            ts_ms=ts_ms,
                            source=Source(connector="mysql", name=name, server_id=pkt.server_id, db=schema.db,
                                          table=schema.table, file=file, pos=start_pos, row=i, gtid=tx.gtid,
                                          ts_ms=ts_ms),
                            transaction=Transaction(id=tx.id, seq=seq, end=False),
                        ))
                        keys.append((file_no, tx.pos, seq))
                        nbytes += per_row
                    if len(events) > self.max_events or nbytes > self.max_bytes:
                        if self.respect_tx and boundary_count and boundary is not None:
                            yield take(boundary_count, boundary)  # the complete transactions first
                        # Split the open transaction, holding back its newest row (its `end` flag is unknown yet).
                        # A batch ends where reading resumes, and only two such places are known here: `boundary`
                        # (after the complete transactions buffered) and `tx`'s start plus its rows delivered. So a
                        # cut never falls inside the complete transactions: it takes all of them (they were within
                        # the limits before this rows event), or it falls inside `tx`.
                        while len(events) > 1 and (len(events) > self.max_events or nbytes > self.max_bytes):
                            n = min(len(events) - 1, self.max_events)
                            if nbytes > self.max_bytes:
                                n = max(1, min(n, len(events) * self.max_bytes // max(nbytes, 1)))
                            if n <= boundary_count and boundary is not None:
                                yield take(boundary_count, boundary)
                                continue
                            last = events[n - 1].transaction  # a row of `tx`, as is every event past boundary_count
                            assert last is not None
                            yield take(n, Position(file=tx.file, pos=tx.pos, gtid=tx.gtid_before,
                                                   skip_rows=last.seq + 1))
                    continue
                # ---- commit of `tx` (XID, COMMIT, or a standalone statement)
                if tx is not None and tx.gtid and self.flavor == "mariadb":
                    self._gtid_state = MariaGtidState(self._gtid_state.with_gtid(tx.gtid))
                elif tx is not None and tx.gtid:
                    self._mysql_gtid = _mysql_gtid_add(self._mysql_gtid, tx.gtid)
                if tx is not None and events:
                    last_tx = events[-1].transaction
                    if last_tx is not None and last_tx.id == tx.id:
                        last_tx.end = True
                skip = 0
                tx = None
                boundary = Position(file=self._file, pos=pkt.log_pos, gtid=self._gtid_or_none())
                boundary_count = len(events)
        except DeltaForgeError:
            # Commit what is complete before the failure (poison row, statement-format change,
            # lost connection): a restart then begins right at the failing transaction.
            if boundary is not None and boundary_count:
                yield take(boundary_count, boundary)
            raise
        # stop requested: hand out complete transactions only; a partial one is re-read on restart
        if boundary is not None and boundary_count:
            yield take(boundary_count, boundary)

    def _captures_statement(self, ev: QueryEvent) -> bool:
        """Could this statement-format DML touch a captured table? (its default schema, or one named in it)"""
        default = _query_schema(ev)
        schemas = self.filter.schemas()
        if default in schemas:
            return True
        text = ev.query if isinstance(ev.query, str) else ""
        return any(f"{db}." in text or f"`{db}`." in text for db in schemas)

    def _gtid_or_none(self) -> str | None:
        if self.flavor == "mariadb":
            return str(self._gtid_state) or None
        return self._mysql_gtid


def _query_schema(ev: QueryEvent) -> str:
    schema = ev.schema
    return schema.decode(errors="replace") if isinstance(schema, bytes) else str(schema)


def _mysql_gtid_add(gtid_set: str | None, gtid: str) -> str:
    """Add ``uuid:n`` to a MySQL GTID set string (interval arithmetic via mysql-replication's GtidSet)."""
    from pymysqlreplication.gtid import Gtid, GtidSet

    current = GtidSet(gtid_set or "")
    current += Gtid(gtid)
    return str(current)


def open_source(cfg: Any, stop: threading.Event, resume: Position | None,
                on_open: Callable[[Position], None] | None = None) -> BinlogSource:
    """Build and open the reader from a PipelineConfig."""
    src = cfg.spec.source.config
    batch = cfg.spec.batch
    source = BinlogSource(
        dsn=src.dsn, tables=list(src.tables), pipeline=cfg.metadata.name, tenant=cfg.metadata.tenant,
        start=src.start, server_id=src.server_id, max_events=batch.max_events, max_bytes=batch.max_bytes,
        max_ms=batch.max_ms, respect_source_tx=batch.respect_source_tx, stop=stop,
    )
    try:
        start = source.open(resume)
    except BaseException:
        source.close()
        raise
    if on_open is not None:
        on_open(start)
    return source
