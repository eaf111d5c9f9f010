"""``deltaforge check`` compiles every processor's JavaScript in V8 before anything runs.

A syntax error fails the check (non-zero exit) with one line naming the processor's
YAML path, its id and the line of the user's own code (inline or file); the seed's
conf/pipeline.yaml passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deltaforge.config import load_config_text
from deltaforge.demo import SCHEMA
from deltaforge.preflight import check_processors
from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import SEED

SEED_TEXT = SEED.read_text()
# line 3 of the seed's inline code; the YAML indents it by 8 spaces
GOOD_LINE = "        const keys = generateCacheKeys(event);\n"
BAD_LINE = "        const keys = generateCacheKeys(event;\n"
ENV = {"MYSQL_DSN": "mysql://u:p@127.0.0.1:1/app", "REDIS_URI": "redis://127.0.0.1:1/0"}


def _broken_seed() -> str:
    assert GOOD_LINE in SEED_TEXT
    return SEED_TEXT.replace(GOOD_LINE, BAD_LINE, 1)


def test_syntax_error_in_inline_code_names_processor_and_line() -> None:
    cfg = load_config_text(_broken_seed(), env=ENV)
    (result,) = check_processors(cfg)
    assert not result.ok
    line = result.line()
    assert line.startswith("FAIL processor[generate-cache-keys]: spec.processors[0] (generate-cache-keys): "
                           "SyntaxError at line 3: "), line
    assert "line 3 of spec.processors[0].inline reads `const keys = generateCacheKeys(event;`" in line
    assert "(fix: correct the JavaScript at line 3 of spec.processors[0].inline)" in line
    assert "\n" not in line


def test_syntax_error_in_a_file_names_the_file_line(tmp_path: Path) -> None:
    js = tmp_path / "keys.js"
    js.write_text("// cache keys\nfunction processBatch(events) {\n  return events.map(e => e;\n}\n")
    text = SEED_TEXT.replace("    - type: javascript\n      id: generate-cache-keys\n",
                             "    - type: javascript\n      id: from-file\n      file: keys.js\n"
                             "    - type: javascript\n      id: generate-cache-keys\n", 1)
    cfg = load_config_text(text, base_dir=tmp_path, env=ENV)
    first, second = check_processors(cfg)
    assert not first.ok and second.ok
    assert first.detail.startswith("spec.processors[0] (from-file): SyntaxError at line 3: ")
    assert f"line 3 of {js} reads `return events.map(e => e;`" in first.detail
    assert second.line().startswith("ok   processor[generate-cache-keys]: spec.processors[1] ")


def test_seed_processor_compiles() -> None:
    (result,) = check_processors(load_config_text(SEED_TEXT, env=ENV))
    assert result.ok and not result.warning
    assert "compiles in V8 and defines processBatch" in result.detail


def test_runtime_only_problems_are_caught_at_load() -> None:
    """Top-level code runs as at a pipeline start: a throw there, or no processBatch, fails too."""
    text = SEED_TEXT.replace("        function processBatch(events) {\n",
                             "        undefinedThing.call();\n        function processBatch(events) {\n", 1)
    (result,) = check_processors(load_config_text(text, env=ENV))
    assert not result.ok and "at line 1 of spec.processors[0].inline" in result.detail


def _check(env: dict[str, str], config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deltaforge", "check", str(config)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


@pytest.mark.integration
def test_check_command_on_broken_and_on_seed_js(tmp_path: Path, mariadb: MariaDBServer,
                                                redis_server: RedisServer) -> None:
    mariadb.execute("DROP DATABASE IF EXISTS app", *SCHEMA)
    env = {"MYSQL_DSN": mariadb.dsn(db="app"), "REDIS_URI": redis_server.uri}
    broken = tmp_path / "pipeline.yaml"
    broken.write_text(_broken_seed())

    res = _check(env, broken)
    fails = [line for line in res.stdout.splitlines() if line.startswith("FAIL")]
    assert res.returncode == 3, res.stdout + res.stderr
    assert len(fails) == 1, res.stdout  # the servers are fine: only the JavaScript fails
    assert fails[0].startswith("FAIL processor[generate-cache-keys]: spec.processors[0] (generate-cache-keys): "
                               "SyntaxError at line 3")
    assert "Traceback" not in res.stdout + res.stderr

    res = _check(env, SEED)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok   processor[generate-cache-keys]: spec.processors[0]" in res.stdout
    assert "FAIL" not in res.stdout


def test_the_check_apart_reports_exactly_what_the_check_in_process_does() -> None:
    """``deltaforge run --workers N`` loads the processors in a throwaway process (the supervisor
    keeps no V8): the lines must be the same, good and broken."""
    from deltaforge.preflight import check_processors_apart

    for text in (SEED_TEXT, _broken_seed()):
        cfg = load_config_text(text, env=ENV)
        assert [r.line() for r in check_processors_apart(cfg)] == [r.line() for r in check_processors(cfg)]
