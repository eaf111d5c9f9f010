from typing import Any

from deltaforge.model import EventBlock, OrderKey

IMPLEMENTATION: str

def event_uuid(prefix: bytes, index: int) -> bytes: ...

class Tx:
    file: str
    pos: int
    gtid: str | None
    gtid_before: str | None
    id: str
    rows: int
    standalone: bool
    key_head: tuple[int, int]
    def __init__(self, file: str, file_no: int, pos: int, gtid: str | None, gtid_before: str | None,
                 standalone: bool) -> None: ...

class BlockBuilder:
    origin: tuple[Any, str, int] | None
    keys: list[OrderKey]
    tables: list[str]
    txids: list[str]
    nbytes: int
    tenants: list[str | None]
    def __init__(self, pipeline: str, tenant: str | None, server: str = "") -> None: ...
    def __len__(self) -> int: ...
    def append_rows(self, rows: list[tuple[Any, Any]], kind: int, schema: Any, ts: int, server_id: int,
                    file: str, pos: int, tx: Any, row0: int, skip: int) -> int: ...
    def add_rows(self, ev: tuple[Any, ...], tx: Tx, file: str, in_payload: bool, skip: int) -> int: ...
    def mark_end(self, txid: str) -> bool: ...
    def take(self, n: int) -> tuple[EventBlock, list[OrderKey]]: ...

def splice_answer(block: EventBlock, keys: list[OrderKey], answer: bytes,
                  created: Any) -> tuple[EventBlock, list[OrderKey]]: ...

def cloudevents_block(block: EventBlock, pipeline: str) -> EventBlock: ...
