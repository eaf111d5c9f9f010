"""`deltaforge demo`, the README's main command: runs the seed scenario and always removes its servers."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def _assert_servers_gone(output: str) -> None:
    """The ports the demo printed for its MariaDB and Redis no longer answer."""
    ports = [int(p) for p in re.findall(r"on 127\.0\.0\.1:(\d+)", output)]
    assert len(ports) == 2, output
    for port in ports:
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after the demo"


def test_demo_runs_the_seed_scenario_and_cleans_up() -> None:
    res = subprocess.run([sys.executable, "-m", "deltaforge", "demo"], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "UPDATE app.users SET email = 'alice.new@example.com' WHERE id = 1" in out
    assert "Invalidated 5 keys for app.users" in out
    assert "deleted: user:1, user:email:alice@example.com, user:1:orders, user:1:profile" in out
    assert "6 changes streamed" in out and "servers stopped and removed" in out
    _assert_servers_gone(out)


def test_demo_stops_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "deltaforge", "demo", "--keep-running"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C to stop" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    text = "".join(lines) + out
    assert "servers stopped and removed" in text, text
    assert "Traceback" not in text
    _assert_servers_gone(text)


def test_demo_consistency_shows_each_protocol_live_and_lease_cache_ends_fresh() -> None:
    res = subprocess.run([sys.executable, "-m", "deltaforge", "demo", "--consistency", "--seconds", "4"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    live = [line for line in out.splitlines() if "stale keys now" in line]
    assert live and all("plain GET/SET:" in line and "LeaseCache:" in line for line in live), out
    final = {label: line for line in out.splitlines()
             for label in ("plain GET/SET", "plain + double delete", "LeaseCache") if line.strip().startswith(label)}
    assert set(final) == {"plain GET/SET", "plain + double delete", "LeaseCache"}, out
    assert re.search(r"LeaseCache\s+0 stale of\s+\d+ cached keys", final["LeaseCache"]), final["LeaseCache"]
    assert "servers stopped and removed" in out.lower()
