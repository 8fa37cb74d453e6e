"""Kernel settings under /proc/sys, of the network namespace nsrun runs in."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Final

from nsrun.errors import NsrunError

__all__ = [
    "IP_FORWARD",
    "disable_router_advertisements",
    "ensure_ip_forward",
    "prepare_sandbox_netns",
    "read_sysctl",
    "route_localnet",
    "set_route_localnet",
]

IP_FORWARD: Final = "net/ipv4/ip_forward"
IPV6_FORWARDING: Final = "net/ipv6/conf/all/forwarding"
_ROOT: Final = Path("/proc/sys")


def _failure(what: str, key: str, err: OSError) -> NsrunError:
    """Why a setting could not be written, and what to do: /proc/sys is read-only where nsrun runs
    in a container that did not give it a writable one; otherwise it lacks root."""
    name = key.replace("/", ".")
    if err.errno == errno.EROFS:
        return NsrunError(
            what,
            f"/proc/sys is read-only here (writing {name}; in a container?)",
            "run nsrun on the host, or in a container given a writable /proc/sys",
        )
    return NsrunError(what, f"{name}: {err.strerror or err}", "run nsrun as root on the host")


def read_sysctl(key: str) -> str:
    return (_ROOT / key).read_text().strip()


def ensure_ip_forward(*, ipv6: bool = False) -> None:
    """Routing between the bridge and the uplink needs forwarding; it is host-wide and left on.
    (With IPv6 forwarding on, a host that learns its own IPv6 route from router advertisements
    needs accept_ra=2 on its uplink to keep doing so.)"""
    for key in [IP_FORWARD, IPV6_FORWARDING] if ipv6 else [IP_FORWARD]:
        try:
            if read_sysctl(key) != "1":
                (_ROOT / key).write_text("1\n")
        except OSError as err:
            raise _failure("enabling forwarding", key, err) from err


def set_route_localnet(bridge: str, *, enabled: bool) -> None:
    """Let the host's 127.0.0.1 reach published ports in sandboxes on this bridge (packets keep
    their loopback source until masqueraded). Only with the guard rule in place: without it a
    sandbox could address the host's loopback services through its bridge."""
    key = f"net/ipv4/conf/{bridge}/route_localnet"
    wanted = "1" if enabled else "0"
    try:
        if (_ROOT / key).read_text().strip() != wanted:
            (_ROOT / key).write_text(wanted + "\n")
    except OSError as err:
        raise _failure(f"setting route_localnet on {bridge}", key, err) from err


def route_localnet(bridge: str) -> bool:
    try:
        return (_ROOT / f"net/ipv4/conf/{bridge}/route_localnet").read_text().strip() == "1"
    except OSError:
        return False


# Set in a sandbox's own network namespace, from inside it: they affect nothing outside.
SANDBOX_NETNS_SYSCTLS: Final = (
    # any user may bind any port: a server needs no root (nor CAP_NET_BIND_SERVICE) for :80
    ("net/ipv4/ip_unprivileged_port_start", "0"),
    # ICMP echo through datagram sockets for every group: ping works without CAP_NET_RAW
    ("net/ipv4/ping_group_range", "0 2147483647"),
    # a sandbox takes no router advertisements: its routes are the ones nsrun set
    ("net/ipv6/conf/all/accept_ra", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
)


def prepare_sandbox_netns() -> None:
    """Call from inside a new sandbox namespace, before its links exist (they take the defaults)."""
    for key, value in SANDBOX_NETNS_SYSCTLS:
        path = _ROOT / key
        try:
            if path.exists():
                path.write_text(value + "\n")
        except OSError as err:
            raise _failure("preparing the sandbox's network namespace", key, err) from err


def disable_router_advertisements(interface: str) -> None:
    """No router advertisement from a sandbox may reconfigure the host through its bridge
    (CVE-2020-13401: Docker sets accept_ra=0 too)."""
    key = f"net/ipv6/conf/{interface}/accept_ra"
    try:
        if (_ROOT / key).exists() and (_ROOT / key).read_text().strip() != "0":
            (_ROOT / key).write_text("0\n")
    except OSError as err:
        raise _failure(f"setting accept_ra=0 on {interface}", key, err) from err
