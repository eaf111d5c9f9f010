"""deltaforge.config: the seed YAML, env expansion, and every validation message.

Pure parsing: no servers needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deltaforge.config import (
    BatchSpec,
    CommitPolicy,
    EnvelopeSpec,
    Limits,
    PipelineConfig,
    load_config,
    load_config_text,
    validate_table_pattern,
)
from deltaforge.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SEED_MD = Path("/work/shared/seed/cache-invalidation.md")
PIPELINE = ROOT / "conf" / "pipeline.yaml"
EXAMPLES = ROOT / "conf" / "examples"

SECRET = "s3cretPW"
ENV = {
    "MYSQL_DSN": f"mysql://cdc:{SECRET}@db.example:3306/app",
    "REDIS_URI": f"redis://default:{SECRET}@cache.example:6379/0",
}
SEED = PIPELINE.read_text()


def load(text: str, env: dict[str, str] | None = None, **kw: object) -> PipelineConfig:
    return load_config_text(text, env=ENV if env is None else env, **kw)  # type: ignore[arg-type]


def error(text: str, env: dict[str, str] | None = None, **kw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, env, **kw)
    assert SECRET not in str(info.value)
    return info.value


def edit(old: str, new: str, text: str = SEED) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


MINIMAL = """\
apiVersion: deltaforge/v1
kind: Pipeline
metadata:
  name: mini
spec:
  source:
    type: mysql
    config:
      id: src
      dsn: ${MYSQL_DSN}
      tables: [app.users]
  sinks:
    - type: redis
      config:
        id: out
        uri: ${REDIS_URI}
        stream: s
