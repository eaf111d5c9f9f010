"""How a command ends on an error: one line on stderr and the error's exit code (a traceback
only with ``--debug``). Its own module so the commands (``runtime.commands``, ``bench``,
``demo``) do not import the CLI that lazily imports them.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from deltaforge.errors import (
    INTERNAL_EXIT_CODE,
    INTERNAL_HINT,
    DeltaForgeError,
    internal_error_text,
)
from deltaforge.log import scrub

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return func(*args, **kwargs)
        except DeltaForgeError as e:
            if debug:
                raise
            click.echo(f"error: {scrub(str(e))}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:
            if debug:
                raise
            click.echo(f"error: {scrub(internal_error_text(e))} (fix: {INTERNAL_HINT})", err=True)
            sys.exit(INTERNAL_EXIT_CODE)

    return wrapper  # type: ignore[return-value]
