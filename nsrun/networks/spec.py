"""Pure: what a network is, how its defaults are derived, and which subnets are free."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import UsageError
from nsrun.firewall.rules import NetworkRules, network_rules
from nsrun.ipam.pool import AddressPool
from nsrun.net.plan import bridge_name_for
from nsrun.state.schema import CorruptStateError, parse_json
from nsrun.validate import MAX_MTU, MIN_MTU, validate_ifname, validate_mtu, validate_name

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

FIREWALLS: Final = ("iptables", "nftables", "none")

__all__ = ["DEFAULT_NETWORK", "NetworkRequest", "NetworkSpec", "auto_subnet_candidates", "first_overlap", "make_spec"]

DEFAULT_NETWORK: Final = "nsrun"
AUTO_PREFIXLEN: Final = 24
# Private ranges tried in order for networks created without --subnet; Docker's defaults
# (172.17-31.x, 192.168.x) come last because they are the likeliest to be taken.
_AUTO_RANGES: Final = ("10.200.0.0/16", "10.201.0.0/16", "172.30.0.0/16", "192.168.200.0/21")


@dataclass(frozen=True)
class NetworkRequest:
    """What `nsrun network create` was asked for; unset fields get derived defaults."""

    name: str
    subnet: ipaddress.IPv4Network | None = None
    subnet6: ipaddress.IPv6Network | None = None
    gateway: ipaddress.IPv4Address | None = None
    bridge: str | None = None
    mtu: int | None = None
    internal: bool = False
    no_host_access: bool = False


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    bridge: str
    firewall: str
    mtu: int | None = None  # None: the MTU of the host's default-route interface, read at each launch
    internal: bool = False  # no route out, no NAT
    subnet6: ipaddress.IPv6Network | None = None  # dual-stack: a sandbox's IPv6 address mirrors its IPv4 one
    no_host_access: bool = False  # its sandboxes may not open connections to the host's own addresses

    @property
    def pool(self) -> AddressPool:
        return AddressPool(self.subnet, self.gateway)

    @property
    def rules(self) -> NetworkRules:
        return network_rules(
            self.name,
            self.bridge,
            self.subnet,
            internal=self.internal,
            subnet6=self.subnet6,
            no_host_access=self.no_host_access,
        )

    def address6_for(self, address: ipaddress.IPv4Address) -> ipaddress.IPv6Address | None:
        """The IPv6 address at the same host index as `address`: unique because the IPv4 lease is,
        so dual-stack needs no second pool."""
        if self.subnet6 is None:
            return None
        return self.subnet6.network_address + (int(address) - int(self.subnet.network_address))

    @property
    def gateway6(self) -> ipaddress.IPv6Address | None:
        return self.address6_for(self.gateway)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subnet": str(self.subnet),
            "gateway": str(self.gateway),
            "bridge": self.bridge,
            "firewall": self.firewall,
            "mtu": self.mtu,
            "internal": self.internal,
            "subnet6": str(self.subnet6) if self.subnet6 else None,
            "gateway6": str(self.gateway6) if self.gateway6 else None,
            "no_host_access": self.no_host_access,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path | str = "network definition") -> NetworkSpec:
        """The definition in `text`, every field checked: a file that parses but has the wrong
        shape raises CorruptStateError naming the file, never a TypeError somewhere later."""
        fix = f"fix or remove {path}"
        fields = parse_json(text, path, fix)
        try:
            subnet6 = fields.optional_text("subnet6")
            spec = make_spec(
                fields.text("name"),
                ipaddress.IPv4Network(fields.text("subnet")),
                gateway=ipaddress.IPv4Address(fields.text("gateway")),
                bridge=fields.text("bridge"),
                firewall=fields.text("firewall"),
                mtu=fields.optional_integer("mtu", MIN_MTU, MAX_MTU),
                internal=fields.flag("internal"),
                subnet6=ipaddress.IPv6Network(subnet6) if subnet6 else None,
                no_host_access=fields.flag("no_host_access"),
            )
        except (ValueError, UsageError) as err:
            raise CorruptStateError(path, str(err), fix) from err
        if spec.firewall not in FIREWALLS:
            raise CorruptStateError(path, f"unknown firewall backend {spec.firewall!r}", fix)
        return spec


def make_spec(  # noqa: PLR0913  # one keyword per network option
    name: str,
    subnet: ipaddress.IPv4Network,
    *,
    firewall: str,
    gateway: ipaddress.IPv4Address | None = None,
    bridge: str | None = None,
    mtu: int | None = None,
    internal: bool = False,
    subnet6: ipaddress.IPv6Network | None = None,
    no_host_access: bool = False,
) -> NetworkSpec:
    validate_name(name)
    if gateway is None:
        gateway = subnet.network_address + 1
    elif gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
        raise UsageError(
            f"invalid --gateway {gateway}", f"it is not a host address of {subnet}", "pick an address inside the subnet"
        )
    if mtu is not None:
        validate_mtu(mtu)
    bridge_name = validate_ifname(bridge or bridge_name_for(name))
    if subnet6 is not None and subnet6.num_addresses < subnet.num_addresses:
        raise UsageError(
            f"invalid --subnet {subnet6}",
            f"it is smaller than {subnet}: every sandbox needs an IPv6 address too",
            "use a /64",
        )
    return NetworkSpec(name, subnet, gateway, bridge_name, firewall, mtu, internal, subnet6, no_host_access)


def auto_subnet_candidates() -> Iterator[ipaddress.IPv4Network]:
    for block in _AUTO_RANGES:
        yield from ipaddress.IPv4Network(block).subnets(new_prefix=AUTO_PREFIXLEN)


AnyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def first_overlap(subnet: AnyNetwork, taken: Iterable[tuple[AnyNetwork, str]]) -> tuple[AnyNetwork, str] | None:
    """The first (network, owner) in `taken` of the same IP version that overlaps `subnet`."""
    for network, owner in taken:
        if network.version == subnet.version and subnet.overlaps(network):
            return network, owner
    return None
