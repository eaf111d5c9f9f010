from typing import Any

IMPLEMENTATION: str
ROTATE: int
QUERY: int
XID: int
FORMAT_DESCRIPTION: int
TABLE_MAP: int
HEARTBEAT: int
GTID_MYSQL: int
GTID_MARIADB: int
ROWS_KIND: dict[int, int]
ROWS: int
OTHER: int
ERROR: int
END: int
Q_OTHER: int
Q_BEGIN: int
Q_COMMIT: int
Q_ROLLBACK: int

class EventScanner:
    checksum: bool
    received: int
    events: int
    def __init__(self, checksum: bool, skip_types: frozenset[int] = ...) -> None: ...
    def feed(self, data: bytes) -> None: ...
    def recv(self, sock: Any) -> int: ...
    def has_event(self) -> bool: ...
    def buffered(self) -> int: ...
    def next(self) -> tuple[Any, ...] | None: ...
    def parse(self, raw: bytes) -> tuple[Any, ...] | None: ...
    def post_header_len(self, event_type: int) -> int | None: ...
    def set_table(self, table_id: int, body: bytes, schema: Any) -> None: ...
    def table_schema(self, table_id: int) -> Any: ...
