"""Network lifecycle on the host: create, ensure (at every launch), remove; and stale-lease sweeps."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
from typing import TYPE_CHECKING

from nsrun.errors import ConflictError, NotFoundError, NsrunError
from nsrun.firewall import host as firewall
from nsrun.firewall.select import requested_backend, resolve_auto
from nsrun.ipam.allocator import reclaim_stale
from nsrun.ipam.leases import LeaseStore
from nsrun.net import netlink, sysctl
from nsrun.networks.spec import (
    DEFAULT_NETWORK,
    AnyNetwork,
    NetworkRequest,
    NetworkSpec,
    auto_subnet_candidates,
    first_overlap,
    make_spec,
)
from nsrun.networks.store import NetworkStore
from nsrun.process import liveness
from nsrun.state import files
from nsrun.state.locks import locked

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from nsrun.ipam.leases import Lease
    from nsrun.net.netlink import Rtnl
    from nsrun.state.paths import StateDirs

__all__ = [
    "NetworkExistsError",
    "any_stale_lease",
    "create_network",
    "ensure_host_side",
    "ensure_loaded",
    "firewall_memo",
    "holds_gateway",
    "live_leases",
    "load_network",
    "remove_network",
    "renamed_bridge",
    "sweep_stale_leases",
]


class NetworkExistsError(ConflictError):
    """A network of that name exists (a concurrent first launch may just have created it)."""


def network_store(dirs: StateDirs) -> NetworkStore:
    return NetworkStore(dirs.networks, root=dirs.lib)


def lease_store(dirs: StateDirs, name: str) -> LeaseStore:
    return LeaseStore(dirs.leases(name), root=dirs.run)


def networks_lock(dirs: StateDirs) -> contextlib.AbstractContextManager[None]:
    dirs.ensure(dirs.run)
    return locked(dirs.lock, "the networks lock")


def firewall_lock(dirs: StateDirs) -> contextlib.AbstractContextManager[None]:
    """Serialises changes of network rules across networks: one network's last teardown deletes
    nsrun's table, which must not happen between another's check and its repair."""
    dirs.ensure(dirs.run)
    return locked(dirs.run / "firewall.lock", "the firewall lock")


def firewall_memo(dirs: StateDirs) -> Path:
    """Where the networks' last firewall check is remembered (`nsrun.firewall.checked`)."""
    from nsrun.firewall.checked import MEMO_NAME

    dirs.ensure(dirs.run)
    return dirs.run / MEMO_NAME


def _taken_subnets(ipr: Rtnl, store: NetworkStore, exclude: str | None = None) -> list[tuple[AnyNetwork, str]]:
    taken: list[tuple[AnyNetwork, str]] = []
    for spec in store.all():
        if spec.name != exclude:
            taken += [(subnet, f"nsrun network {spec.name!r}") for subnet in (spec.subnet, spec.subnet6) if subnet]
    ours = {spec.bridge for spec in store.all()}
    routes = netlink.host_routes(ipr) + netlink.host_routes(ipr, socket.AF_INET6)
    taken += [(route.network, route.label) for route in routes if route.ifname not in ours]
    return taken


def create_network(
    dirs: StateDirs,
    ipr: Rtnl,
    request: NetworkRequest,
    check: Callable[[NetworkSpec], None] | None = None,
) -> NetworkSpec:
    """Validate against every network and host route (and `check`), record the definition, set up
    its bridge and rules; on any failure nothing of it stays."""
    store = network_store(dirs)
    name, subnet = request.name, request.subnet
    with networks_lock(dirs):
        if store.get(name) is not None:
            raise NetworkExistsError(
                f"creating network {name!r}", "a network of that name exists", "choose another name"
            )
        taken = _taken_subnets(ipr, store)
        if subnet is None:
            subnet = next((c for c in auto_subnet_candidates() if first_overlap(c, taken) is None), None)
            if subnet is None:
                raise NsrunError(f"creating network {name!r}", "no free private /24 left", "give one with --subnet")
        firewall_backend = _wanted_backend(None)
        spec = make_spec(
            name,
            subnet,
            gateway=request.gateway,
            bridge=request.bridge,
            firewall=firewall_backend,
            mtu=request.mtu,
            internal=request.internal,
            subnet6=request.subnet6,
            no_host_access=request.no_host_access,
        )
        if spec.subnet6 is not None and firewall_backend == "iptables":
            raise ConflictError(
                f"creating network {name!r}",
                "IPv6 needs the nftables backend (python-iptables drives one address family per process)",
                "set NSRUN_FIREWALL=nftables",
            )
        for own in (spec.subnet, spec.subnet6):
            clash = first_overlap(own, taken) if own is not None else None
            if clash:
                raise ConflictError(
                    f"creating network {name!r}", f"{own} overlaps {clash[0]} ({clash[1]})", "choose another --subnet"
                )
        if check is not None:
            check(spec)
        user = next((other.name for other in store.all() if other.bridge == spec.bridge), None)
        if user:
            raise ConflictError(
                f"creating network {name!r}",
                f"interface {spec.bridge!r} is already the bridge of network {user!r}",
                "choose another --bridge",
            )
        if netlink.link_exists(ipr, spec.bridge):
            fix = "choose another --bridge"
            if request.bridge is None:
                # nsrun's own name for it: a bridge left behind by an nsrun whose definition was removed
                fix = f"if nothing uses it, remove it: ip link del {spec.bridge}; or choose another --bridge"
            raise ConflictError(
                f"creating network {name!r}", f"an interface {spec.bridge!r} already exists on the host", fix
            )
        with contextlib.ExitStack() as undo:
            store.add(spec)
            undo.callback(store.remove, spec.name)
            undo.callback(_remove_host_side, dirs, ipr, spec)
            ensure_host_side(dirs, ipr, spec)
            undo.pop_all()
    return spec


