"""Pipeline configuration: the YAML of DESIGN.md §6 as msgspec structs.

Contract
--------
``load_config(path)`` / ``load_config_text(text)`` return a fully validated
:class:`PipelineConfig` or raise :class:`~deltaforge.errors.ConfigError`. Nothing
downstream re-validates: every stage may trust the values (ranges, enums, ids
unique, processor code loaded into ``ProcessorSpec.code``).

The steps, in order, so that the first error reported is the most useful one:

1. ``yaml`` (safe loader) -> plain data. Duplicate keys are an error (plain YAML
   silently keeps the last one); every key's line number is remembered for messages.
2. A walk over the data against the struct fields: unknown keys (with a
   ``difflib`` suggestion), keys and ``type`` values that the original DeltaForge
   (vnvo/deltaforge) has but this engine does not implement, and ``${VAR}``
   expansion of string values.
3. ``msgspec.convert`` (lax: ``"500"`` converts to 500, so numbers and booleans can
   come from ``${VAR}``); its messages are rewritten into YAML-path form.
4. Semantic checks: ranges, enums, uniqueness, table patterns, DSN/URI syntax,
   processor files.

Environment expansion
---------------------
``${NAME}`` and ``${NAME:-default}`` (default used when NAME is unset *or empty*,
as in the shell) are expanded in every string value, only when NAME looks like an
environment variable (``[A-Za-z_][A-Za-z0-9_]*``). ``${source.db}`` has a dot, so it
is left for the sink's stream template. ``$${...}`` is a literal ``${...}``.
Defaults do not nest. ``$NAME`` without braces is literal.

Hazard: JavaScript source is **never** expanded — the seed's processor is full of
template literals (``${id}``, ``${keys.length}``) that must reach V8 untouched.
That covers ``inline`` and the contents of ``file``; the ``file`` path itself is
expanded.

Hazard: error messages must never carry a password: every user value shown in a
message goes through :func:`deltaforge.dsn.redact` and is shortened.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from deltaforge.dsn import parse_mysql_dsn, parse_redis_uri, redact
from deltaforge.errors import ConfigError
from deltaforge.source.grammar import parse_start_spec, parse_table_pattern

__all__ = [
    "API_VERSION",
    "KIND",
    "BatchSpec",
    "CommitPolicy",
    "EnvelopeSpec",
    "Limits",
    "Metadata",
    "MySQLSourceConfig",
    "PipelineConfig",
    "ProcessorSpec",
    "RedisSinkConfig",
    "SinkSpec",
    "SourceSpec",
    "Spec",
    "load_config",
    "load_config_text",
    "validate_table_pattern",
]

API_VERSION = "deltaforge/v1"
KIND = "Pipeline"
SOURCE_TYPES = ("mysql",)
SINK_TYPES = ("redis",)
PROCESSOR_TYPES = ("javascript",)
ENVELOPE_TYPES = ("native", "debezium", "cloudevents")
ENCODINGS = ("json",)
DELIVERY_MODES = ("exactly_once", "at_least_once")
COMMIT_MODES = ("required", "all", "quorum")
#: ``spec.processors[].on_error`` and ``spec.source.config.on_decode_error``
ON_ERROR_MODES = ("stop", "dlq")


# --------------------------------------------------------------------------- structs


def _redacted_repr(obj: msgspec.Struct, secret: str) -> str:
    """repr() with the password in ``secret`` (a DSN/URI field) replaced: configs get logged."""
    parts = []
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        parts.append(f"{name}={redact(value)!r}" if name == secret else f"{name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class Limits(msgspec.Struct):
    timeout_ms: int = 1000
    """Wall-clock budget of one ``processBatch`` call."""
    mem_mb: int = 256
    """V8 heap limit of the isolate."""


class ProcessorSpec(msgspec.Struct):
    type: str
    """``javascript``"""
    id: str
    inline: str | None = None
    file: str | None = None
    limits: Limits = msgspec.field(default_factory=Limits)
    on_error: str = "stop"
    """``stop`` (the pipeline stops) | ``dlq`` (failing events go to the sinks' dead-letter streams)"""
    code: str = ""
    """Resolved JS source (the inline text or the file's contents); never env-expanded."""
    origin: str = ""
    """``spec.processors[0].inline`` or the resolved file path, for error messages."""


class EnvelopeSpec(msgspec.Struct):
    type: str = "native"
    """``native`` | ``debezium`` | ``cloudevents``"""


class RedisSinkConfig(msgspec.Struct):
    id: str
    uri: str
    stream: str
    """Stream key, or a template over event fields: ``cdc:${source.db}.${source.table}``."""
    envelope: EnvelopeSpec = msgspec.field(default_factory=EnvelopeSpec)
    encoding: str = "json"
    required: bool = True
    max_len: int | None = None
    """Trim to about n entries, never past what a consumer group has not acknowledged (sink/trim.py)."""
    max_len_hard: int | None = None
    """Memory cap: cut to n entries even if unacknowledged (counted, logged, marked by a gap entry)."""
    delivery: str = "exactly_once"
    """``exactly_once`` | ``at_least_once``"""
    checkpoint_key: str | None = None
    """None: derived by the sink (sharing the stream's hash tag)."""
    dlq_stream: str | None = None
    """Dead-letter stream (key or template, like ``stream``); None: ``<stream>:dlq``."""

    def __repr__(self) -> str:
        return _redacted_repr(self, "uri")


class SinkSpec(msgspec.Struct):
    type: str
    """``redis``"""
    config: RedisSinkConfig


class MySQLSourceConfig(msgspec.Struct):
    id: str
    dsn: str
    tables: list[str]
    start: str = "latest"
    """``latest`` | ``earliest`` | ``<binlog file>:<pos>`` | GTID set; only without a checkpoint."""
    server_id: int | None = None
    """Replica server id of the binlog connection (None: derived by the engine)."""
    on_decode_error: str = "stop"
    """``stop`` | ``dlq`` (an undecodable rows event goes to the sinks' dead-letter streams)"""
    dsn_env: tuple[str, ...] = ()
    """The environment variables ``dsn`` was expanded from (named in MySQL login errors)."""

    def __repr__(self) -> str:
        return _redacted_repr(self, "dsn")


class SourceSpec(msgspec.Struct):
    type: str
    """``mysql`` (MariaDB too)"""
    config: MySQLSourceConfig


class BatchSpec(msgspec.Struct):
    max_events: int = 2000
    max_bytes: int = 16 * 1024 * 1024
    max_ms: int = 50
    respect_source_tx: bool = True


class CommitPolicy(msgspec.Struct):
    mode: str = "required"
    """``required`` | ``all`` | ``quorum``"""
    quorum: int | None = None


class Spec(msgspec.Struct):
    source: SourceSpec
    sinks: list[SinkSpec]
    processors: list[ProcessorSpec] = []
    batch: BatchSpec = msgspec.field(default_factory=BatchSpec)
    commit_policy: CommitPolicy = msgspec.field(default_factory=CommitPolicy)


class Metadata(msgspec.Struct):
    name: str
    tenant: str | None = None


class PipelineConfig(msgspec.Struct):
    apiVersion: str
    kind: str
    metadata: Metadata
    spec: Spec
    path: str = ""
    """The file the config came from (``<string>`` for text)."""


# Fields filled in by the loader, never read from the YAML.
_DERIVED: dict[type, frozenset[str]] = {
    PipelineConfig: frozenset({"path"}),
    ProcessorSpec: frozenset({"code", "origin"}),
    MySQLSourceConfig: frozenset({"dsn_env"}),
}

# --------------------------------------------------------------------------- DeltaForge vocabulary
# What vnvo/deltaforge accepts (crates/deltaforge-config, docs/src/configuration.md)
# and this engine does not: reported by name instead of "unknown key".

_DF_SOURCES = ("postgres", "turso")
_DF_SINKS = ("kafka", "nats", "http", "s3", "clickhouse", "elasticsearch")
_DF_PROCESSORS = ("outbox", "flatten", "filter")

_REMOVE = "remove it"
_DF_KEYS: dict[type, dict[str, str]] = {
    Metadata: {
        "labels": _REMOVE + " (this engine has no pipeline API to filter on)",
        "annotations": _REMOVE + " (this engine has no pipeline API)",
    },
    Spec: {
        "sharding": _REMOVE + " (one reader per pipeline; run one pipeline per table set)",
        "connection_policy": _REMOVE + " (one replication connection per pipeline)",
        "sink_batch_deadline_secs": _REMOVE + " (sinks retry with backoff; required sinks gate the checkpoint)",
        "schema_sensing": _REMOVE,
        "journal": _REMOVE + " (for dead letters set on_error: dlq on a processor and/or "
                   "on_decode_error: dlq under spec.source.config)",
        "metrics": _REMOVE + " (metrics are always per pipeline)",
        "sources": "write one source under spec.source (this engine reads one source per pipeline)",
    },
    MySQLSourceConfig: {
        "outbox": _REMOVE + " (no outbox capture)",
        "snapshot": _REMOVE + " (no initial snapshot: capture starts at spec.source.config.start)",
        "on_schema_drift": _REMOVE + " (schema changes are followed from the binlog)",
        "start_position": "use start: latest | earliest | <file>:<pos> | <GTID set>",
    },
    ProcessorSpec: {
        "config": "put id, inline/file and limits directly under the processor",
    },
    Limits: {
        "cpu_ms": _REMOVE + "; use timeout_ms (wall-clock budget per processBatch call)",
    },
    RedisSinkConfig: {
        "key": _REMOVE + " (entries carry event_id and idempotency_key fields)",
        "send_timeout_secs": _REMOVE + " (the sink retries with backoff)",
        "batch_timeout_secs": _REMOVE + " (the sink retries with backoff)",
        "connect_timeout_secs": _REMOVE + " (the sink retries with backoff)",
        "filter": _REMOVE + "; drop events in a javascript processor instead",
        "exactly_once": "use delivery: exactly_once (the default) or delivery: at_least_once",
    },
    EnvelopeSpec: {
        "type_prefix": _REMOVE + " (the CloudEvents type is io.deltaforge.change.<insert|update|delete|snapshot>)",
    },
    BatchSpec: {
        "max_inflight": _REMOVE + " (batches already overlap across the worker pool; the commit order is kept)",
    },
}

# --------------------------------------------------------------------------- context and messages


class _Ctx:
    """Per-load state: the environment, key line numbers, and originals of expanded strings."""

    def __init__(self, env: Mapping[str, str], lines: dict[str, int]) -> None:
        self.env = env
        self.lines = lines
        self.expanded: dict[str, str] = {}

    def at(self, path: str) -> str:
        """`` (line N)`` for ``path`` or its nearest ancestor that has a line."""
        p = path
        while p:
            line = self.lines.get(p)
            if line is not None:
                return f" (line {line})"
            p = _parent(p)
        return ""

    def found(self, path: str, value: Any) -> str:
        text = _show(value)
        original = self.expanded.get(path)
        if original is not None:
            text += f" (from {_show(original)})"
        return text

    def error(self, path: str, detail: str, hint: str | None = None) -> ConfigError:
        return ConfigError(path, detail + self.at(path), hint)


_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def _parent(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path.rpartition(".")[0]


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any, limit: int = 60) -> str:
    """A user value for a message: secrets redacted, long text shortened."""
    if isinstance(value, str):
        text = redact(value)
        if len(text) > limit:
            text = text[: limit - 3] + "..."
        return repr(text)
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _lookup(data: Any, path: str) -> Any:
    node = data
    for m in _TOKEN.finditer(path):
        try:
            node = node[m.group(1)] if m.group(1) is not None else node[int(m.group(2))]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _choices(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values)


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader; duplicate keys are found on the node graph before construction."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _index(node: yaml.Node, path: str, lines: dict[str, int], depth: int = 0) -> None:
    """Record the line of every key/item and reject duplicate keys."""
    if depth > 64:
        raise ConfigError(path, "the YAML nests deeper than 64 levels (recursive anchor?)",
                          "remove the recursive alias")
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG or not isinstance(knode, yaml.ScalarNode):
                continue
            key = knode.value
            line = knode.start_mark.line + 1
            kpath = _join(path, key)
            if key in seen:
                raise ConfigError(kpath, f"duplicate key (lines {seen[key]} and {line})",
                                  "keep one of them; YAML would silently use the last")
            seen[key] = line
            lines[kpath] = line
            _index(vnode, kpath, lines, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            ipath = f"{path}[{i}]"
            lines[ipath] = item.start_mark.line + 1
            _index(item, ipath, lines, depth + 1)


def _parse_yaml(text: str, where: str) -> tuple[Any, dict[str, int]]:
    lines: dict[str, int] = {}
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _index(node, "", lines)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        pos = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError("", f"{where}: YAML syntax error{pos}: {problem}",
                          "fix the indentation or quoting there (tabs are not allowed)") from None
    except yaml.YAMLError as e:
        raise ConfigError("", f"{where}: cannot parse YAML: {e}", "fix the YAML syntax") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- environment


_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(text: str, path: str, ctx: _Ctx) -> str:
    if "${" not in text:  # fast path: most values have no reference
        return text

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:  # "$${" escape
            return "${"
        default = m.group(2)
        value = ctx.env.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            hint = (f"export {name}=... before starting deltaforge, or write ${{{name}:-default}} "
                    f"in the YAML")
            if not name.isupper():
                hint += f"; for a literal ${{{name}}} (e.g. an event field in a template) write $${{{name}}}"
            raise ctx.error(path, f"environment variable {name} is not set", hint)
        return value

    out = _ENV_REF.sub(sub, text)
    if out != text:
        ctx.expanded[path] = text
    return out


def _expand_any(value: Any, path: str, ctx: _Ctx) -> Any:
    if isinstance(value, str):
        return _expand(value, path, ctx)
    if isinstance(value, list):
        return [_expand_any(v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand_any(v, _join(path, k), ctx) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- key walk

# struct -> {yaml key: child struct | ("list", child struct) | None for leaves}
_Child = type | tuple[str, type] | None
_SCHEMA: dict[type, dict[str, _Child]] = {}


def _schema(cls: type) -> dict[str, _Child]:
    cached = _SCHEMA.get(cls)
    if cached is not None:
        return cached
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    out: dict[str, _Child] = {}
    skip = _DERIVED.get(cls, frozenset())
    for f in info.fields:
        if f.name in skip:
            continue
        t = f.type
        if isinstance(t, msgspec.inspect.UnionType):
            members = [m for m in t.types if not isinstance(m, msgspec.inspect.NoneType)]
            t = members[0] if len(members) == 1 else t
        child: _Child = None
        if isinstance(t, msgspec.inspect.StructType):
            child = t.cls
        elif isinstance(t, msgspec.inspect.ListType) and isinstance(t.item_type, msgspec.inspect.StructType):
            child = ("list", t.item_type.cls)
        out[f.encode_name] = child
    _SCHEMA[cls] = out
    return out


_TYPED: dict[type, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    # struct: (what, supported, DeltaForge-only, example)
    SourceSpec: ("source", SOURCE_TYPES, _DF_SOURCES, "mysql"),
    SinkSpec: ("sink", SINK_TYPES, _DF_SINKS, "redis"),
    ProcessorSpec: ("processor", PROCESSOR_TYPES, _DF_PROCESSORS, "javascript"),
}


def _check_type_key(node: dict[str, Any], cls: type, path: str, ctx: _Ctx) -> None:
    """``type`` selects the rest of the keys: check it before anything under it."""
    what, supported, df_only, example = _TYPED[cls]
    tpath = _join(path, "type")
    if "type" not in node:
        raise ctx.error(tpath, "missing required key", f"add type: {example}")
    value = node["type"]
    if isinstance(value, str):
        value = node["type"] = _expand(value, tpath, ctx)
    if value in supported:
        return
    if value in df_only:
        raise ctx.error(tpath, f"{value!r} is a DeltaForge {what} this engine does not implement; "
                        f"supported: {_choices(supported)}",
                        f"use type: {example}" if len(supported) == 1 else None)
    if not isinstance(value, str):
        raise ctx.error(tpath, f"expected a string, found {ctx.found(tpath, value)}",
                        f"write type: {example}")
    extra = " (MariaDB uses type: mysql)" if cls is SourceSpec and value.lower() == "mariadb" else ""
    close = difflib.get_close_matches(value, [*supported, *df_only], n=1, cutoff=0.6)
    detail = f"unknown {what} type {ctx.found(tpath, value)}"
    if close:
        detail += f"; did you mean {close[0]}?"
    raise ctx.error(tpath, detail, f"supported: {_choices(supported)}{extra}")


def _unknown_key(cls: type, key: object, path: str, allowed: dict[str, _Child], ctx: _Ctx) -> ConfigError:
    kpath = _join(path, key)
    df_hint = _DF_KEYS.get(cls, {}).get(str(key))
    if df_hint is not None:
        return ctx.error(kpath, "a DeltaForge setting this engine does not implement", df_hint)
    valid = list(allowed)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    detail = f"unknown key; did you mean {close[0]}?" if close else "unknown key"
    return ctx.error(kpath, detail, f"valid keys here: {_choices(valid)}")


# Optional sections where an empty YAML value (null) means "the default".
_NULL_IS_DEFAULT = frozenset({
    (Spec, "processors"), (Spec, "batch"), (Spec, "commit_policy"),
    (ProcessorSpec, "limits"), (RedisSinkConfig, "envelope"),
})


def _walk(node: Any, cls: type, path: str, ctx: _Ctx) -> Any:
    """Check keys against ``cls``, expand ``${VAR}`` in string values, normalise shorthands.

    Returns the node to hand to msgspec. Values of the wrong shape are passed
    through unchanged: msgspec reports them with the expected type.
    """
    if cls is EnvelopeSpec and isinstance(node, str):
        node = {"type": node}  # DeltaForge shorthand: ``envelope: debezium``
    if not isinstance(node, dict):
        return node
    if cls in _TYPED:
        _check_type_key(node, cls, path, ctx)
    allowed = _schema(cls)
    for key in node:
        if key not in allowed:
            raise _unknown_key(cls, key, path, allowed, ctx)
    out: dict[str, Any] = {}
    for key, value in node.items():
        kpath = _join(path, key)
        child = allowed[key]
        if value is None and (cls, key) in _NULL_IS_DEFAULT:
            continue  # ``processors:`` with every item commented out
        if cls is ProcessorSpec and key == "inline":
            out[key] = value  # JavaScript source: never expanded
        elif isinstance(child, type):
            out[key] = _walk(value, child, kpath, ctx)
        elif isinstance(child, tuple) and isinstance(value, list):
            out[key] = [_walk(v, child[1], f"{kpath}[{i}]", ctx) for i, v in enumerate(value)]
        elif cls is RedisSinkConfig and key == "encoding" and isinstance(value, dict):
            out[key] = _encoding_map(value, kpath, ctx)
        else:
            out[key] = _expand_any(value, kpath, ctx)
    return out


def _encoding_map(value: dict[str, Any], path: str, ctx: _Ctx) -> Any:
    """DeltaForge's structured ``encoding: {type: avro, schema_registry_url: ...}``."""
    kind = value.get("type")
    if kind == "avro":
        raise ctx.error(_join(path, "type"), "'avro' is a DeltaForge encoding this engine does not implement; "
                        f"supported: {_choices(ENCODINGS)}", "write encoding: json")
    if kind == "json" and len(value) == 1:
        return "json"
    return value  # msgspec: expected a string


# --------------------------------------------------------------------------- msgspec errors

_MSGSPEC_ERR = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.DOTALL)
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_WORDS = {"int": "an integer", "str": "a string", "bool": "true or false", "array": "a list",
          "object": "a mapping", "null": "null", "float": "a number"}

_EXAMPLES: dict[str, str] = {
    "apiVersion": API_VERSION, "kind": KIND, "metadata": "{name: my-pipeline}", "name": "my-pipeline",
    "tenant": "acme", "spec": "{source: ..., sinks: [...]}", "source": "{type: mysql, config: {...}}",
    "sinks": "[{type: redis, config: {...}}]", "config": "{id: ..., ...}", "id": "my-id",
    "dsn": "${MYSQL_DSN}", "tables": "[app.users]", "start": "latest", "server_id": "4001",
    "uri": "${REDIS_URI}", "stream": "cache:invalidations", "envelope": "{type: native}",
    "encoding": "json", "required": "true", "max_len": "1000000", "delivery": "exactly_once",
    "checkpoint_key": "df:checkpoint:my-pipeline", "processors": "[{type: javascript, ...}]",
    "inline": "|", "file": "processors/keys.js", "limits": "{timeout_ms: 1000, mem_mb: 256}",
    "timeout_ms": "1000", "mem_mb": "256", "batch": "{max_events: 2000}", "max_events": "2000",
    "max_bytes": "16777216", "max_ms": "50", "respect_source_tx": "true",
    "commit_policy": "{mode: required}", "mode": "required", "quorum": "1", "type": "...",
    "max_len_hard": "5000000",
}


def _words(want: str) -> str:
    return " or ".join(_WORDS.get(w.strip(), w.strip()) for w in want.split("|"))


def _translate(err: msgspec.ValidationError, data: Any, ctx: _Ctx) -> ConfigError:
    m = _MSGSPEC_ERR.match(str(err))
    assert m is not None  # the pattern matches any text
    msg = m.group("msg")
    path = (m.group("at") or "").lstrip(".")
    key = path.rpartition(".")[2].partition("[")[0] if path else ""
    example = _EXAMPLES.get(key)
    if mm := _MISSING.match(msg):
        field = mm.group("field")
        fpath = _join(path, field)
        ex = _EXAMPLES.get(field, "...")
        return ctx.error(fpath, "missing required key", f"add {field}: {ex}")
    if mm := _EXPECTED.match(msg):
        want = _words(mm.group("want"))
        value = _lookup(data, path) if path else data
        if not path:
            return ctx.error("", f"expected a mapping with apiVersion, kind, metadata and spec at the top, "
                             f"found {_show(value)}", "start from conf/pipeline.yaml")
        hint = f"write {key}: {example}" if example and key else f"write {want}"
        if "str" in mm.group("want").split(" | ") and isinstance(value, int | float | bool):
            hint = f"quote it: {key}: \"{value}\""
        return ctx.error(path, f"expected {want}, found {ctx.found(path, value)}", hint)
    return ctx.error(path, msg[:1].lower() + msg[1:], "see docs/configuration.md")


# --------------------------------------------------------------------------- semantic checks

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def validate_table_pattern(pattern: str, path: str) -> None:
    """Raise :class:`ConfigError` unless ``pattern`` is a table pattern (grammar:
    :mod:`deltaforge.source.grammar`, the reader's own)."""
    parse_table_pattern(pattern, path)


@contextlib.contextmanager
def _located(ctx: _Ctx, path: str) -> Iterator[None]:
    """Add the line number to a ConfigError raised by a shared parser (DSN, URI, template)."""
    try:
        yield
    except ConfigError as e:
        where = e.path or path
        detail = e.detail.removeprefix(f"{e.path}: ") if e.path else e.detail
        raise ctx.error(where, detail, e.hint) from None


def _check_name(value: str, path: str, ctx: _Ctx, what: str) -> None:
    if not _SAFE_NAME.match(value):
        raise ctx.error(path, f"{what} {ctx.found(path, value)} is not a safe identifier",
                        "use letters, digits, '_', '.' and '-' only, e.g. cache-invalidation")


def _check_choice(value: str, path: str, ctx: _Ctx, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, list(allowed), n=1, cutoff=0.6)
        guess = f"; did you mean {close[0]}?" if close else ""
        raise ctx.error(path, f"unknown value {ctx.found(path, value)}{guess}",
                        f"use one of: {_choices(allowed)}")


def _check_min(value: int, low: int, path: str, ctx: _Ctx, hint: str) -> None:
    if value < low:
        raise ctx.error(path, f"must be at least {low}, found {ctx.found(path, value)}", hint)


def _check_start(start: str, path: str, ctx: _Ctx) -> None:
    with _located(ctx, path):
        parse_start_spec(start, path)


def _check_source(src: SourceSpec, ctx: _Ctx) -> None:
    p = "spec.source.config"
    c = src.config
    _check_name(c.id, f"{p}.id", ctx, "source id")
    with _located(ctx, f"{p}.dsn"):
        parse_mysql_dsn(c.dsn, f"{p}.dsn")
    c.dsn_env = tuple(m.group(1) for m in _ENV_REF.finditer(ctx.expanded.get(f"{p}.dsn", "")) if m.group(1))
    if not c.tables:
        raise ctx.error(f"{p}.tables", "no tables listed", "list at least one, e.g. tables: [app.users]")
    for i, pattern in enumerate(c.tables):
        with _located(ctx, f"{p}.tables[{i}]"):
            validate_table_pattern(pattern, f"{p}.tables[{i}]")
    _check_start(c.start, f"{p}.start", ctx)
    _check_choice(c.on_decode_error, f"{p}.on_decode_error", ctx, ON_ERROR_MODES)
    if c.server_id is not None and not 1 <= c.server_id <= 0xFFFFFFFF:
        raise ctx.error(f"{p}.server_id", f"must be between 1 and 4294967295, found {c.server_id}",
                        "pick a server id no other server or replica uses, or remove it to derive one")


_PROCESS_BATCH = re.compile(r"\bprocessBatch\b")


def _read_js(file: str, base_dir: Path, path: str, ctx: _Ctx) -> tuple[str, str]:
    resolved = Path(os.path.expanduser(file))
    if not resolved.is_absolute():
        resolved = base_dir / resolved
    origin = os.path.abspath(resolved)
    try:
        code = resolved.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ctx.error(path, f"processor file {origin} does not exist",
                        "the path is relative to the config file's directory") from None
    except IsADirectoryError:
        raise ctx.error(path, f"processor file {origin} is a directory", "name the .js file") from None
    except PermissionError:
        raise ctx.error(path, f"processor file {origin} is not readable",
                        "give the deltaforge user read permission") from None
    except UnicodeDecodeError as e:
        raise ctx.error(path, f"processor file {origin} is not UTF-8 (byte {e.start})",
                        "save the file as UTF-8") from None
    except OSError as e:
        raise ctx.error(path, f"cannot read processor file {origin}: {e.strerror}",
                        "check the path and its permissions") from None
    return code, origin


def _check_processors(procs: list[ProcessorSpec], base_dir: Path, ctx: _Ctx) -> None:
    seen: dict[str, int] = {}
    for i, proc in enumerate(procs):
        p = f"spec.processors[{i}]"
        _check_name(proc.id, f"{p}.id", ctx, "processor id")
        if proc.id in seen:
            raise ctx.error(f"{p}.id", f"duplicate processor id {proc.id!r} (also spec.processors[{seen[proc.id]}])",
                            "give every processor its own id")
        seen[proc.id] = i
        if (proc.inline is None) == (proc.file is None):
            found = "both" if proc.inline is not None else "neither"
            raise ctx.error(p, f"needs exactly one of inline or file, found {found}",
                            "write the code under inline: | or point file: at a .js file")
        if proc.inline is not None:
            proc.code, proc.origin = proc.inline, f"{p}.inline"
            where = f"{p}.inline"
        else:
            assert proc.file is not None
            proc.code, proc.origin = _read_js(proc.file, base_dir, f"{p}.file", ctx)
            where = f"{p}.file"
        if not proc.code.strip():
            raise ctx.error(where, "the JavaScript source is empty",
                            "define function processBatch(events) { return events; }")
        if not _PROCESS_BATCH.search(proc.code):
            raise ctx.error(where, f"the JavaScript in {proc.origin} does not define processBatch",
                            "define function processBatch(events) { ... return events; }")
        _check_min(proc.limits.timeout_ms, 1, f"{p}.limits.timeout_ms", ctx,
                   "set a per-call budget in milliseconds, e.g. timeout_ms: 1000")
        _check_min(proc.limits.mem_mb, 16, f"{p}.limits.mem_mb", ctx,
                   "V8 needs at least 16 MB of heap, e.g. mem_mb: 256")
        _check_choice(proc.on_error, f"{p}.on_error", ctx, ON_ERROR_MODES)


def _check_sinks(sinks: list[SinkSpec], ctx: _Ctx, pipeline: str) -> None:
    if not sinks:
        raise ctx.error("spec.sinks", "no sinks listed", "add one: - type: redis, config: {id, uri, stream}")
    seen_ids: dict[str, int] = {}
    seen_streams: dict[tuple[str, int, int, str], int] = {}
    seen_ckpt: dict[str, int] = {}
    from deltaforge.sink.envelope import StreamTemplate  # lazy: config must import fast

    for i, sink in enumerate(sinks):
        p = f"spec.sinks[{i}].config"
        c = sink.config
        _check_name(c.id, f"{p}.id", ctx, "sink id")
        if c.id in seen_ids:
            raise ctx.error(f"{p}.id", f"duplicate sink id {c.id!r} (also spec.sinks[{seen_ids[c.id]}])",
                            "give every sink its own id: it names the sink's checkpoint")
        seen_ids[c.id] = i
        with _located(ctx, f"{p}.uri"):
            uri = parse_redis_uri(c.uri, f"{p}.uri")
        if uri.topology == "cluster":
            from deltaforge.sink.envelope import cluster_layout
            from deltaforge.sink.slot_split import split_config_errors, spreads_over_slots

            with _located(ctx, f"{p}.stream"):
                if spreads_over_slots(c.uri, c.stream):
                    split_config_errors(c, p)
                else:
                    cluster_layout(c.stream, c.dlq_stream, c.checkpoint_key, pipeline, c.id, p)
        with _located(ctx, f"{p}.stream"):
            StreamTemplate(c.stream, f"{p}.stream")
        if c.dlq_stream is not None:
            with _located(ctx, f"{p}.dlq_stream"):
                StreamTemplate(c.dlq_stream, f"{p}.dlq_stream")
            if c.dlq_stream == c.stream:
                raise ctx.error(f"{p}.dlq_stream", f"is the sink's own stream {c.stream!r}",
                                "dead letters need a stream of their own, e.g. remove dlq_stream for "
                                f"{c.stream}:dlq")
        where = (uri.host, uri.port, uri.db, c.stream)
        if where in seen_streams:
            raise ctx.error(f"{p}.stream", f"spec.sinks[{seen_streams[where]}] already writes stream "
                            f"{c.stream!r} on the same Redis", "give each sink its own stream or database")
        seen_streams[where] = i
        _check_choice(c.envelope.type, f"{p}.envelope.type", ctx, ENVELOPE_TYPES)
        if c.encoding == "avro":
            raise ctx.error(f"{p}.encoding", "'avro' is a DeltaForge encoding this engine does not implement; "
                            f"supported: {_choices(ENCODINGS)}", "write encoding: json")
        _check_choice(c.encoding, f"{p}.encoding", ctx, ENCODINGS)
        _check_choice(c.delivery, f"{p}.delivery", ctx, DELIVERY_MODES)
        if c.max_len is not None:
            _check_min(c.max_len, 1, f"{p}.max_len", ctx, "trim to a positive length, or remove max_len")
        if c.max_len_hard is not None:
            _check_min(c.max_len_hard, 1, f"{p}.max_len_hard", ctx,
                       "cap at a positive length, or remove max_len_hard")
            if c.max_len is not None and c.max_len_hard <= c.max_len:
                raise ctx.error(f"{p}.max_len_hard", f"must be greater than max_len ({c.max_len}), found "
                                f"{ctx.found(f'{p}.max_len_hard', c.max_len_hard)}",
                                f"raise max_len_hard well above max_len (e.g. {c.max_len * 10}): it only "
                                "cuts unacknowledged entries when consumers fall that far behind")
        if c.checkpoint_key is not None:
            if not c.checkpoint_key or "${" in c.checkpoint_key:
                raise ctx.error(f"{p}.checkpoint_key", f"must be a fixed, non-empty key, found "
                                f"{ctx.found(f'{p}.checkpoint_key', c.checkpoint_key)}",
                                "remove it to derive one from the pipeline and sink ids")
            if c.checkpoint_key in seen_ckpt:
                raise ctx.error(f"{p}.checkpoint_key", f"spec.sinks[{seen_ckpt[c.checkpoint_key]}] uses "
                                "the same checkpoint key", "every sink needs its own checkpoint key")
            seen_ckpt[c.checkpoint_key] = i


def _check_policy(spec: Spec, ctx: _Ctx) -> None:
    cp = spec.commit_policy
    p = "spec.commit_policy"
    _check_choice(cp.mode, f"{p}.mode", ctx, COMMIT_MODES)
    n = len(spec.sinks)
    if cp.mode == "quorum":
        if cp.quorum is None:
            raise ctx.error(f"{p}.quorum", "missing required key for mode: quorum",
                            f"add quorum: <number of sinks that must acknowledge, 1..{n}>")
        if not 1 <= cp.quorum <= n:
            raise ctx.error(f"{p}.quorum", f"must be between 1 and the number of sinks ({n}), "
                            f"found {ctx.found(f'{p}.quorum', cp.quorum)}", f"set quorum: 1..{n}")
    elif cp.quorum is not None:
        raise ctx.error(f"{p}.quorum", f"only applies to mode: quorum (mode is {cp.mode})",
                        "remove quorum, or set mode: quorum")
    if cp.mode == "required" and not any(s.config.required for s in spec.sinks):
        raise ctx.error(f"{p}.mode", "mode required but no sink has required: true, so nothing would "
                        "gate the checkpoint", "mark at least one sink required: true, or use mode: all")


def _check_batch(b: BatchSpec, ctx: _Ctx) -> None:
    p = "spec.batch"
    _check_min(b.max_events, 1, f"{p}.max_events", ctx, "e.g. max_events: 2000")
    _check_min(b.max_bytes, 1024, f"{p}.max_bytes", ctx, "e.g. max_bytes: 16777216 (16 MiB)")
    _check_min(b.max_ms, 0, f"{p}.max_ms", ctx, "e.g. max_ms: 50 (0 flushes as soon as a transaction ends)")


def _validate(cfg: PipelineConfig, base_dir: Path, ctx: _Ctx) -> None:
    if cfg.apiVersion != API_VERSION:
        raise ctx.error("apiVersion", f"expected {API_VERSION}, found {ctx.found('apiVersion', cfg.apiVersion)}",
                        f"write apiVersion: {API_VERSION}")
    if cfg.kind != KIND:
        raise ctx.error("kind", f"expected {KIND}, found {ctx.found('kind', cfg.kind)}", f"write kind: {KIND}")
    _check_name(cfg.metadata.name, "metadata.name", ctx, "pipeline name")
    tenant = cfg.metadata.tenant
    if tenant is not None and (not tenant.strip() or "|" in tenant or not tenant.isprintable()):
        raise ctx.error("metadata.tenant", f"found {ctx.found('metadata.tenant', tenant)}",
                        "use a non-empty label without '|' (it is part of idempotency keys), or remove it")
    _check_source(cfg.spec.source, ctx)
    _check_processors(cfg.spec.processors, base_dir, ctx)
    _check_sinks(cfg.spec.sinks, ctx, cfg.metadata.name)
    _check_policy(cfg.spec, ctx)
    _check_batch(cfg.spec.batch, ctx)


# --------------------------------------------------------------------------- entry points


def load_config_text(
    text: str,
    base_dir: str | os.PathLike[str] = ".",
    env: Mapping[str, str] | None = None,
    path: str = "<string>",
) -> PipelineConfig:
    """Parse and validate pipeline YAML ``text``; ``file:`` paths resolve against ``base_dir``."""
    data, lines = _parse_yaml(text, path)
    ctx = _Ctx(os.environ if env is None else env, lines)
    if data is None:
        raise ConfigError("", f"{path}: the pipeline YAML is empty",
                          "start from conf/pipeline.yaml (apiVersion, kind, metadata, spec)")
    data = _walk(data, PipelineConfig, "", ctx)
    try:
        cfg = msgspec.convert(data, PipelineConfig, strict=False)
    except msgspec.ValidationError as e:
        raise _translate(e, data, ctx) from None
    cfg.path = path
    _validate(cfg, Path(base_dir), ctx)
    return cfg


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> PipelineConfig:
    """Load the pipeline YAML at ``path``; ``env`` defaults to ``os.environ``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {p} does not exist",
                          "pass the path of a pipeline YAML, e.g. conf/pipeline.yaml") from None
    except IsADirectoryError:
        raise ConfigError("", f"config file {p} is a directory", "pass the path of one YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"config file {p} is not UTF-8 (byte {e.start})", "save it as UTF-8") from None
    except OSError as e:
        raise ConfigError("", f"cannot read config file {p}: {e.strerror}",
                          "check the path and its permissions") from None
    return load_config_text(text, base_dir=p.parent, env=env, path=os.path.abspath(p))

