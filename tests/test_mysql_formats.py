"""MySQL-only binlog formats, from bytes built here to the published formats (no MySQL server needed).

- **Binary JSON** (MySQL ``sql/json_binary.h``: type byte; objects and arrays as element count,
  byte size, key entries, value entries with small scalars inlined, then keys and values; small
  format with 2-byte offsets, large with 4). ``jsonb`` below encodes any JSON value that way,
  independently of the decoder; Hypothesis documents go through a JSON column of a rows event into
  both twins, which must give the document back (integers beyond 2^53 as strings, per the
  rendering table) and agree with each other. Hand vectors pin the encoder to the format.
- **``uuid:n`` GTIDs** (MySQL ``Gtid_event``: flags 1, SID 16, GNO 8 LE, logical-timestamp
  typecode 2 + last_committed 8 + sequence_number 8, then optionally the 7-byte commit
  timestamp(s), high bit of the first = an original timestamp follows, then a packed
  transaction length): GTID_LOG_EVENTs of every layout generation go through the framing the
  reader uses today (mysql-replication's packet wrapper, as binlog.py builds it) and must come out
  as ``uuid:n`` and fold into the GTID set the checkpoint stores.
- **Transaction payloads** (TRANSACTION_PAYLOAD_EVENT) are covered by tests/test_compressed.py
  (bytes built to the published format) and tests/test_compressed_binlog.py (through the reader).
"""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql.protocol import MysqlPacket
from pymysqlreplication.event import GtidEvent
from pymysqlreplication.packet import BinLogPacketWrapper

from deltaforge.errors import DecodeError
from deltaforge.source import rowdecode as pure
from deltaforge.source import schema as S
from deltaforge.source.gtid import mysql_gtid_add, parse_gtid_set
from deltaforge.source.schema import TableSchema
from tests.test_rowdecode_twins import _norm, _spec, compiled

MAX_SAFE = 2**53 - 1

# ------------------------------------------------------------------ binary JSON encoder

_LITERAL, _INT16, _UINT16, _INT32, _UINT32, _INT64, _UINT64, _DOUBLE, _STRING = 4, 5, 6, 7, 8, 9, 10, 11, 12


def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _scalar(v: Any) -> tuple[int, bytes]:
    if v is None or v is True or v is False:
        return _LITERAL, bytes([{None: 0, True: 1, False: 2}[v]])
    if isinstance(v, int):
        for t, fmt, lo, hi in ((_INT16, "<h", -(2**15), 2**15 - 1), (_UINT16, "<H", 0, 2**16 - 1),
                               (_INT32, "<i", -(2**31), 2**31 - 1), (_UINT32, "<I", 0, 2**32 - 1),
                               (_INT64, "<q", -(2**63), 2**63 - 1), (_UINT64, "<Q", 0, 2**64 - 1)):
            if lo <= v <= hi:
                return t, struct.pack(fmt, v)
        raise ValueError(v)
    if isinstance(v, float):
        return _DOUBLE, struct.pack("<d", v)
    data = v.encode("utf-8")
    return _STRING, _varlen(len(data)) + data


def _value(v: Any, large: bool) -> tuple[int, bytes]:
    if isinstance(v, dict):
        return (1 if large else 0), _container(sorted(((k.encode(), x) for k, x in v.items()),
                                                       key=lambda kv: (len(kv[0]), kv[0])), True, large)
    if isinstance(v, list):
        return (3 if large else 2), _container([(b"", x) for x in v], False, large)
    return _scalar(v)


def _container(items: list[tuple[bytes, Any]], is_obj: bool, large: bool) -> bytes:
    """count, size, [key entries], value entries, [keys], values (offsets from the count field)."""
    w, fmt = (4, "<I") if large else (2, "<H")
    n = len(items)
    header = 2 * w + (n * (w + 2) if is_obj else 0) + n * (1 + w)
    key_entries, keys, entries, data = b"", b"", b"", b""
    at = header
    if is_obj:
        for k, _ in items:
            key_entries += struct.pack(fmt, at) + struct.pack("<H", len(k))
            keys += k
            at += len(k)
    for _, x in items:
        t, body = _value(x, large)
        inline = t in (_LITERAL, _INT16, _UINT16) or (large and t in (_INT32, _UINT32))
        if inline:
            entries += bytes([t]) + body.ljust(w, b"\x00")
        else:
            entries += bytes([t]) + struct.pack(fmt, at + len(data))
            data += body
    size = header + len(keys) + len(data)
    if not large and size > 0xFFFF:
        raise OverflowError("needs the large format")
    return struct.pack(fmt, n) + struct.pack(fmt, size) + key_entries + entries + keys + data