def load_network(
    dirs: StateDirs, ipr: Rtnl, name: str, check: Callable[[NetworkSpec], None] | None = None
) -> NetworkSpec:
    """The network's definition, passed through `check`; the default network is created on first
    use, but only once `check` accepted it, so a rejected request leaves no network behind."""
    store = network_store(dirs)
    spec = store.get(name)
    if spec is not None:
        if check is not None:
            check(spec)
        return spec
    if name != DEFAULT_NETWORK:
        raise NotFoundError(
            f"network {name!r}", "no such network", f"create it with `nsrun network create {name} --subnet CIDR`"
        )
    try:
        return create_network(dirs, ipr, NetworkRequest(DEFAULT_NETWORK), check=check)
    except NetworkExistsError:
        pass  # a concurrent first launch created it first: use that one
    spec = store.get(name)
    if spec is None:
        raise NsrunError(f"network {name!r}", "it was removed while being created", "retry")
    if check is not None:
        check(spec)
    return spec


def ensure_loaded(dirs: StateDirs, spec: NetworkSpec, store: LeaseStore | None = None) -> None:
    """The network still exists as loaded; call under its lease lock, which `remove_network` holds
    too. If it went, the lease directory this launch made for it goes as well."""
    if network_store(dirs).get(spec.name) == spec:
        return
    if store is not None and not store.leases():
        files.remove_tree(store.directory)
    raise NotFoundError(f"network {spec.name!r}", "it was removed or changed while the sandbox started", "retry")


def unleased_addresses(spec: NetworkSpec, store: LeaseStore) -> frozenset[ipaddress.IPv4Address]:
    """Addresses running sandboxes hold although no lease names them (nsrun's state under /run
    was lost, e.g. `rm -rf /run/nsrun/*`): their bridge-port filters still say which. Looked for
    only until a launch finds none (the lease directory is then marked intact): a listing of
    every filter at every launch would make launches slower the more sandboxes run."""
    if store.intact():
        return frozenset()
    leased = {lease.sandbox_id for lease in store.leases()}
    found = set()
    for sandbox_id, address in firewall.addresses_in_use().items():
        if sandbox_id in leased:
            continue
        with contextlib.suppress(ValueError):
            candidate = ipaddress.IPv4Address(address)
            if candidate in spec.subnet:
                found.add(candidate)
    if not found:
        store.mark_intact()
    return frozenset(found)


def check_subnet_still_free(spec: NetworkSpec, ipr: Rtnl) -> None:
    """A route that appeared since the network was created (a VPN came up) would take part of the
    sandboxes' traffic, or theirs would shadow it: refuse rather than misroute. (The main table
    from /proc: at every launch, a netlink dump would cost more than the rest of the check.)"""
    from nsrun.net.routes import main_routes

    candidates = [r for r in main_routes() if r.network.prefixlen and r.ifname != spec.bridge]
    routes: list[tuple[AnyNetwork, str]] = [(r.network, r.label) for r in candidates]
    clash = first_overlap(spec.subnet, routes)
    if clash is None:
        return
    ifname = candidates[routes.index(clash)].ifname
    if holds_gateway(ipr, spec, ifname):
        raise ConflictError(f"network {spec.name!r}", *renamed_bridge(spec, ifname))
    raise ConflictError(
        f"network {spec.name!r}",
        f"its subnet {spec.subnet} now overlaps {clash[0]} ({clash[1]})",
        f"recreate it elsewhere: nsrun network rm {spec.name} && nsrun network create {spec.name}",
    )


