"""Reader stage: one replication connection -> batches of events (DESIGN.md §2, §3, §5).

mysql-replication (over pymysql) connects, authenticates, registers as a replica and sends
the dump command; from then on the reader owns the socket. Packets are framed and events
dispatched by ``_core/framing.pyx`` (pure twin :mod:`deltaforge.source.framing`): heartbeats,
harmless events, repeated table maps and rows of tables that are not captured never become
Python objects. A table map seen for the first time is parsed once by mysql-replication (its
column metadata parser) into our :class:`TableSchema`, cached by its raw bytes. Row bodies
are decoded straight into event JSON by ``eventbuf.BlockBuilder.add_rows`` (the value
writers are rowdecode's, ``_core/rowvalues.pxi``; twins :mod:`deltaforge.source.eventbuf`
and :mod:`deltaforge.source.rowdecode`), so values render exactly as DESIGN.md §3 says.
:mod:`deltaforge._accel` picks compiled or twin.

Batching contract
-----------------
* A batch ends at a transaction boundary (``respect_source_tx``) once
  ``max_events``/``max_bytes``/``max_ms`` is reached, or as soon as the socket has
  nothing more buffered (so latency at low traffic is milliseconds) and the stages after
  the reader are free (``downstream_busy``): while they still work on earlier batches, the
  batch grows instead (checked every ``_HOLD_POLL_S`` and on every arrival, up to
  ``max_ms``), so a stream of small transactions under load travels in fewer, larger
  batches rather than queueing one batch per transaction behind per-batch costs.
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
* A lost connection is never resumed in place (mid-transaction, without its table map):
  the reader raises :class:`SourceUnavailable` and the pipeline restarts from its
  checkpoint. The connection factory refuses a second stream connection for the same reason.
* Every event type reaches :meth:`BinlogSource._other_event` unless the reader decodes it or
  :data:`compressed.HARMLESS` lists it: compressed MariaDB events and MySQL transaction payloads
  are expanded there into their plain events (:mod:`deltaforge.source.compressed`); any other
  type inside a transaction stops the pipeline before a checkpoint passes it.
* With TLS, bytes may wait decrypted inside the SSL object while the socket reads empty:
  readiness checks ask ``pending()`` before ``select``.
* MariaDB file:pos dumps must use the plain COM_BINLOG_DUMP path (the library's
  MariaDB path sends an empty file name), so ``is_mariadb`` is set only for GTID starts.
"""

from __future__ import annotations

import base64
import logging
import select
import ssl
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import TableMapEvent

from deltaforge._accel import eventbuf, framing
from deltaforge.dsn import MySQLDSN, parse_mysql_dsn
from deltaforge.errors import (
    DecodeError,
    DeltaForgeError,
    SourceError,
    SourceUnavailable,
)
from deltaforge.model import (
    Batch,
    DeadLetter,
    OrderKey,
    Position,
    binlog_file_number,
    position_le,
)
from deltaforge.source import compressed, mysql_connect
from deltaforge.source.grammar import parse_start  # re-exported: the start grammar lives there
from deltaforge.source.gtid import MariaGtidState, mysql_gtid_add, parse_gtid_set
from deltaforge.source.mysql_errors import DSN_PATH, dsn_location, mysql_error
from deltaforge.source.schema import (
    TableSchema,
    fetch_live_columns,
    needs_live_columns,
    schema_from_table_map,
)
from deltaforge.source.tables import TableFilter

log = logging.getLogger("deltaforge.source")

_ROWS, _XID, _QUERY, _TABLE_MAP = framing.ROWS, framing.XID, framing.QUERY, framing.TABLE_MAP
_GTID_MARIADB, _GTID_MYSQL, _ROTATE, _OTHER = framing.GTID_MARIADB, framing.GTID_MYSQL, framing.ROTATE, framing.OTHER
_Q_BEGIN, _Q_OTHER = framing.Q_BEGIN, framing.Q_OTHER
_ERROR, _END = framing.ERROR, framing.END
_HEADER = struct.Struct("<IBIIIH")
_MARIADB_GTID_STANDALONE = 0x01
_HEARTBEAT_S = 5.0
#: no byte from the server for this long (heartbeats included) = connection dead
_SILENCE_S = 30.0
#: how often a reader holding a finished batch (the next stages still busy) looks again
_HOLD_POLL_S = 0.0005
_DML = ("INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD DATA")


def default_replica_server_id(pipeline: str) -> int:
    """A stable server id for the binlog connection, unlikely to collide with real servers."""
    return 0x40000000 + (zlib.crc32(pipeline.encode()) & 0x3FFFFFFF)


