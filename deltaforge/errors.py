"""One exception root for everything DeltaForge raises on purpose.

Every class states its handling policy:

- ``retriable``: the pipeline may restart from the last checkpoint and try again
  (server went away, timeout, Redis LOADING/READONLY/OOM). Nothing was committed
  past the failure, so a retry cannot duplicate or lose anything.
- not retriable: the operator must act (bad config, missing grant, JS error,
  poison row). The process exits non-zero with ``str(err)``: one line naming the
  cause and the fix.

User-facing errors carry ``detail`` (what happened, where) and ``hint`` (the fix);
``str()`` joins them so a log line or a CLI error is self-contained.
"""

from __future__ import annotations

#: the exit code and the fix of an error that is not a DeltaForgeError: a bug
INTERNAL_EXIT_CODE = 70
INTERNAL_HINT = "this is a DeltaForge bug; rerun with --debug and report the traceback"


def internal_error_text(e: BaseException) -> str:
    """What an unexpected exception says (without the fix)."""
    return f"internal error {type(e).__name__}: {e}"


class DeltaForgeError(Exception):
    retriable: bool = False
    #: process exit code when this error ends ``deltaforge run``/``check``
    exit_code: int = 1

    def __init__(self, detail: str, hint: str | None = None) -> None:
        self.detail = detail
        self.hint = hint
        super().__init__(detail)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.detail} (fix: {self.hint})"
        return self.detail


class ConfigError(DeltaForgeError, ValueError):
    """The pipeline YAML or the environment is wrong. ``path`` is the YAML path."""

    exit_code = 2

    def __init__(self, path: str, detail: str, hint: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {detail}" if path else detail, hint)


class PreflightError(DeltaForgeError):
    """A server is reachable but unusable as configured (settings, grants, tables)."""

    exit_code = 3


class SourceError(DeltaForgeError):
    """MySQL/MariaDB side: connection, replication protocol, binlog position."""


class SourceUnavailable(SourceError, ConnectionError):
    retriable = True


class DecodeError(SourceError, ValueError):
    """A row could not be decoded (corrupt event, unsupported type). Poison: not retriable."""


class ProcessorError(DeltaForgeError):
    """The user's JavaScript failed: syntax, exception, bad return shape, limits."""


class ProcessorLimitError(ProcessorError):
    """``limits.timeout_ms`` or ``limits.mem_mb`` was exceeded."""


class SinkError(DeltaForgeError):
    """Redis side errors that need the operator (auth, ACL, wrong key type)."""


class SinkUnavailable(SinkError, ConnectionError):
    """Connection loss, timeout, LOADING, READONLY, OOM: retried with backoff."""

    retriable = True


class CheckpointRolledBack(SinkError):
    """Redis holds an older checkpoint of our own lineage: it rolled back, stream entries included.

    Retriable: the pipeline restarts from that checkpoint and re-delivers what was lost.
    Not a :class:`SinkUnavailable`, so a sink's own retry loop does not swallow it.
    """

    retriable = True


class FencedError(SinkError):
    """Another instance committed to this pipeline's checkpoint: this one must stop."""

    exit_code = 4


class ShutdownRequested(DeltaForgeError):
    """Raised inside stages to unwind promptly when a stop was requested."""

    exit_code = 0