def holds_gateway(ipr: Rtnl, spec: NetworkSpec, ifname: str) -> bool:
    """Whether interface `ifname`, not the network's bridge, holds the network's gateway address:
    its bridge under another name (`ip link set nsrun0 name x`), not another network's route."""
    if ifname in ("", "*", spec.bridge):  # a route without one interface
        return False
    try:
        addresses = netlink.interface_addresses(ipr, ifname)
    except NsrunError:
        return False  # what the overlap itself says is enough
    return f"{spec.gateway}/{spec.subnet.prefixlen}" in (addresses or [])


def renamed_bridge(spec: NetworkSpec, ifname: str) -> tuple[str, str]:
    """Why and what to do, for a network whose gateway address is on `ifname` (see holds_gateway)."""
    why = f"its gateway {spec.gateway} is on {ifname}, not on its bridge {spec.bridge}: the bridge was renamed"
    fix = (
        f"rename it back with `ip link set {ifname} name {spec.bridge}`, or delete it with"
        f" `ip link del {ifname}` and the next launch makes {spec.bridge} again"
    )
    return why, fix


def _wanted_backend(recorded: str | None) -> str:
    """NSRUN_FIREWALL when set; else the backend the network was created with; else auto's pick."""
    requested = requested_backend()
    if requested != "auto":
        return requested
    return recorded or resolve_auto()[0]


@dataclasses.dataclass(frozen=True)
class HostSide:
    """What `ensure_host_side` found and did."""

    bridge_index: int
    spec: NetworkSpec
    repaired: bool  # rules were missing (a flush, a firewall reload): its sandboxes' own need it too


def ensure_host_side(
    dirs: StateDirs, ipr: Rtnl, spec: NetworkSpec, store: LeaseStore | None = None, *, launching: str = ""
) -> HostSide:
    """Bridge, gateway address, forwarding and firewall rules in place; repairs whatever is missing
    (after a reboot, `nft flush ruleset`, a firewall reload). A network whose rules another
    backend installed is moved to the wanted one, so its record always names where its rules are.
    With `store` (its lease store, locked by the caller), veths of its running sandboxes are
    ports of the bridge again if it had to be recreated; not `launching`, a launch's own veth,
    which joins once its filter is in place."""
    check_subnet_still_free(spec, ipr)
    addresses: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = [(spec.gateway, spec.subnet.prefixlen)]
    if spec.subnet6 is not None and spec.gateway6 is not None:
        addresses.append((spec.gateway6, spec.subnet6.prefixlen))
    index, created = netlink.ensure_bridge(ipr, spec.bridge, addresses)
    if created and store is not None:
        running = [lease.veth for lease in store.leases() if not _is_stale(lease) and lease.veth != launching]
        netlink.ensure_ports(ipr, index, running)
    if not spec.internal:
        sysctl.ensure_ip_forward(ipv6=spec.subnet6 is not None)
    wanted = _wanted_backend(spec.firewall)
    if spec.subnet6 is not None and wanted == "iptables":
        raise ConflictError(
            f"network {spec.name!r}",
            "it is dual-stack, and IPv6 needs the nftables backend",
            "set NSRUN_FIREWALL=nftables",
        )
    if wanted != spec.firewall:
        # the definition changes first: if it cannot be written, the old rules stay in place
        old = spec
        spec = dataclasses.replace(spec, firewall=wanted)
        network_store(dirs).replace(spec)
        with firewall_lock(dirs):
            firewall.teardown_network_firewall(old.firewall, old.rules)
    with firewall_lock(dirs):
        repaired = firewall.ensure_network_firewall(spec.firewall, spec.rules, memo=firewall_memo(dirs))
    # route_localnet lets the host's 127.0.0.1 reach published ports; it is only ever on while
    # the guard that drops loopback destinations not arriving on lo is in place
    sysctl.set_route_localnet(spec.bridge, enabled=not spec.internal and spec.firewall != "none")
    return HostSide(index, spec, repaired or created)


def _remove_host_side(dirs: StateDirs, ipr: Rtnl, spec: NetworkSpec) -> None:
    """Rules, then bridge: each step runs even if the other failed; failures are reported together."""
    failures = []
    steps: list[tuple[str, Callable[[], None]]] = [
        ("removing its firewall rules", lambda: _teardown_rules(dirs, spec)),
        (f"deleting bridge {spec.bridge}", lambda: netlink.delete_link(ipr, spec.bridge)),
    ]
    for step, action in steps:
        try:
            action()
        except NsrunError as err:
            failures.append(f"{step}: {err}")
    if failures:
        raise NsrunError(f"removing network {spec.name!r}", "; ".join(failures), "run `nsrun doctor`")


def _teardown_rules(dirs: StateDirs, spec: NetworkSpec) -> None:
    with firewall_lock(dirs):
        firewall.teardown_network_firewall(spec.firewall, spec.rules)
        if not any(other.name != spec.name for other in network_store(dirs).all()):
            firewall.remove_bridge_filters()  # the last network: no sandbox is left to filter