#: Session net_write_timeout of our connections. The server's dump thread gives up on a replica that
#: does not read for net_write_timeout seconds (default 60); back-pressure from a stalled sink stops
#: our reads for as long as the sink stalls, and a dropped dump means a restart from the checkpoint.
BINLOG_NET_WRITE_TIMEOUT_S = 3600


class _OneShotConnect:
    """pymysql connection factory for BinLogStreamReader that refuses silent reconnects.

    Connection errors are classified by :mod:`deltaforge.source.mysql_errors`: a refused
    login or a missing privilege is fatal, on the first connect as on a reconnect.
    """

    def __init__(self, where: str = DSN_PATH) -> None:
        self.made = 0
        self.where = where

    def __call__(self, **kwargs: Any) -> Any:
        self.made += 1
        if self.made > 2:  # 1 control + 1 stream connection
            raise SourceUnavailable("the binlog connection was lost", "the pipeline restarts from its checkpoint")
        kwargs.setdefault("connect_timeout", 10)
        kwargs.setdefault("init_command", f"SET SESSION net_write_timeout={BINLOG_NET_WRITE_TIMEOUT_S}")
        # mysql-replication still passes pymysql's deprecated spellings
        if "passwd" in kwargs:
            kwargs["password"] = kwargs.pop("passwd")
        if "db" in kwargs:
            kwargs["database"] = kwargs.pop("db")
        try:
            return mysql_connect.connect(**kwargs)
        except (pymysql.err.MySQLError, OSError, RuntimeError) as e:
            raise mysql_error(e, "connecting to MySQL", where=self.where, user=kwargs.get("user"),
                              tls_mode="DISABLED" if kwargs.get("ssl_disabled") else None, connecting=True) from None


Tx = eventbuf.Tx  # the transaction being read (its state lives in C with the batch buffer)
if TYPE_CHECKING:
    from deltaforge.source.eventbuf import Tx as TxState


