"""The interface every firewall backend implements, and the choice of backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from nsrun.errors import NsrunError, UsageError

if TYPE_CHECKING:
    from nsrun.firewall.rules import ForeignChain, NetworkRules, PortRules

__all__ = ["BACKENDS", "FirewallBackend", "ForwardCoexistence", "open_backend"]

BACKENDS: Final = ("iptables", "nftables", "none")


class FirewallBackend(Protocol):
    name: str

    def ensure_network(self, rules: NetworkRules) -> bool:
        """Install the network's rules unless all are in place; True if anything was (re)installed."""
        ...

    def teardown_network(self, rules: NetworkRules) -> None:
        """Remove exactly the network's rules; rules already gone count as removed."""
        ...

    def network_present(self, rules: NetworkRules) -> bool: ...

    def guard_present(self, rules: NetworkRules) -> bool:
        """The loopback guard, without which route_localnet must not be on."""
        ...

    def add_ports(self, ports: PortRules) -> None:
        """DNAT the sandbox's published ports to it."""
        ...

    def remove_ports(self, sandbox_id: str) -> None:
        """Remove the sandbox's port rules; none left counts as removed."""
        ...


class ForwardCoexistence(Protocol):
    """One ruleset (nf_tables, or the legacy x_tables) where another tool may drop forwarded
    traffic by policy, and nsrun's scoped accepts in that tool's chain."""

    def foreign_drops(self) -> list[ForeignChain]: ...

    def accepts_in_place(self, rules: NetworkRules, chain: ForeignChain) -> bool: ...

    def ensure_accepts(self, rules: NetworkRules, chain: ForeignChain) -> bool: ...

    def remove_accepts(self, rules: NetworkRules) -> None:
        """Delete exactly what nsrun added for this network, wherever it is."""
        ...

    def orphans(self, known: set[str]) -> list[tuple[str, str]]:
        """(network, exact fix) for rules tagged with a network that has no definition."""
        ...


class NoFirewall:
    """For hosts whose firewall someone else manages: nsrun adds no rules at all."""

    name = "none"

    def ensure_network(self, rules: NetworkRules) -> bool:  # noqa: ARG002
        return False

    def teardown_network(self, rules: NetworkRules) -> None:
        pass

    def network_present(self, rules: NetworkRules) -> bool:  # noqa: ARG002
        return True

    def guard_present(self, rules: NetworkRules) -> bool:  # noqa: ARG002
        return False

    def add_ports(self, ports: PortRules) -> None:  # noqa: ARG002
        raise NsrunError("publishing ports", "NSRUN_FIREWALL=none: nsrun adds no rules", "use another firewall backend")

    def remove_ports(self, sandbox_id: str) -> None:
        pass


def open_backend(name: str) -> FirewallBackend:
    if name == "iptables":
        from nsrun.firewall.iptables import IptablesBackend  # libiptc loads slowly

        return IptablesBackend()
    if name == "nftables":
        from nsrun.firewall.nftables import NftablesBackend

        return NftablesBackend()
    if name == "none":
        return NoFirewall()
    raise UsageError(
        f"unknown firewall backend {name!r}", "nsrun has no such backend", f"use one of: {', '.join(BACKENDS)}"
    )
