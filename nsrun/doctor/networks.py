"""Checks of each network (bridge, its running sandboxes' ports, rules, subnet) and of each
running sandbox's own rules. Something missing while sandboxes run on it cuts them off: fail;
missing with none running (after a reboot) is restored by the next launch: warn."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from nsrun.doctor.report import Check, Status
from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from nsrun.doctor.state import View
    from nsrun.networks.spec import NetworkSpec

__all__ = ["check_networks", "check_sandboxes"]


def _repair(spec: NetworkSpec) -> str:
    return f"nsrun --network {spec.name} -- true (every launch restores it)"


def _severity(view: View, spec: NetworkSpec) -> Status:
    return Status.FAIL if view.busy(spec.name) else Status.WARN


def check_networks(view: View, ipr: Any) -> Iterator[Check]:
    for spec in view.networks:
        if ipr is not None:
            yield from _bridge(view, ipr, spec)
        yield from _rules(view, spec)
    if ipr is not None:
        yield from _overlaps(view, ipr)


def _bridge(view: View, ipr: Any, spec: NetworkSpec) -> Iterator[Check]:
    from nsrun.net import netlink

    name = f"bridge of network {spec.name}"
    ports = netlink.bridge_ports(ipr, spec.bridge)
    if ports is None:
        running = "its running sandboxes are cut off" if view.busy(spec.name) else "the next launch recreates it"
        yield Check(name, _severity(view, spec), f"{spec.bridge} is missing: {running}", _repair(spec))
        return
    detached = sorted(lease.veth for lease in view.leases.get(spec.name, []) if lease.veth not in ports)
    detached = [veth for veth in detached if netlink.link_exists(ipr, veth)]
    if detached:
        yield Check(
            name,
            Status.FAIL,
            f"{', '.join(detached)} of running sandboxes are not ports of {spec.bridge}: they are cut off",
            _repair(spec) + ", ports included",
        )
    else:
        yield Check(name, Status.OK, f"{spec.bridge} is up with its sandboxes' ports")


def _rules(view: View, spec: NetworkSpec) -> Iterator[Check]:
    from nsrun.firewall import host
    from nsrun.firewall.base import open_backend

    name = f"rules of network {spec.name}"
    if spec.firewall == "none":
        yield Check(name, Status.OK, "firewall none: nsrun manages no rules")
        return
    try:
        present = open_backend(spec.firewall).network_present(spec.rules)
        coexist = host.coexistence_status(spec.firewall, spec.rules)
    except NsrunError as err:
        yield Check(name, Status.FAIL, str(err), err.fix or "run `nsrun doctor` as root")
        return
    yield _guard_check(spec)
    if present:
        yield Check(name, Status.OK, f"{spec.firewall}: masquerade and forward rules in place")
    else:
        why = "its running sandboxes are cut off" if view.busy(spec.name) else "the next launch restores them"
        yield Check(
            name,
            _severity(view, spec),
            f"{spec.firewall}: rules missing (a reload, a flush, a reboot?): {why}",
            _repair(spec),
        )
    for chain, ok in coexist:
        detail = f"{chain.describe()} drops by policy"
        if ok:
            yield Check(f"foreign DROP ({spec.name})", Status.OK, f"{detail}; nsrun's accepts are in place")
        else:
            yield Check(
                f"foreign DROP ({spec.name})",
                _severity(view, spec),
                f"{detail} and nsrun's accepts are missing",
                _repair(spec),
            )


def _guard_check(spec: NetworkSpec) -> Check:
    """route_localnet lets the host's 127.0.0.1 reach published ports; without the loopback guard
    it would also let a sandbox (given NET_ADMIN) reach the host's loopback services."""
    from nsrun.firewall.base import open_backend
    from nsrun.net import sysctl

    name = f"loopback guard ({spec.name})"
    localnet = sysctl.route_localnet(spec.bridge)
    try:
        guarded = open_backend(spec.firewall).guard_present(spec.rules)
    except NsrunError as err:
        return Check(name, Status.FAIL, str(err), "run `nsrun doctor` as root")
    if guarded:
        return Check(name, Status.OK, "loopback destinations not arriving on lo are dropped")
    if localnet:
        return Check(
            name,
            Status.FAIL,
            f"route_localnet is on for {spec.bridge} but the guard is missing: a sandbox given NET_ADMIN"
            " could reach the host's 127.0.0.1",
            f"nsrun --network {spec.name} -- true (restores the guard), or"
            f" sysctl -w net.ipv4.conf.{spec.bridge}.route_localnet=0",
        )
    return Check(name, Status.OK, f"route_localnet is off for {spec.bridge}")


def _overlaps(view: View, ipr: Any) -> Iterator[Check]:
    from nsrun.net import netlink
    from nsrun.networks.manager import holds_gateway, renamed_bridge
    from nsrun.networks.spec import first_overlap

    ours = {spec.bridge for spec in view.networks}
    candidates = [r for r in netlink.host_routes(ipr) if r.ifname not in ours]
    routes = [(r.network, r.label) for r in candidates]
    clashes = False
    for spec in view.networks:
        clash = first_overlap(spec.subnet, routes)
        if clash:
            clashes = True
            ifname = candidates[routes.index(clash)].ifname
            if holds_gateway(ipr, spec, ifname):
                why, fix = renamed_bridge(spec, ifname)
                yield Check(f"subnet of network {spec.name}", Status.FAIL, why, fix)
                continue
            yield Check(
                f"subnet of network {spec.name}",
                Status.FAIL,
                f"{spec.subnet} overlaps {clash[0]} ({clash[1]}): sandbox traffic may be misrouted",
                f"nsrun network rm {spec.name} && nsrun network create {spec.name} (a free subnet is picked)",
            )
    if view.networks and not clashes:
        yield Check("subnets", Status.OK, "no nsrun subnet overlaps a host route")


def check_sandboxes(view: View) -> Iterator[Check]:
    """Each running sandbox's own rules: its published ports, its bridge-port filter."""
    from nsrun.launch.records import missing_sandbox_rules

    by_name = {spec.name: spec for spec in view.networks}
    for record in view.records:
        spec = by_name.get(record.network)
        if spec is None or spec.firewall == "none":
            continue
        missing = []
        with contextlib.suppress(NsrunError):
            missing = missing_sandbox_rules(record)
        if missing:
            yield Check(
                f"sandbox {record.name}",
                Status.FAIL,
                f"its {' and '.join(missing)} are missing (a flush or a reload?)",
                _repair(spec),
            )
