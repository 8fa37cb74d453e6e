"""Pure: what one sandbox may send into its network's bridge, as an nftables `bridge` ruleset.

Frames from its host veth (its bridge port) must carry its own MAC and, for ARP, IPv4 and IPv6,
its own leased addresses (IPv6 link-local and the unspecified address included, for neighbour
discovery); it may not act as a router or DHCP server (router advertisements, redirects, DHCP
replies) nor claim another's IPv6 address in a neighbour advertisement; tagged frames and other
protocols are dropped. So a sandbox given NET_RAW or NET_ADMIN still cannot take over a
neighbour's address, pose as the gateway, or forge its source. (CNI's bridge and netavark do no
such filtering; Docker does not either.) TCP from its own MAC and addresses, most of what it
sends, is accepted by the first rules: the verdict the others would give, in one rule a frame.

Layout: one chain `sb-ID` of rules per sandbox, entered through a verdict map keyed by the
sandbox's bridge port (`ports`: "nsvID" : jump sb-ID) from one base chain (`dispatch`). Adding or
removing a sandbox is then one transaction by name, whatever the number of sandboxes; nothing is
looked up by rule handle. (nsrun 0.2 put one jump rule per sandbox into chain `prerouting`;
what is left of that is still read and removed.)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from nsrun.firewall.rules import SANDBOX_COMMENT_PREFIX

__all__ = [
    "BRIDGE_FAMILY",
    "BRIDGE_TABLE",
    "DISPATCH",
    "PORTS_MAP",
    "PortGuard",
    "Removal",
    "link_local_for",
    "removal",
    "removal_script",
]

BRIDGE_FAMILY: Final = "bridge"
BRIDGE_TABLE: Final = "nsrun"
DISPATCH: Final = "dispatch"  # the base chain: `iifname vmap @ports`
PORTS_MAP: Final = "ports"
PREROUTING: Final = "prerouting"  # nsrun 0.2's base chain, one jump rule per sandbox
_FILTER_PRIORITY: Final = -200
_MAC_RE: Final = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_VETH_RE: Final = re.compile(r"nsv[0-9a-f]{12}")
_ID_RE: Final = re.compile(r"[0-9a-f]{12}")
_UNIVERSAL_LOCAL_BIT: Final = 0x02
NFPROTO_BRIDGE: Final = 7  # the bridge family's number in nf_tables' netlink API
_IFNAMSIZ: Final = 16  # an `ifname` key's size in the kernel: the name, zero-padded


def link_local_for(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address the kernel derives from a MAC (addr_gen_mode 0)."""
    octets = [int(part, 16) for part in mac.split(":")]
    octets[0] ^= _UNIVERSAL_LOCAL_BIT
    eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    return ipaddress.IPv6Address(bytes([0xFE, 0x80, 0, 0, 0, 0, 0, 0, *eui]))


def _raw(address: ipaddress.IPv6Address) -> str:
    return f"0x{int(address):032x}"


