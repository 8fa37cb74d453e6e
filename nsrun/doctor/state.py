"""What nsrun's state says, read without changing anything (doctor only looks), and what it left."""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nsrun.doctor.report import Check, Status
from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from nsrun.ipam.leases import Lease
    from nsrun.networks.spec import NetworkSpec
    from nsrun.state.paths import StateDirs
    from nsrun.state.registry import SandboxRecord

__all__ = ["View", "leftovers", "load"]


@dataclass
class View:
    dirs: StateDirs
    networks: list[NetworkSpec] = field(default_factory=list)
    records: list[SandboxRecord] = field(default_factory=list)  # live sandboxes
    stale_records: list[SandboxRecord] = field(default_factory=list)
    leases: dict[str, list[Lease]] = field(default_factory=dict)  # network -> leases of live holders
    stale: dict[str, list[Lease]] = field(default_factory=dict)
    problems: list[Check] = field(default_factory=list)

    def busy(self, network: str) -> bool:
        """Sandboxes run on it: what is missing now cuts them off (fail), not a later launch (warn)."""
        return bool(self.leases.get(network))


def _corrupt(err: NsrunError, path: str) -> Check:
    return Check(f"state file {path}", Status.FAIL, err.why, err.fix or f"remove {path}")


def _directories(dirs: StateDirs) -> Iterator[Check]:
    for root in (dirs.run, dirs.lib):
        try:
            info = os.lstat(root)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
            yield Check(
                f"state directory {root}",
                Status.FAIL,
                f"mode {stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}:"
                " others could read or forge nsrun's state",
                f"chown -R root:root {root} && chmod 700 {root} (the next nsrun fixes what is below)",
            )


def load(dirs: StateDirs) -> View:
    from nsrun.launch.records import is_stale, registry
    from nsrun.networks.manager import lease_store, network_store
    from nsrun.process import liveness
    from nsrun.state.schema import CorruptStateError

    view = View(dirs)
    view.problems += list(_directories(dirs))
    store = network_store(dirs)
    view.networks = store.all()
    view.problems += [_corrupt(err, err.path) for err in store.corrupt()]
    reg = registry(dirs)
    with contextlib.suppress(NsrunError):
        for item in reg._scan():  # noqa: SLF001  # doctor reads without the sweep that would reclaim
            if isinstance(item, CorruptStateError):
                view.problems.append(_corrupt(item, item.path))
            elif is_stale(item):
                view.stale_records.append(item)
            else:
                view.records.append(item)
    for spec in view.networks:
        leases = lease_store(dirs, spec.name)
        for lease in leases.leases():
            alive = liveness.holder_alive(lease.pid, lease.start_time, lease.pidns)
            (view.leases if alive else view.stale).setdefault(spec.name, []).append(lease)
        view.problems += [_corrupt(err, err.path) for err in leases.corrupt()]
    return view


def leftovers(view: View, ipr: Any) -> Iterator[Check]:
    from nsrun.net import netlink
    from nsrun.net.plan import HOST_VETH_PREFIX

    found = False
    for network, stale in sorted(view.stale.items()):
        found = True
        yield Check(
            f"leases of network {network}",
            Status.WARN,
            f"{len(stale)} stale (holder gone): {', '.join(lease.address for lease in stale)}",
            f"nsrun network inspect {network} (reclaims them)",
        )
    if view.stale_records:
        found = True
        names = ", ".join(record.name for record in view.stale_records)
        yield Check("sandbox records", Status.WARN, f"stale (shim gone): {names}", "nsrun ls (reclaims them)")
    live_veths = {lease.veth for leases in view.leases.values() for lease in leases}
    if ipr is not None:
        orphans = [
            name for name, _ in netlink.list_links(ipr) if name.startswith(HOST_VETH_PREFIX) and name not in live_veths
        ]
        if orphans:
            found = True
            yield Check(
                "orphan veths",
                Status.WARN,
                f"{', '.join(orphans)}: no live sandbox's lease names them (nsrun's state under /run was lost?);"
                " new sandboxes avoid the addresses they hold; deleting one cuts off what still runs behind it",
                "; ".join(f"ip link del {name}" for name in orphans),
            )
    if ipr is not None:
        for check in _orphan_bridges(view, ipr):
            found = True
            yield check
    yield from _orphan_rules(view)
    if not found:
        yield Check("leftover state", Status.OK, "no stale leases, records or orphan veths")


def _orphan_bridges(view: View, ipr: Any) -> Iterator[Check]:
    """Bridges with nsrun's names (nsrun0, nsbr-*) that no network defines: a definition removed
    behind nsrun's back; the bridge blocks a network of that name from being created."""
    from nsrun.net import netlink
    from nsrun.net.plan import DEFAULT_BRIDGE

    defined = {spec.bridge for spec in view.networks}
    for name, kind in netlink.list_links(ipr):
        if kind != "bridge" or name in defined or not (name == DEFAULT_BRIDGE or name.startswith("nsbr-")):
            continue
        ports = netlink.bridge_ports(ipr, name) or []
        detail = f"{name} looks like nsrun's but no network defines it"
        if ports:
            detail += f" (its ports: {', '.join(ports)})"
        yield Check("orphan bridges", Status.WARN, detail, f"ip link del {name}")


def _orphan_rules(view: View) -> Iterator[Check]:
    known = {spec.name for spec in view.networks}
    with contextlib.suppress(NsrunError):
        from nsrun.firewall.nftables import NftablesBackend

        for network, fix in NftablesBackend().orphans(known):
            yield Check("rules of removed network", Status.WARN, f"nftables rules tagged nsrun:{network}", fix)
    from nsrun.firewall.iptables import legacy_filter_in_use

    if legacy_filter_in_use():
        with contextlib.suppress(NsrunError):
            from nsrun.firewall.iptables import IptablesBackend

            for network, fix in IptablesBackend().orphans(known):
                yield Check(
                    "rules of removed network", Status.WARN, f"legacy iptables rules tagged nsrun:{network}", fix
                )
