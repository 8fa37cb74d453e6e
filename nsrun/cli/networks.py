"""`nsrun network create|ls|inspect|rm`: named networks."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from typing import Annotated, Any

import typer

from nsrun.cli.common import Command, network_app, print_table, require_root, warn_unlisted
from nsrun.errors import UsageError

__all__ = ["network_create", "network_inspect", "network_ls", "network_rm"]


def _host() -> Any:
    from nsrun.net import netlink

    return netlink.Rtnl()


@network_app.command("create", cls=Command, short_help="Create a network.")
def network_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Network name.", show_default=False)],
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
    require_root()
    from nsrun.networks import manager
    from nsrun.networks.spec import NetworkRequest
    from nsrun.state.paths import StateDirs
    from nsrun.validate import parse_address, parse_subnet, validate_ifname, validate_mtu, validate_name

    validate_name(name)
    subnets = [parse_subnet(text) for text in subnet or ()]
    v4 = [s for s in subnets if isinstance(s, ipaddress.IPv4Network)]
    v6 = [s for s in subnets if isinstance(s, ipaddress.IPv6Network)]
    if len(v4) > 1 or len(v6) > 1:
        raise UsageError("invalid --subnet", "more than one of a family", "give at most one IPv4 and one IPv6 subnet")
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


@network_app.command("ls", cls=Command, short_help="List networks.")
def network_ls() -> None:
    """List networks and how many sandboxes use each."""
    require_root()
    from nsrun.networks import manager
    from nsrun.state.paths import StateDirs

    dirs = StateDirs()
    store = manager.network_store(dirs)
    rows = [("NAME", "SUBNET", "GATEWAY", "BRIDGE", "FIREWALL", "MTU", "INTERNAL", "SANDBOXES")]
    with contextlib.closing(_host()) as ipr:
        for spec in store.all():
            users = len(manager.live_leases(dirs, ipr, spec.name))
            mtu = str(spec.mtu or "uplink")
            internal = "yes" if spec.internal else "no"
            rows.append(
                (spec.name, str(spec.subnet), str(spec.gateway), spec.bridge, spec.firewall, mtu, internal, str(users))
            )
    print_table(rows)
    warn_unlisted(store.corrupt())


@network_app.command("inspect", cls=Command, short_help="Show a network as JSON.")
def network_inspect(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Network name.", show_default=False)],
) -> None:
    """Show a network's definition and its sandboxes as JSON."""
    require_root()
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


@network_app.command("rm", cls=Command, short_help="Remove a network.")
def network_rm(name: Annotated[str, typer.Argument(metavar="NAME", help="Network name.", show_default=False)]) -> None:
    """Remove a network, its bridge and its rules; refused while a sandbox uses it."""
    require_root()
    from nsrun.networks import manager
    from nsrun.state.paths import StateDirs

    with contextlib.closing(_host()) as ipr:
        manager.remove_network(StateDirs(), ipr, name)
    typer.echo(name)
