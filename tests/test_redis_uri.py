"""The Redis URI grammar (deltaforge/dsn.py): single node, Sentinel and Cluster, and its errors.

Unit tests, no server: what each URI parses to, what it refuses and with which fix, and that the
secrets never show in what is printed.
"""

from __future__ import annotations

import pytest

from deltaforge.dsn import parse_redis_uri, redact
from deltaforge.errors import ConfigError
from deltaforge.log import scrub
from deltaforge.redisclient import key_slot


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


def _cluster_config(tmp_path, stream: str, extra: str = ""):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"""apiVersion: deltaforge/v1
kind: Pipeline
metadata: {{name: p, tenant: t}}
spec:
  source: {{type: mysql, config: {{id: s, dsn: "mysql://u:p@127.0.0.1:3307/app", tables: [app.t]}}}}
  sinks:
    - type: redis
      config: {{id: r, uri: "redis+cluster://127.0.0.1:7000,127.0.0.1:7001", stream: "{stream}"{extra}}}
""")
    return cfg


def test_on_a_cluster_a_template_without_a_hash_tag_gets_one_checkpoint_per_stream(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from deltaforge.config import load_config
    from deltaforge.sink.slot_split import SlotSplitSink, make_redis_sink, part_checkpoint_key

    cfg = load_config(_cluster_config(tmp_path, "cdc:$${table}"))
    sink = make_redis_sink(cfg.spec.sinks[0].config, "p", "t", "spec.sinks[0]")
    assert isinstance(sink, SlotSplitSink)
    assert sink.checkpoint_key == "{p}:deltaforge:checkpoint:p:r" and sink.slot == key_slot("p")
    for stream in ("cdc:app.orders", "{app}:orders", "cdc:{x}y"):
        assert key_slot(part_checkpoint_key(stream, "p", "r")) == key_slot(stream)


@pytest.mark.parametrize(("extra", "path"), [(", dlq_stream: other:dlq", "dlq_stream"),
                                             (", checkpoint_key: elsewhere:ckpt", "checkpoint_key")])
def test_a_template_spread_over_slots_refuses_a_single_named_key(tmp_path, extra: str, path: str) -> None:  # type: ignore[no-untyped-def]
    from deltaforge.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(_cluster_config(tmp_path, "cdc:$${table}", extra))
    text = str(info.value)
    assert f"spec.sinks[0].config.{path}" in text and "spreads over hash slots" in text and "hash tag" in text


@pytest.mark.parametrize(("extra", "path"), [(", dlq_stream: other:dlq", "dlq_stream"),
                                             (", checkpoint_key: elsewhere:ckpt", "checkpoint_key")])
def test_on_a_cluster_keys_outside_the_streams_slot_are_refused(tmp_path, extra: str, path: str) -> None:  # type: ignore[no-untyped-def]
    from deltaforge.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(_cluster_config(tmp_path, "cache:invalidations", extra))
    assert f"spec.sinks[0].config.{path}" in str(info.value) and "{cache:invalidations}" in str(info.value)


def test_on_a_cluster_every_key_of_the_sink_shares_the_streams_slot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from deltaforge.config import load_config
    from deltaforge.redisclient import key_slot
    from deltaforge.sink.redis_stream import RedisStreamSink

    for stream in ("cache:invalidations", "{cdc}:$${table}"):
        cfg = load_config(_cluster_config(tmp_path, stream))
        sink = RedisStreamSink(cfg.spec.sinks[0].config, "p", "t", "spec.sinks[0]")
        tag = "cache:invalidations" if "{" not in stream else "cdc"  # $$ is a literal $ in the YAML
        assert sink.slot == key_slot(tag) == key_slot(sink.checkpoint_key)
        assert sink.dlq_template.hash_tag() == tag and sink.template.hash_tag() in (None, tag)
