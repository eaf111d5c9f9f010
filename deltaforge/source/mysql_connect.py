"""The one way DeltaForge opens a pymysql connection (the reader's, the preflight's).

pymysql 2.x tries TLS on every connection without TLS options ("preferred": no CA, no
verification), and builds a fresh ``ssl.create_default_context()`` for each one, which loads
the system's whole CA bundle (tens of milliseconds of CPU per connection, several per engine
start). That context verifies nothing, so one per process serves every such connection.
Connections with TLS options of their own still get their own context.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import pymysql
import pymysql.connections


@functools.cache
def _preferred_context() -> ssl.SSLContext:
    # what pymysql builds for {} (no CA: CERT_NONE, no hostname check), minus the CA bundle it
    # would not use
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Connection(pymysql.connections.Connection):  # type: ignore[misc]
    def _create_ssl_ctx(self, sslp: Any) -> Any:
        if isinstance(sslp, dict) and not sslp:
            return _preferred_context()
        return super()._create_ssl_ctx(sslp)


def connect(**kwargs: Any) -> Connection:
    """``pymysql.connect`` with the shared "preferred" TLS context (see the module docstring)."""
    return Connection(**kwargs)
