"""Command line: options in, one library call, exit status out. No decisions live here."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
import traceback
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from typer.core import TyperGroup

from nsrun.errors import EXIT_NSRUN_FAILED, EXIT_USAGE, NsrunError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from typer import _click as click

__all__ = ["app", "run_cli"]

_ARGV_KEY: Final = "nsrun.argv"
_HELP_EPILOG: Final = """\
Exit status: the command's own; 128+N if it died of signal N; 127 command not found;
126 command not executable; 125 nsrun itself failed; 2 usage error.
Every error is one line on stderr; --debug or NSRUN_DEBUG=1 adds the traceback.
Environment: NSRUN_DEBUG=1 (tracebacks); NSRUN_FIREWALL=auto|iptables|nftables|none
(firewall backend; auto picks per host, `nsrun doctor` says which and why).
State: /run/nsrun (leases), /var/lib/nsrun (networks).
"""


class _LauncherGroup(TyperGroup):
    """`nsrun [OPTIONS] [--] CMD [ARGS...]` next to subcommands: anything after `--`, or any first
    word that is not a subcommand, is the command to run, with all its own options and `--`s."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        original = list(args)
        rest = super().parse_args(ctx, args)
        remaining = [*ctx._protected_args, *ctx.args]  # noqa: SLF001  # click keeps the subcommand name here
        consumed = len(original) - len(remaining)
        after_separator = consumed > 0 and original[consumed - 1] == "--"
        if remaining and (after_separator or remaining[0] not in self.commands):
            ctx.meta[_ARGV_KEY] = remaining
            ctx._protected_args, ctx.args = [], []  # noqa: SLF001
            return []
        return rest

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:  # noqa: ARG002
        return ["[OPTIONS] [--] CMD [ARGS]...", "|", "ls | exec NAME CMD... | network ... | doctor"]


app = typer.Typer(
    cls=_LauncherGroup,
    add_completion=False,
    invoke_without_command=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]},
    epilog=_HELP_EPILOG,
)
network_app = typer.Typer(
    help="Manage named networks: one bridge, one subnet and its NAT rules each.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(network_app, name="network")

_state: dict[str, bool] = {"debug": False}


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
            "--name", metavar="NAME", help="Name, unique among running sandboxes: for ls, exec, ip netns exec."
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
            metavar="[IP:]HPORT:PORT[/tcp|udp]",
            help="Publish the sandbox's PORT on the host's HPORT (all addresses, or IP); repeatable.",
        ),
    ] = None,
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
) -> None:
    """Run CMD in its own namespaces (network, PID, mount, UTS, IPC), confined, on a host bridge
    with an address from the network's pool, a default route and NAT to the outside. Everything
    from CMD on belongs to the command.

    \b
    Examples:
      sudo nsrun -- curl -sI https://example.org
      sudo nsrun --network lab --ip 10.123.0.7 -- ./server
      sudo nsrun --name web --user www-data -- python3 -m http.server 8000
      sudo nsrun --net none --read-only -- ./untrusted
      sudo nsrun network create lab --subnet 10.123.0.0/24
    """
    _state["debug"] = _state["debug"] or debug
    if ctx.invoked_subcommand is not None:
        return
    argv = ctx.meta.get(_ARGV_KEY, [])
    if not argv:
        raise UsageError(
            "no command given",
            "nsrun needs a command to run",
            "usage: nsrun [OPTIONS] [--] CMD [ARGS...]; see nsrun --help",
        )
    _require_root()
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
        tty=not no_tty and is_terminal(0) and is_terminal(1),
    )
    raise typer.Exit(_launch(request))


_CAP_SYS_ADMIN: Final = 21


def _require_root() -> None:
    """Root with CAP_SYS_ADMIN: not another user, and not a root command inside a sandbox."""
    from nsrun.process import libc

    if os.geteuid() != 0:
        raise NsrunError(
            "nsrun needs root",
            "it creates namespaces, links and firewall rules, and keeps its state in /run/nsrun",
            "run it with sudo",
        )
    if not libc.capget()[0] >> _CAP_SYS_ADMIN & 1:
        raise NsrunError(
            "nsrun needs root with CAP_SYS_ADMIN",
            "this root has been confined (inside a sandbox?)",
            "run nsrun on the host",
        )