def jsonb(v: Any, large: bool | None = None) -> bytes:
    """A MySQL binary JSON document of ``v`` (small format unless it does not fit, or forced)."""
    if large is None:
        try:
            return jsonb(v, False)
        except (OverflowError, struct.error):  # an offset or a size beyond 2 bytes
            return jsonb(v, True)
    t, body = _value(v, large)
    return bytes([t]) + body


def rendered(v: Any) -> Any:
    """A JSON value as the decoder renders it (rendering table: integers beyond 2^53 as strings)."""
    if isinstance(v, dict):
        return {k: rendered(x) for k, x in v.items()}
    if isinstance(v, list):
        return [rendered(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool) and not -MAX_SAFE <= v <= MAX_SAFE:
        return str(v)
    return v


_JSON_TABLE = TableSchema(db="my", table="docs", columns=[_spec("id", S.LONG), _spec("doc", S.JSON, length_size=4)],
                          full_metadata=True)


def _decode_both(doc: bytes) -> Any:
    body = b"\x00" + struct.pack("<i", 7) + struct.pack("<I", len(doc)) + doc
    want = pure.decode_rows(_JSON_TABLE, body, pure.WRITE, b"\x03")
    got = compiled.decode_rows(_JSON_TABLE, body, pure.WRITE, b"\x03")
    assert _norm(got) == _norm(want)
    return want[0][1]["doc"]


def test_the_encoder_follows_the_published_layout() -> None:
    # vectors written by hand from json_binary.h (also in tests/test_rowdecode.py)
    assert jsonb([1, "ab"]) == bytes.fromhex("02" "0200" "0d00" "050100" "0c0a00" "02" "6162")
    assert jsonb({"a": 1, "bc": None}) == bytes.fromhex("00" "0200" "1500" "1200" "0100" "1300" "0200"
                                                       "050100" "040000" "616263")
    # large format: int32/uint32 inline in 4-byte entries
    assert jsonb([-70000, 3_000_000_000, "x"], large=True) == (
        b"\x03" + struct.pack("<II", 3, 25) + b"\x07" + struct.pack("<i", -70000)
        + b"\x08" + struct.pack("<I", 3_000_000_000) + b"\x0c" + struct.pack("<I", 23) + b"\x01x")
    # MySQL stores object keys sorted by length, then bytes
    assert _decode_both(jsonb({"bb": 1, "a": 2, "ab": 3})) == {"a": 2, "ab": 3, "bb": 1}
    assert list(_decode_both(jsonb({"bb": 1, "a": 2, "ab": 3}))) == ["a", "ab", "bb"]


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
              st.sampled_from([2**15 - 1, 2**15, 2**16, -(2**15) - 1, 2**31, -(2**31) - 1, 2**32, 2**53, -(2**53)]),
              st.floats(allow_nan=False), st.text(st.characters(exclude_categories=("Cs",)), max_size=20)),
    lambda kids: st.one_of(st.lists(kids, max_size=6),
                           st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=8), kids,
                                           max_size=6)),
    max_leaves=30)

#: Hypothesis examples per run (small and large format each)
JSON_EXAMPLES = 300


@settings(max_examples=JSON_EXAMPLES, deadline=None, database=None)
@given(doc=_json_values, large=st.booleans())
def test_binary_json_documents_come_back(doc: Any, large: bool) -> None:
    assert _decode_both(jsonb(doc, large)) == rendered(doc)


def test_big_documents_use_the_large_format() -> None:
    doc = {"k": ["x" * 1000] * 70, "n": 2**40}
    data = jsonb(doc)
    assert data[0] == 1  # large object: the small one cannot hold 70 kB
    assert _decode_both(data) == rendered(doc)


@pytest.mark.parametrize(("doc", "why"), [
    (b"\x02\x01\x00\x07\x00\x02\x00\x00", "nested deeper than 100 levels"),  # an array that contains itself
    (b"\x0c\x09abc", "a string runs past the document"),
    (b"\x02\x05\x00\x07\x00", "a container runs past the document"),
    (b"\x02\x05\x00\x04\x00", "a container's entries run past its size"),
    (b"\x04\x07", "unknown literal 0x7"),
    (b"\x0e", "unknown value type 0xe"),
    (b"\x00\x01\x00\x0b\x00\x0b\x00\xff\xff\x04\x00\x00", "a key runs past the document"),
])
def test_corrupt_documents_are_decode_errors_naming_the_column_and_byte(doc: bytes, why: str) -> None:
    body = b"\x00" + struct.pack("<i", 7) + struct.pack("<I", len(doc)) + doc
    for mod in (pure, compiled):
        with pytest.raises(DecodeError) as err:
            mod.decode_rows(_JSON_TABLE, body, pure.WRITE, b"\x03")
        assert str(err.value) == f"my.docs.doc (JSON): corrupt binary JSON: {why}, in the value at byte 5"


