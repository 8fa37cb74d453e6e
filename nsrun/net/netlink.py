"""The only module that speaks netlink (pyroute2). Functions are handed their IPRoute handle:
one bound to the host namespace, or one opened inside a sandbox's namespace."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pyroute2 import IPRoute, NetlinkError

from nsrun.errors import NsrunError
from nsrun.net import sysctl
from nsrun.process import namespaces

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nsrun.net.plan import AttachPlan

__all__ = [
    "HostRoute",
    "IPRoute",
    "bridge_exists",
    "bridge_mac",
    "bridge_ports",
    "configure_sandbox",
    "create_veth",
    "default_route_mtu",
    "delete_link",
    "ensure_bridge",
    "ensure_ports",
    "flush_udp_conntrack",
    "host_routes",
    "link_exists",
    "link_mac",
    "list_links",
    "loopback_up",
    "open_in_netns",
    "open_in_new_netns",
]

_LOOPBACK_INDEX: Final = 1  # lo is always ifindex 1 in a fresh namespace
SANDBOX_IFINDEX: Final = 2  # what the sandbox's eth0 asks for: the next one
_MAIN_TABLE: Final = 254
IFA_F_NODAD: Final = 0x02
AnyAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LOCAL_TABLE: Final = 255


def _fail(action: str, err: NetlinkError, fix: str = "run `nsrun doctor`") -> NsrunError:
    return NsrunError(action, os_error_text(err.code), fix)


def os_error_text(code: int) -> str:
    return os.strerror(code).lower()


def open_in_new_netns(inside: Callable[[], None] | None = None) -> tuple[int, IPRoute]:
    """A fresh network namespace, held by the returned fd, and a netlink handle bound inside it;
    `inside` runs in the namespace too (its /proc/sys/net is the namespace's own)."""
    with namespaces.new_netns() as fd:
        try:
            inner = IPRoute()
        except BaseException:
            os.close(fd)
            raise
        try:
            if inside is not None:
                inside()
        except BaseException:
            inner.close()
            os.close(fd)
            raise
    return fd, inner


def open_in_netns(path: str, what: str) -> tuple[int, IPRoute]:
    """An existing network namespace (a container runtime's), held by the returned fd, and a
    netlink handle bound inside it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise NsrunError(f"opening {what} {path}", err.strerror or str(err), "give an existing namespace") from err
    try:
        with namespaces.entered_netns(fd, f"{what} {path}"):
            inner = IPRoute()
    except BaseException:
        os.close(fd)
        raise
    return fd, inner


def interface_addresses(inner: IPRoute, name: str) -> list[str] | None:
    """The addresses (as ADDRESS/PREFIXLEN) of interface `name`, None if there is no such interface."""
    link = _link(inner, name)
    if link is None:
        return None
    return [f"{entry.get_attr('IFA_ADDRESS')}/{entry['prefixlen']}" for entry in inner.get_addr(index=link["index"])]


def _link(ipr: IPRoute, name: str) -> Any | None:
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise _fail(f"looking up interface {name!r}", err) from err


def link_mac(ipr: IPRoute, name: str) -> str:
    """The link's MAC address ("" if there is no such link)."""
    link = _link(ipr, name)
    return str(link.get_attr("IFLA_ADDRESS") or "") if link is not None else ""


def link_exists(ipr: IPRoute, name: str) -> bool:
    return _link(ipr, name) is not None


def bridge_exists(ipr: IPRoute, name: str) -> bool:
    link = _link(ipr, name)
    return link is not None and link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"


def list_links(ipr: IPRoute) -> list[tuple[str, str | None]]:
    """(name, kind) of every link."""
    return [(m.get("ifname"), m.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")) for m in ipr.link("dump")]


def ensure_bridge(ipr: IPRoute, name: str, addresses: Sequence[tuple[AnyAddress, int]]) -> tuple[int, bool]:
    """The bridge exists, holds the gateway addresses (address, prefix length) and is up; returns
    its index, and whether it had to be created. Idempotent."""
    created = False
    try:
        ipr.link("add", ifname=name, kind="bridge")
        created = True
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise _fail(f"creating bridge {name!r}", err) from err
    link = _link(ipr, name)
    if link is None or link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "bridge":
        raise NsrunError(
            f"setting up bridge {name!r}", "an interface of that name exists and is not a bridge", "rename or remove it"
        )
    index: int = link["index"]
    sysctl.disable_router_advertisements(name)
    if created:
        # Pin the bridge's MAC: by default it takes the lowest MAC of its ports and changes as
        # sandboxes come and go, and peers then send to a stale ARP entry for up to minutes. The
        # same MAC for the same bridge name: recreated under running sandboxes (after an
        # `ip link del`), it is still the gateway their ARP caches know.
        ipr.link("set", index=index, address=bridge_mac(name))
    for address, prefixlen in addresses:
        _ensure_address(ipr, index, address, prefixlen, f"bridge {name!r}")
    ipr.link("set", index=index, state="up")
    return index, created


def ensure_ports(ipr: IPRoute, bridge_index: int, veths: Sequence[str]) -> list[str]:
    """These veths (those that exist) are ports of the bridge and up; the ones it had to attach
    (after `ip link del` of a bridge that ran sandboxes: their veths stayed, masterless)."""
    attached = []
    for name in veths:
        link = _link(ipr, name)
        if link is None or link.get("master") == bridge_index:
            continue
        try:
            ipr.link("set", index=link["index"], master=bridge_index, state="up")
        except NetlinkError as err:
            raise _fail(f"attaching veth {name!r} to its bridge again", err) from err
        attached.append(name)
    return attached


def bridge_ports(ipr: IPRoute, bridge: str) -> list[str] | None:
    """Names of the bridge's ports; None if there is no such bridge."""
    link = _link(ipr, bridge)
    if link is None:
        return None
    return [m.get("ifname") for m in ipr.link("dump") if m.get("master") == link["index"]]


def bridge_mac(name: str) -> str:
    """A locally administered unicast MAC derived from the bridge's name."""
    digest = hashlib.sha256(b"nsrun bridge " + name.encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x02, *digest[:5]))


def _ensure_address(ipr: IPRoute, index: int, address: AnyAddress, prefixlen: int, where: str) -> None:
    # IPv6 addresses skip duplicate address detection: usable at once, not after ~1.5 s of "tentative"
    flags = {"flags": IFA_F_NODAD} if address.version == 6 else {}  # noqa: PLR2004
    try:
        ipr.addr("add", index=index, address=str(address), prefixlen=prefixlen, **flags)
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise _fail(f"adding address {address}/{prefixlen} to {where}", err) from err


def create_veth(ipr: IPRoute, plan: AttachPlan, netns_fd: int, bridge_index: int) -> int:
    """The veth pair, in one request: the host end a port of the bridge and up (its filter is
    already in place), its peer created directly inside the sandbox namespace (when that namespace
    dies the kernel destroys the pair, whatever happened to nsrun). The peer's index there."""
    peer: dict[str, Any] = {"ifname": plan.sandbox_ifname, "net_ns_fd": netns_fd, "address": plan.mac}
    host_end: dict[str, Any] = {"master": bridge_index, "state": "up"}
    if plan.mtu:
        peer["mtu"] = host_end["mtu"] = plan.mtu
    # the first index after lo, so that nothing need look it up; taken (a module's fallback
    # tunnels live in every new namespace), the kernel picks one
    for index in (SANDBOX_IFINDEX, None):
        wanted = peer | ({"index": index} if index else {})
        try:
            ipr.link("add", ifname=plan.host_veth, kind="veth", peer=wanted, **host_end)
        except NetlinkError as err:
            if index is not None and err.code in (errno.EBUSY, errno.EEXIST) and not link_exists(ipr, plan.host_veth):
                continue
            raise _fail(f"creating veth {plan.host_veth!r} on bridge {plan.bridge!r}", err) from err
        return index or 0
    return 0


def loopback_up(inner: IPRoute) -> None:
    try:
        inner.link("set", index=_LOOPBACK_INDEX, state="up")
    except NetlinkError as err:
        raise _fail("bringing up lo in the sandbox", err) from err


def configure_sandbox(inner: IPRoute, plan: AttachPlan, index: int = 0) -> None:
    """Inside the sandbox: eth0 (at `index`, 0: look it up) up, its address, the default route
    via the gateway."""
    action = f"configuring {plan.sandbox_ifname} in the sandbox"
    try:
        index = index or inner.link("get", ifname=plan.sandbox_ifname)[0]["index"]
        inner.link("set", index=index, state="up")
        inner.addr("add", index=index, address=str(plan.address), prefixlen=plan.subnet.prefixlen)
        if plan.address6 is not None and plan.prefixlen6 is not None:
            _ensure_address(inner, index, plan.address6, plan.prefixlen6, "the sandbox")
        if plan.default_route:
            inner.route("add", dst="default", gateway=str(plan.gateway))
            if plan.gateway6 is not None:
                inner.route("add", dst="default", gateway=str(plan.gateway6), family=socket.AF_INET6)
    except NetlinkError as err:
        raise _fail(action, err) from err


def flush_udp_conntrack(port: int) -> None:
    """Forget UDP flows to a newly published port: conntrack would keep sending a client that
    talked to the port before to wherever it went then, not to the new sandbox."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    with contextlib.suppress(NetlinkError, OSError), contextlib.closing(Conntrack()) as conntrack:
        for entry in list(conntrack.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP, dport=port))):
            with contextlib.suppress(NetlinkError):
                conntrack.delete(entry)


def delete_link(ipr: IPRoute, name: str) -> None:
    """Delete a link; one that is already gone counts as deleted."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as err:
        if err.code != errno.ENODEV:
            raise _fail(f"deleting interface {name!r}", err) from err


def default_route_mtu(ipr: IPRoute) -> int | None:
    """MTU of the interface the host's preferred IPv4 default route leaves by, if there is one."""
    from nsrun.net.routes import default_interface, main_routes

    name = default_interface(main_routes())
    link = _link(ipr, name) if name is not None else None
    return int(link.get("mtu")) if link is not None and link.get("mtu") else None


@dataclass(frozen=True)
class HostRoute:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ifname: str  # empty for routes without one interface (blackhole, unreachable, multipath)

    @property
    def label(self) -> str:
        return f"host route via {self.ifname}" if self.ifname else "host route"


def host_routes(ipr: IPRoute, family: int = socket.AF_INET) -> list[HostRoute]:
    """Every prefix of `family` the host routes or owns (default, link-local and multicast routes
    excepted), with its interface."""
    # Links are listed last: a bridge another launch creates meanwhile must be named as ours, not
    # as an unknown interface; a prefix whose link vanished meanwhile went with it.
    by_index: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
    for route in ipr.route("dump", family=family):
        if route.get("table") != _MAIN_TABLE or route["dst_len"] == 0 or route.get("dst") is None:
            continue
        network = ipaddress.ip_network(f"{route.get('dst')}/{route['dst_len']}", strict=False)
        by_index.append((network, route.get("oif")))
    for addr in ipr.addr("dump", family=family):
        network = ipaddress.ip_network(f"{addr.get('address')}/{addr['prefixlen']}", strict=False)
        by_index.append((network, addr["index"]))
    names = {m["index"]: m.get("ifname") for m in ipr.link("dump")}
    found = {HostRoute(network, names.get(index, "")) for network, index in by_index if index is None or index in names}
    kept = [r for r in found if not (r.network.is_link_local or r.network.is_multicast)]
    return sorted(kept, key=lambda r: (int(r.network.network_address), r.network.prefixlen))
