"""Start positions, GTID state and the ordering that resume and per-sink skipping rely on."""

from __future__ import annotations

import pytest

from deltaforge.errors import ConfigError
from deltaforge.model import Position, derive_event_id, idempotency_key, min_position
from deltaforge.source.binlog import (
    MariaGtidState,
    _mysql_gtid_add,
    default_replica_server_id,
    parse_start,
)

UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


@pytest.mark.parametrize(("text", "expected"), [
    ("latest", "latest"),
    ("earliest", "earliest"),
    ("binlog.000003:4", Position(file="binlog.000003", pos=4)),
    ("mysql-bin.000120:98765", Position(file="mysql-bin.000120", pos=98765)),
    ("0-1-42", Position(file="", pos=0, gtid="0-1-42")),
    ("0-1-42,1-2-7", Position(file="", pos=0, gtid="0-1-42,1-2-7")),
    (f"{UUID}:23", Position(file="", pos=0, gtid=f"{UUID}:23")),
    (f"{UUID}:1-100:200-300", Position(file="", pos=0, gtid=f"{UUID}:1-100:200-300")),
])
def test_parse_start(text: str, expected: object) -> None:
    assert parse_start(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "binlog:", "binlog.000001:x", "0-1"])
def test_parse_start_rejects_with_the_fix(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_start(text)
    assert "spec.source.config.start" in str(exc.value) and "fix:" in str(exc.value)


def test_mariadb_gtid_state_tracks_one_seq_per_domain() -> None:
    state = MariaGtidState("0-1-41,1-2-7")
    assert state.with_gtid("0-1-42") == "0-1-42,1-2-7"
    assert state.with_gtid("2-5-1") == "0-1-41,1-2-7,2-5-1"
    assert str(MariaGtidState("")) == ""
    assert str(MariaGtidState("10-1-3,2-1-9")) == "2-1-9,10-1-3"


def test_mysql_gtid_set_arithmetic() -> None:
    assert _mysql_gtid_add(None, f"{UUID}:1") == f"{UUID}:1"
    assert _mysql_gtid_add(f"{UUID}:1-5", f"{UUID}:6") == f"{UUID}:1-6"
    other = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    merged = _mysql_gtid_add(f"{UUID}:1-5", f"{other}:9")
    assert f"{UUID}:1-5" in merged and f"{other}:9" in merged


def test_positions_order_by_file_number_then_pos_then_rows() -> None:
    a = Position(file="binlog.000009", pos=900)
    b = Position(file="binlog.000010", pos=4)
    split = Position(file="binlog.000010", pos=4, skip_rows=3)
    assert min_position([split, b, a]) == a
    assert a.order_key() < b.order_key() < split.order_key()
    # a split checkpoint covers exactly the rows delivered of its transaction
    assert split.covers((10, 4, 2)) and not split.covers((10, 4, 3))
    assert b.covers((9, 900, 5000)) and not b.covers((10, 4, 0))


def test_event_ids_are_deterministic_uuids() -> None:
    one = derive_event_id("mariadb-1", "binlog.000001", 1234, 0)
    assert one == derive_event_id("mariadb-1", "binlog.000001", 1234, 0)
    assert one != derive_event_id("mariadb-1", "binlog.000001", 1234, 1)
    assert len(one) == 36 and one[14] == "5"


def test_idempotency_key_layout() -> None:
    from deltaforge.model import Event, Transaction

    ev = Event(event_id="e1", tenant_id="acme", table="app.users", op="u",
               transaction=Transaction(id="0-1-5", seq=0, end=True))
    assert idempotency_key(ev) == "acme|app.users|0-1-5|e1"


def test_replica_server_id_is_stable_and_out_of_the_usual_range() -> None:
    assert default_replica_server_id("cache-invalidation") == default_replica_server_id("cache-invalidation")
    assert default_replica_server_id("a") != default_replica_server_id("b")
    assert default_replica_server_id("a") >= 0x40000000
