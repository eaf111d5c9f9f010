"""``deltaforge`` command line: run, check, worker, demo.

Every command turns a :class:`DeltaForgeError` into one line on stderr and the
error's exit code; a traceback is printed only with ``--debug``.
"""

from __future__ import annotations

from typing import ClassVar

import click

from deltaforge.log import setup_logging


class _LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or help lists it): ``run`` does not
    pay for the worker's redis-py or the bench's imports at every start."""

    COMMANDS: ClassVar[dict[str, str]] = {
        "run": "deltaforge.runtime.commands:run_command",
        "check": "deltaforge.runtime.commands:check_command",
        "worker": "deltaforge.worker:worker_command",
        "demo": "deltaforge.demo:demo_command",
        "bench": "deltaforge.bench:bench_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self.COMMANDS:
            return cmd
        import importlib

        module, _, attr = self.COMMANDS[cmd_name].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        self.add_command(command, cmd_name)
        return command


@click.group(cls=_LazyGroup)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="deltaforge")
def main(log_format: str, log_level: str, debug: bool) -> None:
    """Change-data-capture: MySQL/MariaDB binlog -> JavaScript -> Redis Streams."""
    setup_logging(log_format, log_level)
