"""A network's firewall on the host: its backend's rules plus accepts in other tools' dropping
forward chains; installed, checked and repaired at each launch, removed with the network."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from nsrun.errors import NsrunError
from nsrun.firewall.base import open_backend

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from nsrun.firewall.base import ForwardCoexistence
    from nsrun.firewall.portguard import PortGuard
    from nsrun.firewall.rules import ForeignChain, NetworkRules, PortRules

    Lock = Callable[[], AbstractContextManager[None]]  # the firewall lock, taken when called

__all__ = [
    "addresses_in_use",
    "coexistence_status",
    "ensure_network_firewall",
    "guard_port",
    "publish_ports",
    "remove_sandbox_rules",
    "sandbox_rules_present",
    "teardown_network_firewall",
]


def _worlds(*, with_legacy: bool) -> list[ForwardCoexistence]:
    """The rulesets where another tool may drop forwarded traffic nsrun must let through.

    nf_tables is always checked: a drop in any base chain on the hook is final, whatever nsrun's
    own backend. The legacy tables only `with_legacy`: under the iptables backend nsrun's own chain,
    jumped to first, already accepts there.
    """
    worlds: list[ForwardCoexistence] = []
    with contextlib.suppress(NsrunError):
        from nsrun.firewall.nftables import NftablesBackend

        worlds.append(NftablesBackend())
    if with_legacy:
        from nsrun.firewall.iptables import legacy_filter_in_use

        if legacy_filter_in_use():
            from nsrun.firewall.iptables import IptablesBackend

            worlds.append(IptablesBackend())
    return worlds


def ensure_network_firewall(backend: str, rules: NetworkRules) -> bool:
    """True if anything had to be (re)installed."""
    if backend == "none":
        return False
    changed = open_backend(backend).ensure_network(rules)
    for world in _worlds(with_legacy=backend != "iptables"):
        for chain in world.foreign_drops():
            changed = world.ensure_accepts(rules, chain) or changed
    return changed


def teardown_network_firewall(backend: str, rules: NetworkRules) -> None:
    if backend != "none":
        open_backend(backend).teardown_network(rules)
    for world in _worlds(with_legacy=True):
        world.remove_accepts(rules)


def coexistence_status(backend: str, rules: NetworkRules) -> list[tuple[ForeignChain, bool]]:
    """Each foreign dropping chain and whether this network's accepts are in it."""
    return [
        (chain, world.accepts_in_place(rules, chain))
        for world in _worlds(with_legacy=backend != "iptables")
        for chain in world.foreign_drops()
    ]


def publish_ports(backend: str, ports: PortRules) -> None:
    open_backend(backend).add_ports(ports)


def guard_port(backend: str, guard: PortGuard, lock: Lock) -> bool:
    """Filter what the sandbox sends into its bridge (nftables' bridge family, whatever the
    network's backend: ebtables has no Python binding); False where nf_tables is unavailable.
    Under `lock` (the firewall lock): the last filter's removal takes the table along."""
    if backend == "none":
        return False
    from nsrun.firewall.nftables import NftablesBackend

    try:
        nft = NftablesBackend()
    except NsrunError:
        return False
    with lock():
        nft.add_port_guard(guard)
    return True


def addresses_in_use() -> dict[str, str]:
    """Sandbox id -> IPv4 address, from the bridge-port filters in place (empty without nf_tables)."""
    try:
        from nsrun.firewall.nftables import NftablesBackend

        return NftablesBackend().guarded_addresses()
    except NsrunError:
        return {}


def sandbox_rules_present(backend: str) -> tuple[set[str] | None, set[str]]:
    """(sandbox ids with a bridge-port filter, None without nf_tables; sandbox ids with published
    ports), each from one listing."""
    guards: set[str] | None = None
    with contextlib.suppress(NsrunError):
        from nsrun.firewall.nftables import NftablesBackend

        guards = NftablesBackend().port_guards()
    published: set[str] = set()
    if backend == "nftables":
        published = open_backend(backend).published()  # type: ignore[attr-defined]
    elif backend == "iptables":
        from nsrun.firewall.iptables import IptablesBackend

        published = IptablesBackend().published()
    return guards, published


def remove_sandbox_rules(sandbox_id: str, *, published: bool = True, lock: Lock | None = None) -> None:
    """Remove a sandbox's own rules (published ports, its bridge-port filter) wherever they are:
    a stale sandbox's backend is not recorded. `published=False`: it published no port (its
    record says so), which spares reading every published port's rule. With `lock` (the
    firewall lock), the bridge table goes with the last filter."""
    with contextlib.suppress(NsrunError):
        from nsrun.firewall.nftables import NftablesBackend

        nft = NftablesBackend()
        nft.remove_port_guard(sandbox_id)
        if lock is not None:
            with lock():
                nft.remove_port_guards_if_unused()
        if published:
            nft.remove_ports(sandbox_id)
    if not published:
        return
    from nsrun.firewall.iptables import legacy_table_in_use

    if legacy_table_in_use("nat"):
        from nsrun.firewall.iptables import IptablesBackend

        IptablesBackend().remove_ports(sandbox_id)
