"""``deltaforge`` command line: run, check, worker, demo.

Every command turns a :class:`DeltaForgeError` into one line on stderr and the
error's exit code; a traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from deltaforge.errors import DeltaForgeError
from deltaforge.log import scrub, setup_logging

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
            click.echo(f"error: internal error {type(e).__name__}: {scrub(str(e))} "
                       "(fix: this is a DeltaForge bug; rerun with --debug and report the traceback)", err=True)
            sys.exit(70)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="deltaforge")
def main(log_format: str, log_level: str, debug: bool) -> None:
    """Change-data-capture: MySQL/MariaDB binlog -> JavaScript -> Redis Streams."""
    setup_logging(log_format, log_level)


def _register() -> None:
    from deltaforge.runtime.commands import check_command, run_command

    main.add_command(run_command)
    main.add_command(check_command)
    try:
        from deltaforge.worker import worker_command

        main.add_command(worker_command)
    except ImportError:
        pass
    try:
        from deltaforge.demo import demo_command

        main.add_command(demo_command)
    except ImportError:
        pass
    try:
        from deltaforge.bench import bench_command

        main.add_command(bench_command)
    except ImportError:
        pass


_register()
