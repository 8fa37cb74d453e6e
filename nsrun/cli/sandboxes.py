"""Running sandboxes: `ls`, `exec`, `stop`, `kill`, `wait`, `logs`, `port`."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from nsrun.cli.common import (
    Command,
    app,
    interruption_point,
    print_error,
    print_table,
    require_root,
    warn_unlisted,
)
from nsrun.errors import EXIT_NSRUN_FAILED, NotFoundError, NsrunError, UsageError

if TYPE_CHECKING:
    from nsrun.state.registry import SandboxRecord

__all__ = ["exec_command", "kill_command", "list_sandboxes", "logs_command", "port_command", "stop_command"]

_NAMES: Final = typer.Argument(metavar="NAME...", help="Names or ids of running sandboxes.", show_default=False)
_NAME: Final = typer.Argument(metavar="NAME", help="Name or id of a running sandbox.", show_default=False)
_COMMAND_WIDTH: Final = 40
_FOLLOW_POLL: Final = 0.1


def _find(name: str) -> SandboxRecord:
    from nsrun.launch.records import is_stale, registry
    from nsrun.state.paths import StateDirs

    return registry(StateDirs()).find(name, is_stale)


def _age(seconds: float) -> str:
    if seconds < 60:  # noqa: PLR2004
        return f"{seconds:.0f}s"
    if seconds < 3600:  # noqa: PLR2004
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@app.command("ls", cls=Command, short_help="List running sandboxes.")
def list_sandboxes(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List running sandboxes, by name: pid, network, addresses, ports, command, age."""
    require_root()
    from nsrun.launch.records import corrupt_records, live_sandboxes
    from nsrun.state.registry import record_data
    from nsrun.validate import parse_publish

    records = live_sandboxes()
    warn_unlisted(corrupt_records())  # on stderr: the listing on stdout stays what it was
    if as_json:
        typer.echo(json.dumps([record_data(r) | {"age": round(time.time() - r.created, 1)} for r in records], indent=2))
        return
    rows = [("NAME", "PID", "NETWORK", "ADDRESSES", "PORTS", "COMMAND", "AGE")]
    for r in records:
        command = " ".join(r.command)
        if len(command) > _COMMAND_WIDTH:
            command = command[: _COMMAND_WIDTH - 3] + "..."
        ports = ",".join(str(parse_publish(spec)) for spec in r.ports) or "-"
        addresses = ",".join(r.addresses) or "-"
        rows.append(
            (
                r.name,
                "-" if r.attached else str(r.child_pid or r.pid),
                r.network,
                addresses,
                ports,
                command,
                _age(time.time() - r.created),
            )
        )
    print_table(rows)


