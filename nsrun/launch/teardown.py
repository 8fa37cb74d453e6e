"""The one teardown of a sandbox, driven by its record: whoever ends a sandbox (its own nsrun, the
library, the warm helper, a CNI DEL, the next nsrun reclaiming after a crash) undoes exactly what
the record says was made. Every step runs; "already gone" counts as done; failures are collected.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from collections.abc import Callable

    from nsrun.state.paths import StateDirs
    from nsrun.state.registry import SandboxRecord

__all__ = ["VETH_GONE_WAIT", "finish_teardown", "is_bridged", "release_namespaces", "teardown_sandbox"]

VETH_GONE_WAIT: Final = 0.5  # seconds; measured: 0.3-1 ms once its removal is asked for


def is_bridged(record: SandboxRecord) -> bool:
    """It has a veth, rules and a lease of its own on an nsrun network."""
    return record.network not in ("none", "host") and not record.network.startswith("sandbox:")


def teardown_sandbox(
    dirs: StateDirs, record: SandboxRecord, *, pinned: bool, release: Callable[[], None] | None = None
) -> list[str]:
    """Undo what the record stands for; what could not be undone. `pinned`: its namespaces are
    still held by its shim (whatever joined its network namespace may be ended: the inode cannot
    have been reused); `release` then closes the shim's copies, between the two halves."""
    failures = release_namespaces(dirs, record, pinned=pinned)
    if release is not None:
        release()
    return failures + finish_teardown(dirs, record)


def release_namespaces(dirs: StateDirs, record: SandboxRecord, *, pinned: bool) -> list[str]:
    """The first half, while the shim still pins the namespaces: the name is unbound and what
    joined the network namespace from outside (`ip netns exec NAME`) ended. Once the shim has
    closed its descriptors too, nothing holds the namespace: the kernel takes it down, and its
    veth pair."""
    from nsrun.launch.records import registry
    from nsrun.process import liveness

    failures: list[str] = []
    if record.netns_name:
        # the name goes first: nothing joins by it while (or after) the joined are ended
        _step(failures, f"removing /run/netns/{record.netns_name}", registry(dirs).unbind_netns, record)
        if pinned and "net" in record.namespaces:
            # what joined through `ip netns exec` ends with the sandbox
            _step(failures, "ending what joined the sandbox", liveness.kill_netns_members, record.namespaces["net"][1])
    return failures


def finish_teardown(dirs: StateDirs, record: SandboxRecord) -> list[str]:
    """The second half: its veth's deletion asked for, its address released meanwhile (0.4-0.5
    ms off a pooled launch's 9: nothing is left running in the namespace to use it), the veth
    gone, then its own rules and its record. The rules go last but one: the veth they filter is
    gone by then."""
    from nsrun.launch.records import registry

    failures: list[str] = []
    if is_bridged(record):
        veth = f"nsv{record.sandbox_id}"
        # a CNI attachment's namespace is the engine's, and outlives it: its veth is deleted now
        asked = not record.attached and _ask_veth_removal(veth)
        _step(failures, "releasing its address", _release_address, dirs, record)
        _step(failures, f"deleting veth {veth}", _remove_veth, veth, VETH_GONE_WAIT if asked else 0.0)
        _step(failures, "removing the sandbox's own rules", _remove_rules, dirs, record)
    _step(failures, "removing its record", registry(dirs).remove, record)
    return failures


def _step(failures: list[str], description: str, action: Callable[..., Any], *args: Any) -> None:
    try:
        action(*args)
    except (NsrunError, OSError) as err:
        failures.append(f"{description}: {err}")


def _remove_rules(dirs: StateDirs, record: SandboxRecord) -> None:
    from nsrun.firewall import host as firewall
    from nsrun.networks.manager import firewall_memo

    firewall.remove_sandbox_rules(record.sandbox_id, published=bool(record.ports), memo=firewall_memo(dirs))


def _ask_veth_removal(name: str) -> bool:
    """Ask for the veth pair's deletion, if it is there, without waiting for it (see
    `netlink.delete_link_soon`); whether it was asked. (pyroute2 is loaded only if it is there.)"""
    from nsrun.net import linkwatch

    if not linkwatch.exists(name):
        return False
    from nsrun.net import netlink

    try:
        netlink.delete_link_soon(name)
    except RuntimeError:  # no thread could be started: `_remove_veth` deletes it outright
        return False
    return True


def _remove_veth(name: str, wait: float) -> None:
    """The veth pair is gone once the host no longer lists it: its deletion asked for, that
    takes 0.3-1 ms (the kernel's answer comes later, to a thread of its own). Left to go with
    the namespace, it took 1-60 ms: the kernel cleans namespaces up in one queue, behind those
    that ended just before. If it is still there after `wait` seconds (or at once, without a
    deletion asked for), delete it outright: neither end may outlive the sandbox, with or
    without its filter."""
    from nsrun.net import linkwatch

    if not linkwatch.exists(name) or (wait > 0 and linkwatch.wait_gone(name, wait)):
        return
    from nsrun.net import netlink

    with contextlib.closing(netlink.Rtnl()) as ipr:
        netlink.delete_link(ipr, name)


def _release_address(dirs: StateDirs, record: SandboxRecord) -> None:
    """Its lease goes (if it is still its own), and with it its name from the network's hosts file.
    A record without its address yet (set-up notes it last: one ended part-way, a helper's worker
    killed mid-launch whose client tears its sandbox down) has its lease found by its id."""
    from nsrun.networks import manager

    store = manager.lease_store(dirs, record.network)
    if not store.directory.is_dir():
        return
    spec = manager.network_store(dirs).get(record.network)
    with store.locked():
        if record.addresses:
            leases = [store.get(ipaddress.IPv4Address(record.addresses[0]))]
        else:
            leases = [lease for lease in store.leases() if lease.sandbox_id == record.sandbox_id]
        for lease in leases:
            if lease is not None and lease.sandbox_id == record.sandbox_id:
                store.release(lease)
                if spec is not None:
                    manager.remove_host_entries(dirs, spec, lease)
