"""The one teardown of a sandbox, driven by its record: whoever ends a sandbox (its own nsrun, the
library, the warm helper, a CNI DEL, the next nsrun reclaiming after a crash) undoes exactly what
the record says was made. Every step runs; "already gone" counts as done; failures are collected.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import TYPE_CHECKING, Any

from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from collections.abc import Callable

    from nsrun.state.paths import StateDirs
    from nsrun.state.registry import SandboxRecord

__all__ = ["is_bridged", "teardown_sandbox"]


def is_bridged(record: SandboxRecord) -> bool:
    """It has a veth, rules and a lease of its own on an nsrun network."""
    return record.network not in ("none", "host") and not record.network.startswith("sandbox:")


def teardown_sandbox(dirs: StateDirs, record: SandboxRecord, *, pinned: bool) -> list[str]:
    """Undo what the record stands for; what could not be undone. `pinned`: its namespaces are
    still held by its shim (whatever joined its network namespace may be ended: the inode cannot
    have been reused)."""
    from nsrun.launch.records import registry
    from nsrun.process import liveness

    failures: list[str] = []

    def step(description: str, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except (NsrunError, OSError) as err:
            failures.append(f"{description}: {err}")

    reg = registry(dirs)
    if record.netns_name:
        if pinned and "net" in record.namespaces:
            # what joined through `ip netns exec` ends with the sandbox
            step("ending what joined the sandbox", liveness.kill_netns_members, record.namespaces["net"][1])
        step(f"removing /run/netns/{record.netns_name}", reg.unbind_netns, record)
    if is_bridged(record):
        from nsrun.firewall import host as firewall

        step("removing the sandbox's own rules", firewall.remove_sandbox_rules, record.sandbox_id)
        step(f"deleting veth nsv{record.sandbox_id}", _delete_veth, record.sandbox_id)
        step("releasing its address", _release_address, dirs, record)
    step("removing its record", reg.remove, record)
    return failures


def _delete_veth(sandbox_id: str) -> None:
    from nsrun.net import netlink

    with contextlib.closing(netlink.IPRoute()) as ipr:
        netlink.delete_link(ipr, f"nsv{sandbox_id}")


def _release_address(dirs: StateDirs, record: SandboxRecord) -> None:
    """Its lease goes (if it is still its own), and with it its name from the network's hosts file."""
    from nsrun.networks import manager

    store = manager.lease_store(dirs, record.network)
    if not store.directory.is_dir():
        return
    spec = manager.network_store(dirs).get(record.network)
    with store.locked():
        for text in record.addresses[:1]:
            lease = store.get(ipaddress.IPv4Address(text))
            if lease is not None and lease.sandbox_id == record.sandbox_id:
                store.release(lease)
        if spec is not None:
            manager.refresh_hosts(dirs, spec, store)
