"""Pure: the firewall rules one nsrun network needs, as data every backend renders its own way.

Per network, not per sandbox: sandboxes come and go without touching the firewall, and the
rules are installed (idempotently) with the network and removed with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["MULTICAST", "Hook", "NetworkRules", "Rule", "Verdict", "comment_for", "network_rules"]

MULTICAST: Final = ipaddress.IPv4Network("224.0.0.0/4")
COMMENT_PREFIX: Final = "nsrun:"


class Hook(StrEnum):
    FORWARD = "FORWARD"
    POSTROUTING = "POSTROUTING"


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
    out_iface: str | None = None
    out_iface_negated: bool = False
    source: ipaddress.IPv4Network | None = None
    dest_negated: ipaddress.IPv4Network | None = None
    ctstates: tuple[str, ...] = ()


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

    @property
    def comment(self) -> str:
        return comment_for(self.network)


def comment_for(network: str) -> str:
    return COMMENT_PREFIX + network


def network_rules(network: str, bridge: str, subnet: ipaddress.IPv4Network) -> NetworkRules:
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
    outbound = (
        Rule(fwd, drop, tag, in_iface=bridge, ctstates=("INVALID",)),
        Rule(fwd, accept, tag, in_iface=bridge),
    )
    nat = (
        Rule(
            Hook.POSTROUTING,
            Verdict.MASQUERADE,
            tag,
            source=subnet,
            out_iface=bridge,
            out_iface_negated=True,
            dest_negated=MULTICAST,
        ),
    )
    return NetworkRules(network, bridge, subnet, inbound, outbound, nat)
