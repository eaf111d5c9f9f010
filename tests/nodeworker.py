"""Run the seed's Node.js cache-invalidation worker exactly as written, for tests.

``tests/node/cache-invalidation-worker.js`` is a byte-for-byte copy of the worker in
``seed/cache-invalidation.md``; ``tests/node/package.json`` pins ioredis ^5. The first call of
:func:`ensure_node_worker` runs ``npm install`` there (``node_modules`` is gitignored); later calls
see ``node_modules/ioredis`` and return at once. Node and npm come from the distribution:
``apt-get install -y nodejs npm``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from deltaforge.errors import DeltaForgeError

NODE_DIR = Path(__file__).resolve().parent / "node"
WORKER_JS = NODE_DIR / "cache-invalidation-worker.js"

_install_lock = threading.Lock()


class NodeWorkerError(DeltaForgeError):
    """Node/npm missing, ``npm install`` failed, or the worker did not print what was expected."""


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise NodeWorkerError(f"{tool} is not installed (needed to run the seed's Node worker)",
                              "apt-get install -y nodejs npm")
    return path


def ensure_node_worker() -> Path:
    """Install ioredis into tests/node once; return the worker script's path."""
    with _install_lock:
        _require("node")
        if (NODE_DIR / "node_modules" / "ioredis").is_dir():
            return WORKER_JS
        npm = _require("npm")
        proc = subprocess.run(
            [npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR, capture_output=True, text=True, timeout=300, check=False,
        )
        if proc.returncode != 0 or not (NODE_DIR / "node_modules" / "ioredis").is_dir():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise NodeWorkerError(
                f"npm install in {NODE_DIR} failed ({proc.returncode}): {' | '.join(tail)}",
                "apt-get install -y nodejs npm, check access to the npm registry, then rerun",
            )
        return WORKER_JS


class NodeWorkerProcess(subprocess.Popen[str]):
    """``subprocess.Popen`` of the worker, plus a thread collecting its stdout lines."""

    def __init__(self, args: list[str], **kw: object) -> None:
        super().__init__(args, **kw)  # type: ignore[call-overload]
        self.lines: list[str] = []
        self._cursor = 0  # lines before this were consumed by wait_for_line
        self._eof = False
        self._cond = threading.Condition()
        self._pump_thread = threading.Thread(target=self._pump, name="node-worker-stdout", daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.stdout is not None
        for line in self.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_line(self, text: str, timeout: float = 20.0) -> str:
        """Return the next stdout line (after those already returned) that contains ``text``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._cursor < len(self.lines):
                    line = self.lines[self._cursor]
                    self._cursor += 1
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._cond.wait(left)
            seen = self.lines[-10:]
        if self._eof:
            raise NodeWorkerError(f"node worker exited ({self.wait()}) before printing {text!r}; output: {seen}")
        raise NodeWorkerError(f"node worker did not print {text!r} within {timeout:.0f}s; output: {seen}")

    def stop(self) -> None:
        """SIGTERM (the seed has no handler: node exits at once), then SIGKILL after 10 s; reap."""
        if self.poll() is None:
            self.terminate()
            try:
                self.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
                self.wait()
        self._pump_thread.join(5)  # EOF follows the exit; close only after the reader is done
        if self.stdout is not None and not self._pump_thread.is_alive():
            self.stdout.close()


def start_node_worker(redis_uri: str) -> NodeWorkerProcess:
    """Start the seed's worker as the seed says: ``node cache-invalidation-worker.js`` with REDIS_URI.

    Returns the ``subprocess.Popen`` (stdout piped, line-buffered text, stderr merged into it);
    use its ``wait_for_line`` and ``stop``.
    """
    script = ensure_node_worker()
    env = {**os.environ, "REDIS_URI": redis_uri}
    return NodeWorkerProcess(
        [_require("node"), script.name], cwd=script.parent, env=env, text=True, bufsize=1,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def wait_for_line(proc: NodeWorkerProcess, text: str, timeout: float = 20.0) -> str:
    """Function form of :meth:`NodeWorkerProcess.wait_for_line`."""
    return proc.wait_for_line(text, timeout)
