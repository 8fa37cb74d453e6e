"""host_routes names each prefix by its link even when links come and go between the dumps,
as they do while parallel launches create the default network's bridge."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from nsrun.net import netlink

_MAIN = 254


class _Message(dict[str, Any]):
    """A parsed netlink message, as pyroute2 gives it: fields by key, attributes by NLA name."""

    def get_attr(self, name: str) -> Any:
        return self.get(name)


class _RacingRtnl:
    """Answers dumps the way the kernel does when a bridge appears between the route and the
    link dump, and another link vanishes in the same window."""

    def __init__(self) -> None:
        self.bridge_exists = False

    def dump_routes(self, family: int) -> list[_Message]:
        assert family == socket.AF_INET
        self.bridge_exists = True
        return [
            _Message(RTA_TABLE=_MAIN, RTA_DST="10.200.0.0", dst_len=24, RTA_OIF=7),
            _Message(RTA_TABLE=_MAIN, RTA_DST="10.9.0.0", dst_len=16, RTA_OIF=9),
            _Message(RTA_TABLE=_MAIN, RTA_DST="192.0.2.0", dst_len=24, RTA_OIF=2),
            _Message(RTA_TABLE=_MAIN, RTA_DST="198.51.100.0", dst_len=24),  # blackhole: no interface
        ]

    def dump_addresses(self, family: int) -> list[_Message]:
        assert family == socket.AF_INET
        return [_Message(IFA_ADDRESS="10.200.0.1", prefixlen=24, index=7)]

    def dump_links(self) -> list[_Message]:
        links = [_Message(index=2, IFLA_IFNAME="uplink")]
        if self.bridge_exists:
            links.append(_Message(index=7, IFLA_IFNAME="nsrun0"))
        return links


def test_a_bridge_created_between_dumps_is_named_a_vanished_link_dropped_a_blackhole_kept() -> None:
    routes = netlink.host_routes(_RacingRtnl())  # type: ignore[arg-type]
    assert [(str(r.network), r.label) for r in routes] == [
        ("10.200.0.0/24", "host route via nsrun0"),
        ("192.0.2.0/24", "host route via uplink"),
        ("198.51.100.0/24", "host route"),
    ]
    assert all(isinstance(r.network, ipaddress.IPv4Network) for r in routes)
