import pytest

from deltaforge.testing import MariaDBServer, RedisServer

pytestmark = pytest.mark.integration


def test_mariadb_fixture_has_cdc_binlog_settings(mariadb: MariaDBServer) -> None:
    rows = dict(mariadb.execute(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
        "('log_bin','binlog_format','binlog_row_image','binlog_row_metadata')"))
    assert rows == {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL",
                    "binlog_row_metadata": "FULL"}
    assert mariadb.port != 3306


def test_redis_fixture_is_private(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert client.ping() is True
    assert redis_server.port != 6379
