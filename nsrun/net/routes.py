"""The host's IPv4 main routing table as /proc/net/route shows it: what a launch checks.

A netlink dump of routes, addresses and links costs milliseconds in pyroute2's parser, at every
launch; /proc/net/route is the same main table in a few lines of text. Its connected routes stand
for the addresses' prefixes. Creating a network and `nsrun doctor` still look at everything
through netlink (`netlink.host_routes`); this is the per-launch re-check.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["MainRoute", "default_interface", "main_routes", "parse_proc_route"]

PROC_ROUTE: Final = "/proc/thread-self/net/route"  # this thread's network namespace
_RTF_UP: Final = 0x1
_COLUMNS: Final = 8  # Iface Destination Gateway Flags RefCnt Use Metric Mask ...
_HEX: Final = 16


@dataclass(frozen=True)
class MainRoute:
    network: ipaddress.IPv4Network
    ifname: str  # "*" for routes without an interface (unreachable, blackhole)
    metric: int

    @property
    def label(self) -> str:
        return f"host route via {self.ifname}" if self.ifname != "*" else "host route"


def _address(field: str) -> ipaddress.IPv4Address:
    # the kernel prints the 32-bit value in host byte order
    return ipaddress.IPv4Address(socket.inet_ntoa(struct.pack("=I", int(field, _HEX))))


def parse_proc_route(text: str) -> list[MainRoute]:
    """The routes of /proc/net/route's text; lines that do not parse are skipped."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < _COLUMNS:
            continue
        try:
            if not int(fields[3], _HEX) & _RTF_UP:
                continue
            network = ipaddress.IPv4Network(f"{_address(fields[1])}/{_address(fields[7])}", strict=False)
            routes.append(MainRoute(network, fields[0], int(fields[6])))
        except ValueError:
            continue
    return routes


def main_routes() -> list[MainRoute]:
    """The main table's routes, of the network namespace this process is in."""
    try:
        with open(PROC_ROUTE) as source:
            return parse_proc_route(source.read())
    except OSError:
        return []


def default_interface(routes: list[MainRoute]) -> str | None:
    """The interface of the preferred default route (lowest metric), if there is one."""
    defaults = [r for r in routes if r.network.prefixlen == 0 and r.ifname != "*"]
    return min(defaults, key=lambda r: r.metric).ifname if defaults else None
