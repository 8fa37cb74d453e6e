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
    from pathlib import Path

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
    "remove_bridge_filters",
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


def ensure_network_firewall(backend: str, rules: NetworkRules, memo: Path | None = None) -> bool:
    """True if anything had to be (re)installed. With `memo` (see `nsrun.firewall.checked`), no
    check is made while nf_tables' ruleset is as it was when one found the rules complete.
    Call under the firewall lock."""
    if backend == "none":
        return False
    from nsrun.firewall.iptables import legacy_filter_in_use

    if memo is None or backend != "nftables" or legacy_filter_in_use():
        return _ensure_network_firewall(backend, rules)
    from nsrun.firewall import checked
    from nsrun.firewall.nftables import commits
    from nsrun.net.netlink import ruleset_generation

    before = ruleset_generation()
    if checked.is_current(memo, rules.network, before):
        return False
    made = commits()
    changed = _ensure_network_firewall(backend, rules)
    checked.note_checked(memo, rules.network, before, commits() - made)
    return changed


def _ensure_network_firewall(backend: str, rules: NetworkRules) -> bool:
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


def _own_changes(memo: Path | None) -> AbstractContextManager[None]:
    if memo is None:
        return contextlib.nullcontext()
    from nsrun.firewall.checked import own_changes

    return own_changes(memo)


def publish_ports(backend: str, ports: PortRules, memo: Path | None = None) -> None:
    with _own_changes(memo if backend == "nftables" else None):
        open_backend(backend).add_ports(ports)


def guard_port(backend: str, guard: PortGuard, lock: Lock, memo: Path | None = None) -> bool:
    """Filter what the sandbox sends into its bridge (nftables' bridge family, whatever the
    network's backend: ebtables has no Python binding); False where nf_tables is unavailable.
    Under `lock` (the firewall lock): the last network's removal takes the table along."""
    if backend == "none":
        return False
    from nsrun.firewall.nftables import NftablesBackend

    try:
        nft = NftablesBackend()
    except NsrunError:
        return False
    with lock(), _own_changes(memo):
        nft.add_port_guard(guard)
    return True


def remove_bridge_filters() -> None:
    """The bridge-port filters' table, once nsrun has no network left (call under the firewall
    lock, which every filter's addition holds)."""
    with contextlib.suppress(NsrunError):  # no nf_tables: no table of it either
        from nsrun.firewall.nftables import NftablesBackend

        NftablesBackend().remove_port_guards()


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


def remove_sandbox_rules(sandbox_id: str, *, published: bool = True, memo: Path | None = None) -> None:
    """Remove a sandbox's own rules (published ports, its bridge-port filter) wherever they are:
    a stale sandbox's backend is not recorded. `published=False`: it published no port (its
    record says so), which spares reading every published port's rule. The bridge table stays:
    it goes with the last network (`remove_bridge_filters`)."""
    with contextlib.suppress(NsrunError), _own_changes(memo):
        from nsrun.firewall.nftables import NftablesBackend, remove_port_guard

        remove_port_guard(sandbox_id)  # most often through netlink alone, without libnftables
        if published:
            NftablesBackend().remove_ports(sandbox_id)
    if not published:
        return
    from nsrun.firewall.iptables import legacy_table_in_use

    if legacy_table_in_use("nat"):
        from nsrun.firewall.iptables import IptablesBackend

        IptablesBackend().remove_ports(sandbox_id)
