from collections.abc import Sequence

IMPLEMENTATION: str
Value = bytes | str | None
Column = Value | Sequence[Value]

def encode_commit(payloads: Sequence[bytes], streams: Column, event_ids: Column, tenants: Column,
                  tables: Column, txids: Column, *, prefix: bytes = b"", suffix: bytes = b"",
                  maxlen: int | None = None, dlq_streams: Column = (), dlq_payloads: Sequence[bytes] = (),
                  dlq_ids: Column = (), checkpoint_key: bytes | str, checkpoint_value: bytes | str,
                  exactly_once: bool = True) -> bytes: ...
def scan_commit_reply(data: bytes, entries: int, expected: bytes | None, exactly_once: bool) -> int: ...
