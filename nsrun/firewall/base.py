"""The interface every firewall backend implements, and the choice of backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from nsrun.errors import UsageError

if TYPE_CHECKING:
    from nsrun.firewall.rules import NetworkRules

__all__ = ["BACKENDS", "FirewallBackend", "open_backend"]

BACKENDS: Final = ("iptables", "none")


class FirewallBackend(Protocol):
    name: str

    def ensure_network(self, rules: NetworkRules) -> bool:
        """Install the network's rules unless all are in place; True if anything was (re)installed."""
        ...

    def teardown_network(self, rules: NetworkRules) -> None:
        """Remove exactly the network's rules; rules already gone count as removed."""
        ...

    def network_present(self, rules: NetworkRules) -> bool: ...


class NoFirewall:
    """For hosts whose firewall someone else manages: nsrun adds no rules at all."""

    name = "none"

    def ensure_network(self, rules: NetworkRules) -> bool:  # noqa: ARG002
        return False

    def teardown_network(self, rules: NetworkRules) -> None:
        pass

    def network_present(self, rules: NetworkRules) -> bool:  # noqa: ARG002
        return True


def open_backend(name: str) -> FirewallBackend:
    if name == "iptables":
        from nsrun.firewall.iptables import IptablesBackend  # libiptc loads slowly

        return IptablesBackend()
    if name == "none":
        return NoFirewall()
    raise UsageError(f"unknown firewall backend {name!r}", f"valid backends: {', '.join(BACKENDS)}")
