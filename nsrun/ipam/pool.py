"""Pure address math for one network: usable hosts and the round-robin order to try them in."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["AddressPool"]


@dataclass(frozen=True)
class AddressPool:
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address

    def is_assignable(self, address: ipaddress.IPv4Address) -> bool:
        """An address a sandbox may hold: inside the subnet, never network, broadcast or gateway."""
        return (
            address in self.subnet
            and address not in (self.subnet.network_address, self.subnet.broadcast_address)
            and address != self.gateway
        )

    def candidates(self, last: ipaddress.IPv4Address | None = None) -> Iterator[ipaddress.IPv4Address]:
        """Every assignable address once, starting after `last`.

        Round-robin, as CNI's host-local does: an address that was just released is the last to be
        handed out again, so a peer that still holds an ARP or conntrack entry for it meets no
        stranger for as long as the pool allows.
        """
        first = int(self.subnet.network_address) + 1
        end = int(self.subnet.broadcast_address)  # exclusive
        size = end - first
        start = first
        if last is not None and last in self.subnet:
            start = int(last) + 1
        for offset in range(size):
            value = first + (start - first + offset) % size
            address = ipaddress.IPv4Address(value)
            if address != self.gateway:
                yield address

    @property
    def capacity(self) -> int:
        return self.subnet.num_addresses - 3
