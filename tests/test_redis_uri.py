"""The Redis URI grammar (deltaforge/dsn.py): single node, Sentinel and Cluster, and its errors.

Unit tests, no server: what each URI parses to, what it refuses and with which fix, and that the
secrets never show in what is printed.
"""

from __future__ import annotations

import pytest

from deltaforge.dsn import parse_redis_uri, redact
from deltaforge.errors import ConfigError
from deltaforge.log import scrub


def test_a_single_node_uri_keeps_its_meaning() -> None:
    u = parse_redis_uri("rediss://app:pw@cache.internal:6380/2?ssl_cert_reqs=none", "p")
    assert (u.topology, u.host, u.port, u.db, u.tls, u.username, u.password) == (
        "single", "cache.internal", 6380, 2, True, "app", "pw")
    assert u.seeds == (("cache.internal", 6380),) and u.service is None
    assert u.redacted() == "rediss://app:***@cache.internal:6380/2"


def test_a_sentinel_uri_names_its_sentinels_service_and_credentials() -> None:
    u = parse_redis_uri("redis+sentinel://:master-pw@10.0.0.1:26379,10.0.0.2,[::1]:26380/3"
                        "?service=mymaster&sentinel_password=s-pw", "p")
    assert u.topology == "sentinel" and not u.tls
    assert u.seeds == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))  # 26379 by default
    assert (u.service, u.db, u.password, u.params) == ("mymaster", 3, "master-pw", {"sentinel_password": "s-pw"})
    shown = u.redacted()
    assert "master-pw" not in shown and "s-pw" not in shown and "service=mymaster" in shown
    assert parse_redis_uri("rediss+sentinel://s1:26379?service=m", "p").tls


def test_a_cluster_uri_lists_seed_nodes_on_database_0() -> None:
    u = parse_redis_uri("redis+cluster://user:pw@127.0.0.1:7000,127.0.0.1:7001", "p")
    assert (u.topology, u.db, u.username, u.password) == ("cluster", 0, "user", "pw")
    assert u.seeds == (("127.0.0.1", 7000), ("127.0.0.1", 7001))
    assert u.redacted() == "redis+cluster://user:***@127.0.0.1:7000,127.0.0.1:7001/0"


@pytest.mark.parametrize(("uri", "said", "fix"), [
    ("http://h:1", "expected a redis:// or rediss:// URI", "redis://"),
    ("redis+sentinel://s1:26379/0", "no service", "?service="),
    ("redis+cluster://n1:7000/2", "database 0 only", "/0"),
    ("redis+cluster://n1:7000?servise=x", "unknown parameter 'servise'", "known ones"),
    ("redis+sentinel://s1:26379?service=m&sentinel_pasword=x", "unknown parameter 'sentinel_pasword'",
     "did you mean sentinel_password?"),
    ("redis+sentinel://s1:notaport?service=m", "not a number", ""),
    ("redis+cluster://:7000", "has no host", "redis+cluster://host1"),
    ("redis+cluster://", "no host", ""),
])
def test_malformed_uris_say_what_and_how_to_fix(uri: str, said: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_uri(uri, "spec.sinks[0].config.uri")
    text = str(info.value)
    assert said in text and fix in text and text.startswith("spec.sinks[0].config.uri")
    assert "\n" not in text


def test_secrets_in_the_query_are_masked_in_errors_and_logs() -> None:
    uri = "redis+sentinel://u:pw@s1:26379?service=m&sentinel_password=topsecret&bogus=1"
    with pytest.raises(ConfigError) as info:
        parse_redis_uri(uri, "p")
    assert "topsecret" not in str(info.value) and "pw@" not in str(info.value)
    assert "topsecret" not in redact(uri) and "topsecret" not in scrub(f"connecting to {uri}")


def test_the_engine_sink_refuses_a_cluster_uri_with_the_way_out(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from deltaforge.config import load_config

    cfg = tmp_path / "p.yaml"
    cfg.write_text("""apiVersion: deltaforge/v1
kind: Pipeline
metadata: {name: p, tenant: t}
spec:
  source: {type: mysql, config: {id: s, dsn: "mysql://u:p@127.0.0.1:3307/app", tables: [app.t]}}
  sinks:
    - type: redis
      config: {id: r, uri: "redis+cluster://127.0.0.1:7000,127.0.0.1:7001", stream: s}
""")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert "spec.sinks[0].config.uri" in str(info.value) and "Redis Cluster" in str(info.value)
    assert "redis+sentinel://" in str(info.value)
