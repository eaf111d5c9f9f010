"""Logging: human-readable by default, one JSON object per line with ``--log-format json``.

A filter scrubs ``scheme://user:password@`` (and a ``sentinel_password=`` query parameter) from every message, so a DSN or URI
that slips into a log line (or an exception text) never shows its password.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s]+)(@)", re.IGNORECASE)


def scrub(text: str) -> str:
    from deltaforge.dsn import QUERY_SECRET  # the one list of secrets a URI's query may carry

    return QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\3", text))


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        record.msg = scrub(str(record.msg))
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info and record.exc_info[1] is not None:
            doc["error"] = scrub(str(record.exc_info[1]))
        return orjson.dumps(doc).decode()


#: the (format, level) of the last setup_logging, which the multi-process topology's children repeat
SETTINGS = ("text", "INFO")


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    global SETTINGS
    SETTINGS = (fmt, level)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ScrubFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s",
                                               "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # mysql-replication and mini-racer are chatty at INFO
    logging.getLogger("pymysqlreplication").setLevel(logging.WARNING)
