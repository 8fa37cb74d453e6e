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

__all__ = ["app", "main"]

_ARGV_KEY: Final = "nsrun.argv"
_EXIT_INTERRUPTED: Final = 130
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
        str,
        typer.Option("--network", metavar="NAME", help="Network to join (the default one is created on first use)."),
    ] = "nsrun",
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
        typer.Option("--user", "-u", metavar="USER[:GROUP]", help="Run the command as this user, without root."),
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
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks with errors.")] = False,
) -> None:
    """Run CMD in its own network namespace, on a host bridge, with an address from the network's
    pool, a default route and NAT to the outside. Everything from CMD on belongs to the command.

    \b
    Examples:
      sudo nsrun -- curl -sI https://example.org
      sudo nsrun --network lab --ip 10.123.0.7 -- ./server
      sudo nsrun --name web --user www-data -- python3 -m http.server 8000
      sudo nsrun --net none -- ./untrusted
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
    from nsrun.sandbox import SandboxRequest

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
    )
    raise typer.Exit(_run(request))


def _run(request: Any) -> int:
    from nsrun.process.supervisor import Supervisor
    from nsrun.sandbox import Sandbox

    supervisor = Supervisor()
    with supervisor.handling_signals():
        sandbox = Sandbox(request)
        sandbox.setup()
        try:
            status = sandbox.run(supervisor)
        finally:
            try:
                sandbox.teardown()
            except NsrunError as err:  # the command's status wins; say what was left behind
                _print_error(err, prefix="warning: ")
    return status


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
) -> None:
    """Create a network: a bridge holding the gateway address, an address pool, NAT rules."""
    from nsrun.networks import manager
    from nsrun.networks.spec import NetworkRequest
    from nsrun.paths import StateDirs
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
        )
        spec = manager.create_network(StateDirs(), ipr, request)
    typer.echo(f"{spec.name} {spec.subnet} gateway {spec.gateway} bridge {spec.bridge}")


@network_app.command("ls")
def network_ls() -> None:
    """List networks and how many sandboxes use each."""
    from nsrun.networks import manager
    from nsrun.networks.store import NetworkStore
    from nsrun.paths import StateDirs

    dirs = StateDirs()
    rows = [("NAME", "SUBNET", "GATEWAY", "BRIDGE", "FIREWALL", "MTU", "INTERNAL", "SANDBOXES")]
    with contextlib.closing(_host()) as ipr:
        for spec in NetworkStore(dirs.networks).all():
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
    from dataclasses import asdict

    from nsrun.errors import NotFoundError
    from nsrun.networks import manager
    from nsrun.networks.store import NetworkStore
    from nsrun.paths import StateDirs

    dirs = StateDirs()
    spec = NetworkStore(dirs.networks).get(name)
    if spec is None:
        raise NotFoundError(f"network {name!r}", "no such network", "see `nsrun network ls`")
    with contextlib.closing(_host()) as ipr:
        leases = manager.live_leases(dirs, ipr, name)
    data = spec.to_dict() | {"sandboxes": [asdict(lease) for lease in leases]}
    typer.echo(json.dumps(data, indent=2))


@network_app.command("rm")
def network_rm(name: Annotated[str, typer.Argument(help="Network name.")]) -> None:
    """Remove a network, its bridge and its rules; refused while a sandbox uses it."""
    from nsrun.networks import manager
    from nsrun.paths import StateDirs

    with contextlib.closing(_host()) as ipr:
        manager.remove_network(StateDirs(), ipr, name)
    typer.echo(name)


@app.command("ls")
def list_sandboxes(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List running sandboxes: name, pid, network, addresses, ports, command, age."""
    import time

    from nsrun.sandbox import live_sandboxes
    from nsrun.validate import parse_publish

    records = live_sandboxes()
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps([asdict(r) | {"age": round(time.time() - r.created, 1)} for r in records], indent=2))
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
    name: Annotated[str, typer.Argument(help="Name or id of a running sandbox.")],
    argv: Annotated[list[str], typer.Argument(metavar="[--] CMD [ARGS]...", help="The command and its arguments.")],
    user: Annotated[str | None, typer.Option("--user", "-u", metavar="USER[:GROUP]", help="Run as this user.")] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", metavar="KEY=VALUE", help="Set a variable; repeatable.")
    ] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w", metavar="DIR", help="Working directory.")] = None,
) -> None:
    """Run CMD inside a running sandbox's network, mount and UTS namespaces; exits with its status."""
    from nsrun.sandbox import exec_in

    command = argv[1:] if argv[:1] == ["--"] else argv
    raise typer.Exit(exec_in(name, command, user=user, env=env or (), workdir=workdir))


@app.command("doctor")
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check this host for what nsrun needs and what gets in its way; one row per check with
    ok/warn/fail and the exact fix. Exit status 0 when no check fails, 1 otherwise."""
    from nsrun import doctor as checks
    from nsrun.paths import StateDirs

    results = checks.run_checks(StateDirs())
    typer.echo(checks.render_json(results) if as_json else checks.render_table(results))
    raise typer.Exit(checks.exit_code(results))


# -- entry point ----------------------------------------------------------------------------------


def _print_error(err: BaseException, *, prefix: str = "") -> None:
    if _state["debug"]:
        traceback.print_exception(err, file=sys.stderr)
    print(f"nsrun: {prefix}{err}", file=sys.stderr)  # the one line a user reads


def main(argv: Sequence[str] | None = None) -> None:
    from typer import _click as click

    _state["debug"] = os.environ.get("NSRUN_DEBUG", "") not in ("", "0")
    try:
        status = app(args=argv, prog_name="nsrun", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        typer.echo(err.ctx.get_help() if err.ctx else "", err=True)
        status = EXIT_USAGE
    except click.exceptions.UsageError as err:
        hint = f"see '{err.ctx.command_path} --help'" if err.ctx else "see 'nsrun --help'"
        _print_error(UsageError("invalid usage", err.format_message().rstrip("."), hint))
        status = EXIT_USAGE
    except typer.Abort:
        status = _EXIT_INTERRUPTED
    except NsrunError as err:
        _print_error(err)
        status = err.exit_code
    except KeyboardInterrupt:
        status = _EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001  # never a bare traceback for the user
        _print_error(NsrunError("internal error", f"{type(err).__name__}: {err}", "rerun with --debug and report it"))
        status = EXIT_NSRUN_FAILED
    sys.exit(status if isinstance(status, int) else 0)
