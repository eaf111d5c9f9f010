"""Pure-Python twin of ``_core/streamcommit.pyx`` (its header documents the request, the columns
and the reply shapes). Identical output and errors; the test oracle and the fallback when the
extension is not built.
"""

from __future__ import annotations

from collections.abc import Sequence

from deltaforge.model import EventBlock

IMPLEMENTATION = "python"

Value = bytes | str | None
Column = Value | Sequence[Value]

_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
_XADD9 = b"*9\r\n$4\r\nXADD\r\n"
_XADD12 = b"*12\r\n$4\r\nXADD\r\n"
_STAR_EVENT = b"$1\r\n*\r\n$8\r\ndf-event\r\n"
_EVENT_ID = b"$8\r\nevent_id\r\n"
_IDEM_KEY = b"$15\r\nidempotency_key\r\n"
_XADD7 = b"*7\r\n$4\r\nXADD\r\n"
_STAR_DLQ = b"$1\r\n*\r\n$6\r\ndf-dlq\r\n"
_SET = b"*3\r\n$3\r\nSET\r\n"
_WATCH = b"*2\r\n$5\r\nWATCH\r\n"
_GET = b"*2\r\n$3\r\nGET\r\n"


def _value(obj: object, what: str, i: int) -> bytes:
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, str):
        return obj.encode()
    if obj is None:
        return b""
    where = what if i < 0 else f"{what}[{i}]"
    msg = f"{where} must be bytes, str or None, not {type(obj).__name__}"
    raise TypeError(msg)


def _column(col: object, count: int, what: str) -> list[bytes]:
    if isinstance(col, EventBlock):  # the reader's or a processor's bytes, as they are
        if len(col) != count:
            msg = f"{what} has {len(col)} values for {count} entries"
            raise ValueError(msg)
        lines = col.lines()
        # event ids: the 36-character UUID after '{"event_id":"' (the caller checked the shape)
        return [line[13:49] for line in lines] if what == "event_ids" else lines
    if isinstance(col, (list, tuple)):
        if len(col) != count:
            msg = f"{what} has {len(col)} values for {count} entries"
            raise ValueError(msg)
        return [_value(v, what, i) for i, v in enumerate(col)]
    return [_value(col, what, -1)] * count


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def encode_commit(payloads: Sequence[bytes], streams: Column, event_ids: Column, tenants: Column,
                  tables: Column, txids: Column, *, prefix: bytes = b"", suffix: bytes = b"",
                  maxlen: int | None = None, dlq_streams: Column = (), dlq_payloads: Sequence[bytes] = (),
                  dlq_ids: Column = (), checkpoint_key: bytes | str, checkpoint_value: bytes | str,
                  exactly_once: bool = True) -> bytes:
    """The whole commit request of one batch as one ``bytes`` (see the compiled module's header)."""
    if not isinstance(payloads, (list, tuple, EventBlock)):
        msg = f"payloads must be a list or tuple, not {type(payloads).__name__}"
        raise TypeError(msg)
    if not isinstance(dlq_payloads, (list, tuple)):
        msg = f"dlq_payloads must be a list or tuple, not {type(dlq_payloads).__name__}"
        raise TypeError(msg)
    if not isinstance(prefix, bytes) or not isinstance(suffix, bytes):
        msg = "prefix and suffix must be bytes"
        raise TypeError(msg)
    n, d = len(payloads), len(dlq_payloads)
    if maxlen is None:
        head, mid = _XADD9, _STAR_EVENT
    else:
        if not isinstance(maxlen, int) or isinstance(maxlen, bool) or maxlen < 0:
            msg = f"maxlen must be a non-negative int or None, not {maxlen!r}"
            raise ValueError(msg)
        limit = str(maxlen).encode()
        head, mid = _XADD12, b"$6\r\nMAXLEN\r\n$1\r\n~\r\n" + _bulk(limit) + _STAR_EVENT
    cols = [_column(c, n, w) for c, w in ((payloads, "payloads"), (streams, "streams"), (event_ids, "event_ids"),
                                          (tenants, "tenants"), (tables, "tables"), (txids, "txids"))]
    dcols = [_column(c, d, w) for c, w in ((dlq_streams, "dlq_streams"), (dlq_payloads, "dlq_payloads"),
                                           (dlq_ids, "dlq_ids"))]
    key = _value(checkpoint_key, "checkpoint_key", -1)
    value = _value(checkpoint_value, "checkpoint_value", -1)
    parts: list[bytes] = [_MULTI] if exactly_once else []
    for pl, s, ev, t, tb, tx in zip(*cols, strict=True):
        parts += (head, _bulk(s), mid, _bulk(prefix + pl + suffix), _EVENT_ID, _bulk(ev), _IDEM_KEY,
                  _bulk(b"|".join((t, tb, tx, ev))))
    for s, pl, ev in zip(*dcols, strict=True):
        parts += (_XADD7, _bulk(s), _STAR_DLQ, _bulk(pl), _EVENT_ID, _bulk(ev))
    parts += (_SET, _bulk(key), _bulk(value))
    if exactly_once:
        parts += (_EXEC, _WATCH, _bulk(key), _GET, _bulk(key))
    return b"".join(parts)


