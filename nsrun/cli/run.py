"""`nsrun [OPTIONS] [--] CMD [ARGS...]`: one sandbox, in the foreground or detached."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from nsrun.cli.common import ARGV_KEY, app, print_error, require_root, state
from nsrun.errors import EXIT_NSRUN_FAILED, NsrunError, UsageError

if TYPE_CHECKING:
    from nsrun.launch.request import SandboxRequest
    from nsrun.process.shim import Outcome

__all__ = ["launch"]

_LOG_TAIL_LINES: Final = 20
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
        str | None, typer.Option("--workdir", "-w", metavar="DIR", help="Working directory of the command.")
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
    if wait_timeout <= 0:
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
    raise typer.Exit(_detached(request, readiness) if detach else _foreground(request, readiness, None))


def _detached(request: SandboxRequest, readiness: tuple[int, float] | None) -> int:
    """The sandbox goes on in a process of its own (its shim, in a new session); this one returns
    once the command runs (and is ready), printing the sandbox's name."""
    report_read, report_write = os.pipe()
    if os.fork() == 0:
        os.close(report_read)
        os.setsid()
        status = EXIT_NSRUN_FAILED
        try:
            status = _foreground(request, readiness, report_write)
        finally:
            os._exit(status)
    os.close(report_write)
    with os.fdopen(report_read, "rb") as reader:
        raw = reader.read()
    report: dict[str, Any] = json.loads(raw) if raw else {}
    if "name" in report:
        typer.echo(report["name"])
        return 0
    print(f"nsrun: {report.get('error', 'the sandbox ended before its command started')}", file=sys.stderr)
    if report.get("log"):
        print(report["log"], end="" if report["log"].endswith("\n") else "\n", file=sys.stderr)
    return int(report.get("code", EXIT_NSRUN_FAILED))


class _Reporter:
    """The answer a detached sandbox owes the nsrun that waits for it: said once, then closed."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def send(self, report: dict[str, Any]) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, json.dumps(report).encode())
        except OSError:
            pass  # the caller is gone: it did not wait for the answer
        finally:
            os.close(fd)


def _log_tail(path: Any) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines(keepends=True)
    except (OSError, AttributeError):
        return ""
    return "".join(lines[-_LOG_TAIL_LINES:])


def _foreground(request: SandboxRequest, readiness: tuple[int, float] | None, report: int | None) -> int:
    """Set up, run the shim in this process, tear down; the command's status (or death by its
    signal). With `report`, a detached sandbox: its output goes to its log, and the waiting
    caller hears once it runs (or why it did not)."""
    return _Run(request, readiness, _Reporter(report), detached=report is not None).execute()


class _Run:
    def __init__(
        self, request: SandboxRequest, readiness: tuple[int, float] | None, reporter: _Reporter, *, detached: bool
    ) -> None:
        from nsrun.cli.entry import checkpoint
        from nsrun.launch.sandbox import Sandbox
        from nsrun.state.logbook import LogBook, LogEntry

        self.sandbox = Sandbox(request, checkpoint=checkpoint)
        self.logbook = LogBook(self.sandbox.dirs)
        self.readiness = readiness
        self.reporter = reporter
        self.log = self.logbook.log_path(self.sandbox.sandbox_id) if detached else None
        # kept after the end for `nsrun wait` and `nsrun logs`: sandboxes one can name afterwards
        self.entry = None
        if detached or request.name is not None:
            self.entry = LogEntry(
                self.sandbox.sandbox_id, self.sandbox.name, request.argv, time.time(), logged=detached
            )

    def execute(self) -> int:
        from nsrun.cli.entry import Interrupted, die_by

        try:
            outcome = self._start_and_wait()
        except Interrupted as interrupt:
            self._finish(128 + interrupt.signum)
            die_by(interrupt.signum)
        except NsrunError as err:
            self._finish(err.exit_code)
            self.reporter.send({"error": str(err), "code": err.exit_code})
            for failure in self.sandbox.rollback_failures:
                print(f"nsrun: warning: undoing the set-up: {failure} (run `nsrun doctor`)", file=sys.stderr)
            raise
        except BaseException:
            self._finish(EXIT_NSRUN_FAILED)
            raise
        self._finish(outcome.exit_code)
        return self._conclude(outcome)

    def _start_and_wait(self) -> Outcome:
        from nsrun.cli.entry import checkpoint
        from nsrun.process.readiness import listening

        sandbox = self.sandbox
        if self.log is not None:
            _redirect_output(self.logbook.open_log(sandbox.sandbox_id))
        try:
            sandbox.setup()  # undoes itself if interrupted
        except BaseException:
            if self.log is not None:
                self.logbook.remove(sandbox.sandbox_id)  # the caller hears why; nothing stays
            raise
        if self.entry is not None:
            self.logbook.record(self.entry)
        for warning in sandbox.warnings:
            print(f"nsrun: warning: {warning}", file=sys.stderr)
        checkpoint()
        port = self.readiness[0] if self.readiness else None

        def announce() -> None:
            self.reporter.send({"name": sandbox.name})

        return sandbox.run(
            ready=(lambda init: listening(init, port)) if port is not None else None,
            ready_timeout=self.readiness[1] if self.readiness else 0.0,
            on_ready=announce if port is not None else None,
            on_started=None if port is not None else announce,
        )

    def _conclude(self, outcome: Outcome) -> int:
        from nsrun.cli.entry import die_by

        failure, code = outcome.failure, outcome.exit_code
        if self.sandbox.not_ready and self.readiness is not None:
            port, timeout = self.readiness
            failure = (
                f"sandbox {self.sandbox.name!r}: port {port} did not listen within {timeout:g}s, so it was stopped"
            )
            code = EXIT_NSRUN_FAILED
        if failure is not None:
            self.reporter.send({"error": failure, "code": code, "log": _log_tail(self.log)})
            print(f"nsrun: {failure}", file=sys.stderr)
            return code
        self.reporter.send({"error": "the command ended before it was ready", "code": code})
        if (signum := outcome.signal) is not None:
            die_by(signum)
        return code

    def _finish(self, status: int) -> None:
        try:
            self.sandbox.teardown()
        except NsrunError as err:  # the command's status wins; say what was left behind
            print_error(err, prefix="warning: ")
        if self.entry is None:
            return
        try:
            self.logbook.ended(self.sandbox.sandbox_id, status)
        except NsrunError as err:
            print_error(err, prefix="warning: ")


def _redirect_output(log_fd: int) -> None:
    """A detached sandbox: no terminal, output (the command's and nsrun's own) to the log."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
