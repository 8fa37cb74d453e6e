"""Kernel settings under /proc/sys, of the network namespace nsrun runs in."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from nsrun.errors import NsrunError

__all__ = ["IP_FORWARD", "allow_unprivileged_ports", "enable_route_localnet", "ensure_ip_forward", "read_sysctl"]

IP_FORWARD: Final = "net/ipv4/ip_forward"
IPV6_FORWARDING: Final = "net/ipv6/conf/all/forwarding"
_ROOT: Final = Path("/proc/sys")


def read_sysctl(key: str) -> str:
    return (_ROOT / key).read_text().strip()


def ensure_ip_forward(*, ipv6: bool = False) -> None:
    """Routing between the bridge and the uplink needs forwarding; it is host-wide and left on.
    (With IPv6 forwarding on, a host that learns its own IPv6 route from router advertisements
    needs accept_ra=2 on its uplink to keep doing so.)"""
    keys = [IP_FORWARD, IPV6_FORWARDING] if ipv6 else [IP_FORWARD]
    try:
        for key in keys:
            if read_sysctl(key) != "1":
                (_ROOT / key).write_text("1\n")
    except OSError as err:
        raise NsrunError("enabling net.ipv4.ip_forward", err.strerror or str(err), "run nsrun as root") from err


def enable_route_localnet(bridge: str) -> None:
    """Let the host's 127.0.0.1 reach published ports in sandboxes on this bridge (packets keep
    their loopback source until masqueraded); the network's guard rule drops the reverse."""
    try:
        (_ROOT / f"net/ipv4/conf/{bridge}/route_localnet").write_text("1\n")
    except OSError as err:
        raise NsrunError(f"enabling route_localnet on {bridge}", err.strerror or str(err)) from err


def allow_unprivileged_ports() -> None:
    """In a sandbox's own namespace: any user may bind any port (a server needs no root for :80).
    Call from inside the namespace; it affects nothing outside it."""
    (_ROOT / "net/ipv4/ip_unprivileged_port_start").write_text("0\n")
