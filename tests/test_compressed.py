"""Compressed binlog events (deltaforge/source/compressed.py) on bytes built to the published formats.

The MariaDB record and event layouts and MySQL's TRANSACTION_PAYLOAD layout are described in the
module header of compressed.py; these tests build them independently here and check that each
compressed event turns back into exactly the plain event it stands for.
"""

from __future__ import annotations

import struct
import zlib

import pytest
import zstandard

from deltaforge.errors import DecodeError
from deltaforge.source import compressed as C

WHERE = "binlog.000007:4242"


# ------------------------------------------------------------------------ builders


def event(etype: int, body: bytes, *, flags: int = 0, log_pos: int = 0) -> bytes:
    """A binlog event without checksum: 19-byte common header + body."""
    return struct.pack("<IBIIIH", 1_700_000_000, etype, 1, 19 + len(body), log_pos, flags) + body


def record(data: bytes, *, length_bytes: int | None = None, level: int = 6) -> bytes:
    """A MariaDB compressed record: header byte, big-endian original length, zlib stream."""
    n = length_bytes or max(1, (len(data).bit_length() + 7) // 8)
    return bytes([0x80 | n]) + len(data).to_bytes(n, "big") + zlib.compress(data, level)


def packed(n: int) -> bytes:
    """MySQL packed integer."""
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def rows_parts(update: bool, columns: int = 11, v2_extra: bytes | None = None) -> tuple[bytes, bytes]:
    """(plain part of a rows body: post-header, [extra header], width, bitmaps; row images)."""
    head = (77).to_bytes(6, "little") + b"\x01\x00"
    if v2_extra is not None:
        head += struct.pack("<H", 2 + len(v2_extra)) + v2_extra
    bitmap = b"\xff" * ((columns + 7) // 8)
    head += packed(columns) + bitmap + (bitmap if update else b"")
    images = bytes(range(256)) * 40 + b"long text " * 500  # compressible and not
    return head, images


def query_parts(db: bytes = b"app", status: bytes = b"\x00\x00\x00\x00\x00") -> tuple[bytes, bytes]:
    post = struct.pack("<IIBHH", 9, 0, len(db), 0, len(status))
    return post + status + db + b"\x00", b"ALTER TABLE app.users ADD COLUMN note TEXT /* padding */"


def payload_event(inner: bytes, compression: str, *, order: tuple[int, ...] = (2, 3, 1),
                  extra_field: bytes = b"") -> bytes:
    data = zstandard.ZstdCompressor().compress(inner) if compression == "zstd" else inner
    values = {1: len(data), 2: 0 if compression == "zstd" else 255, 3: len(inner)}
    fields = b"".join(packed(t) + packed(len(packed(values[t]))) + packed(values[t])
                      for t in order if not (t == 3 and compression == "none"))
    return event(C.TRANSACTION_PAYLOAD_EVENT, extra_field + fields + b"\x00" + data)


# ----------------------------------------------------------------- MariaDB records


@pytest.mark.parametrize("level,zlib_header", [(1, b"\x78\x01"), (6, b"\x78\x9c"), (9, b"\x78\xda")])
@pytest.mark.parametrize("size", [1, 200, 300, 70_000])
def test_records_of_every_length_width_and_zlib_header(size: int, level: int, zlib_header: bytes) -> None:
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    minimal = max(1, (size.bit_length() + 7) // 8)
    for width in range(minimal, 5):  # the server writes the minimal width; any of 1-4 is valid
        rec = record(data, length_bytes=width, level=level)
        assert rec[1 + width:3 + width] == zlib_header
        assert C.uncompress_record(b"pre" + rec, 3, WHERE) == data


@pytest.mark.parametrize("mangle,message", [
    (lambda r: bytes([r[0] & 0x7F]) + r[1:], "lacks the compressed bit"),
    (lambda r: bytes([r[0] | 0x10]) + r[1:], "algorithm 1"),
    (lambda r: bytes([0x80]) + r[1:], "0 length bytes"),
    (lambda r: bytes([0x85]) + r[1:], "5 length bytes"),
    (lambda r: r[:-6], "truncated compressed event: the zlib stream ends early"),
    (lambda r: r[:1], "truncated compressed event: the record's length is cut"),
    (lambda r: b"", "no record header"),
    (lambda r: r[:2] + b"\x00\x00garbage", "zlib"),
    (lambda r: bytes([0x82]) + (5000).to_bytes(2, "big") + r[3:], "inflates to 1000 bytes, declared 5000"),
    (lambda r: bytes([0x82]) + (10).to_bytes(2, "big") + r[3:], "inflates past its declared 10 bytes"),
    (lambda r: bytes([0x81, 0]) + r[3:], "declares 0 bytes"),
])
def test_bad_records_name_the_position(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    rec = mangle(record(b"x" * 1000, length_bytes=2))
    with pytest.raises(DecodeError) as err:
        C.uncompress_record(rec, 0, WHERE)
    assert WHERE in str(err.value) and message in str(err.value), str(err.value)
    assert not err.value.retriable


# ------------------------------------------------------------- MariaDB events


@pytest.mark.parametrize("compressed_type,plain_type,v2_extra", [
    (166, 23, None), (167, 24, None), (168, 25, None),  # *_ROWS_COMPRESSED_EVENT_V1
    (169, 30, b""), (170, 31, b"\x01\x07\x00\x08\x00"), (171, 32, b"\x00\x02\x09"),  # non-V1, extra header
])
def test_compressed_rows_events_become_their_plain_twins(compressed_type: int, plain_type: int,
                                                         v2_extra: bytes | None) -> None:
    head, images = rows_parts(plain_type in (24, 31), v2_extra=v2_extra)
    plain = event(plain_type, head + images, log_pos=9000, flags=0x8000)
    packed_event = event(compressed_type, head + record(images), log_pos=9000, flags=0x8000)
    assert len(packed_event) < len(plain)
    assert C.uncompress_mariadb_event(packed_event, WHERE) == plain
    # the format description's post-header length decides whether an extra header is there
    post = 8 if v2_extra is None else 10
    assert C.uncompress_mariadb_event(packed_event, WHERE, post) == plain


def test_compressed_query_event_becomes_a_query_event() -> None:
    head, text = query_parts()
    plain = event(C.QUERY_EVENT, head + text, log_pos=5000)
    assert C.uncompress_mariadb_event(event(165, head + record(text), log_pos=5000), WHERE) == plain
    assert C.uncompress_mariadb_event(event(165, head + record(text), log_pos=5000), WHERE, 13) == plain


@pytest.mark.parametrize("build,message", [
    (lambda: event(166, rows_parts(False)[0][:10]), "bitmaps are cut"),
    (lambda: event(167, (77).to_bytes(6, "little") + b"\x01\x00"), "packed integer is missing"),
    (lambda: event(169, (77).to_bytes(6, "little") + b"\x01\x00\x01"), "extra header is cut"),
    (lambda: event(166, rows_parts(False)[0] + record(b"abc" * 100)[:-4]), "zlib stream ends early"),
    (lambda: event(165, query_parts()[0][:10]), "post-header is cut"),
    (lambda: event(165, query_parts(db=b"a" * 200)[0][:30]), "database name is cut"),
    (lambda: event(166, b"")[:10], "shorter than a header"),
])
def test_truncated_mariadb_events_are_decode_errors(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DecodeError) as err:
        C.uncompress_mariadb_event(build(), WHERE)
    assert WHERE in str(err.value) and message in str(err.value), str(err.value)


# --------------------------------------------------------- MySQL transaction payload


def _inner_events() -> list[bytes]:
    head, images = rows_parts(False)
    qhead, _ = query_parts()
    return [event(C.QUERY_EVENT, qhead + b"BEGIN"), event(C.TABLE_MAP_EVENT, b"\x4d" + b"\x00" * 40),
            event(30, head + images), event(31, rows_parts(True)[0] + images), event(C.XID_EVENT, b"\x01" * 8)]


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("order", [(2, 3, 1), (1, 2, 3), (3, 1, 2)])
def test_transaction_payload_fields_and_inner_events(compression: str, order: tuple[int, ...]) -> None:
    inner = _inner_events()
    blob = b"".join(inner)
    ev = payload_event(blob, compression, order=order)
    payload = C.parse_transaction_payload(ev[19:], WHERE)
    assert payload.compression_name == compression
    assert payload.uncompressed_size == len(blob) and payload.payload == blob
    if compression == "zstd":
        assert payload.payload_size < len(blob)
    offsets = [0]
    for e in inner[:-1]:
        offsets.append(offsets[-1] + len(e))
    assert C.split_events(payload.payload, WHERE) == list(zip(offsets, inner, strict=True))


def test_unknown_payload_header_fields_are_skipped_and_big_sizes_use_long_packed_ints() -> None:
    inner = [event(C.TABLE_MAP_EVENT, b"t" * 70_000), event(C.XID_EVENT, b"\x02" * 8)]
    blob = b"".join(inner)
    unknown_field = packed(9) + packed(4) + b"\xde\xad\xbe\xef"
    ev = payload_event(blob, "none", extra_field=unknown_field)
    assert b"\xfd" in ev[19:40]  # the 70 kB size needs a 3-byte packed integer
    payload = C.parse_transaction_payload(ev[19:], WHERE)
    assert [e for _, e in C.split_events(payload.payload, WHERE)] == inner


@pytest.mark.parametrize("mangle,message", [
    (lambda b: b[:5], "packed integer is missing"),
    (lambda b: b[:-10], "truncated transaction payload"),
    (lambda b: packed(1) + packed(1) + packed(3) + b"\x00abc", "lacks the compression type"),
    (lambda b: packed(2) + packed(1) + packed(0) + b"\x00", "lacks the payload size"),
    (lambda b: packed(2) + packed(1) + packed(7) + packed(1) + packed(1) + packed(3) + b"\x00abc",
     "compression type 7"),
    (lambda b: packed(2) + packed(1) + packed(0) + packed(1) + packed(1) + packed(5) + b"\x00abcde", "zstd"),
    (lambda b: packed(2) + packed(3) + packed(0) + b"\x00", "declares 3 bytes"),
    (lambda b: b"\xff" + b[1:], "cannot start a packed integer"),
])
def test_bad_payloads_name_the_position(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    body = payload_event(b"".join(_inner_events()), "zstd")[19:]
    with pytest.raises(DecodeError) as err:
        C.parse_transaction_payload(mangle(body), WHERE)
    assert WHERE in str(err.value) and message in str(err.value), str(err.value)


def test_zstd_payload_with_a_wrong_declared_size_is_corrupt() -> None:
    blob = b"".join(_inner_events())
    data = zstandard.ZstdCompressor().compress(blob)
    for declared, message in ((len(blob) + 50, "zstd gives"), (len(blob) - 50, "inflates past")):
        body = (packed(2) + packed(1) + packed(0) + packed(3) + packed(len(packed(declared))) + packed(declared)
                + packed(1) + packed(len(packed(len(data)))) + packed(len(data)) + b"\x00" + data)
        with pytest.raises(DecodeError, match=message):
            C.parse_transaction_payload(body, WHERE)


@pytest.mark.parametrize("cut,message", [(7, "shorter than a header"), (30, "declares")])
def test_cut_inner_events_name_their_offset(cut: int, message: str) -> None:
    inner = _inner_events()
    blob = b"".join(inner)[: len(inner[0]) + cut]
    with pytest.raises(DecodeError) as err:
        C.split_events(blob, WHERE)
    text = str(err.value)
    assert WHERE in text and f"inner event at offset {len(inner[0])}" in text and message in text, text


# ------------------------------------------------------------------- event types


def test_rows_bearing_and_transaction_ending_types_are_never_harmless() -> None:
    never = {2, 16, 19, 20, 21, 22, 23, 24, 25, 30, 31, 32, 38, 39, 40, *range(165, 172), 17, 18, 26}
    assert not never & C.HARMLESS
    assert C.MARIADB_COMPRESSED == frozenset(range(165, 172))
    assert C.ROWS_COMPRESSED == {166: 23, 167: 24, 168: 25, 169: 30, 170: 31, 171: 32}


def test_event_names() -> None:
    assert C.event_name(166) == "Write_rows_compressed_v1 (166)"
    assert C.event_name(40) == "Transaction_payload (40)"
    assert C.event_name(250) == "unknown type (250)"
    assert all(t in C.EVENT_NAMES for t in [*range(43), *range(160, 172)])
