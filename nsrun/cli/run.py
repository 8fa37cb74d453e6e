"""`nsrun [OPTIONS] [--] CMD [ARGS...]`: one sandbox, in the foreground or detached."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from nsrun.cli.common import ARGV_KEY, app, require_root, state
from nsrun.errors import NsrunError, TeardownError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from nsrun.launch.request import SandboxRequest

__all__ = ["launch"]

_MAX_PORT: Final = 65535


def _version(value: bool) -> None:
    if value:
        from nsrun import __version__

        typer.echo(f"nsrun {__version__}")
        raise typer.Exit


@app.callback()
def launch(  # noqa: PLR0913, PLR0917  # typer passes one parameter per option
    ctx: typer.Context,
    net: Annotated[
        str,
        typer.Option(
            "--net",
            metavar="MODE",
            help="bridge: own namespace on a network with NAT; none: loopback only; host: the host's network;"
            " sandbox:NAME: the network of a running sandbox.",
        ),
    ] = "bridge",
    network: Annotated[
        str | None,
        typer.Option(
            "--network",
            metavar="NAME",
            help="Network to join with --net bridge; default nsrun, created on first use.",
            show_default=False,
        ),
    ] = None,
    ip: Annotated[
        str | None, typer.Option("--ip", metavar="ADDR", help="Static address inside the network's subnet.")
    ] = None,
    mac: Annotated[str | None, typer.Option("--mac", metavar="MAC", help="MAC address of the sandbox's eth0.")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="Name, unique among running sandboxes; its neighbours resolve it; for ls, exec, stop, logs.",
        ),
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option("--hostname", metavar="NAME", help="Hostname in the sandbox (default: its name or id)."),
    ] = None,
    dns: Annotated[
        list[str] | None,
        typer.Option(
            "--dns", metavar="ADDR", help="DNS server for the sandbox's resolv.conf; repeatable; replaces the host's."
        ),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            "-u",
            metavar="USER[:GROUP]",
            help="Run the command as this user (default: the user who ran sudo, else root).",
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="KEY=VALUE", help="Set an environment variable; repeatable."),
    ] = None,
    workdir: Annotated[
        str | None,
        typer.Option(
            "--workdir",
            "-w",
            metavar="DIR",
            help="Working directory of the command (default: the current one; a relative DIR is in it).",
        ),
    ] = None,
    publish: Annotated[
        list[str] | None,
        typer.Option(
            "--publish",
            "-p",
            metavar="[[IP:]HPORT:]PORT[/udp]",
            help="Publish the sandbox's PORT on the host's HPORT (a free one if left out or 0); repeatable.",
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", "-d", help="Return once the command runs and print the sandbox's name; see logs."),
    ] = False,
    wait_port: Annotated[
        int | None,
        typer.Option(
            "--wait-port",
            metavar="PORT",
            help="Ready only once PORT listens inside the sandbox (with -d: return then); else stop it, exit 125.",
        ),
    ] = None,
    wait_timeout: Annotated[
        float,
        typer.Option("--wait-timeout", metavar="SECONDS", help="How long --wait-port waits."),
    ] = 60.0,
    privileged: Annotated[
        bool,
        typer.Option(
            "--privileged",
            help="UNSAFE: every capability, no seccomp, no no_new_privs, the host's /dev: root in the"
            " sandbox is root on the host.",
        ),
    ] = False,
    cap_add: Annotated[
        list[str] | None,
        typer.Option("--cap-add", metavar="CAP", help="Give a root command this capability too (or ALL); repeatable."),
    ] = None,
    cap_drop: Annotated[
        list[str] | None,
        typer.Option(
            "--cap-drop", metavar="CAP", help="Take this capability (or ALL) from a root command; repeatable."
        ),
    ] = None,
    security_opt: Annotated[
        list[str] | None,
        typer.Option(
            "--security-opt",
            metavar="OPT",
            help="no-new-privileges=false (let setuid programs gain privileges) or seccomp=unconfined.",
        ),
    ] = None,
    read_only: Annotated[
        bool,
        typer.Option("--read-only", help="The host's filesystem read-only inside, with a private /tmp."),
    ] = False,
    volume: Annotated[
        list[str] | None,
        typer.Option(
            "--volume", "-v", metavar="SRC:DST[:ro]", help="Bind host path SRC over DST (which must exist); repeatable."
        ),
    ] = None,
    tmpfs: Annotated[
        list[str] | None,
        typer.Option("--tmpfs", metavar="DIR", help="A private, empty tmpfs over DIR; repeatable."),
    ] = None,
    no_tty: Annotated[
        bool,
        typer.Option(
            "--no-tty",
            help="No terminal of the sandbox's own, even when nsrun's stdin and stdout are terminals.",
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks with errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print nsrun's version and exit."),
    ] = False,
) -> None:
    """Run CMD in its own namespaces (network, PID, mount, UTS, IPC), confined, on a host bridge
    with an address from the network's pool, a default route and NAT to the outside. Everything
    from CMD on belongs to the command.

    \b
    Examples:
      sudo nsrun -- curl -sI https://example.org
      sudo nsrun -d --name cache -p 6379 --wait-port 6379 -- redis-server
      sudo nsrun --network lab --ip 10.123.0.7 -- ./server
      sudo nsrun --net none --read-only -- ./untrusted
      sudo nsrun network create lab --subnet 10.123.0.0/24
    """
    del version  # handled by its callback
    state["debug"] = state["debug"] or debug
    if ctx.invoked_subcommand is not None:
        return
    argv = ctx.meta.get(ARGV_KEY, [])
    if not argv:
        raise UsageError(
            "no command given",
            "nsrun needs a command to run",
            "usage: nsrun [OPTIONS] [--] CMD [ARGS...]; see nsrun --help",
        )
    if wait_port is not None and not 0 < wait_port <= _MAX_PORT:
        raise UsageError(
            f"invalid --wait-port {wait_port}", f"a port is between 1 and {_MAX_PORT}", "e.g. --wait-port 8080"
        )
    if not wait_timeout > 0:  # nan too
        raise UsageError(
            f"invalid --wait-timeout {wait_timeout}", "it must be more than 0 seconds", "e.g. --wait-timeout 30"
        )
    require_root()
    from nsrun.launch.request import SandboxRequest
    from nsrun.process.terminal import is_terminal

    request = SandboxRequest.parse(
        argv,
        net=net,
        network=network,
        ip=ip,
        mac=mac,
        name=name,
        hostname=hostname,
        dns=dns or (),
        user=user,
        env=env or (),
        workdir=workdir,
        publish=publish or (),
        privileged=privileged,
        cap_add=cap_add or (),
        cap_drop=cap_drop or (),
        security_opt=security_opt or (),
        read_only=read_only,
        volumes=volume or (),
        tmpfs=tmpfs or (),
        tty=not detach and not no_tty and is_terminal(0) and is_terminal(1),
    )
    readiness = (wait_port, wait_timeout) if wait_port is not None else None
    raise typer.Exit(_launch(request, readiness, detach=detach))


# The warm helper's worker sets this: it does the set-up, and the client runs the shim.
LAUNCHER: Any = None


def _launch(request: SandboxRequest, readiness: tuple[int, float] | None, *, detach: bool) -> int:
    if LAUNCHER is not None:
        status: int = LAUNCHER(request, readiness, detach)
        return status
    return _detached(request, readiness) if detach else _foreground(request, readiness, None)


def _detached(request: SandboxRequest, readiness: tuple[int, float] | None) -> int:
    """The sandbox goes on in a process of its own (its shim, in a new session); this one returns
    once the command runs (and is ready), printing the sandbox's name."""
    from nsrun.cli.drive import detach, show_report

    return show_report(detach(lambda report: _foreground(request, readiness, report)))