class BinlogSource:
    """Reads the binlog from a start position and yields :class:`Batch` objects."""

    #: ``spec.source.config.on_decode_error``: ``stop`` raises DecodeError; ``dlq`` turns an
    #: undecodable rows event into a DeadLetter that takes one row slot of its transaction (so a
    #: split transaction resumes past it exactly) and rides on the batch that covers its key
    on_decode_error = "stop"

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
        dsn_where: str = DSN_PATH,
    ) -> None:
        self.dsn: MySQLDSN = parse_mysql_dsn(dsn)
        self.dsn_where = dsn_where
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
        #: frames the dump connection's packets (created when the stream connects)
        self._scanner: Any = None
        self._sock: Any = None
        self._warned_minimal: set[str] = set()
        #: events expanded from a compressed event or a transaction payload, read before the socket,
        #: each with whether it came from a transaction payload
        self._pending: deque[tuple[tuple[Any, ...], bool]] = deque()
        #: the event _fetch returned last came from a transaction payload
        self._in_payload = False
        self._warned_types: set[int] = set()
        #: returns from the idle select (data, heartbeat, stop, timeout): tests count them
        self.idle_wakeups = 0
        self.flavor = "mysql"
        self.server_identity = ""
        self.full_metadata = True
        self.start_position: Position | None = None
        self._seq = 0
        self._dead: list[tuple[DeadLetter, OrderKey]] = []
        #: () -> True while the stages after the reader still work on batches it handed out (set by
        #: the topology); None: never busy (every batch leaves as soon as the socket is idle)
        self.downstream_busy: Any = None

    # ------------------------------------------------------------------ open
    def _control(self) -> Any:
        if self._ctl is None:
            self._ctl = _OneShotConnect(self.dsn_where)(**self.dsn.connect_kwargs(), autocommit=True)
        return self._ctl

    def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        try:
            with self._control().cursor() as cur:
                cur.execute(sql, args or None)
                return list(cur.fetchall())
        except (pymysql.err.MySQLError, OSError) as e:
            raise mysql_error(e, f"running {sql}", where=self.dsn_where, user=self.dsn.user) from None

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
        if self.flavor == "mysql":
            # Executed_Gtid_Set comes with file:pos in one snapshot ("" with gtid_mode=OFF)
            executed = str(rows[0][4] or "").replace("\n", "") if len(rows[0]) > 4 else ""
            return self._position(file, pos, executed or None)
        return self._position(file, pos, self._gtid_at(file, pos))

    def _binlog_first(self) -> Position:
        rows = self._query("SHOW BINARY LOGS")
        if not rows:
            raise SourceError("the binary log is off on the source server", "start mysqld with log_bin")
        file = str(rows[0][0])
        if self.flavor == "mysql":
            return self._position(file, 4, self._mysql_purged())
        return self._position(file, 4, self._gtid_at(file, 4))

    def _position(self, file: str, pos: int, gtid: str | None) -> Position:
        return Position(file=file, pos=pos, gtid=gtid, server=self.server_identity)

    def _mysql_purged(self) -> str | None:
        """MySQL: the GTIDs no longer in any binlog (None with gtid_mode OFF)."""
        mode = self._query("SHOW GLOBAL VARIABLES LIKE 'gtid_mode'")
        if not mode or str(mode[0][1]).upper() != "ON":
            return None
        return str(self._query("SELECT @@GLOBAL.gtid_purged")[0][0] or "").replace("\n", "")

    def _gtid_at(self, file: str, pos: int) -> str | None:
        """MariaDB: the GTID position of ``file:pos`` (every domain); None when unknown."""
        if self.flavor != "mariadb":
            return None
        try:
            value = self._query("SELECT BINLOG_GTID_POS(%s, %s)", file, pos)[0][0]
        except SourceError:
            return None
        return None if value is None else str(value)

    def _check_resume(self, resume: Position) -> None:
        """Refuse a checkpoint this server cannot continue from: another server without GTIDs, or purged."""
        if resume.server and resume.server != self.server_identity:
            if resume.gtid is None:
                raise SourceError(
                    f"the source server changed (checkpoint written reading {resume.server}, now connected to "
                    f"{self.server_identity}) and the checkpoint has no GTID set: {resume.file}:{resume.pos} "
                    "means nothing on another server",
                    "enable GTIDs (MySQL gtid_mode=ON) so the pipeline can follow a failover; to go on, flush the "
                    "cache, delete the pipeline's checkpoint keys and set spec.source.config.start")
            log.warning("the source server changed: the checkpoint was written reading %s, now connected to %s; "
                        "resuming by GTID %s", resume.server, self.server_identity, resume.gtid)
        oldest = self._binlog_first()
        purged: str | None = None
        if resume.gtid is not None and oldest.gtid is not None:
            have = parse_gtid_set(resume.gtid)
            if not parse_gtid_set(oldest.gtid).issubset(have):
                purged = f"GTID state {oldest.gtid} at the start of {oldest.file}, the checkpoint has {resume.gtid}"
        elif resume.gtid is None and resume.same_binlog(self.server_identity) and resume.file:
            if binlog_file_number(resume.file) < binlog_file_number(oldest.file):
                purged = f"the oldest binlog is {oldest.file}"
        if purged:
            raise SourceError(
                f"the checkpoint {resume} needs binlog events the server no longer has ({purged}): they were "
                "purged (PURGE BINARY LOGS, expire_logs_days or binlog_expire_logs_seconds) while the pipeline "
                "was behind, so the changes in between are lost to it",
                "flush the cache (its keys may be stale), then delete the pipeline's checkpoint keys and start "
                "again with spec.source.config.start; keep binlog retention longer than any pipeline downtime")

    def open(self, resume: Position | None) -> Position:
        """Connect and position the stream; returns where reading starts."""
        self._server_facts()
        if resume is not None:
            self._check_resume(resume)
            start = resume
        elif isinstance(self.start_spec, Position):
            start = self.start_spec
            if start.file and start.gtid is None:
                start = self._position(start.file, start.pos, self._gtid_at(start.file, start.pos))
        elif self.start_spec == "earliest":
            start = self._binlog_first()
        else:
            start = self._binlog_end()
        self.start_position = start
        self._connect(start)
        return start

    def _connect(self, start: Position) -> None:
        kwargs: dict[str, Any] = {}
        # GTID first wherever the checkpoint has a set: it is the only position valid on every server.
        gtid = start.gtid
        if gtid and parse_gtid_set(gtid).flavor not in ("", self.flavor):
            raise SourceError(f"cannot start from GTID set {gtid} on a {self.flavor} server",
                              "use a file:pos start, or a GTID set of this server's flavour")
        if gtid and self.flavor == "mariadb":
            kwargs.update(is_mariadb=True, auto_position=gtid)
        elif gtid is not None and self.flavor == "mysql" and (gtid or not start.file):
            kwargs.update(auto_position=gtid)
        elif start.file:
            kwargs.update(log_file=start.file, log_pos=start.pos, resume_stream=True)
        else:
            raise SourceError(f"cannot start from GTID {gtid!r} on this server", "use a file:pos start")
        # The executed set is tracked only from a complete one: a partial set stored in a
        # checkpoint would make a GTID resume re-read (or skip) history.
        self._gtid_known = gtid is not None
        self._gtid_state = MariaGtidState(gtid if self.flavor == "mariadb" else None)
        self._gtid_text = str(self._gtid_state)
        self._mysql_gtid = gtid if self.flavor == "mysql" else None
        self._skip_rows = start.skip_rows
        self._skip_tx = start.tx
        # mysql-replication only connects, registers and sends the dump command (_open_stream)
        self._stream = BinLogStreamReader(
            connection_settings={**self.dsn.connect_kwargs(), "connect_timeout": 10},
            server_id=self.replica_id,
            blocking=True,
            slave_heartbeat=_HEARTBEAT_S,
            pymysql_wrapper=_OneShotConnect(self.dsn_where),
            **kwargs,
        )
        self._scanner = None
        self._sock = None
        self._pending.clear()
        self._file = start.file
        self._file_no = binlog_file_number(start.file)

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 - closing a dead socket must not mask the real error
                pass
            self._stream = None
            self._scanner = None
            self._sock = None
        if self._ctl is not None:
            try:
                self._ctl.close()
            except Exception:  # noqa: BLE001
                pass
            self._ctl = None

    # --------------------------------------------------------------- reading
    def _open_stream(self) -> None:
        """Connect the dump (mysql-replication registers and sends the dump command), then take the socket."""
        stream = self._stream
        assert stream is not None
        try:
            stream._BinLogStreamReader__connect_to_stream()  # type: ignore[attr-defined]
            stream._BinLogStreamReader__connect_to_ctl()  # type: ignore[attr-defined]
        except SourceUnavailable:
            raise
        except (pymysql.err.MySQLError, OSError, ConnectionError) as e:
            raise mysql_error(e, "starting the binlog dump", where=self.dsn_where, user=self.dsn.user) from None
        conn = stream._stream_connection
        scanner = framing.EventScanner(bool(stream._BinLogStreamReader__use_checksum))  # type: ignore[attr-defined]
        scanner.feed(read_ahead(conn))  # bytes pymysql's buffered reader took from the socket come first
        self._sock = dump_socket(conn)
        self._scanner = scanner

    def _sock_ready(self, timeout: float) -> bool:
        """Is there something to read on the dump socket (decrypted TLS bytes included)?"""
        sock = self._sock
        pending = getattr(sock, "pending", None)
        if pending is not None and pending() > 0:
            return True
        try:
            ready, _, _ = select.select([sock], [], [], timeout)
        except (OSError, ValueError) as e:
            raise SourceUnavailable(f"the binlog connection failed: {e}", "the pipeline restarts from its checkpoint") from None
        return bool(ready)

    def _buffered(self) -> bool:
        """True when the next event is (at least partly) already here: reading won't block long."""
        if self._pending or self._scanner is None:
            return True  # not connected yet: the first fetch connects and gets the fake rotate at once
        return bool(self._scanner.has_event() or self._sock_ready(0))

    def _wait_readable(self, timeout: float | None = None) -> bool:
        """Block until data arrives, a stop is requested, or ``timeout`` seconds have passed
        (then True: the caller looks again). False on stop.

        A stop flag with ``wake_fileno()`` (the pipeline's AnyStop) is waited on in the same
        select as the socket, so an idle reader sleeps until data, a heartbeat, a stop or the
        silence deadline. A plain ``threading.Event`` is polled every 200 ms.
        """
        sock = self._sock
        wake = getattr(self.stop, "wake_fileno", None)
        wake_fd = wake() if wake is not None else None
        # Silence counts from when this wait began: a reader busy (or held back by a slow sink) for
        # longer than _SILENCE_S has not been waiting on the server all that time.
        waiting_since = time.monotonic()
        until = None if timeout is None else waiting_since + timeout
        while not self.stop.is_set():
            if sock is None or self._buffered():
                return True
            if wake_fd is None:
                fds, wait = [sock], 0.2
            else:
                fds, wait = [sock, wake_fd], max(0.0, _SILENCE_S - (time.monotonic() - waiting_since)) + 0.01
            if until is not None:
                left = until - time.monotonic()
                if left <= 0:
                    return True
                wait = min(wait, left)
            try:
                ready, _, _ = select.select(fds, [], [], wait)
            except (OSError, ValueError) as e:
                raise SourceUnavailable(f"the binlog connection failed: {e}", "the pipeline restarts from its checkpoint") from None
            self.idle_wakeups += 1
            if sock in ready:
                return True
            if time.monotonic() - waiting_since > _SILENCE_S:
                raise SourceUnavailable(f"no data nor heartbeat from the source for {_SILENCE_S:.0f}s",
                                        "check the network to the MySQL server; the pipeline restarts from its checkpoint")
        return False

    def _fetch(self) -> tuple[Any, ...] | None:
        """The next event tuple (see deltaforge.source.framing), or None.

        None when a receive brought no event the reader acts on (a heartbeat, a partial packet,
        skipped events) or a stop cut the wait short: the caller's loop then gets its turn to
        hand out a batch that is due, or to stop. (Waiting here until an event came would hold
        a finished batch back for as long as the server only sends heartbeats.)
        """
        if self._pending:
            ev, self._in_payload = self._pending.popleft()
            return ev
        self._in_payload = False
        if self._scanner is None:
            self._open_stream()
        scanner = self._scanner
        ev = scanner.next()
        if ev is None:
            if not self._sock_ready(0) and not self._wait_readable():
                return None
            try:
                n = scanner.recv(self._sock)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:  # ssl.SSLError included
                raise SourceUnavailable(f"the binlog connection failed: {e}",
                                        "the pipeline restarts from its checkpoint") from None
            if n == 0:
                raise SourceUnavailable("the source server closed the binlog connection",
                                        "the pipeline restarts from its checkpoint")
            ev = scanner.next()
            if ev is None:
                return None
        if ev[0] == _ERROR or ev[0] == _END:
            self._dump_ended(ev)
        return ev  # type: ignore[no-any-return]

    def _dump_ended(self, ev: tuple[Any, ...]) -> None:
        """An error or EOF packet instead of an event: classified like any MySQL error."""
        if ev[0] == framing.END:
            raise SourceUnavailable("the source server ended the binlog dump",
                                    "the pipeline restarts from its checkpoint")
        try:
            pymysql.err.raise_mysql_exception(ev[1])
        except pymysql.err.MySQLError as e:
            raise mysql_error(e, "reading the binlog", where=self.dsn_where, user=self.dsn.user) from None

    def _table_map(self, ev: tuple[Any, ...]) -> None:
        """A table map not seen before: decide its schema (None: not captured) and tell the scanner."""
        _, next_pos, _, ts, server_id, table_id, db, table, body = ev
        schema: TableSchema | None = None
        if self.filter.matches(db, table):
            tm = self._parse_table_map(_HEADER.pack(ts, _TABLE_MAP, server_id, 19 + len(body), next_pos, 0) + body,
                                       f"{self._file}:{next_pos - ev[2]}")
            live = None
            if needs_live_columns(tm):
                name = f"{db}.{table}"
                if name not in self._warned_minimal:
                    self._warned_minimal.add(name)
                    log.warning("%s: the binlog lacks column names or fractional-second digits "
                                "(binlog_row_metadata is not FULL, or old temporal formats); using the live schema "
                                "from information_schema (fix: SET GLOBAL binlog_row_metadata=FULL)", name)
                live = fetch_live_columns(self._control(), db, table)
            schema = schema_from_table_map(tm, live)
        self._scanner.set_table(table_id, body, schema)

    def _post_header_lengths(self) -> tuple[int, ...]:
        """The format description's post-header lengths (what mysql-replication's parsers take)."""
        lengths: list[int] = []
        while (n := self._scanner.post_header_len(len(lengths) + 1)) is not None:
            lengths.append(n)
        return tuple(lengths)

    def _parse_table_map(self, raw: bytes, where: str) -> Any:
        """mysql-replication's TableMapEvent of one plain table-map event (its column metadata parser)."""
        from pymysql.protocol import MysqlPacket

        stream = self._stream
        assert stream is not None
        try:
            wrapper = BinLogPacketWrapper(
                MysqlPacket(b"\x00" + raw, "utf8"), {}, stream._ctl_connection, stream.mysql_version,
                use_checksum=False, allowed_events=frozenset((TableMapEvent,)), only_tables=None,
                ignored_tables=None, only_schemas=None, ignored_schemas=None,
                freeze_schema=False, ignore_decode_errors=False, verify_checksum=False,
                optional_meta_data=self.full_metadata, enable_logging=False,
                post_header_lengths=self._post_header_lengths(),
            )
        except DeltaForgeError:
            raise
        except Exception as e:  # noqa: BLE001 - a malformed table map is corrupt input: name it
            raise DecodeError(f"{where}: cannot parse Table_map (19): {e}",
                              "report this with the server version; nothing past this event was committed") from None
        if wrapper.event is None:
            raise DecodeError(f"{where}: cannot parse Table_map (19)",
                              "report this with the server version; nothing past this event was committed")
        return wrapper.event

    @property
    def last_seq(self) -> int:
        """Sequence number of the last batch handed out (0: none yet)."""
        return self._seq

    def batches(self) -> Iterator[Batch]:
        """Yield batches until stop is requested. Raises SourceUnavailable/SourceError/DecodeError."""
        if self._stream is None:
            raise SourceError("BinlogSource.batches() called before open()")
        for batch in self._batches():
            if self._dead:
                self._attach_dead(batch)
            yield batch

    def _attach_dead(self, batch: Batch) -> None:
        """Move the dead letters the batch's end position covers onto it (in binlog order)."""
        end, server = batch.end, self.server_identity
        held = [end.covers(k, server) for _, k in self._dead]
        batch.dead.extend(d for (d, _), h in zip(self._dead, held, strict=True) if h)
        batch.dead_keys.extend(k for (_, k), h in zip(self._dead, held, strict=True) if h)
        self._dead = [dk for dk, h in zip(self._dead, held, strict=True) if not h]

    def _dead_rows(self, table: str, tx: TxState, pos: int, body: bytes, err: Exception, skip: int,
                   ts: int) -> None:
        seq = tx.rows
        tx.rows += 1
        if seq < skip:  # delivered before a restart in the middle of this transaction
            return
        self._dead.append((DeadLetter(
            stage="decoder", error=f"{table} at {self._file}:{pos}: cannot decode row: {err}", table=table,
            file=self._file, pos=pos, gtid=tx.gtid, raw=base64.b64encode(bytes(body)).decode(), ts_ms=ts * 1000,
        ), (binlog_file_number(tx.file), tx.pos, seq, tx.gtid or "")))

    def _batches(self) -> Iterator[Batch]:
        events = eventbuf.BlockBuilder(self.pipeline, self.tenant, self.server_identity)  # the events, as bytes
        nbytes = 0
        started = time.monotonic()
        last_yield = time.monotonic()
        tx: TxState | None = None
        #: end of the last complete transaction read (where a batch of everything so far would end)
        boundary: Position | None = None
        #: how many of `events` belong to complete transactions
        boundary_count = 0
        committed = self.start_position
        skip = self._skip_rows
        skip_tx = self._skip_tx  # the split transaction skip counts into (None: the first one read)
        ident = self.server_identity
        scanner = self._scanner  # None until the first fetch connects
        pending = self._pending  # (the deque object itself: emptiness is checked per event)
        busy = self.downstream_busy

        def take(n: int, end: Position) -> Batch:
            nonlocal nbytes, started, last_yield, committed, boundary_count
            self._seq += 1
            total = len(events)
            block, keys = events.take(n)
            origin = events.origin  # the newest rows event read (formatted only here, when a batch is cut)
            batch = Batch(seq=self._seq, events=block, keys=keys, end=end,
                          origin=f"{origin[0].qualified} at {origin[1]}:{origin[2]}" if origin else "")
            nbytes = nbytes * (total - n) // total if total else 0
            boundary_count = max(0, boundary_count - n)
            started = last_yield = time.monotonic()
            committed = end
            return batch

        try:
            while True:
                if tx is None:
                    idle = not self._buffered()
                    if boundary is not None and boundary_count:
                        age = time.monotonic() - started
                        if (boundary_count >= self.max_events or nbytes >= self.max_bytes or age >= self.max_s
                                or (idle and (busy is None or self.stop.is_set() or not busy()))):
                            yield take(boundary_count, boundary)
                        elif idle:  # the next stages are busy: let the batch grow until they are free
                            self._wait_readable(min(_HOLD_POLL_S, self.max_s - age))
                            continue
                    elif (idle and boundary is not None and not events and committed is not None
                          and not position_le(boundary, committed) and time.monotonic() - last_yield >= 1.0):
                        # Only other tables changed: commit the position alone so a restart need not re-read them.
                        yield take(0, boundary)
                    if self.stop.is_set():
                        break
                    if idle and not self._wait_readable():
                        break
                elif self.stop.is_set():
                    break  # the open transaction is re-read after a restart; nothing partial is handed out
                # the scanner's buffered events first, without a method call (the common case); the
                # socket, pending expanded events and the connection's start go through _fetch
                ev = scanner.next() if scanner is not None and not pending else None
                if ev is None:
                    ev = self._fetch()
                    if ev is None:
                        continue
                    scanner = self._scanner
                else:
                    self._in_payload = False
                etype = ev[0]
                if etype == _ROWS:
                    # ---- a rows event of a captured table: (ROWS, next, size, ts, server, kind, schema,
                    # present, present_after, body)
                    start_pos = ev[1] - ev[2]
                    schema = ev[6]
                    if tx is None:  # rows outside any transaction marker: treat the event as its own transaction
                        tx = Tx(self._file, self._file_no, start_pos, None, self._gtid_or_none(), False)
                    was_empty = not events
                    try:
                        # rows before seq `skip` were delivered before a restart in the middle of this
                        # transaction; a transaction payload's events share its position, so their rows
                        # are numbered across them
                        cost = events.add_rows(ev, tx, self._file, self._in_payload,
                                               skip if skip_tx is None or skip_tx == tx.gtid else 0)
                    except Exception as e:  # any decoder failure is a poison row: name it (or dead-letter it)
                        if self.on_decode_error == "dlq":
                            self._dead_rows(f"{schema.db}.{schema.table}", tx, start_pos, ev[9], e,
                                            skip if skip_tx is None or skip_tx == tx.gtid else 0, ev[3])
                            continue
                        if isinstance(e, DecodeError):
                            raise
                        raise DecodeError(
                            f"{schema.db}.{schema.table} at {self._file}:{start_pos}: cannot decode row: {e}",
                            "report this with the table definition; nothing past this row was committed") from None
                    if not cost:
                        continue
                    if was_empty:
                        started = time.monotonic()
                    nbytes += cost
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
                            last_seq = events.keys[n - 1][2]  # a row of `tx`, as is every event past boundary_count
                            yield take(n, Position(file=tx.file, pos=tx.pos, gtid=tx.gtid_before,
                                                   skip_rows=last_seq + 1, tx=tx.gtid, server=ident))
                    continue
                if etype == _XID:
                    pass  # the commit of `tx`: handled below
                elif etype == _GTID_MARIADB:
                    tx = Tx(self._file, self._file_no, ev[1] - ev[2], ev[5], self._gtid_or_none(),
                             bool(ev[6] & _MARIADB_GTID_STANDALONE))
                    continue
                elif etype == _GTID_MYSQL:
                    tx = Tx(self._file, self._file_no, ev[1] - ev[2], ev[5], self._gtid_or_none(), False)
                    continue
                elif etype == _QUERY:
                    qkind = ev[5]
                    if qkind == _Q_BEGIN:
                        if tx is None:
                            tx = Tx(self._file, self._file_no, ev[1] - ev[2], None, self._gtid_or_none(), False)
                        continue
                    if qkind == _Q_OTHER:
                        query = ev[7].strip().upper()
                        if query.startswith(_DML) and self._captures_statement(ev[6], ev[7]):
                            raise SourceError(
                                f"a change to a captured table was logged as a statement, not as rows, at "
                                f"{self._file}:{ev[1] - ev[2]} (schema {_schema_text(ev[6])}): it cannot be "
                                "captured",
                                "set binlog_format=ROW on the server (MIXED logs some changes as statements); to go "
                                "on without this change, set spec.source.config.start past it and reset the "
                                "checkpoint")
                        if tx is not None and not tx.standalone:
                            continue  # a statement inside a transaction
                    # COMMIT, ROLLBACK, or a standalone statement (DDL): falls through to the commit handling
                elif etype == _TABLE_MAP:
                    self._table_map(ev)
                    continue
                elif etype == _ROTATE:
                    self._file = ev[5]
                    self._file_no = binlog_file_number(self._file)
                    continue
                elif etype == _ERROR or etype == _END:
                    self._dump_ended(ev)
                else:
                    self._other_event(ev, tx is not None)
                    continue
                # ---- commit of `tx` (XID, COMMIT, or a standalone statement)
                if tx is not None and tx.gtid and self.flavor == "mariadb":
                    self._gtid_text = self._gtid_state.apply(tx.gtid)
                elif tx is not None and tx.gtid:
                    self._mysql_gtid = mysql_gtid_add(self._mysql_gtid, tx.gtid)
                if tx is not None and events:
                    events.mark_end(tx.id)
                if skip_tx is None or (tx is not None and tx.gtid == skip_tx):
                    skip, skip_tx = 0, None
                tx = None
                boundary = Position(file=self._file, pos=ev[1], gtid=self._gtid_or_none(), server=ident)
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

    def _other_event(self, ev: tuple[Any, ...], in_tx: bool) -> None:
        """An event the scanner does not dispatch itself: ``(OTHER, next, size, ts, server, flags, raw, type)``.

        Compressed MariaDB events and MySQL transaction payloads are expanded into the plain
        events they stand for, which :meth:`_fetch` hands out next, at the outer event's position
        (see compressed.py for the formats). Any other type inside a transaction stops the
        pipeline before a checkpoint can pass it; outside one it is logged once and skipped.
        """
        flags, raw, etype = ev[5], ev[6], ev[7]
        where = f"{self._file}:{ev[1] - ev[2]}"
        if etype in compressed.MARIADB_COMPRESSED:
            if etype in compressed.ROWS_COMPRESSED and self._scanner.table_schema(_table_id(raw)) is None:
                return  # a table that is not captured: not worth inflating
            plain = compressed.uncompress_mariadb_event(raw, where, self._scanner.post_header_len(etype))
            self._push(plain, ev, where, in_payload=False)
            return
        if etype == compressed.TRANSACTION_PAYLOAD_EVENT:
            payload = compressed.parse_transaction_payload(raw[compressed.HEADER_LEN:], where)
            for offset, inner in compressed.split_events(payload.payload, where):
                self._push(inner, ev, f"{where} (transaction payload, inner event at offset {offset})",
                           in_payload=True)
            return
        if etype in compressed.HARMLESS or flags & compressed.LOG_EVENT_IGNORABLE_F:
            return  # (the scanner skips these already; kept so the rule reads whole here)
        name = compressed.event_name(etype)
        if in_tx:
            raise SourceError(
                f"binlog event {name} at {where} is inside a transaction and the reader does not know it: "
                "it may change captured rows, so the pipeline stops before its checkpoint passes it",
                "turn off the server feature that writes this event (or report it to DeltaForge); to go on without "
                "this transaction, set spec.source.config.start past it and reset the checkpoint")
        if etype not in self._warned_types:
            self._warned_types.add(etype)
            log.warning("skipping binlog event %s at %s: not known to the reader, outside any transaction "
                        "(logged once per type)", name, where)

    def _push(self, raw: bytes, outer: tuple[Any, ...], where: str, *, in_payload: bool) -> None:
        """Dispatch one plain event (no checksum) expanded from ``outer`` and queue it for :meth:`_fetch`.

        A new table map is resolved at once: the rows events after it in the same payload are
        dispatched right away and must find their table.
        """
        try:
            ev = self._scanner.parse(raw)
        except DecodeError as e:
            raise DecodeError(f"{where}: {e.detail}", e.hint) from None
        if ev is None:
            return  # skipped like its uncompressed twin would be (known map, table not captured, harmless)
        # The expanded events stand at the outer event's position: their start and end are its own.
        ev = (ev[0], outer[1], outer[2], *ev[3:])
        if ev[0] == _TABLE_MAP:
            self._table_map(ev)
            return
        self._pending.append((ev, in_payload))

    def _captures_statement(self, schema: bytes, query: str) -> bool:
        """Could this statement-format DML touch a captured table? (its default schema, or one named in it)"""
        default = _schema_text(schema)
        schemas = self.filter.schemas()
        if default in schemas:
            return True
        return any(f"{db}." in query or f"`{db}`." in query for db in schemas)

    def _gtid_or_none(self) -> str | None:
        if not self._gtid_known:
            return None
        if self.flavor == "mariadb":
            return self._gtid_text
        return self._mysql_gtid


