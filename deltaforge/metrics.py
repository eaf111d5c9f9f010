"""A tiny HTTP endpoint for Prometheus scrapes and health checks (``/metrics``, ``/health``).

Served from a daemon thread on 127.0.0.1 only; handlers render from counters the
stages already keep, so a scrape costs the pipeline nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deltaforge.errors import ConfigError

#: path -> () -> (status, body)
Routes = dict[str, Callable[[], tuple[int, str]]]


def serve_http(routes: Routes, port: int, name: str = "metrics") -> ThreadingHTTPServer:
    """Serve ``routes`` on 127.0.0.1:``port`` (0 = any free port; see ``server.server_port``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404)
                return
            status, text = route()
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as e:
        raise ConfigError("--metrics-port", f"cannot listen on 127.0.0.1:{port}: {e.strerror}",
                          "pick a free port or leave --metrics-port out") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"deltaforge-{name}", daemon=True).start()
    return server