@dataclass(frozen=True)
class PortGuard:
    sandbox_id: str
    veth: str
    mac: str
    address: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address | None = None

    def __post_init__(self) -> None:
        # the script below is text: every value in it is checked to be what it claims to be
        if not (_ID_RE.fullmatch(self.sandbox_id) and _VETH_RE.fullmatch(self.veth) and _MAC_RE.fullmatch(self.mac)):
            raise ValueError(f"not a sandbox port: {self.sandbox_id!r} {self.veth!r} {self.mac!r}")

    @property
    def comment(self) -> str:
        return SANDBOX_COMMENT_PREFIX + self.sandbox_id

    @property
    def chain(self) -> str:
        return f"sb-{self.sandbox_id}"

    def rules(self) -> list[str]:
        """The chain's rules, in nft syntax."""
        own6 = [link_local_for(self.mac), *([self.address6] if self.address6 else [])]
        sources6 = ", ".join(["::", *(str(a) for a in own6)])
        targets6 = ", ".join(_raw(a) for a in own6)
        own = ", ".join(str(a) for a in own6)
        return [
            # TCP with its own MAC and address, what most frames are, is let through at once: no
            # rule below drops such a frame, and each rule costs every frame it is evaluated for
            f"ether saddr {self.mac} ether type ip ip saddr {self.address} ip protocol tcp accept",
            f"ether saddr {self.mac} ether type ip6 ip6 saddr {{ {own} }} ip6 nexthdr tcp accept",
            f"ether saddr != {self.mac} drop",
            "ether type != { ip, ip6, arp } drop",  # VLAN tags could smuggle what follows past it
            f"ether type arp arp saddr ether != {self.mac} drop",
            f"ether type arp arp saddr ip != {self.address} drop",
            f"ether type ip ip saddr != {self.address} drop",
            "ether type ip udp sport 67 drop",
            "ether type ip icmp type redirect drop",
            f"ether type ip6 ip6 saddr != {{ {sources6} }} drop",
            "ether type ip6 icmpv6 type { nd-router-advert, nd-redirect } drop",
            f"ether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 != {{ {targets6} }} drop",
            "ether type ip6 udp sport 547 drop",
        ]

    def script(self, *, with_table: bool = False) -> str:
        """One nft transaction: the sandbox's chain and its entry in the map. `with_table`: the
        table, its map and dispatch chain first, made again if missing (the dispatch rule is
        flushed and added back, so there is always exactly one); without it the transaction
        fails, changing nothing, where they are missing."""
        table = f"{BRIDGE_FAMILY} {BRIDGE_TABLE}"
        hook = f"{{ type filter hook prerouting priority {_FILTER_PRIORITY}; policy accept; }}"
        lines = [
            f"add table {table}",
            f"add map {table} {PORTS_MAP} {{ type ifname : verdict; }}",
            f"add chain {table} {DISPATCH} {hook}",
            f"flush chain {table} {DISPATCH}",
            f"add rule {table} {DISPATCH} iifname vmap @{PORTS_MAP}",
            f"add chain {table} {self.chain}",
            f"flush chain {table} {self.chain}",
        ]
        if not with_table:
            lines = [f"add chain {table} {self.chain}"]  # a new chain: its id is the sandbox's own
        lines += [f"add rule {table} {self.chain} {rule}" for rule in self.rules()]
        lines.append(f'add element {table} {PORTS_MAP} {{ "{self.veth}" : jump {self.chain} }}')
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Removal:
    """A sandbox's filter as nf_tables' netlink API names what goes, in one transaction: its
    entry in the ports map (by its key as the kernel stores it), its chain's rules, its chain.
    The same as `removal_script`, for callers that skip libnftables."""

    family: int
    table: str
    elements: tuple[tuple[str, bytes], ...]
    flushed: tuple[str, ...]
    chains: tuple[str, ...]


def removal(sandbox_id: str) -> Removal:
    if not _ID_RE.fullmatch(sandbox_id):
        raise ValueError(f"not a sandbox id: {sandbox_id!r}")
    chain = f"sb-{sandbox_id}"
    key = f"nsv{sandbox_id}".encode().ljust(_IFNAMSIZ, b"\0")
    return Removal(NFPROTO_BRIDGE, BRIDGE_TABLE, ((PORTS_MAP, key),), (chain,), (chain,))


def removal_script(sandbox_id: str) -> str:
    """One nft transaction removing a sandbox's filter by name; it fails (and changes nothing)
    where that sandbox has no entry in the map (already gone, or nsrun 0.2's layout)."""
    if not _ID_RE.fullmatch(sandbox_id):
        raise ValueError(f"not a sandbox id: {sandbox_id!r}")
    table = f"{BRIDGE_FAMILY} {BRIDGE_TABLE}"
    chain = f"sb-{sandbox_id}"
    lines = [
        f'delete element {table} {PORTS_MAP} {{ "nsv{sandbox_id}" }}',
        f"flush chain {table} {chain}",
        f"delete chain {table} {chain}",
    ]
    return "\n".join(lines) + "\n"