@app.command(
    "exec",
    cls=Command,
    short_help="Run a command inside a running sandbox.",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def exec_command(
    name: Annotated[str, _NAME],
    argv: Annotated[
        list[str],
        typer.Argument(metavar="[--] CMD [ARGS]...", help="The command and its arguments.", show_default=False),
    ],
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", metavar="USER[:GROUP]", help="Run as this user (default: the sandbox's)."),
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", metavar="KEY=VALUE", help="Set a variable; repeatable.")
    ] = None,
    workdir: Annotated[
        str | None,
        typer.Option(
            "--workdir",
            "-w",
            metavar="DIR",
            help="Working directory (default: the sandbox's; a relative DIR is in it).",
        ),
    ] = None,
) -> None:
    """Run CMD inside a running sandbox (its network, PID, mount, UTS and IPC namespaces), with its
    confinement and its user; exits with CMD's status. Options may also follow NAME."""
    require_root()
    from nsrun.cli.entry import EndBySignal
    from nsrun.launch.joining import exec_in, plan_exec
    from nsrun.process.terminal import is_terminal

    options, command = _exec_options(argv)
    user = options.get("user", user)
    env = [*(env or ()), *options.get("env", [])]
    workdir = options.get("workdir", workdir)
    if not command:
        raise UsageError("nsrun exec", "no command given", "usage: nsrun exec NAME [OPTIONS] [--] CMD [ARGS...]")
    tty = is_terminal(0) and is_terminal(1)
    outcome = exec_in(name, lambda record: plan_exec(record, command, user=user, env=env, workdir=workdir, tty=tty))
    if outcome.failure is not None:
        print(f"nsrun: {outcome.failure}", file=sys.stderr)
    if (signum := outcome.signal) is not None:
        raise EndBySignal(signum)
    raise typer.Exit(outcome.exit_code)


_EXEC_OPTIONS: Final = {
    "-u": "user",
    "--user": "user",
    "-e": "env",
    "--env": "env",
    "-w": "workdir",
    "--workdir": "workdir",
}


def _exec_options(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Options given after NAME (`nsrun exec web -u nobody -- id`), up to CMD or `--`."""
    found: dict[str, Any] = {}
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            return found, args[index + 1 :]
        key, _, inline = word.partition("=")
        if key not in _EXEC_OPTIONS:
            return found, args[index:]
        if inline:
            value = inline
        elif index + 1 < len(args):
            index += 1
            value = args[index]
        else:
            raise UsageError(f"nsrun exec {key}", "it needs a value", "see nsrun exec --help")
        field = _EXEC_OPTIONS[key]
        if field == "env":
            found.setdefault("env", []).append(value)
        else:
            found[field] = value
        index += 1
    return found, []


def _each(names: list[str], action: str, act: Any) -> None:
    """Run `act` on every named sandbox; errors are reported per name, the exit status says if any."""
    failed = False
    for name in names:
        try:
            act(_find(name))
            typer.echo(name)
        except NsrunError as err:
            print_error(err)
            failed = True
    if failed:
        raise typer.Exit(EXIT_NSRUN_FAILED)
    del action


@app.command("stop", cls=Command, short_help="Stop running sandboxes (SIGTERM, then SIGKILL).")
def stop_command(
    names: Annotated[list[str], _NAMES],
    timeout: Annotated[
        float, typer.Option("--time", "-t", metavar="SECONDS", help="How long SIGTERM has before SIGKILL.")
    ] = 10.0,
) -> None:
    """SIGTERM to each sandbox's command; after the timeout, SIGKILL of the whole sandbox (its
    init: everything in it ends). Returns once each is torn down."""
    if not timeout >= 0:  # NaN is not
        raise UsageError(f"invalid -t {timeout}", "it must be 0 seconds or more", "e.g. -t 10; -t 0 kills at once")
    require_root()
    from nsrun.launch import control

    _each(names, "stop", lambda record: control.stop(record, timeout, between=interruption_point))


@app.command("kill", cls=Command, short_help="Send a signal to running sandboxes (SIGKILL by default).")
def kill_command(
    names: Annotated[list[str], _NAMES],
    signal_name: Annotated[
        str, typer.Option("--signal", "-s", metavar="SIGNAL", help="Signal name or number, e.g. TERM, HUP, 9.")
    ] = "KILL",
) -> None:
    """Pass a signal to each sandbox's command; SIGKILL ends the whole sandbox at once."""
    require_root()
    from nsrun.launch import control

    signum = control.parse_signal(signal_name)
    _each(names, "kill", lambda record: control.send_signal(record, signum))


@app.command("wait", cls=Command, short_help="Wait until sandboxes end; print their exit status.")
def wait_command(names: Annotated[list[str], _NAMES]) -> None:
    """Block until each sandbox has ended (and been torn down); print its status (128+N for
    signal N) and exit with the last one."""
    require_root()
    from nsrun.launch import control
    from nsrun.launch.records import is_stale, registry
    from nsrun.state.logbook import LogBook
    from nsrun.state.paths import StateDirs

    dirs = StateDirs()
    status = 0
    for name in names:
        try:
            record: SandboxRecord | None = registry(dirs).find(name, is_stale)
        except NotFoundError:
            record = None
        if record is not None:
            control.wait_ended(record, between=interruption_point)
        entry = LogBook(dirs).get(record.sandbox_id) if record is not None else LogBook(dirs).find(name)
        if entry is None or entry.status is None:
            raise NotFoundError(
                f"sandbox {name!r}", "no running or recently ended sandbox has that name", "see `nsrun ls`"
            )
        status = entry.status
        typer.echo(str(status))
    raise typer.Exit(status)


@app.command("logs", cls=Command, short_help="Show the output of a detached sandbox.")
def logs_command(
    name: Annotated[str, _NAME],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output until it ends.")] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", metavar="N", help="Only the last N lines.", show_default=False)
    ] = None,
) -> None:
    """The output of a sandbox started with -d (or from the Python API), running or ended in the
    last day. A sandbox in the foreground writes to its terminal: it has no log."""
    if tail is not None and tail < 0:
        raise UsageError(f"invalid --tail {tail}", "it must be 0 lines or more", "e.g. --tail 20")
    require_root()
    from nsrun.launch import control
    from nsrun.state.logbook import LogBook
    from nsrun.state.paths import StateDirs

    dirs = StateDirs()
    logbook = LogBook(dirs)
    entry = logbook.find(name)
    if entry is None:
        raise NotFoundError(f"logs of {name!r}", "no sandbox of that name ran in the last day", "see `nsrun ls`")
    if not entry.logged:
        raise NsrunError(
            f"logs of {name!r}", "it runs in the foreground: its output goes to its terminal", "start it with -d"
        )
    path = logbook.log_path(entry.sandbox_id)
    try:
        with path.open("rb") as source:
            data = source.read()
            lines = data.splitlines(keepends=True)
            if tail is not None:
                lines = lines[-tail:] if tail > 0 else []
            sys.stdout.buffer.write(b"".join(lines))
            sys.stdout.flush()
            if follow:
                record = _find_running(entry.sandbox_id)
                while record is not None and not control.wait_ended(record, _FOLLOW_POLL):
                    interruption_point()
                    sys.stdout.buffer.write(source.read())
                    sys.stdout.flush()
                sys.stdout.buffer.write(source.read())
    except FileNotFoundError as err:
        raise NotFoundError(f"logs of {name!r}", f"{path} is gone", "see `nsrun ls`") from err


def _find_running(sandbox_id: str) -> SandboxRecord | None:
    try:
        return _find(sandbox_id)
    except NotFoundError:
        return None


@app.command("port", cls=Command, short_help="Show the host ports a sandbox publishes.")
def port_command(
    name: Annotated[str, _NAME],
    port: Annotated[
        str | None,
        typer.Argument(metavar="[PORT[/PROTO]]", help="Only this port of the sandbox.", show_default=False),
    ] = None,
) -> None:
    """One line per published port: `PORT/PROTO -> HOST_IP:HOST_PORT`, as `docker port` prints."""
    require_root()
    from nsrun.validate import parse_publish

    record = _find(name)
    wanted = port.split("/", 1) if port else None
    found = False
    for spec in record.ports:
        mapping = parse_publish(spec)
        if wanted and (str(mapping.port) != wanted[0] or (len(wanted) > 1 and wanted[1] != mapping.proto)):
            continue
        found = True
        typer.echo(f"{mapping.port}/{mapping.proto} -> {mapping.host_ip or '0.0.0.0'}:{mapping.host_port}")  # noqa: S104
    if port and not found:
        raise NotFoundError(f"port {port} of sandbox {name!r}", "it is not published", f"see `nsrun port {name}`")
