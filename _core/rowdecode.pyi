from typing import Any

from deltaforge.source.schema import TableSchema

IMPLEMENTATION: str
WRITE: int
UPDATE: int
DELETE: int

def decode_rows(
    schema: TableSchema,
    body: bytes,
    kind: int,
    present: bytes,
    present_after: bytes | None = None,
) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]: ...