def reclaim_lease(ipr: Rtnl, lease: Lease) -> None:
    """Undo what a dead holder left: processes still in its namespace, its host veth."""
    # the veth exists exactly as long as the namespace does, so its inode cannot have been reused
    if netlink.link_exists(ipr, lease.veth):
        liveness.kill_netns_members(lease.netns_inode)
        netlink.delete_link(ipr, lease.veth)


def _is_stale(lease: Lease) -> bool:
    if liveness.holder_alive(lease.pid, lease.start_time, lease.pidns):
        return False
    return not (lease.attached and liveness.attachment_alive(lease.veth))


def any_stale_lease(store: LeaseStore) -> bool:
    """Whether `sweep_stale_leases` would reclaim anything; read without the address lock."""
    return bool(store.partials()) or any(_is_stale(lease) for lease in store.leases())


def sweep_stale_leases(ipr: Rtnl, store: LeaseStore) -> int:
    """Reclaim leases whose holder is gone. Call under `store.locked()`."""
    return reclaim_stale(store, _is_stale, lambda lease: reclaim_lease(ipr, lease))


def hosts_path(dirs: StateDirs, spec: NetworkSpec) -> Path:
    return dirs.network_run(spec.name) / "hosts"


def refresh_hosts(dirs: StateDirs, spec: NetworkSpec, store: LeaseStore) -> Path:
    """Rebuild the network's shared hosts file from its leases. Call under `store.locked()`."""
    from nsrun import etc

    entries: list[tuple[str, list[str]]] = []
    for lease in store.leases():
        names = [n for n in (lease.name, lease.hostname, lease.sandbox_id) if n]
        entries.append((lease.address, names))
        address6 = spec.address6_for(ipaddress.IPv4Address(lease.address))
        if address6 is not None:
            entries.append((str(address6), names))
    path = hosts_path(dirs, spec)
    dirs.ensure(path.parent)
    files.rewrite_in_place(path, etc.network_hosts(entries))
    return path


def _host_lines(spec: NetworkSpec, lease: Lease) -> list[str]:
    from nsrun import etc

    names = [n for n in (lease.name, lease.hostname, lease.sandbox_id) if n]
    entries = [(lease.address, names)]
    address6 = spec.address6_for(ipaddress.IPv4Address(lease.address))
    if address6 is not None:
        entries.append((str(address6), names))
    return etc.host_lines(entries)


def add_host_entries(dirs: StateDirs, spec: NetworkSpec, store: LeaseStore, lease: Lease) -> Path:
    """The sandbox's names in the network's hosts file, added to what is there (a launch must not
    read every lease); rebuilt from the leases if the file is missing. Call under `store.locked()`."""
    from nsrun import etc

    path = hosts_path(dirs, spec)
    current = files.read_file(path)
    if current is None:
        return refresh_hosts(dirs, spec, store)
    files.rewrite_in_place(path, etc.network_hosts_of([*etc.network_host_lines(current), *_host_lines(spec, lease)]))
    return path


def remove_host_entries(dirs: StateDirs, spec: NetworkSpec, lease: Lease) -> None:
    """The sandbox's lines out of the network's hosts file. Call under its lease lock."""
    from nsrun import etc

    path = hosts_path(dirs, spec)
    current = files.read_file(path)
    if current is None:
        return
    gone = set(_host_lines(spec, lease))
    kept = [line for line in etc.network_host_lines(current) if line not in gone]
    files.rewrite_in_place(path, etc.network_hosts_of(kept))


def live_leases(dirs: StateDirs, ipr: Rtnl, name: str) -> list[Lease]:
    store = lease_store(dirs, name)
    with store.locked():
        sweep_stale_leases(ipr, store)
        return store.leases()


def remove_network(dirs: StateDirs, ipr: Rtnl, name: str) -> None:
    store = network_store(dirs)
    with networks_lock(dirs):
        spec = store.get(name)
        if spec is None:
            raise NotFoundError(f"removing network {name!r}", "no such network", "see `nsrun network ls`")
        leases = lease_store(dirs, name)
        with leases.locked():
            sweep_stale_leases(ipr, leases)
            users = leases.leases()
            if users:
                pids = ", ".join(str(lease.pid) for lease in users)
                raise ConflictError(
                    f"removing network {name!r}",
                    f"{len(users)} sandbox(es) still use it (nsrun pids {pids})",
                    "end them first",
                )
            store.remove(name)
            _remove_host_side(dirs, ipr, spec)
            # the directory goes while its lock is held: no launch can be between the two
            files.remove_tree(dirs.leases(name))
            files.remove_tree(dirs.network_run(name))