# ------------------------------------------------------------------------- uuid:n GTIDs

GTID_LOG_EVENT = 33


def _packed(n: int) -> bytes:
    if n < 251:
        return bytes([n])
    return b"\xfc" + n.to_bytes(2, "little") if n < 1 << 16 else b"\xfe" + n.to_bytes(8, "little")


def gtid_event(sid: uuid.UUID, gno: int, *, layout: str, flags: int = 1) -> bytes:
    """A GTID_LOG_EVENT (no checksum) in one of the layouts servers have written."""
    body = bytes([flags]) + sid.bytes + struct.pack("<q", gno)
    if layout != "5.6":
        body += b"\x02" + struct.pack("<qq", gno - 1, gno)  # typecode, last_committed, sequence_number
    if layout in ("8.0", "8.0-relayed"):
        immediate = 1_700_000_000_123_456
        if layout == "8.0-relayed":  # original and immediate commit timestamps differ: both are written
            body += (immediate | 1 << 55).to_bytes(7, "little") + (immediate - 5).to_bytes(7, "little")
        else:
            body += immediate.to_bytes(7, "little")
        body += _packed(70_000)  # transaction length
        body += struct.pack("<I", 80036)  # original server version (8.0.14+)
    return struct.pack("<IBIIIH", 1_700_000_000, GTID_LOG_EVENT, 1, 19 + len(body), 1234, 0) + body


def parse_with_mysql_replication(event: bytes) -> str:
    """The GTID text mysql-replication's wrapper takes from a GTID_LOG_EVENT (the oracle)."""
    class Ctl:  # the control connection: the wrapper asks it only its charset and flavour here
        charset = "utf8mb4"

        def _get_dbms(self) -> str:
            return "mysql"

    wrapper = BinLogPacketWrapper(
        MysqlPacket(b"\x00" + event, "utf8"), {}, Ctl(), (8, 0, 36), use_checksum=False,
        allowed_events=frozenset([GtidEvent]), only_tables=None, ignored_tables=None, only_schemas=None,
        ignored_schemas=None, freeze_schema=False, ignore_decode_errors=False, verify_checksum=False,
        optional_meta_data=False, enable_logging=False)
    assert type(wrapper.event) is GtidEvent
    return str(wrapper.event.gtid)


def parse_with_reader_framing(event: bytes) -> str:
    """The GTID text the reader's own framing (both twins, which must agree) takes from the event."""
    from deltaforge._core import framing as compiled

    from deltaforge.source import framing as pure

    texts = set()
    for impl in (pure, compiled):
        ev = impl.EventScanner(False).parse(event)
        assert ev is not None and ev[0] == impl.GTID_MYSQL
        texts.add(ev[5])
    assert len(texts) == 1
    return texts.pop()


SID = uuid.UUID("3e11fa47-71ca-11e1-9e33-c80aa9429562")


# (MySQL 5.6 wrote no logical timestamps: mysql-replication cannot read that layout, and the
# reader needs binlog_row_metadata=FULL, MySQL 8.0.1+, anyway; the builder keeps the layout for
# the framing rewrite's own parser)
@pytest.mark.parametrize("layout", ["5.7", "8.0", "8.0-relayed"])
@pytest.mark.parametrize("gno", [1, 42, 2**31, 2**62])
def test_mysql_gtid_events_read_as_uuid_colon_n(layout: str, gno: int) -> None:
    event = gtid_event(SID, gno, layout=layout)
    assert parse_with_reader_framing(event) == parse_with_mysql_replication(event) == f"{SID}:{gno}"


@pytest.mark.parametrize("gno", [1, 2**62])
def test_the_reader_framing_reads_the_56_layout_too(gno: int) -> None:
    assert parse_with_reader_framing(gtid_event(SID, gno, layout="5.6")) == f"{SID}:{gno}"


def test_gtids_fold_into_the_checkpointed_set() -> None:
    other = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
    state: str | None = None
    for sid, gno in [(SID, 1), (SID, 2), (SID, 3), (other, 9), (SID, 5), (SID, 4), (SID, 7)]:
        state = mysql_gtid_add(state, parse_with_reader_framing(gtid_event(sid, gno, layout="8.0")))
    parsed = parse_gtid_set(state or "")
    assert parsed.flavor == "mysql"
    assert parsed.mysql == {str(other): ((9, 9),), str(SID): ((1, 5), (7, 7))}
    assert parsed.contains(f"{SID}:6") is False and parsed.contains(f"{SID}:4") is True
    assert json.dumps(sorted(parsed.mysql)) == json.dumps(sorted([str(SID), str(other)]))