def read_ahead(conn: Any) -> bytes:
    """What pymysql's buffered reader already took from the dump socket (the first events, often
    ending inside a packet). Taken without blocking, before the reader reads the socket itself."""
    rfile, sock = conn._rfile, conn._sock
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        ahead = rfile.peek(1)
        return bytes(rfile.read(len(ahead))) if ahead else b""
    except (BlockingIOError, ssl.SSLWantReadError, TypeError, ValueError):
        return b""  # nothing buffered (a TLS socket says so with SSLWantReadError)
    except OSError as e:
        raise SourceUnavailable(f"the binlog connection failed: {e}", "the pipeline restarts from its checkpoint") from None
    finally:
        sock.settimeout(timeout)


def dump_socket(conn: Any) -> Any:
    """The socket the reader receives the dump on (a seam: tests wrap it to rewrite packets)."""
    return conn._sock


def _table_id(raw: bytes) -> int:
    """Table id of a rows event (6 bytes little-endian right after the common header)."""
    return int.from_bytes(raw[compressed.HEADER_LEN:compressed.HEADER_LEN + 6], "little")


def _schema_text(schema: bytes) -> str:
    return schema.decode(errors="replace")


def open_source(cfg: Any, stop: threading.Event, resume: Position | None,
                on_open: Callable[[Position], None] | None = None) -> BinlogSource:
    """Build and open the reader from a PipelineConfig."""
    src = cfg.spec.source.config
    batch = cfg.spec.batch
    source = BinlogSource(
        dsn=src.dsn, tables=list(src.tables), pipeline=cfg.metadata.name, tenant=cfg.metadata.tenant,
        start=src.start, server_id=src.server_id, max_events=batch.max_events, max_bytes=batch.max_bytes,
        max_ms=batch.max_ms, respect_source_tx=batch.respect_source_tx, stop=stop,
        dsn_where=dsn_location(getattr(src, "dsn_env", ())),
    )
    source.on_decode_error = getattr(src, "on_decode_error", "stop")
    try:
        start = source.open(resume)
    except BaseException:
        source.close()
        raise
    if on_open is not None:
        on_open(start)
    return source
