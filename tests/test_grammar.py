"""One grammar per rule: config validation and the reader accept exactly the same strings.

Each example runs through ``deltaforge.config`` (a whole pipeline YAML, the value
coming from the environment so YAML quoting plays no part) and through the
reader's own entry points (``deltaforge.source.binlog.parse_start``,
``deltaforge.source.tables.TableFilter``); both must accept, or both refuse with
a ConfigError naming the same YAML path and a fix.
"""

from __future__ import annotations

import pytest

from deltaforge.config import load_config_text
from deltaforge.errors import ConfigError
from deltaforge.model import Position
from deltaforge.source.binlog import parse_start
from deltaforge.source.grammar import parse_start_spec, parse_table_pattern
from deltaforge.source.tables import TableFilter

UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
UUID2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

YAML = """\
apiVersion: deltaforge/v1
kind: Pipeline
metadata:
  name: grammar
spec:
  source:
    type: mysql
    config:
      id: src
      dsn: mysql://u:p@127.0.0.1:3306/
      start: ${START}
      tables:
        - ${TABLE}
  sinks:
    - type: redis
      config:
        id: out
        uri: redis://127.0.0.1:6379/0
        stream: s
"""

VALID_STARTS = [
    "latest", "earliest", "LATEST", " earliest ",
    "binlog.000003:4", "mysql-bin.000120:98765", "host-bin.1:4",
    "0-1-42", "0-1-42,1-2-7", "0-1-42, 1-2-7", "4294967295-4294967295-18446744073709551615",
    f"{UUID}:23", f"{UUID}:1-100:200-300", f"{UUID}:1-5,{UUID2}:7", f"{UUID.upper()}:1-5",
    f"{UUID}:1-5,\n{UUID2}:1-9",
]
INVALID_STARTS = [
    "", "soon", "binlog:", "binlog.000001:x", "binlog.000001:3", "binlog.000001:0", "/var/lib/mysql/binlog.000001:4",
    "binlog:4", "0-1", "0-1-", "0-1-42,", "0-1-42,0-2-43", "4294967296-1-1", "0-1-18446744073709551616",
    "-1-1-1", f"{UUID}", f"{UUID}:", f"{UUID}:0", f"{UUID}:5-3", f"{UUID}:1-5:3-9", f"{UUID}:1-5,{UUID}:7",
    f"{UUID}:tag:1-5", "3e11fa4771ca11e19e33c80aa9429562:1", f"{UUID}:1-5,0-1-2", f"{UUID}:1-{2**63}",
]

VALID_TABLES = [
    "app.users", "app.*", "app.%", "app.order%", "app.%_archive", "app.%users", "app.a%b%c",
    "`app`.`users`", "`app`.users%", "my_db.user_events", "app.t-1", " app.users ", "app.a+b", "app." + "t" * 64,
]
INVALID_TABLES = [
    "users", "", ".users", "app.", "*.users", "ap%.users", "%.users", "app.user*", "app.*s", "app.x.y",
    "app.my table", "app.o'brien", "app.a/b", "app." + "t" * 65, "a" * 65 + ".t",
]


def _config_verdict(start: str = "latest", table: str = "app.users") -> ConfigError | None:
    try:
        load_config_text(YAML, env={"START": start, "TABLE": table})
    except ConfigError as e:
        return e
    return None


def _reader_start(start: str) -> ConfigError | None:
    try:
        parse_start(start)
    except ConfigError as e:
        return e
    return None


def _reader_table(table: str) -> ConfigError | None:
    try:
        TableFilter([table])
    except ConfigError as e:
        return e
    return None


@pytest.mark.parametrize("start", VALID_STARTS)
def test_valid_start_is_accepted_by_config_and_reader(start: str) -> None:
    assert _config_verdict(start=start) is None
    assert _reader_start(start) is None


@pytest.mark.parametrize("start", INVALID_STARTS)
def test_invalid_start_is_refused_by_config_and_reader(start: str) -> None:
    by_config, by_reader = _config_verdict(start=start), _reader_start(start)
    assert by_config is not None and by_reader is not None
    for err in (by_config, by_reader):
        assert err.path == "spec.source.config.start" and err.hint, err
    # the same words: one owner wrote both messages (config adds the YAML line)
    assert by_reader.detail.split(" (line")[0] in by_config.detail or by_config.detail.startswith(
        by_reader.detail.split(" (line")[0])


@pytest.mark.parametrize("table", VALID_TABLES)
def test_valid_table_pattern_is_accepted_by_config_and_reader(table: str) -> None:
    assert _config_verdict(table=table) is None
    assert _reader_table(table) is None


@pytest.mark.parametrize("table", INVALID_TABLES)
def test_invalid_table_pattern_is_refused_by_config_and_reader(table: str) -> None:
    by_config, by_reader = _config_verdict(table=table), _reader_table(table)
    assert by_config is not None and by_reader is not None
    for err in (by_config, by_reader):
        assert err.path == "spec.source.config.tables[0]" and err.hint, err


def test_parse_start_is_the_grammars() -> None:
    assert parse_start is __import__("deltaforge.source.grammar", fromlist=["parse_start"]).parse_start
    assert parse_start(" LATEST ") == "latest"
    assert parse_start("binlog.000003:4") == Position(file="binlog.000003", pos=4)
    assert parse_start(f"{UUID}:1-5,\n {UUID2}:7") == Position(file="", pos=0, gtid=f"{UUID}:1-5,{UUID2}:7")
    assert parse_start_spec("0-1-42 , 1-2-7").gtid == "0-1-42,1-2-7"
    assert parse_start_spec("0-1-42").kind == "mariadb_gtid"
    assert parse_start_spec(f"{UUID}:1").kind == "mysql_gtid"


def test_tagged_gtids_are_named() -> None:
    with pytest.raises(ConfigError, match="tagged GTIDs"):
        parse_start(f"{UUID}:tag:1-5")


def test_star_is_percent_and_underscore_is_literal() -> None:
    star, percent = parse_table_pattern("app.*", "p"), parse_table_pattern("app.%", "p")
    assert (star.db, star.table, star.regex) == (percent.db, percent.table, percent.regex) == ("app", "%", ".*")
    f = TableFilter(["app.%_archive", "logs.x%y"])
    assert f.matches("app", "users_archive") and not f.matches("app", "usersXarchive")
    assert f.matches("logs", "xy") and f.matches("logs", "x_1_y") and not f.matches("logs", "xyz")
