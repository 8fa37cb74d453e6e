"""Pure: the firewall rules one nsrun network needs, as data every backend renders its own way.

Per network, not per sandbox: sandboxes come and go without touching the firewall, and the
rules are installed (idempotently) with the network and removed with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "IPV4",
    "IPV6",
    "LOOPBACK",
    "MULTICAST",
    "SANDBOX_COMMENT_PREFIX",
    "ForeignChain",
    "Hook",
    "NetworkRules",
    "PortMapping",
    "PortRules",
    "Rule",
    "Verdict",
    "accept_target",
    "comment_for",
    "network_rules",
]

MULTICAST: Final = ipaddress.IPv4Network("224.0.0.0/4")
MULTICAST6: Final = ipaddress.IPv6Network("ff00::/8")
LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")
LOOPBACK6: Final = ipaddress.IPv6Network("::1/128")
LOOPBACK_IFACE: Final = "lo"
COMMENT_PREFIX: Final = "nsrun:"
IPV4: Final = "ipv4"
IPV6: Final = "ipv6"


class Hook(StrEnum):
    FORWARD = "FORWARD"
    INPUT = "INPUT"
    POSTROUTING = "POSTROUTING"
    PREROUTING = "PREROUTING"


class Verdict(StrEnum):
    ACCEPT = "ACCEPT"
    DROP = "DROP"
    MASQUERADE = "MASQUERADE"


@dataclass(frozen=True)
class Rule:
    hook: Hook
    verdict: Verdict
    comment: str
    in_iface: str | None = None
    in_iface_negated: bool = False
    out_iface: str | None = None
    out_iface_negated: bool = False
    source: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    source_negated: bool = False
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    dest_negated: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ctstates: tuple[str, ...] = ()
    nfproto: str | None = None  # only packets of this family (ipv4 or ipv6); the others pass

    @property
    def family(self) -> str | None:
        """The address family the rule applies to: its own, or that of the addresses it matches."""
        if self.nfproto is not None:
            return self.nfproto
        for network in (self.source, self.destination, self.dest_negated):
            if network is not None:
                return IPV4 if network.version == 4 else IPV6  # noqa: PLR2004
        return None


@dataclass(frozen=True)
class NetworkRules:
    """`inbound` rules (traffic into the bridge) must precede every network's `outbound` rules, so
    that one network's blanket accept of what leaves its bridge cannot admit a new connection into
    another network's bridge."""

    network: str
    bridge: str
    subnet: ipaddress.IPv4Network
    inbound: tuple[Rule, ...]
    outbound: tuple[Rule, ...]
    nat: tuple[Rule, ...]
    # what goes into another tool's forward chain that drops by policy: plain interface accepts,
    # which that tool can still read back; the stateful checks stay in nsrun's own rules
    accepts: tuple[Rule, ...]
    # raw prerouting, before any DNAT: loopback destinations that did not arrive on lo are dropped.
    # The bridge has route_localnet (so the host's 127.0.0.1 can reach published ports), which
    # would also let a sandbox address the host's loopback services; and without the drop a
    # neighbour on the wan that routes 127.0.0.1 via the host reaches a port published on
    # 127.0.0.1 (DNAT runs before the martian check). As Docker 28 does (moby#45610).
    guard: tuple[Rule, ...] = ()
    # filter input: what its sandboxes may open on the host itself (--no-host-access)
    host: tuple[Rule, ...] = ()

    @property
    def comment(self) -> str:
        return comment_for(self.network)


def comment_for(network: str) -> str:
    return COMMENT_PREFIX + network


