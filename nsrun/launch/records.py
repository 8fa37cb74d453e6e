"""The registry of live sandboxes as the launch code uses it: staleness is the holder's death,
and reclaiming a stale record undoes what it stood for on the host."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from nsrun.state.paths import StateDirs
from nsrun.state.registry import RecordHead, Registry, SandboxRecord

if TYPE_CHECKING:
    from nsrun.errors import NsrunError
    from nsrun.networks.spec import NetworkSpec
    from nsrun.process.shim import Started

__all__ = ["RECLAIM_EVERY", "RECLAIM_STAMP", "is_stale", "live_sandboxes", "reclaim_due", "reclaim_stale", "registry"]

# under the run directory: when the last reclaim of what dead sandboxes left began (its mtime),
# and the lock that the helper's reclaims take one after the other
RECLAIM_STAMP: Final = "reclaim.lock"
RECLAIM_EVERY: Final = 1.0  # seconds


def reclaim_due(dirs: StateDirs) -> bool:
    """Whether a library launch reclaims on its way what dead sandboxes left (it reads every
    record and lease: 30 ms with 100 sandboxes alive): at most once every RECLAIM_EVERY seconds,
    whoever reclaimed last (a library launch, or the helper's reclaim after one of its launches).
    In between, it reclaims only what it collides with: its name, a port, the last free address.
    So a library launch costs the same however many sandboxes are alive; a command line in-process
    (no helper) and a CNI ADD still reclaim every time, the next nsrun command line after a crash
    among them."""
    from nsrun.state.files import stamp_if_older

    return stamp_if_older(dirs.ensure(dirs.run) / RECLAIM_STAMP, RECLAIM_EVERY)


def registry(dirs: StateDirs) -> Registry:
    return Registry(dirs.sandboxes, on_stale=lambda record: _reclaim(dirs, record), root=dirs.run)


def _reclaim(dirs: StateDirs, record: SandboxRecord) -> None:
    """A sandbox whose shim died (SIGKILL, OOM) before its teardown: the same teardown now, but
    for what joined its network namespace (not pinned any more: its inode may have been reused;
    the lease sweep ends those while the veth proves the namespace alive)."""
    from nsrun.launch.teardown import teardown_sandbox

    teardown_sandbox(dirs, record, pinned=False)


def is_stale(record: SandboxRecord | RecordHead) -> bool:
    """Its holder died; a CNI attachment (whose holder was the ADD) also lost its veth."""
    from nsrun.process import liveness

    if liveness.holder_alive(record.pid, record.start_time, record.pidns):
        return False
    return not (record.container_id and liveness.attachment_alive(f"nsv{record.sandbox_id}"))


def live_sandboxes(dirs: StateDirs | None = None) -> list[SandboxRecord]:
    """Running sandboxes, sorted by name; stale records are reclaimed on the way."""
    records = registry(dirs or StateDirs()).live(is_stale)
    return sorted(records, key=lambda record: (record.name, record.sandbox_id))


def _missing(record: SandboxRecord, present: tuple[set[str] | None, set[str]]) -> list[str]:
    guards, published = present
    missing = []
    if guards is not None and record.mac and record.sandbox_id not in guards:
        missing.append("bridge-port filter")
    if record.ports and record.sandbox_id not in published:
        missing.append("published ports")
    return missing


def missing_sandbox_rules(record: SandboxRecord, backend: str | None = None) -> list[str]:
    """Which of a running sandbox's own rules are not in place."""
    from nsrun.firewall import host as firewall

    if backend is None:
        from nsrun.networks.manager import network_store

        spec = network_store(StateDirs()).get(record.network)
        backend = spec.firewall if spec is not None else "none"
    if backend == "none":
        return []
    return _missing(record, firewall.sandbox_rules_present(backend))


def note_started(dirs: StateDirs, record: SandboxRecord, started: Started) -> SandboxRecord:
    """The command runs: record its pids and where its shim (the record's holder) pins its
    namespaces, and give its network namespace its `ip netns` name."""
    from dataclasses import replace

    # the fds are the shim's (this process, or another one): their inodes as it gave them, else
    # read through /proc
    pinned = {
        kind: (fd, started.namespace_inodes.get(kind) or os.stat(f"/proc/{record.pid}/fd/{fd}").st_ino)
        for kind, fd in started.namespace_fds.items()
    }
    record = replace(record, init_pid=started.init_pid, child_pid=started.command_pid, namespaces=pinned)
    reg = registry(dirs)
    reg.update(record)
    if record.netns_name and "net" in started.namespace_fds:
        reg.bind_netns(record, f"/proc/{record.pid}/fd/{started.namespace_fds['net']}")
    return record


def repair_sandbox_rules(dirs: StateDirs, network: NetworkSpec, skip: str = "") -> list[str]:
    """Put back what is missing of the own rules (bridge-port filter, published ports) of the
    network's running sandboxes, after a flush or a firewall reload; the ids repaired."""
    import ipaddress

    from nsrun.firewall import host as firewall
    from nsrun.firewall.portguard import PortGuard
    from nsrun.firewall.rules import PortRules
    from nsrun.networks import manager
    from nsrun.validate import parse_publish

    if network.firewall == "none":
        return []
    records = [
        record
        for record in live_sandboxes(dirs)
        if record.network == network.name and record.sandbox_id != skip and record.mac and record.addresses
    ]
    if not records:
        return []
    present = firewall.sandbox_rules_present(network.firewall)
    repaired = []
    for record in records:
        if not _missing(record, present):
            continue
        address = ipaddress.IPv4Address(record.addresses[0])
        address6 = ipaddress.IPv6Address(record.addresses[1]) if len(record.addresses) > 1 else None
        firewall.remove_sandbox_rules(record.sandbox_id)
        guard = PortGuard(record.sandbox_id, f"nsv{record.sandbox_id}", record.mac, address, address6)
        firewall.guard_port(network.firewall, guard, lambda: manager.firewall_lock(dirs))
        mappings = tuple(parse_publish(spec) for spec in record.ports)
        if mappings:
            firewall.publish_ports(network.firewall, PortRules(record.sandbox_id, address, mappings))
        repaired.append(record.sandbox_id)
    return repaired


def corrupt_records(dirs: StateDirs | None = None) -> list[NsrunError]:
    return list(registry(dirs or StateDirs()).corrupt())


def reclaim_stale(dirs: StateDirs, network: str | None = None) -> None:
    """Everything dead sandboxes left: their records (with their rules, names and veths) and,
    on `network`, their leases; its hosts file rebuilt from what is left. The locks are taken
    only where there is something to reclaim: this runs in the background at the lowest
    priority, and a launch waiting for a lock it held would wait for it to get a CPU."""
    import contextlib

    from nsrun.net import netlink
    from nsrun.networks import manager

    if registry(dirs).any_stale(is_stale):
        live_sandboxes(dirs)
    if network is None:
        return
    spec = manager.network_store(dirs).get(network)
    store = manager.lease_store(dirs, network)
    if spec is None or not store.directory.is_dir() or not manager.any_stale_lease(store):
        return
    with contextlib.closing(netlink.Rtnl()) as ipr, store.locked():
        manager.sweep_stale_leases(ipr, store)
        manager.refresh_hosts(dirs, spec, store)
