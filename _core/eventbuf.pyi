from typing import Any

from deltaforge.model import EventBlock, OrderKey

IMPLEMENTATION: str

def event_uuid(prefix: bytes, index: int) -> bytes: ...

class BlockBuilder:
    keys: list[OrderKey]
    tables: list[str]
    txids: list[str]
    nbytes: int
    def __init__(self, pipeline: str, tenant: str | None) -> None: ...
    def __len__(self) -> int: ...
    def append_rows(self, rows: list[tuple[Any, Any]], op: str, table: str, db: str, tbl: str, ts_ms: int,
                    server_id: int, file: str, pos: int, gtid: str | None, txid: str, id_prefix: bytes,
                    ids_by_seq: bool, seq0: int, row0: int, skip: int, key_head: tuple[int, int],
                    key_gtid: str) -> int: ...
    def mark_end(self, txid: str) -> bool: ...
    def take(self, n: int) -> tuple[EventBlock, list[OrderKey]]: ...