class LocalController:
    """The sandbox was set up in this process: record its start, then tear it down here."""

    def __init__(self, sandbox: Any, logbook: Any, entry: Any) -> None:
        self.sandbox = sandbox
        self.logbook = logbook
        self.entry = entry
        self.ran = False

    def started(self, info: Any) -> None:
        self.ran = True
        self.sandbox.started(info)

    def ended(self, status: int, release: Callable[[], None]) -> list[str]:
        failures: list[str] = []
        try:
            self.sandbox.teardown(release)
        except TeardownError as err:
            failures = list(err.failures)
        if self.entry is not None:
            try:
                if self.ran:
                    self.logbook.ended(self.sandbox.sandbox_id, status)
                else:
                    self.logbook.remove(self.sandbox.sandbox_id)  # interrupted before it ran: nothing kept
            except NsrunError as err:
                failures.append(str(err))
        return failures


def _foreground(request: SandboxRequest, readiness: tuple[int, float] | None, report: int | None) -> int:
    """Set up, run the shim in this process, tear down; the command's status (or death by its
    signal). With `report`, a detached sandbox: its output goes to its log, and the waiting
    caller hears once it runs (or why it did not)."""
    from nsrun.cli.drive import Launch, Reporter, drive, redirect_output
    from nsrun.cli.entry import Interrupted, checkpoint, die_by
    from nsrun.launch.sandbox import Sandbox
    from nsrun.state.logbook import LogBook, LogEntry

    sandbox = Sandbox(request, checkpoint=checkpoint)
    logbook = LogBook(sandbox.dirs)
    reporter = Reporter(report)
    log = str(logbook.log_path(sandbox.sandbox_id)) if report is not None else None
    # kept after the end for `nsrun wait` and `nsrun logs`: sandboxes one can name afterwards
    entry = None
    if report is not None or request.name is not None:
        entry = LogEntry(sandbox.sandbox_id, sandbox.name, request.argv, time.time(), logged=report is not None)
    try:
        if log is not None:
            redirect_output(logbook.open_log(sandbox.sandbox_id))
        sandbox.setup()  # undoes itself if interrupted or failed
        if entry is not None:
            logbook.record(entry)
        from nsrun.helper.client import start_helper

        start_helper()  # the launches that come next go through it
    except Interrupted as interrupt:
        _remove_log(logbook, sandbox, log)
        die_by(interrupt.signum)
    except NsrunError as err:
        _remove_log(logbook, sandbox, log)
        reporter.send({"error": str(err), "code": err.exit_code})
        for failure in sandbox.rollback_failures:
            print(f"nsrun: warning: undoing the set-up: {failure} (run `nsrun doctor`)", file=sys.stderr)
        raise
    if sandbox.plan is None:
        raise NsrunError("starting the sandbox", "its set-up made no process plan", "report it: this is a bug")
    launch = Launch(sandbox.plan, sandbox.shim_fds(), sandbox.name, readiness, log, list(sandbox.warnings))
    return drive(launch, LocalController(sandbox, logbook, entry), reporter)


def _remove_log(logbook: Any, sandbox: Any, log: str | None) -> None:
    if log is not None:
        with contextlib.suppress(NsrunError):
            logbook.remove(sandbox.sandbox_id)  # the caller hears why; nothing stays
