"""The command line: options in, one library call, exit status out. No decisions live here.

The commands live by area (`run`, `sandboxes`, `networks`, `host`); importing them registers them
with the typer application of `common`.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import typer
from typer import _click as click

from nsrun.cli import host, networks, run, sandboxes
from nsrun.cli.common import app, print_error, state
from nsrun.errors import EXIT_NSRUN_FAILED, EXIT_USAGE, NsrunError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["app", "run_cli", "warm_up"]

_COMMAND_MODULES = (host, networks, run, sandboxes)


@functools.cache
def _command() -> click.Command:
    """The click command typer builds from `app`: built once per process (it takes a while)."""
    return typer.main.get_command(app)


def warm_up() -> None:
    """Build the command line and parse a launch once (typer builds its converters on first use),
    without running anything: for a process that serves many command lines."""
    _command().make_context("nsrun", ["--net", "none", "-p", "8000", "-e", "A=b", "--", "true"])


def run_cli(argv: Sequence[str]) -> int:
    """Parse and run one command line; its exit status (errors printed as one line)."""
    state["debug"] = os.environ.get("NSRUN_DEBUG", "") not in ("", "0")
    try:
        status = _command().main(args=list(argv), prog_name="nsrun", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        typer.echo(err.ctx.get_help() if err.ctx else "", err=True)
        status = EXIT_USAGE
    except click.exceptions.UsageError as err:
        hint = f"see '{err.ctx.command_path} --help'" if err.ctx else "see 'nsrun --help'"
        print_error(UsageError("invalid usage", err.format_message().rstrip("."), hint))
        status = EXIT_USAGE
    except NsrunError as err:
        print_error(err)
        status = err.exit_code
    except Exception as err:  # noqa: BLE001  # never a bare traceback for the user
        print_error(NsrunError("internal error", f"{type(err).__name__}: {err}", "rerun with --debug and report it"))
        status = EXIT_NSRUN_FAILED
    return status if isinstance(status, int) else 0
