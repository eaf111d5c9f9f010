"""Start positions, GTID state and the ordering that resume and per-sink skipping rely on."""

from __future__ import annotations

import pytest

from deltaforge.errors import ConfigError
from deltaforge.model import Position, derive_event_id, idempotency_key, min_position
from deltaforge.source.binlog import default_replica_server_id, parse_start
from deltaforge.source.gtid import MariaGtidState, mysql_gtid_add

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
    assert mysql_gtid_add(None, f"{UUID}:1") == f"{UUID}:1"
    assert mysql_gtid_add(f"{UUID}:1-5", f"{UUID}:6") == f"{UUID}:1-6"
    other = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    merged = mysql_gtid_add(f"{UUID}:1-5", f"{other}:9")
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


# ----------------------------------------------------------------------------- GTID semantics (source/gtid.py)

from deltaforge.model import position_le  # noqa: E402
from deltaforge.source.gtid import parse_gtid_set  # noqa: E402


def test_mariadb_gtid_containment_is_per_domain_seq_whatever_the_server() -> None:
    state = parse_gtid_set("0-1-100,1-7-5")
    assert state.contains("0-1-100") and state.contains("0-2-99")  # a promoted replica numbers on
    assert not state.contains("0-2-101") and not state.contains("2-1-1")
    assert str(state) == "0-1-100,1-7-5"
    assert parse_gtid_set("").contains("0-1-1") is False


def test_mysql_gtid_sets_are_interval_sets() -> None:
    s = parse_gtid_set(f"{UUID}:1-5:7-9")
    assert s.contains(f"{UUID}:5") and s.contains(f"{UUID.upper()}:8")
    assert not s.contains(f"{UUID}:6")
    assert parse_gtid_set(f"{UUID}:1-5").issubset(s) and not s.issubset(parse_gtid_set(f"{UUID}:1-8"))
    assert str(parse_gtid_set(f"{UUID}:1-3:4-5")) == f"{UUID}:1-5"
    with pytest.raises(ValueError, match="interval"):
        parse_gtid_set(f"{UUID}:5-1")
    with pytest.raises(ValueError, match="neither"):
        parse_gtid_set("binlog.000001:4")


def test_positions_compare_by_gtid_across_servers_not_by_file_numbers() -> None:
    """The failover hole: the new server's files are numbered lower, yet its rows are newer."""
    primary = Position(file="binlog.000006", pos=900, gtid="0-1-100", server="mariadb-1")
    key_on_replica = (2, 400, 0, "0-2-101")  # binlog.000002 on the promoted replica
    assert not primary.covers(key_on_replica, "mariadb-2")
    assert primary.covers((2, 300, 0, "0-1-100"), "mariadb-2")
    replica_later = Position(file="binlog.000002", pos=500, gtid="0-2-101", server="mariadb-2")
    assert position_le(primary, replica_later) and not position_le(replica_later, primary)
    assert min_position([replica_later, primary]) == primary


def test_split_checkpoint_covers_the_rows_of_its_own_transaction_only() -> None:
    split = Position(file="binlog.000003", pos=4, gtid="0-1-41", skip_rows=3, tx="0-1-42", server="mariadb-1")
    assert split.covers((3, 4, 2, "0-1-42")) and not split.covers((3, 4, 3, "0-1-42"))
    assert split.covers((1, 4, 9, "0-1-41")) and not split.covers((3, 900, 0, "0-1-43"))
    done = Position(file="binlog.000003", pos=800, gtid="0-1-42", server="mariadb-1")
    more = Position(file="binlog.000003", pos=4, gtid="0-1-41", skip_rows=5, tx="0-1-42", server="mariadb-1")
    assert position_le(split, more) and position_le(more, done) and not position_le(done, split)


def test_min_position_of_diverging_domains_is_their_common_part() -> None:
    a = Position(file="", pos=0, gtid="0-1-10,1-1-5")
    b = Position(file="", pos=0, gtid="0-1-8,1-1-9")
    assert min_position([a, b]) == Position(file="", pos=0, gtid="0-1-8,1-1-5")


def test_gtid_event_ids_are_the_same_on_every_server() -> None:
    from deltaforge.model import derive_gtid_event_id

    assert derive_gtid_event_id("0-1-42", 3) == derive_gtid_event_id("0-1-42", 3)
    assert derive_gtid_event_id("0-1-42", 3) != derive_gtid_event_id("0-1-42", 4)
    assert derive_gtid_event_id("0-1-42", 0) != derive_event_id("mariadb-1", "binlog.000001", 4, 0)


def test_gtid_tracking_fast_paths_agree_with_the_general_rule() -> None:
    from pymysqlreplication.gtid import Gtid, GtidSet

    uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
    for current, gtid in [(f"{uuid}:1-5", f"{uuid}:6"), (f"{uuid}:5", f"{uuid}:6"), (f"{uuid}:1-3:7-9", f"{uuid}:10"),
                          (f"{uuid}:1-5", f"{uuid}:8"), (None, f"{uuid}:1"), (f"{uuid}:1-5,{uuid[:-1]}3:1-2", f"{uuid}:6")]:
        general = GtidSet(current or "")
        general += Gtid(gtid)
        assert mysql_gtid_add(current, gtid) == str(general)
    state = MariaGtidState("0-1-5")
    assert state.apply("0-1-6") == str(state) == "0-1-6"
    assert state.apply("1-2-3") == str(state) == "0-1-6,1-2-3"
    assert state.apply("0-1-7") == str(state) == "0-1-7,1-2-3"