# ------------------------------------------------------------------------------------------ reply


def _lit(data: bytes, p: int, lit: bytes) -> int:
    """``lit`` at ``p``: its length; 0: ``data`` ends inside a matching prefix; -1: mismatch."""
    avail = len(data) - p
    if avail >= len(lit):
        return len(lit) if data.startswith(lit, p) else -1
    return 0 if lit.startswith(data[p:]) else -1


def _bulk_reply(data: bytes, p: int) -> tuple[int, bytes]:
    """A non-nil bulk string at ``p``: (its total length, value); 0: incomplete; -1: something else."""
    end = len(data)
    if p >= end:
        return 0, b""
    if data[p] != 0x24:  # $
        return -1, b""
    q = p + 1
    v = nd = 0
    while q < end and 0x30 <= data[q] <= 0x39:
        v = v * 10 + data[q] - 48
        nd += 1
        if nd > 15:
            return -1, b""
        q += 1
    if q >= end:
        return 0, b""
    if nd == 0 or data[q] != 0x0D:
        return -1, b""
    if q + 1 >= end:
        return 0, b""
    if data[q + 1] != 0x0A:
        return -1, b""
    q += 2
    if end - q < v + 2:
        return 0, b""
    if data[q + v] != 0x0D or data[q + v + 1] != 0x0A:
        return -1, b""
    return q + v + 2 - p, data[q : q + v]


def scan_commit_reply(data: bytes, entries: int, expected: bytes | None, exactly_once: bool) -> int:
    """Bytes consumed when ``data`` is exactly the success reply; 0: incomplete; -1: deviates."""
    if not isinstance(data, bytes):
        msg = f"data must be bytes, not {type(data).__name__}"
        raise TypeError(msg)
    if entries < 0:
        msg = f"entries must be >= 0, not {entries}"
        raise ValueError(msg)
    if exactly_once and not isinstance(expected, bytes):
        msg = f"expected must be bytes in exactly-once mode, not {type(expected).__name__}"
        raise TypeError(msg)
    p = 0
    if exactly_once:
        for lit in (b"+OK\r\n", *([b"+QUEUED\r\n"] * (entries + 1)), b"*%d\r\n" % (entries + 1)):
            r = _lit(data, p, lit)
            if r <= 0:
                return r
            p += r
    for _ in range(entries):
        r, _v = _bulk_reply(data, p)
        if r <= 0:
            return r
        p += r
    r = _lit(data, p, b"+OK\r\n")
    if r <= 0:
        return r
    p += r
    if exactly_once:
        r = _lit(data, p, b"+OK\r\n")
        if r <= 0:
            return r
        p += r
        r, got = _bulk_reply(data, p)
        if r <= 0:
            return r
        if got != expected:
            return -1
        p += r
    if p != len(data):
        return -1
    return p
