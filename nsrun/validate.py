"""Pure checks of user input: each returns the parsed value or raises UsageError. No system access."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Final

from nsrun.errors import UsageError

if TYPE_CHECKING:
    from nsrun.firewall.rules import PortMapping

__all__ = [
    "HOST_NAME_MAX",
    "IFNAMSIZ",
    "MAX_NAME_LEN",
    "parse_address",
    "parse_dns",
    "parse_env",
    "parse_mac",
    "parse_publish",
    "parse_subnet",
    "validate_hostname",
    "validate_ifname",
    "validate_mtu",
    "validate_name",
]

IFNAMSIZ: Final = 16  # kernel limit including the trailing NUL: names have at most 15 bytes
MAX_NAME_LEN: Final = 63
MIN_PREFIXLEN_HOSTS: Final = 30
HOST_NAME_MAX: Final = 64
MIN_MTU: Final = 68  # the IPv4 minimum (RFC 791)
MAX_MTU: Final = 65535
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ENV_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a /30 still holds the gateway and one sandbox

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MAC_RE: Final = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def validate_name(name: str, *, what: str = "network name") -> str:
    if len(name) > MAX_NAME_LEN or not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid {what} {name!r}",
            f"it must be 1-{MAX_NAME_LEN} letters, digits, '_', '.' or '-', starting with a letter or digit",
            "e.g. lab-1",
        )
    return name


def validate_ifname(name: str) -> str:
    size = len(name.encode())
    if size == 0 or size >= IFNAMSIZ:
        raise UsageError(
            f"invalid interface name {name!r}",
            f"it has {size} bytes, the kernel allows 1-{IFNAMSIZ - 1}",
            "choose a shorter --bridge",
        )
    if name in {".", ".."} or any(c in name for c in "/: ") or not name.isprintable():
        raise UsageError(
            f"invalid interface name {name!r}", "it may not contain '/', ':' or spaces", "choose another --bridge"
        )
    return name


def parse_address(text: str, *, option: str = "--ip") -> ipaddress.IPv4Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError as err:
        raise UsageError(f"invalid {option} {text!r}", "not an IPv4 address", "e.g. 10.123.0.7") from err
    if not isinstance(address, ipaddress.IPv4Address):
        raise UsageError(f"invalid {option} {text!r}", "only IPv4 addresses are supported here", "e.g. 10.123.0.7")
    return address


MAX_PREFIXLEN6: Final = 120


def parse_subnet(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv4 subnet, or an IPv6 one for dual-stack networks."""
    if "%" in text:  # a scope id belongs to one link of the host, not to a network nsrun makes
        raise UsageError(f"invalid --subnet {text!r}", "a subnet has no scope (%...)", "leave the %... part out")
    try:
        subnet = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        raise UsageError(
            f"invalid --subnet {text!r}", str(err), "give a network in CIDR form, e.g. 10.123.0.0/24"
        ) from err
    if isinstance(subnet, ipaddress.IPv6Network):
        unusable = (
            subnet.is_multicast
            or subnet.is_link_local
            or subnet.is_loopback
            or subnet.is_reserved  # ::/8 holds the IPv4-mapped and -compatible ranges
            or subnet.is_site_local
            or subnet.is_unspecified
        )
        if subnet.prefixlen > MAX_PREFIXLEN6 or unusable:
            raise UsageError(
                f"invalid --subnet {text!r}",
                "IPv6 networks need a unicast prefix outside the loopback, link-local, site-local, reserved"
                f" and IPv4-mapped ranges, of /{MAX_PREFIXLEN6} or shorter",
                "use a unique local prefix, e.g. fd00:123::/64",
            )
        return subnet
    if subnet.prefixlen > MIN_PREFIXLEN_HOSTS:
        raise UsageError(
            f"invalid --subnet {text!r}",
            "it has no room for a gateway and a sandbox",
            f"use a prefix of /{MIN_PREFIXLEN_HOSTS} or shorter",
        )
    if subnet.is_loopback or subnet.is_multicast or subnet.is_link_local or subnet.is_unspecified or subnet.is_reserved:
        raise UsageError(
            f"invalid --subnet {text!r}",
            "loopback, link-local, multicast and reserved ranges cannot be used",
            "use a private range, e.g. 10.123.0.0/24",
        )
    return subnet


def parse_mac(text: str) -> str:
    if not _MAC_RE.fullmatch(text):
        raise UsageError(f"invalid --mac {text!r}", "expected six hex bytes", "e.g. --mac 02:00:00:00:00:07")
    first = int(text[:2], 16)
    if first & 0x01:
        raise UsageError(
            f"invalid --mac {text!r}", "it is a multicast address", "clear the lowest bit of the first byte"
        )
    if int(text.replace(":", ""), 16) == 0:
        raise UsageError(
            f"invalid --mac {text!r}", "the all-zero address cannot be assigned", "e.g. --mac 02:00:00:00:00:07"
        )
    return text.lower()


def validate_hostname(name: str) -> str:
    labels = name.split(".")
    if len(name) > HOST_NAME_MAX or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise UsageError(
            f"invalid --hostname {name!r}",
            f"it must be dot-separated labels of letters, digits and '-', {HOST_NAME_MAX} characters at most",
            "e.g. --hostname web-1.test",
        )
    return name


def parse_dns(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as err:
        raise UsageError(f"invalid --dns {text!r}", "not an IP address", "e.g. --dns 192.0.2.53") from err


def parse_env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not _ENV_KEY_RE.fullmatch(key):
        raise UsageError(
            f"invalid --env {text!r}", "expected KEY=VALUE with KEY made of letters, digits and '_'", "e.g. -e DEBUG=1"
        )
    return key, value


def validate_mtu(mtu: int) -> int:
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise UsageError(
            f"invalid --mtu {mtu}", f"it must be between {MIN_MTU} and {MAX_MTU}", "leave --mtu out for the uplink's"
        )
    return mtu


_PUBLISH_RE: Final = re.compile(
    r"(?:(?:(?P<ip>[0-9.]+):)?(?P<host>\d{0,5}):)?(?P<port>\d{1,5})(?:/(?P<proto>tcp|udp))?"
)
MAX_PORT: Final = 65535


def parse_publish(text: str) -> PortMapping:
    from nsrun.firewall.rules import PortMapping  # pure data

    match = _PUBLISH_RE.fullmatch(text)
    if not match:
        raise UsageError(
            f"invalid -p {text!r}",
            "expected [[HOST_IP:]HOST_PORT:]PORT[/tcp|/udp]",
            "e.g. -p 8081:9000, or -p 9000 for a free host port",
        )
    host_port, port = int(match["host"] or 0), int(match["port"])  # host port 0: a free one, chosen at start
    if not (0 <= host_port <= MAX_PORT and 0 < port <= MAX_PORT):
        raise UsageError(
            f"invalid -p {text!r}",
            f"ports must be between 1 and {MAX_PORT} (a host port may be 0: a free one)",
            "e.g. -p 8081:9000, or -p 9000",
        )
    host_ip = parse_address(match["ip"], option="-p host address") if match["ip"] else None
    if host_ip is not None and host_ip.is_multicast:
        raise UsageError(
            f"invalid -p {text!r}", "the host address is a multicast address", "use one of the host's addresses"
        )
    if host_ip is not None and host_ip.is_unspecified:
        host_ip = None  # 0.0.0.0: every host address, as without one
    return PortMapping(host_port, port, match["proto"] or "tcp", host_ip)