def _launch(request: Any) -> int:
    from nsrun.cli.entry import Interrupted, checkpoint, die_by
    from nsrun.launch.sandbox import Sandbox

    sandbox = Sandbox(request, checkpoint=checkpoint)
    try:
        sandbox.setup()  # undoes itself if interrupted
        for warning in sandbox.warnings:
            print(f"nsrun: warning: {warning}", file=sys.stderr)
        checkpoint()
        outcome = sandbox.run()
    except Interrupted as interrupt:
        _teardown(sandbox)
        die_by(interrupt.signum)
    except BaseException:
        _teardown(sandbox)
        raise
    _teardown(sandbox)
    if outcome.failure is not None:
        print(f"nsrun: {outcome.failure}", file=sys.stderr)
    if (signum := outcome.signal) is not None:
        die_by(signum)
    return outcome.exit_code


def _teardown(sandbox: Any) -> None:
    try:
        sandbox.teardown()
    except NsrunError as err:  # the command's status wins; say what was left behind
        _print_error(err, prefix="warning: ")


# -- network subcommands --------------------------------------------------------------------------


def _host() -> Any:
    from nsrun.net import netlink

    return netlink.IPRoute()


@network_app.command("create")
def network_create(
    name: Annotated[str, typer.Argument(help="Network name.")],
    subnet: Annotated[
        list[str] | None,
        typer.Option(
            "--subnet",
            metavar="CIDR",
            help="IPv4 subnet (a free private /24 if left out); give an IPv6 one too for dual-stack.",
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option("--gateway", metavar="ADDR", help="Bridge address; the subnet's first host by default."),
    ] = None,
    bridge: Annotated[
        str | None,
        typer.Option("--bridge", metavar="IFNAME", help="Bridge name, at most 15 bytes; nsbr-NAME by default."),
    ] = None,
    mtu: Annotated[
        int | None,
        typer.Option("--mtu", metavar="BYTES", help="MTU of the sandboxes' links; by default the host's uplink's."),
    ] = None,
    internal: Annotated[
        bool, typer.Option("--internal", help="No route out and no NAT: sandboxes reach each other and the host only.")
    ] = False,
    no_host_access: Annotated[
        bool,
        typer.Option("--no-host-access", help="Its sandboxes may not open connections to the host's own addresses."),
    ] = False,
) -> None:
    """Create a network: a bridge holding the gateway address, an address pool, NAT rules."""
    _require_root()
    from nsrun.networks import manager
    from nsrun.networks.spec import NetworkRequest
    from nsrun.state.paths import StateDirs
    from nsrun.validate import parse_address, parse_subnet, validate_ifname, validate_mtu, validate_name

    validate_name(name)
    subnets = [parse_subnet(text) for text in subnet or ()]
    v4 = [s for s in subnets if isinstance(s, ipaddress.IPv4Network)]
    v6 = [s for s in subnets if isinstance(s, ipaddress.IPv6Network)]
    if len(v4) > 1 or len(v6) > 1:
        raise UsageError("invalid --subnet", "give at most one IPv4 and one IPv6 subnet")
    parsed_subnet = v4[0] if v4 else None
    parsed_gateway = parse_address(gateway, option="--gateway") if gateway is not None else None
    if bridge is not None:
        validate_ifname(bridge)
    if mtu is not None:
        validate_mtu(mtu)
    with contextlib.closing(_host()) as ipr:
        request = NetworkRequest(
            name,
            subnet=parsed_subnet,
            subnet6=v6[0] if v6 else None,
            gateway=parsed_gateway,
            bridge=bridge,
            mtu=mtu,
            internal=internal,
            no_host_access=no_host_access,
        )
        spec = manager.create_network(StateDirs(), ipr, request)
    typer.echo(f"{spec.name} {spec.subnet} gateway {spec.gateway} bridge {spec.bridge}")


@network_app.command("ls")
def network_ls() -> None:
    """List networks and how many sandboxes use each."""
    _require_root()
    from nsrun.networks import manager
    from nsrun.state.paths import StateDirs

    dirs = StateDirs()
    rows = [("NAME", "SUBNET", "GATEWAY", "BRIDGE", "FIREWALL", "MTU", "INTERNAL", "SANDBOXES")]
    with contextlib.closing(_host()) as ipr:
        for spec in manager.network_store(dirs).all():
            users = len(manager.live_leases(dirs, ipr, spec.name))
            mtu = str(spec.mtu or "uplink")
            internal = "yes" if spec.internal else "no"
            rows.append(
                (spec.name, str(spec.subnet), str(spec.gateway), spec.bridge, spec.firewall, mtu, internal, str(users))
            )
    _print_table(rows)


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@network_app.command("inspect")
def network_inspect(name: Annotated[str, typer.Argument(help="Network name.")]) -> None:
    """Show a network's definition and its sandboxes as JSON."""
    _require_root()
    from dataclasses import asdict

    from nsrun.errors import NotFoundError
    from nsrun.networks import manager
    from nsrun.state.paths import StateDirs

    dirs = StateDirs()
    spec = manager.network_store(dirs).get(name)
    if spec is None:
        raise NotFoundError(f"network {name!r}", "no such network", "see `nsrun network ls`")
    with contextlib.closing(_host()) as ipr:
        leases = manager.live_leases(dirs, ipr, name)
    data = spec.to_dict() | {"sandboxes": [asdict(lease) for lease in leases]}
    typer.echo(json.dumps(data, indent=2))


@network_app.command("rm")
def network_rm(name: Annotated[str, typer.Argument(help="Network name.")]) -> None:
    """Remove a network, its bridge and its rules; refused while a sandbox uses it."""
    _require_root()
    from nsrun.networks import manager
    from nsrun.state.paths import StateDirs

    with contextlib.closing(_host()) as ipr:
        manager.remove_network(StateDirs(), ipr, name)
    typer.echo(name)


@app.command("ls")
def list_sandboxes(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List running sandboxes: name, pid, network, addresses, ports, command, age."""
    import time

    _require_root()
    from nsrun.launch.records import live_sandboxes
    from nsrun.state.registry import record_data
    from nsrun.validate import parse_publish

    records = live_sandboxes()
    if as_json:
        typer.echo(json.dumps([record_data(r) | {"age": round(time.time() - r.created, 1)} for r in records], indent=2))
        return
    rows = [("NAME", "PID", "NETWORK", "ADDRESSES", "PORTS", "COMMAND", "AGE")]
    for r in records:
        age = _age(time.time() - r.created)
        command = " ".join(r.command)
        command = command if len(command) <= 40 else command[:37] + "..."  # noqa: PLR2004
        pid = str(r.child_pid or r.pid)
        ports = ",".join(str(parse_publish(spec)) for spec in r.ports) or "-"
        rows.append((r.name, pid, r.network, ",".join(r.addresses) or "-", ports, command, age))
    _print_table(rows)


def _age(seconds: float) -> str:
    if seconds < 60:  # noqa: PLR2004
        return f"{seconds:.0f}s"
    if seconds < 3600:  # noqa: PLR2004
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def exec_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name or id of a running sandbox.", show_default=False)],
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
        str | None, typer.Option("--workdir", "-w", metavar="DIR", help="Working directory (default: the sandbox's).")
    ] = None,
) -> None:
    """Run CMD inside a running sandbox (its network, PID, mount, UTS and IPC namespaces), with its
    confinement and its user; exits with CMD's status. Options may also follow NAME."""
    _require_root()
    from nsrun.cli.entry import die_by
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
        die_by(signum)
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
            raise UsageError(f"nsrun exec {key}", "it needs a value")
        field = _EXEC_OPTIONS[key]
        if field == "env":
            found.setdefault("env", []).append(value)
        else:
            found[field] = value
        index += 1
    return found, []


@app.command("doctor")
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


# -- entry point ----------------------------------------------------------------------------------


def _print_error(err: BaseException, *, prefix: str = "") -> None:
    if _state["debug"]:
        traceback.print_exception(err, file=sys.stderr)
    print(f"nsrun: {prefix}{err}", file=sys.stderr)  # the one line a user reads


def run_cli(argv: Sequence[str]) -> int:
    """Parse and run one command line; its exit status (errors printed as one line)."""
    from typer import _click as click

    _state["debug"] = os.environ.get("NSRUN_DEBUG", "") not in ("", "0")
    try:
        status = app(args=list(argv), prog_name="nsrun", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        typer.echo(err.ctx.get_help() if err.ctx else "", err=True)
        status = EXIT_USAGE
    except click.exceptions.UsageError as err:
        hint = f"see '{err.ctx.command_path} --help'" if err.ctx else "see 'nsrun --help'"
        _print_error(UsageError("invalid usage", err.format_message().rstrip("."), hint))
        status = EXIT_USAGE
    except NsrunError as err:
        _print_error(err)
        status = err.exit_code
    except Exception as err:  # noqa: BLE001  # never a bare traceback for the user
        _print_error(NsrunError("internal error", f"{type(err).__name__}: {err}", "rerun with --debug and report it"))
        status = EXIT_NSRUN_FAILED
    return status if isinstance(status, int) else 0
