"""Commands about the host itself: `doctor`, `help`."""

from __future__ import annotations

from typing import Annotated

import typer

from nsrun.cli.common import Command, app

__all__ = ["doctor", "help_command"]


@app.command("doctor", cls=Command, short_help="Check this host; print the exact fixes.")
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check this host for what nsrun needs and what gets in its way; one row per check with
    ok/warn/fail and the exact fix. Exit status 0 when no check fails, 1 otherwise."""
    from nsrun import doctor as checks
    from nsrun.state.paths import StateDirs

    results = checks.run_checks(StateDirs())
    typer.echo(checks.render_json(results) if as_json else checks.render_table(results))
    raise typer.Exit(checks.exit_code(results))


@app.command("help", cls=Command, short_help="Show help of nsrun or of one of its commands.")
def help_command(
    ctx: typer.Context,
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="[COMMAND]...", help="e.g. exec, or network create.", show_default=False),
    ] = None,
) -> None:
    """`nsrun help` is `nsrun --help`; `nsrun help stop` is `nsrun stop --help`."""
    root = ctx.find_root()
    group = root.command
    target_ctx = root
    for word in command or []:
        sub = group.get_command(target_ctx, word) if hasattr(group, "get_command") else None
        if sub is None:
            from nsrun.errors import UsageError

            raise UsageError(f"nsrun help {word}", "no such command", "see nsrun --help")
        target_ctx = typer.Context(sub, info_name=word, parent=target_ctx)
        group = sub
    typer.echo(target_ctx.get_help())
