"""Pure naming and addressing of one sandbox's link to its network."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nsrun.validate import IFNAMSIZ

if TYPE_CHECKING:
    import ipaddress

__all__ = ["HOST_VETH_PREFIX", "SANDBOX_IFNAME", "AttachPlan", "bridge_name_for", "host_veth_name", "sandbox_mac"]

HOST_VETH_PREFIX: Final = "nsv"
SANDBOX_IFNAME: Final = "eth0"
DEFAULT_NETWORK: Final = "nsrun"
DEFAULT_BRIDGE: Final = "nsrun0"
_BRIDGE_PREFIX: Final = "nsbr-"


def host_veth_name(sandbox_id: str) -> str:
    """`nsv` + the sandbox id: unique per launch, so a name is never reused while the kernel still
    tears down the previous holder's veth (it lingers ~25 ms after its namespace dies)."""
    name = HOST_VETH_PREFIX + sandbox_id
    return name[: IFNAMSIZ - 1]


def sandbox_mac(entropy: bytes) -> str:
    """A locally administered unicast MAC from 6 random bytes: nsrun chooses the sandbox's MAC
    itself, so that its bridge-port filter is in place before the port exists."""
    first = (entropy[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{byte:02x}" for byte in (first, *entropy[1:6]))


def bridge_name_for(network: str) -> str:
    if network == DEFAULT_NETWORK:
        return DEFAULT_BRIDGE
    name = _BRIDGE_PREFIX + network
    if len(name.encode()) < IFNAMSIZ:
        return name
    digest = hashlib.sha256(network.encode()).hexdigest()
    return (_BRIDGE_PREFIX + digest)[: IFNAMSIZ - 1]


@dataclass(frozen=True)
class AttachPlan:
    bridge: str
    host_veth: str
    address: ipaddress.IPv4Address
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    mac: str  # the sandbox's eth0
    sandbox_ifname: str = SANDBOX_IFNAME
    mtu: int | None = None
    default_route: bool = True  # False on internal networks: nothing beyond the host
    address6: ipaddress.IPv6Address | None = None  # dual-stack networks
    prefixlen6: int | None = None
    gateway6: ipaddress.IPv6Address | None = None
