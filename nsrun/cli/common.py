"""What every part of the command line shares: the typer applications, the parsing of
`nsrun [OPTIONS] [--] CMD` next to subcommands, the root check, and how errors and tables print."""

from __future__ import annotations

import difflib
import sys
import traceback
from typing import TYPE_CHECKING, Final

import typer
from typer.core import TyperCommand, TyperGroup

from nsrun.errors import UsageError
from nsrun.launch.privileges import require_root

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from typer import _click as click

__all__ = [
    "ARGV_KEY",
    "Command",
    "app",
    "interruption_point",
    "network_app",
    "print_error",
    "print_table",
    "require_root",
    "state",
]

ARGV_KEY: Final = "nsrun.argv"
_HELP_EPILOG: Final = """\
\b
Exit status: the command's own; nsrun dies of signal N if its command did; 127 command not
found; 126 command not executable; 125 nsrun itself failed; 2 usage error.
Every error is one line on stderr; --debug or NSRUN_DEBUG=1 adds the traceback.
Environment: NSRUN_DEBUG=1 (tracebacks); NSRUN_FIREWALL=auto|iptables|nftables|none
(firewall backend; auto picks per host, `nsrun doctor` says which and why); NSRUN_LOCK_TIMEOUT
(seconds to wait for a lock, 30); NSRUN_HELPER=off (no warm helper: every command in its own
process); NSRUN_HELPER_IDLE (seconds the helper waits for work before it exits, 120).
\b
State: /run/nsrun (leases, live sandboxes, the warm helper's socket), /var/lib/nsrun (networks,
logs).
"""
# The warm helper's worker sets these. ACTING: a subcommand (not a launch) is about to act, so
# its client must not run the command line again should the worker vanish, and passes its
# signals on to the worker. INTERRUPTION: the client's end is an interruption too.
ACTING: Callable[[], None] | None = None
INTERRUPTION: Callable[[], None] | None = None


def interruption_point() -> None:
    """Where a subcommand that waits (wait, logs -f, stop) ends on a signal to nsrun: it raises
    Interrupted, and nsrun dies of that signal (a Ctrl-C ends `nsrun logs -f`). In the helper's
    worker, also once its client is gone."""
    from nsrun.cli.entry import checkpoint

    checkpoint()
    if INTERRUPTION is not None:
        INTERRUPTION()


# what other tools call these: `nsrun ps` is much likelier a typo than a program in a sandbox
_FAMILIAR: Final = {
    "ps": "ls",
    "list": "ls",
    "rm": "stop",
    "remove": "stop",
    "start": "-d",
    "run": "[OPTIONS] -- CMD",
    "attach": "logs -f",
    "inspect": "ls --json",
    "top": None,
    "stats": None,
}


class LauncherGroup(TyperGroup):
    """`nsrun [OPTIONS] [--] CMD [ARGS...]` next to subcommands: anything after `--`, or any first
    word that is not a subcommand, is the command to run, with all its own options and `--`s;
    except a word that looks like a subcommand (a typo, another tool's verb): that is refused."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        original = list(args)
        rest = super().parse_args(ctx, args)
        remaining = [*ctx._protected_args, *ctx.args]  # noqa: SLF001  # click keeps the subcommand name here
        consumed = len(original) - len(remaining)
        after_separator = consumed > 0 and original[consumed - 1] == "--"
        if remaining and (after_separator or remaining[0] not in self.commands):
            if not after_separator:
                self._refuse_lookalike(remaining[0])
            ctx.meta[ARGV_KEY] = remaining
            ctx._protected_args, ctx.args = [], []  # noqa: SLF001
            return []
        return rest

    def _refuse_lookalike(self, word: str) -> None:
        suggestion = _FAMILIAR.get(word, "") if word in _FAMILIAR else None
        if suggestion is None and word not in _FAMILIAR:
            close = difflib.get_close_matches(word, [c for c in self.commands if len(c) > 2], n=1, cutoff=0.8)  # noqa: PLR2004
            suggestion = close[0] if close else None
            if suggestion is None:
                return
        hint = f"did you mean `nsrun {suggestion}`? " if suggestion else ""
        raise UsageError(
            f"{word!r} is not an nsrun command",
            f"{hint}to run a program called {word} in a sandbox, put it after --",
            f"nsrun -- {word}",
        )

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:  # noqa: ARG002
        return ["[OPTIONS] [--] CMD [ARGS]...", "|", "COMMAND [ARGS]..."]


class Command(TyperCommand):
    """A subcommand whose help names its arguments by their metavars, without typer's type labels
    (`NAME <str>`, `{NAME}`): what a user types, nothing of how it is parsed. In the helper's
    worker, its client hears that it acts (see ACTING)."""

    def invoke(self, ctx: click.Context) -> object:
        if ACTING is not None:
            ACTING()
        return super().invoke(ctx)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                metavar = param.metavar or (param.name or "").upper()
                pieces.append(metavar if param.required else f"[{metavar}]".replace("[[", "["))
        return pieces

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments = [
            (param.metavar or (param.name or "").upper(), getattr(param, "help", None) or "")
            for param in self.get_params(ctx)
            if param.param_type_name == "argument"
        ]
        options = [
            record
            for param in self.get_params(ctx)
            if param.param_type_name == "option" and (record := param.get_help_record(ctx)) is not None
        ]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)


app = typer.Typer(
    cls=LauncherGroup,
    add_completion=False,
    invoke_without_command=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]},
    epilog=_HELP_EPILOG,
)
network_app = typer.Typer(
    help="Manage named networks: one bridge, one subnet and its NAT rules each.",
    short_help="Manage named networks (create, ls, inspect, rm).",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(network_app, name="network")

state: dict[str, bool] = {"debug": False}


def print_error(err: BaseException, *, prefix: str = "") -> None:
    if state["debug"]:
        traceback.print_exception(err, file=sys.stderr)
    print(f"nsrun: {prefix}{err}", file=sys.stderr)  # the one line a user reads


def warn_unlisted(corrupt: Sequence[Exception]) -> None:
    """A listing leaves out what it cannot read: each such file is named on stderr, with its fix."""
    for err in corrupt:
        print(f"nsrun: warning: not listed: {err}", file=sys.stderr)


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