"""

JS = "function processBatch(events) { return events.map(e => { e.tags = [`k:${e.op}`]; return e; }); }\n"


# --------------------------------------------------------------------------- the seed


def test_pipeline_yaml_is_the_seed_block_byte_for_byte() -> None:
    md = SEED_MD.read_text()
    block = md[md.index("```yaml\n", md.index("## Pipeline Configuration")) + len("```yaml\n"):]
    block = block[: block.index("\n```")] + "\n"
    assert PIPELINE.read_text() == block


def test_seed_loads_with_its_values_and_defaults() -> None:
    cfg = load_config(PIPELINE, env=ENV)
    assert cfg.path == str(PIPELINE)
    assert (cfg.apiVersion, cfg.kind) == ("deltaforge/v1", "Pipeline")
    assert (cfg.metadata.name, cfg.metadata.tenant) == ("cache-invalidation", "acme")
    src = cfg.spec.source
    assert src.type == "mysql"
    assert src.config.id == "app-mysql"
    assert src.config.dsn == ENV["MYSQL_DSN"]
    assert src.config.tables == ["app.users", "app.products", "app.orders", "app.inventory"]
    assert (src.config.start, src.config.server_id) == ("latest", None)
    [proc] = cfg.spec.processors
    assert (proc.type, proc.id, proc.file) == ("javascript", "generate-cache-keys", None)
    assert proc.limits == Limits(timeout_ms=500, mem_mb=128)
    [sink] = cfg.spec.sinks
    assert sink.type == "redis"
    c = sink.config
    assert (c.id, c.uri, c.stream) == ("invalidation-stream", ENV["REDIS_URI"], "cache:invalidations")
    assert (c.envelope, c.encoding, c.required) == (EnvelopeSpec("native"), "json", True)
    assert (c.max_len, c.delivery, c.checkpoint_key) == (None, "exactly_once", None)
    assert cfg.spec.batch == BatchSpec(max_events=100, max_bytes=16 * 1024 * 1024, max_ms=100,
                                       respect_source_tx=True)
    assert cfg.spec.commit_policy == CommitPolicy(mode="required", quorum=None)


def test_seed_javascript_reaches_the_processor_untouched() -> None:
    cfg = load(SEED, env={**ENV, "id": "EXPANDED", "strategy": "EXPANDED"})
    proc = cfg.spec.processors[0]
    raw = yaml.safe_load(SEED)["spec"]["processors"][0]["inline"]
    assert proc.code == proc.inline == raw
    for literal in ("`strategy:${strategy}`", "`keys:${keys.length}`", "`user:${id}`",
                    "`user:${record.user_id}:orders`", "`inventory:${record.product_id}`"):
        assert literal in proc.code
    assert "EXPANDED" not in proc.code
    assert proc.origin == "spec.processors[0].inline"


def test_defaults_when_optional_sections_are_absent() -> None:
    cfg = load(MINIMAL)
    assert cfg.metadata.tenant is None
    assert cfg.spec.processors == []
    assert cfg.spec.batch == BatchSpec(2000, 16 * 1024 * 1024, 50, True)
    assert cfg.spec.commit_policy == CommitPolicy("required", None)
    assert cfg.path == "<string>"
    proc_yaml = MINIMAL + "  processors:\n    - type: javascript\n      id: p\n      inline: |\n        " + JS
    assert load(proc_yaml).spec.processors[0].limits == Limits(timeout_ms=1000, mem_mb=256)


def test_empty_optional_sections_mean_defaults() -> None:
    cfg = load(MINIMAL + "  processors:\n  #  - type: javascript\n  batch:\n  commit_policy:\n")
    assert cfg.spec.processors == []
    assert cfg.spec.batch == BatchSpec()
    assert cfg.spec.commit_policy == CommitPolicy()


@pytest.mark.parametrize("name", ["multi-sink.yaml", "file-processor.yaml"])
def test_examples_load(name: str) -> None:
    cfg = load_config(EXAMPLES / name, env=ENV)
    assert cfg.spec.sinks
    for proc in cfg.spec.processors:
        assert "processBatch" in proc.code


def test_multi_sink_example_keeps_the_stream_template() -> None:
    cfg = load_config(EXAMPLES / "multi-sink.yaml", env=ENV)
    streams = {s.config.id: s.config for s in cfg.spec.sinks}
    assert streams["per-table"].stream == "cdc:${source.db}.${source.table}"
    assert streams["per-table"].envelope.type == "debezium"
    assert streams["audit"].envelope.type == "cloudevents"
    assert streams["audit"].uri == "redis://localhost:6379/1"  # ${AUDIT_REDIS_URI:-...} default
    assert cfg.spec.commit_policy.mode == "all"
    assert "`db:${event.source.db}`" in cfg.spec.processors[0].code


def test_file_processor_example_reads_the_js_relative_to_the_config() -> None:
    cfg = load_config(EXAMPLES / "file-processor.yaml", env=ENV)
    proc = cfg.spec.processors[0]
    assert proc.origin == str(EXAMPLES / "cache-keys.js")
    assert proc.code == (EXAMPLES / "cache-keys.js").read_text()
    assert "`user:${id}`" in proc.code
    assert cfg.spec.sinks[0].config.stream == "cache:invalidations"


# --------------------------------------------------------------------------- environment


def test_env_var_and_default_forms() -> None:
    text = edit("stream: s", "stream: ${STREAM:-cdc:events}", MINIMAL)
    text = edit("name: mini", "name: ${NAME}-${SUFFIX:-x}", text)
    cfg = load(text, env={**ENV, "NAME": "orders"})
    assert cfg.metadata.name == "orders-x"
    assert cfg.spec.sinks[0].config.stream == "cdc:events"
    # set wins over the default; set-but-empty falls back to it, like the shell's :-
    assert load(text, env={**ENV, "NAME": "o", "STREAM": "mine"}).spec.sinks[0].config.stream == "mine"
    assert load(text, env={**ENV, "NAME": "o", "STREAM": ""}).spec.sinks[0].config.stream == "cdc:events"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    cfg = load_config_text(MINIMAL)
    assert cfg.spec.source.config.dsn == ENV["MYSQL_DSN"]


def test_unset_variable_names_it_the_path_and_the_fix() -> None:
    env = {"REDIS_URI": ENV["REDIS_URI"]}
    err = error(SEED, env=env)
    assert err.path == "spec.source.config.dsn"
    msg = str(err)
    assert msg.startswith("spec.source.config.dsn: environment variable MYSQL_DSN is not set")
    assert "export MYSQL_DSN=" in msg
    assert "${MYSQL_DSN:-default}" in msg


def test_dollar_dollar_escapes_and_dotted_names_stay() -> None:
    text = edit("stream: s", "stream: 'x:$${table}:${source.db}'", MINIMAL)
    text = edit("name: mini", "name: mini\n  tenant: $${HOME}", text)
    cfg = load(text, env={**ENV, "HOME": "/root", "table": "t"})
    assert cfg.spec.sinks[0].config.stream == "x:${table}:${source.db}"
    assert cfg.metadata.tenant == "${HOME}"


def test_lowercase_unset_variable_suggests_the_escape() -> None:
    err = error(edit("stream: s", "stream: cdc:${table}", MINIMAL))
    assert err.path == "spec.sinks[0].config.stream"
    assert "$${table}" in str(err)


def test_numbers_and_booleans_can_come_from_env() -> None:
    text = MINIMAL + "  batch:\n    max_events: ${N}\n    respect_source_tx: ${TX}\n"
    cfg = load(text, env={**ENV, "N": "500", "TX": "false"})
    assert (cfg.spec.batch.max_events, cfg.spec.batch.respect_source_tx) == (500, False)
    err = error(text, env={**ENV, "N": "lots", "TX": "true"})
    assert str(err).startswith("spec.batch.max_events: expected an integer, found 'lots' (from '${N}')")


def test_javascript_is_never_expanded_but_the_file_path_is(tmp_path: Path) -> None:
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "p.js").write_text("// ${MYSQL_DSN} ${UNSET_THING}\n" + JS)
    text = MINIMAL + "  processors:\n    - type: javascript\n      id: p\n      file: ${JS_DIR}/p.js\n"
    (tmp_path / "p.yaml").write_text(text)
    cfg = load_config(tmp_path / "p.yaml", env={**ENV, "JS_DIR": "js"})
    assert cfg.spec.processors[0].code.startswith("// ${MYSQL_DSN} ${UNSET_THING}\n")
    inline = MINIMAL + "  processors:\n    - type: javascript\n      id: p\n      inline: |\n        // ${UNSET}\n        " + JS
    assert "// ${UNSET}\n" in load(inline).spec.processors[0].code


# --------------------------------------------------------------------------- messages

CASES = [
    # (old, new, path, expected fragment)
    ("max_events: 100", "max_events: lots", "spec.batch.max_events",
     "spec.batch.max_events: expected an integer, found 'lots'"),
    ("max_events: 100", "max_event: 100", "spec.batch.max_event",
     "spec.batch.max_event: unknown key; did you mean max_events?"),
    ("    - type: redis", "    - type: kafka", "spec.sinks[0].type",
     "spec.sinks[0].type: 'kafka' is a DeltaForge sink this engine does not implement; supported: redis"),
    ("type: mysql", "type: postgres", "spec.source.type",
     "'postgres' is a DeltaForge source this engine does not implement; supported: mysql"),
    ("type: javascript", "type: flatten", "spec.processors[0].type",
     "'flatten' is a DeltaForge processor this engine does not implement; supported: javascript"),
    ("type: mysql", "type: mysq", "spec.source.type", "did you mean mysql?"),
    ("type: mysql", "type: mariadb", "spec.source.type", "MariaDB uses type: mysql"),
    ("type: native", "type: xml", "spec.sinks[0].config.envelope.type",
     "unknown value 'xml'"),
    ("type: native", "type: debezum", "spec.sinks[0].config.envelope.type", "did you mean debezium?"),
    ("encoding: json", "encoding: avro", "spec.sinks[0].config.encoding", "DeltaForge encoding"),
    ("encoding: json", "encoding: {type: avro, schema_registry_url: 'http://x'}",
     "spec.sinks[0].config.encoding.type", "DeltaForge encoding"),
    ("encoding: json", "encoding: msgpack", "spec.sinks[0].config.encoding", "use one of: json"),
    ("required: true", "required: maybe", "spec.sinks[0].config.required",
     "expected true or false, found 'maybe'"),
    ("required: true", "required: true\n        delivery: at_most_once",
     "spec.sinks[0].config.delivery", "use one of: exactly_once, at_least_once"),
    ("required: true", "required: true\n        max_len: 0", "spec.sinks[0].config.max_len",
     "must be at least 1, found 0"),
    ("required: true", "required: true\n        send_timeout_secs: 5",
     "spec.sinks[0].config.send_timeout_secs", "a DeltaForge setting this engine does not implement"),
    ("required: true", "required: true\n        checkpoint_key: 'ck:${source.table}'",
     "spec.sinks[0].config.checkpoint_key", "fixed, non-empty key"),
    ("          type: native", "          type: cloudevents\n          type_prefix: com.acme",
     "spec.sinks[0].config.envelope.type_prefix", "does not implement"),
    ("mem_mb: 128", "mem_mb: 128\n        cpu_ms: 5", "spec.processors[0].limits.cpu_ms",
     "DeltaForge setting"),
    ("mem_mb: 128", "mem_mb: 8", "spec.processors[0].limits.mem_mb", "must be at least 16, found 8"),
    ("timeout_ms: 500", "timeout_ms: 0", "spec.processors[0].limits.timeout_ms", "must be at least 1"),
    ("max_events: 100", "max_events: 0", "spec.batch.max_events", "must be at least 1, found 0"),
    ("max_ms: 100", "max_ms: -1", "spec.batch.max_ms", "must be at least 0"),
    ("max_ms: 100", "max_ms: 100\n    max_bytes: 100", "spec.batch.max_bytes", "must be at least 1024"),
    ("max_ms: 100", "max_ms: 100\n    max_inflight: 2", "spec.batch.max_inflight", "DeltaForge setting"),
    ("max_ms: 100", "max_ms: 1.5", "spec.batch.max_ms", "expected an integer, found 1.5"),
    ("mode: required", "mode: quorum", "spec.commit_policy.quorum", "missing required key"),
    ("mode: required", "mode: quorum\n    quorum: 2", "spec.commit_policy.quorum",
     "must be between 1 and the number of sinks (1), found 2"),
    ("mode: required", "mode: all\n    quorum: 1", "spec.commit_policy.quorum", "only applies to mode: quorum"),
    ("mode: required", "mode: majority", "spec.commit_policy.mode", "use one of: required, all, quorum"),
    ("required: true", "required: false", "spec.commit_policy.mode", "no sink has required: true"),
    ("apiVersion: deltaforge/v1", "apiVersion: deltaforge/v2", "apiVersion", "expected deltaforge/v1"),
    ("kind: Pipeline", "kind: Job", "kind", "expected Pipeline, found 'Job'"),
    ("name: cache-invalidation", "name: cache invalidation", "metadata.name", "not a safe identifier"),
    ("tenant: acme", "tenant: 5", "metadata.tenant", 'quote it: tenant: "5"'),
    ("tenant: acme", "tenant: 'a|b'", "metadata.tenant", "without '|'"),
    ("tenant: acme", "tenant: acme\n  labels: {team: x}", "metadata.labels", "DeltaForge setting"),
    ("  batch:", "  schema_sensing: {enabled: true}\n  batch:", "spec.schema_sensing", "DeltaForge setting"),
    ("  batch:", "  sinkz: []\n  batch:", "spec.sinkz", "did you mean sinks?"),
    ("      id: app-mysql", "      id: app-mysql\n      snapshot: {mode: initial}",
     "spec.source.config.snapshot", "no initial snapshot"),
    ("      id: app-mysql", "      id: app-mysql\n      start: yesterday", "spec.source.config.start",
     "cannot read start position 'yesterday'"),
    ("      id: app-mysql", "      id: app-mysql\n      start: mysql-bin.000001:2",
     "spec.source.config.start", "binlog positions start at 4"),
    ("      id: app-mysql", "      id: app-mysql\n      server_id: 0", "spec.source.config.server_id",
     "between 1 and 4294967295"),
    ("        - app.users\n", "", "spec.source.config.tables[0]", None),  # still valid: 3 tables left
    ("        - app.users\n", "        - users\n", "spec.source.config.tables[0]", "has no database"),
    ("        - app.users\n", "        - app.us*rs\n", "spec.source.config.tables[0]", "only stands for a whole table"),
    ("      dsn: ${MYSQL_DSN}", "      dsn: postgres://u:s3cretPW@h/db", "spec.source.config.dsn",
     "expected a mysql:// DSN, found 'postgres://u:***@h/db'"),
    ("        uri: ${REDIS_URI}", "        uri: http://u:s3cretPW@h", "spec.sinks[0].config.uri",
     "expected a redis:// or rediss:// URI"),
    ("        uri: ${REDIS_URI}\n", "", "spec.sinks[0].config.uri", "missing required key"),
    ("stream: cache:invalidations", "stream: 'cdc:${source.nope}'", "spec.sinks[0].config.stream",
     "unknown field"),
    ("      id: generate-cache-keys", "      id: generate cache keys", "spec.processors[0].id",
     "not a safe identifier"),
    ("      inline: |", "      file: x.js\n      inline: |", "spec.processors[0]",
     "needs exactly one of inline or file, found both"),
    ("function processBatch(events)", "function process(events)", "spec.processors[0].inline",
     "does not define processBatch"),
    ("  processors:\n", "  processors:\n    - type: javascript\n      id: generate-cache-keys\n"
     "      inline: 'function processBatch(e) { return e; }'\n", "spec.processors[1].id",
     "duplicate processor id 'generate-cache-keys'"),
    ("max_ms: 100", "max_ms: 100\n    max_ms: 5", "spec.batch.max_ms", "duplicate key (lines 120 and 121)"),
    ("  sinks:\n", "  sinks: {}\n  sinkss:\n", "spec.sinkss", "did you mean sinks?"),
]


@pytest.mark.parametrize(("old", "new", "path", "fragment"), CASES,
                         ids=[f"{c[2]}:{c[3]}"[:70] for c in CASES])
def test_validation_messages(old: str, new: str, path: str, fragment: str | None) -> None:
    text = edit(old, new)
    if fragment is None:
        assert load(text).spec.source.config.tables == ["app.products", "app.orders", "app.inventory"]
        return
    err = error(text)
    assert err.path == path
    assert fragment in str(err)
    assert str(err).startswith(f"{path}: ")
    assert "(fix: " in str(err)  # every message carries the fix


def test_messages_carry_the_line_number() -> None:
    text = edit("max_events: 100", "max_events: lots")
    err = error(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "max_events: lots" in ln)
    assert f"(line {line})" in str(err)


def test_missing_top_level_sections() -> None:
    for key in ("apiVersion", "kind", "metadata", "spec"):
        data = yaml.safe_load(MINIMAL)
        del data[key]
        err = error(yaml.safe_dump(data))
        assert err.path == key
        assert "missing required key" in str(err)


def test_missing_sink_type_and_empty_sinks() -> None:
    err = error(edit("    - type: redis\n      config:", "    - config:", MINIMAL))
    assert err.path == "spec.sinks[0].type"
    assert "add type: redis" in str(err)
    no_sinks = MINIMAL[: MINIMAL.index("  sinks:")] + "  sinks: []\n"
    assert error(no_sinks).path == "spec.sinks"


def test_wrong_shapes() -> None:
    assert "expected a mapping" in str(error("- just\n- a list\n"))
    assert "empty" in str(error(""))
    err = error(edit("tables: [app.users]", "tables: app.users", MINIMAL))
    assert (err.path, "expected a list, found 'app.users'" in str(err)) == ("spec.source.config.tables", True)
    err = error(edit("tables: [app.users]", "tables: []", MINIMAL))
    assert (err.path, "no tables listed" in str(err)) == ("spec.source.config.tables", True)
    err = error(SEED[: SEED.index("  batch:")] + "  batch: 5\n")
    assert err.path == "spec.batch"
    assert "expected a mapping, found 5" in str(err)
    assert "YAML syntax error at line" in str(error("a: [1, 2\n"))
    assert "YAML syntax error" in str(error("a: 1\n---\nb: 2\n"))


def test_envelope_shorthand_and_structured_json_encoding() -> None:
    text = edit("stream: s", "stream: s\n        envelope: debezium\n        encoding: {type: json}", MINIMAL)
    c = load(text).spec.sinks[0].config
    assert (c.envelope.type, c.encoding) == ("debezium", "json")


def test_unique_sink_ids_streams_and_checkpoint_keys() -> None:
    second = ("    - type: redis\n      config:\n        id: {id}\n        uri: ${{REDIS_URI}}\n"
              "        stream: {stream}\n")
    err = error(MINIMAL + second.format(id="out", stream="t"))
    assert (err.path, "duplicate sink id 'out'" in str(err)) == ("spec.sinks[1].config.id", True)
    err = error(MINIMAL + second.format(id="out2", stream="s"))
    assert (err.path, "already writes stream 's'" in str(err)) == ("spec.sinks[1].config.stream", True)
    both = edit("stream: s", "stream: s\n        checkpoint_key: ck", MINIMAL)
    err = error(both + second.format(id="out2", stream="t") + "        checkpoint_key: ck\n")
    assert err.path == "spec.sinks[1].config.checkpoint_key"
    ok = load(MINIMAL + second.format(id="out2", stream="t") + "  commit_policy: {mode: quorum, quorum: 2}\n")
    assert [s.config.id for s in ok.spec.sinks] == ["out", "out2"]
    assert ok.spec.commit_policy == CommitPolicy("quorum", 2)


@pytest.mark.parametrize("start", ["latest", "earliest", "mysql-bin.000003:4", "0-1-42", "0-1-42,1-2-7",
                                   "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-23",
                                   "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7-9,"
                                   "4e11fa47-71ca-11e1-9e33-c80aa9429562:1"])
def test_start_positions_accepted(start: str) -> None:
    text = edit("tables: [app.users]", f"tables: [app.users]\n      start: '{start}'\n      server_id: 4001",
                MINIMAL)
    cfg = load(text)
    assert (cfg.spec.source.config.start, cfg.spec.source.config.server_id) == (start, 4001)


# --------------------------------------------------------------------------- processors from files


def _with_file(tmp_path: Path, file: str) -> Path:
    cfg = tmp_path / "conf" / "p.yaml"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_text(MINIMAL + f"  processors:\n    - type: javascript\n      id: p\n      file: {file}\n")
    return cfg


def test_processor_file_relative_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_file(tmp_path, "js/keys.js")
    (tmp_path / "conf" / "js").mkdir()
    (tmp_path / "conf" / "js" / "keys.js").write_text(JS)
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    proc = load_config(Path("conf/p.yaml"), env=ENV).spec.processors[0]
    assert proc.code == JS
    assert proc.origin == str(tmp_path / "conf" / "js" / "keys.js")
    assert proc.inline is None and proc.file == "js/keys.js"


def test_processor_file_problems(tmp_path: Path) -> None:
    err = error(_with_file(tmp_path, "missing.js").read_text(), base_dir=tmp_path / "conf")
    assert err.path == "spec.processors[0].file"
    assert "does not exist" in str(err) and "relative to the config file" in str(err)
    (tmp_path / "conf" / "dir.js").mkdir()
    assert "is a directory" in str(error(_with_file(tmp_path, "dir.js").read_text(), base_dir=tmp_path / "conf"))
    (tmp_path / "conf" / "empty.js").write_text("\n")
    assert "is empty" in str(error(_with_file(tmp_path, "empty.js").read_text(), base_dir=tmp_path / "conf"))
    (tmp_path / "conf" / "bin.js").write_bytes(b"\xff\xfe")
    assert "not UTF-8" in str(error(_with_file(tmp_path, "bin.js").read_text(), base_dir=tmp_path / "conf"))


def test_neither_inline_nor_file() -> None:
    err = error(MINIMAL + "  processors:\n    - type: javascript\n      id: p\n")
    assert err.path == "spec.processors[0]"
    assert "found neither" in str(err)


# --------------------------------------------------------------------------- table patterns


@pytest.mark.parametrize("pattern", ["app.users", "app.*", "app.order%", "app.%", "`app`.`users`",
                                     "my_db.user_events", "app.t-1", "app.%users", "app.%_archive%"])
def test_table_patterns_accepted(pattern: str) -> None:
    assert validate_table_pattern(pattern, "p") is None


@pytest.mark.parametrize(("pattern", "fragment"), [
    ("users", "has no database"),
    ("", "has no database"),
    (".users", "empty database name"),
    ("app.", "empty table name"),
    ("*.users", "wildcard in the database name"),
    ("ap%.users", "wildcard in the database name"),
    ("app.user*", "'*' only stands for a whole table name"),
    ("app.u.sers", "more than one '.'"),
    ("app.my table", "contains a space"),
    ("app." + "t" * 65, "longer than 64"),
])
def test_table_patterns_rejected(pattern: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_table_pattern(pattern, "spec.source.config.tables[3]")
    assert info.value.path == "spec.source.config.tables[3]"
    assert fragment in str(info.value)
    assert "(fix: " in str(info.value)


# --------------------------------------------------------------------------- secrets and files


def test_secrets_never_leak() -> None:
    bad = [
        edit("      dsn: ${MYSQL_DSN}", "      dsn: mysql://u:s3cretPW@h:notaport/db"),
        edit("      dsn: ${MYSQL_DSN}", "      dsn: [mysql://u:s3cretPW@h/db]"),
        edit("        uri: ${REDIS_URI}", "        uri: redis://u:s3cretPW@h:6379/x"),
        edit("kind: Pipeline", "kind: mysql://u:s3cretPW@h/db"),
        edit("tenant: acme", "tenant: 'redis://u:s3cretPW@h|x'"),
    ]
    for text in bad:
        err = error(text)  # error() asserts the secret is absent
        assert "***" in str(err) or "expected a string" in str(err)
    cfg = load(SEED)
    assert SECRET not in repr(cfg)
    assert SECRET in cfg.spec.source.config.dsn  # the value itself is intact for the driver


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env=ENV)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env=ENV)
    (tmp_path / "bad.yaml").write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bad.yaml", env=ENV)


def test_derived_fields_are_not_yaml_keys() -> None:
    err = error(MINIMAL + "  processors:\n    - type: javascript\n      id: p\n      code: 'x'\n")
    assert err.path == "spec.processors[0].code"
    assert "unknown key" in str(err)
    assert re.search(r"valid keys here: .*inline", str(err))
    err = error("path: x\n" + MINIMAL)
    assert err.path == "path"
