"""The command line: options in, one library call, exit status out. No decisions live here.

The commands live by area (`run`, `sandboxes`, `networks`, `host`); importing them registers them
with the typer application of `common`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import typer

from nsrun.cli import host, networks, run, sandboxes
from nsrun.cli.common import app, print_error, state
from nsrun.errors import EXIT_NSRUN_FAILED, EXIT_USAGE, NsrunError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["app", "run_cli"]

_COMMAND_MODULES = (host, networks, run, sandboxes)


def run_cli(argv: Sequence[str]) -> int:
    """Parse and run one command line; its exit status (errors printed as one line)."""
    from typer import _click as click

    state["debug"] = os.environ.get("NSRUN_DEBUG", "") not in ("", "0")
    try:
        status = app(args=list(argv), prog_name="nsrun", standalone_mode=False)
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