def network_rules(  # one keyword per network option
    network: str,
    bridge: str,
    subnet: ipaddress.IPv4Network,
    *,
    internal: bool = False,
    subnet6: ipaddress.IPv6Network | None = None,
    no_host_access: bool = False,
) -> NetworkRules:
    """`internal`: sandboxes reach each other and the host, nothing beyond it, and nothing is NATed.
    `no_host_access`: they may not open connections to the host's own addresses."""
    tag = comment_for(network)
    fwd, accept, drop = Hook.FORWARD, Verdict.ACCEPT, Verdict.DROP
    inbound = (
        Rule(fwd, accept, tag, out_iface=bridge, ctstates=("RELATED", "ESTABLISHED")),
        # connections a published port (DNAT) let in; the port rules decide which those are
        Rule(fwd, accept, tag, out_iface=bridge, ctstates=("DNAT",)),
        # sandbox to sandbox on one bridge, seen here only where br_netfilter is loaded
        Rule(fwd, accept, tag, in_iface=bridge, out_iface=bridge),
        # nothing else may open a connection into the sandboxes: not a host outside that routes the
        # subnet via this host, not a sandbox of another nsrun network
        Rule(fwd, drop, tag, out_iface=bridge),
    )
    # what leaves the bridge must come from the network's own addresses: a sandbox given
    # NET_ADMIN or NET_RAW could otherwise send packets with forged sources out through the host
    spoofed = [Rule(fwd, drop, tag, in_iface=bridge, source=subnet, source_negated=True)]
    if subnet6 is not None:
        spoofed.append(Rule(fwd, drop, tag, in_iface=bridge, source=subnet6, source_negated=True))
    else:
        spoofed.append(Rule(fwd, drop, tag, in_iface=bridge, nfproto=IPV6))
    outbound = (
        Rule(fwd, drop, tag, in_iface=bridge, ctstates=("INVALID",)),
        *spoofed,
        Rule(fwd, accept, tag, in_iface=bridge),
    )
    host: tuple[Rule, ...] = ()
    if no_host_access:
        host = (
            Rule(Hook.INPUT, accept, tag, in_iface=bridge, ctstates=("RELATED", "ESTABLISHED")),
            Rule(Hook.INPUT, drop, tag, in_iface=bridge, ctstates=("NEW",), nfproto=IPV4),
        )
    guard = (
        Rule(Hook.PREROUTING, drop, tag, in_iface=LOOPBACK_IFACE, in_iface_negated=True, destination=LOOPBACK),
        Rule(Hook.PREROUTING, drop, tag, in_iface=LOOPBACK_IFACE, in_iface_negated=True, destination=LOOPBACK6),
    )
    if internal:
        leaving = Rule(fwd, drop, tag, in_iface=bridge, out_iface=bridge, out_iface_negated=True)
        return NetworkRules(network, bridge, subnet, inbound, (leaving, *outbound), (), (), guard, host)
    masquerade = Hook.POSTROUTING, Verdict.MASQUERADE, tag
    nat: tuple[Rule, ...] = (
        Rule(*masquerade, source=subnet, out_iface=bridge, out_iface_negated=True, dest_negated=MULTICAST),
        # a published port reached from the host's 127.0.0.1, or from a sandbox of this network by
        # the host's address (hairpin): the reply must come back through the host, not around it
        Rule(*masquerade, source=LOOPBACK, out_iface=bridge, ctstates=("DNAT",)),
        Rule(*masquerade, source=subnet, out_iface=bridge, ctstates=("DNAT",)),
    )
    if subnet6 is not None:
        nat += (Rule(*masquerade, source=subnet6, out_iface=bridge, out_iface_negated=True, dest_negated=MULTICAST6),)
    accepts = (Rule(fwd, accept, tag, in_iface=bridge), Rule(fwd, accept, tag, out_iface=bridge))
    return NetworkRules(network, bridge, subnet, inbound, outbound, nat, accepts, guard, host)


SANDBOX_COMMENT_PREFIX: Final = "nsrun-sandbox:"


@dataclass(frozen=True)
class PortMapping:
    """`-p [HOST_IP:]HOST_PORT:PORT[/PROTO]`."""

    host_port: int
    port: int
    proto: str = "tcp"
    host_ip: ipaddress.IPv4Address | None = None

    def __str__(self) -> str:
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}->{self.port}/{self.proto}"  # noqa: S104

    def spec(self) -> str:
        """The form `-p` takes, which `parse_publish` reads back."""
        prefix = f"{self.host_ip}:" if self.host_ip else ""
        return f"{prefix}{self.host_port}:{self.port}/{self.proto}"

    def collides(self, other: PortMapping) -> bool:
        if 0 in (self.host_port, other.host_port):
            return False  # a free port chosen at start never collides
        same_port = (self.host_port, self.proto) == (other.host_port, other.proto)
        return same_port and (self.host_ip is None or other.host_ip is None or self.host_ip == other.host_ip)


@dataclass(frozen=True)
class PortRules:
    """One sandbox's published ports: DNAT from any local address (or HOST_IP) to the sandbox."""

    sandbox_id: str
    address: ipaddress.IPv4Address
    mappings: tuple[PortMapping, ...]

    @property
    def comment(self) -> str:
        return SANDBOX_COMMENT_PREFIX + self.sandbox_id


DOCKER_USER: Final = "DOCKER-USER"


@dataclass(frozen=True)
class ForeignChain:
    """Another tool's base chain on the forward hook that drops what it does not accept."""

    family: str
    table: str
    chain: str
    user_chain: str | None = None  # where that tool wants users' rules (Docker's DOCKER-USER)

    def describe(self) -> str:
        return f"{self.family} {self.table} {self.chain}"


def accept_target(chain: ForeignChain) -> str:
    """Where nsrun's accepts go: the tool's user chain where it has one (Docker jumps to it first
    and leaves it alone), else the dropping chain itself."""
    return chain.user_chain or chain.chain
