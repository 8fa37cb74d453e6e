"""host_routes names each prefix by its link even when links come and go between the dumps,
as they do while parallel launches create the default network's bridge."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from nsrun.net import netlink

_MAIN = 254


class _RacingIPRoute:
    """Answers dumps the way the kernel does when a bridge appears between the route and the
    link dump, and another link vanishes in the same window."""

    def __init__(self) -> None:
        self.bridge_exists = False

    def route(self, _cmd: str, family: int) -> list[dict[str, Any]]:
        assert family == socket.AF_INET
        self.bridge_exists = True
        return [
            {"table": _MAIN, "dst": "10.200.0.0", "dst_len": 24, "oif": 7},
            {"table": _MAIN, "dst": "10.9.0.0", "dst_len": 16, "oif": 9},
            {"table": _MAIN, "dst": "192.0.2.0", "dst_len": 24, "oif": 2},
            {"table": _MAIN, "dst": "198.51.100.0", "dst_len": 24},  # blackhole: no interface
        ]

    def addr(self, _cmd: str, family: int) -> list[dict[str, Any]]:
        assert family == socket.AF_INET
        return [{"address": "10.200.0.1", "prefixlen": 24, "index": 7}]

    def link(self, _cmd: str) -> list[dict[str, Any]]:
        links = [{"index": 2, "ifname": "uplink"}]
        if self.bridge_exists:
            links.append({"index": 7, "ifname": "nsrun0"})
        return links


def test_a_bridge_created_between_dumps_is_named_a_vanished_link_dropped_a_blackhole_kept() -> None:
    routes = netlink.host_routes(_RacingIPRoute())  # type: ignore[arg-type]
    assert [(str(r.network), r.label) for r in routes] == [
        ("10.200.0.0/24", "host route via nsrun0"),
        ("192.0.2.0/24", "host route via uplink"),
        ("198.51.100.0/24", "host route"),
    ]
    assert all(isinstance(r.network, ipaddress.IPv4Network) for r in routes)
