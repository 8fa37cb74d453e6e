"""The only module that speaks netlink (pyroute2). Functions are handed their `Rtnl` handle: one
bound to the host namespace, or one opened inside a sandbox's namespace."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pyroute2.netlink import (
    NETLINK_NETFILTER,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSETELEM,
    NFT_MSG_GETGEN,
    nft_chain_msg,
    nft_gen_msg,
    nft_rule_msg,
    nft_set_elem_list_msg,
)
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nsrun.errors import NsrunError
from nsrun.net import sysctl
from nsrun.process import namespaces

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nsrun.net.plan import AttachPlan

__all__ = [
    "HostRoute",
    "NetlinkError",
    "Rtnl",
    "add_bridge",
    "add_veth_pair",
    "attach_port",
    "bridge_exists",
    "bridge_mac",
    "bridge_ports",
    "configure_sandbox",
    "create_veth",
    "default_route_mtu",
    "delete_link",
    "delete_nft_objects",
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
    "rehearse",
    "ruleset_generation",
]

_LOOPBACK_INDEX: Final = 1  # lo is always ifindex 1 in a fresh namespace
SANDBOX_IFINDEX: Final = 2  # what the sandbox's eth0 asks for: the next one
_MAIN_TABLE: Final = 254
IFA_F_NODAD: Final = 0x02
AnyAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_RECEIVE_BUFFER: Final = 1 << 18  # the kernel sends dump parts of at most a few pages
_DUMP_RETRIES: Final = 5  # a dump interrupted by a concurrent change (NLM_F_DUMP_INTR) is asked again
_GENERATION_REPLY: Final = 4096  # nf_tables' answer to GETGEN: one small message
_IFF_UP: Final = 0x1
# nsrun reads no link's counters: without them a link's answer is half the size, and pyroute2
# parses it in half the time (0.15 ms instead of 0.26 for a bridge, measured)
_RTEXT_FILTER_SKIP_STATS: Final = 1 << 3
_RTPROT_BOOT: Final = 3  # what `ip route add` marks its routes with
_RTN_UNICAST: Final = 1
_NLMSG_HEADER: Final = 16  # length, type, flags, sequence, port id


class Rtnl:
    """A synchronous rtnetlink socket in the namespace it was opened in: pyroute2's messages and
    parser, without its per-call event loop (a request costs ~0.07 ms instead of ~0.5 ms through
    `IPRoute`, and a launch makes about a dozen). One request at a time, from one thread."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
        except BaseException:
            self._sock.close()
            raise
        self._sequence = 0
        self._marshal = MarshalRtnl()
        self._buffer = bytearray(_RECEIVE_BUFFER)

    def close(self) -> None:
        self._sock.close()

    def request(self, msg: Any, msg_type: int, flags: int = NLM_F_ACK) -> list[Any]:
        """Send `msg`; the replies (parsed), [] for an acknowledgement. NetlinkError if the
        kernel refused it; a dump another change interrupted is asked again."""
        for _ in range(_DUMP_RETRIES):
            replies, interrupted = self._exchange(msg, msg_type, flags)
            if not interrupted:
                return replies
        raise NetlinkError(errno.EAGAIN, "the dump was interrupted by concurrent changes every time")

    def _exchange(self, msg: Any, msg_type: int, flags: int) -> tuple[list[Any], bool]:
        self._sequence += 1
        sequence = self._sequence
        self._sock.send(_encode(msg, msg_type, flags, sequence))
        replies: list[Any] = []
        interrupted = False
        while True:
            size = self._sock.recv_into(self._buffer)
            for reply in self._marshal.parse(bytes(self._buffer[:size])):
                reply_header = reply["header"]
                if reply_header["sequence_number"] != sequence:
                    continue  # an answer to an earlier request that was given up on
                if reply_header["error"] is not None:
                    raise reply_header["error"]
                interrupted = interrupted or bool(reply_header["flags"] & NLM_F_DUMP_INTR)
                if reply_header["type"] in (NLMSG_DONE, NLMSG_ERROR):
                    return replies, interrupted
                replies.append(reply)
                if not reply_header["flags"] & NLM_F_MULTI:
                    return replies, interrupted  # the one answer to a get

    # -- the requests nsrun makes -------------------------------------------------------------

    def get_link(self, name: str) -> Any | None:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_EXT_MASK", _RTEXT_FILTER_SKIP_STATS)]
        try:
            return self.request(msg, RTM_GETLINK, 0)[0]
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return None
            raise

    def dump_links(self) -> list[Any]:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_EXT_MASK", _RTEXT_FILTER_SKIP_STATS)]
        return self.request(msg, RTM_GETLINK, NLM_F_DUMP)

    def dump_addresses(self, family: int = socket.AF_UNSPEC) -> list[Any]:
        msg = ifaddrmsg()
        msg["family"] = family
        return self.request(msg, RTM_GETADDR, NLM_F_DUMP)

    def dump_routes(self, family: int = socket.AF_INET) -> list[Any]:
        msg = rtmsg()
        msg["family"] = family
        return self.request(msg, RTM_GETROUTE, NLM_F_DUMP)

    def add_link(self, attrs: list[tuple[str, Any]], *, up: bool = False) -> None:
        self.request(_link_message(0, attrs, up=up), RTM_NEWLINK, _CREATE)

    def set_link(self, index: int, attrs: list[tuple[str, Any]] | None = None, *, up: bool = False) -> None:
        self.request(_link_message(index, attrs or [], up=up), RTM_NEWLINK)

    def delete_link(self, name: str) -> None:
        self.request(_link_message(0, [("IFLA_IFNAME", name)]), RTM_DELLINK)

    def add_address(self, index: int, address: AnyAddress, prefixlen: int, flags: int = 0) -> None:
        self.request(_address_message(index, address, prefixlen, flags), RTM_NEWADDR, _CREATE)

    def add_default_route(self, gateway: AnyAddress) -> None:
        self.request(_default_route_message(gateway), RTM_NEWROUTE, _CREATE)


_CREATE: Final = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL


def _encode(msg: Any, msg_type: int, flags: int, sequence: int) -> bytes:
    header = msg["header"]
    header["type"], header["flags"] = msg_type, flags | NLM_F_REQUEST
    header["sequence_number"], header["pid"] = sequence, 0
    msg.encode()
    return bytes(msg.data)


def _link_message(index: int, attrs: list[tuple[str, Any]], *, up: bool = False) -> Any:
    msg = ifinfmsg()
    msg["index"] = index
    if up:
        msg["flags"] = msg["change"] = _IFF_UP
    msg["attrs"] = attrs
    return msg


def _address_message(index: int, address: AnyAddress, prefixlen: int, flags: int) -> Any:
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET if address.version == 4 else socket.AF_INET6  # noqa: PLR2004
    msg["prefixlen"], msg["flags"], msg["index"] = prefixlen, flags, index
    msg["attrs"] = [("IFA_LOCAL", str(address)), ("IFA_ADDRESS", str(address))]
    return msg


def _default_route_message(gateway: AnyAddress) -> Any:
    msg = rtmsg()
    msg["family"] = socket.AF_INET if gateway.version == 4 else socket.AF_INET6  # noqa: PLR2004
    msg["table"], msg["proto"], msg["type"] = _MAIN_TABLE, _RTPROT_BOOT, _RTN_UNICAST
    msg["attrs"] = [("RTA_GATEWAY", str(gateway))]
    return msg


# One netfilter socket per thread and process, kept: making one right after a commit that deleted
# a chain waits for the kernel to finish that (5-15 ms, measured); asking on an open one does not.
_netfilter = threading.local()


def _netfilter_socket() -> socket.socket:
    cached = getattr(_netfilter, "socket", None)
    if cached is not None and cached[0] == os.getpid():
        return cached[1]  # type: ignore[no-any-return]
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    _netfilter.socket, _netfilter.sequence = (os.getpid(), sock), 0
    return sock


def ruleset_generation() -> int | None:
    """nf_tables' generation: the count of ruleset changes committed, by anyone, since boot (per
    network namespace). None where nf_tables does not answer."""
    try:
        sock = _netfilter_socket()
        _netfilter.sequence += 1
        sequence = _netfilter.sequence
        sock.send(_encode(nft_gen_msg(), NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN, 0, sequence))
        while True:  # an answer to an earlier question that was given up on comes first
            reply = nft_gen_msg(sock.recv(_GENERATION_REPLY))
            reply.decode()
            if reply["header"]["sequence_number"] == sequence:
                break
    except OSError:
        _netfilter.socket = None  # broken: the next question opens another
        return None
    except Exception:  # noqa: BLE001  # an error message, or nothing of nf_tables': no generation
        return None
    generation = reply.get_attr("NFTA_GEN_ID")
    return int(generation) if isinstance(generation, int) else None


_NFNL_MSG_BATCH_BEGIN: Final = 0x10
_NFNL_MSG_BATCH_END: Final = 0x11
_BATCH_REPLY: Final = 8192  # an acknowledgement, or an error quoting the request (a few hundred bytes)
_BATCH_TIMEOUT: Final = 5.0  # seconds; nf_tables answers every request that asks for it


def delete_nft_objects(
    family: int,
    table: str,
    elements: Sequence[tuple[str, bytes]] = (),
    flushed: Sequence[str] = (),
    chains: Sequence[str] = (),
) -> int:
    """Delete in one nf_tables transaction, straight through netlink, in this order: elements
    of sets or maps by key ((set, key as the kernel stores it)), the rules of the `flushed`
    chains, then `chains`, all in `table` of `family` (NFPROTO_*). All or nothing: 0 once
    committed, else the errno the kernel refused the first failing step with (ENOENT: one of
    them is not there); OSError where nf_tables cannot be asked. (libnftables takes 0.5-0.7 ms
    for this, most of it parsing and filling its cache; this batch takes about 0.1.)"""
    sock = _netfilter_socket()
    steps: list[tuple[Any, int]] = []
    for name, key in elements:
        element = nft_set_elem_list_msg()
        keyed = {"attrs": [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", key)]})]}
        element["attrs"] = [
            ("NFTA_SET_ELEM_LIST_TABLE", table),
            ("NFTA_SET_ELEM_LIST_SET", name),
            ("NFTA_SET_ELEM_LIST_ELEMENTS", [keyed]),
        ]
        steps.append((element, NFT_MSG_DELSETELEM))
    for chain in flushed:
        rules = nft_rule_msg()
        rules["attrs"] = [("NFTA_RULE_TABLE", table), ("NFTA_RULE_CHAIN", chain)]
        steps.append((rules, NFT_MSG_DELRULE))
    for chain in chains:
        whole = nft_chain_msg()
        whole["attrs"] = [("NFTA_CHAIN_TABLE", table), ("NFTA_CHAIN_NAME", chain)]
        steps.append((whole, NFT_MSG_DELCHAIN))
    first = _netfilter.sequence + 1
    _netfilter.sequence += len(steps) + 2
    batch = _batch_marker(_NFNL_MSG_BATCH_BEGIN, first)
    for offset, (msg, kind) in enumerate(steps, start=1):
        msg["nfgen_family"] = family
        batch += _encode(msg, NFNL_SUBSYS_NFTABLES << 8 | kind, NLM_F_ACK, first + offset)
    batch += _batch_marker(_NFNL_MSG_BATCH_END, first + len(steps) + 1)
    try:
        sock.settimeout(_BATCH_TIMEOUT)
        sock.send(batch)
        return _await_answers(sock, range(first, first + len(steps) + 2), range(first + 1, first + len(steps) + 1))
    except OSError:
        _netfilter.socket = None  # broken, or an answer is missing: the next question opens another
        raise
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)


def _batch_marker(kind: int, sequence: int) -> bytes:
    marker = nfgen_msg()
    marker["res_id"] = NFNL_SUBSYS_NFTABLES
    return _encode(marker, kind, 0, sequence)


def _await_answers(sock: socket.socket, ours: range, steps: range) -> int:
    """Each step's answer (acknowledged: 0; refused: its errno); the first refusal is the
    batch's. An error answering a batch marker (nf_tables missing) ends it at once."""
    pending = set(steps)
    refused = 0
    while pending:
        for sequence, code in _errors_in(sock.recv(_BATCH_REPLY)):
            if sequence not in ours:
                continue  # the answer to an earlier question given up on
            if sequence not in steps:
                return code or errno.EPROTO  # the batch itself was refused
            refused = refused or code
            pending.discard(sequence)
    return refused


def _errors_in(data: bytes) -> list[tuple[int, int]]:
    """(sequence, errno) of each NLMSG_ERROR message in a netlink datagram (errno 0: an ack)."""
    found = []
    offset = 0
    while offset + _NLMSG_HEADER <= len(data):
        length, kind, _flags, sequence, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < _NLMSG_HEADER:
            break
        if kind == NLMSG_ERROR and offset + _NLMSG_HEADER + 4 <= len(data):
            (code,) = struct.unpack_from("=i", data, offset + _NLMSG_HEADER)
            found.append((sequence, -code))
        offset += (length + 3) & ~3
    return found


def rehearse() -> None:
    """Encode, and parse back, the requests a launch sends (nothing is sent): in a process forked
    from one that has not run them, the first pass over pyroute2's encoders and parser copies the
    pages it touches, milliseconds a spare worker spends before its launch rather than during it."""
    gateway = ipaddress.IPv4Address("192.0.2.1")
    peer = {"index": SANDBOX_IFINDEX, "attrs": [("IFLA_IFNAME", "eth0"), ("IFLA_ADDRESS", "02:00:00:00:00:01")]}
    veth = [("IFLA_IFNAME", "nsvrehearsal"), ("IFLA_LINKINFO", _veth_info(peer))]
    requests = [
        (_link_message(0, veth), RTM_NEWLINK),
        (_link_message(SANDBOX_IFINDEX, [], up=True), RTM_NEWLINK),
        (_link_message(0, [("IFLA_IFNAME", "nsvrehearsal"), ("IFLA_MASTER", 1)], up=True), RTM_NEWLINK),
        (_address_message(SANDBOX_IFINDEX, gateway, 24, 0), RTM_NEWADDR),
        (_default_route_message(gateway), RTM_NEWROUTE),
    ]
    marshal = MarshalRtnl()
    for msg, msg_type in requests:
        list(marshal.parse(_encode(msg, msg_type, _CREATE, 0)))


def _fail(action: str, err: NetlinkError, fix: str = "run `nsrun doctor`") -> NsrunError:
    return NsrunError(action, os_error_text(err.code), fix)


def os_error_text(code: int) -> str:
    return os.strerror(code).lower()


def open_in_new_netns(inside: Callable[[], None] | None = None) -> tuple[int, Rtnl]:
    """A fresh network namespace, held by the returned fd, and a netlink handle bound inside it;
    `inside` runs in the namespace too (its /proc/sys/net is the namespace's own)."""
    with namespaces.new_netns() as fd:
        try:
            inner = Rtnl()
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


def open_in_netns(path: str, what: str) -> tuple[int, Rtnl]:
    """An existing network namespace (a container runtime's), held by the returned fd, and a
    netlink handle bound inside it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise NsrunError(f"opening {what} {path}", err.strerror or str(err), "give an existing namespace") from err
    try:
        with namespaces.entered_netns(fd, f"{what} {path}"):
            inner = Rtnl()
    except BaseException:
        os.close(fd)
        raise
    return fd, inner


def interface_addresses(inner: Rtnl, name: str) -> list[str] | None:
    """The addresses (as ADDRESS/PREFIXLEN) of interface `name`, None if there is no such interface."""
    link = _link(inner, name)
    if link is None:
        return None
    try:
        found = [entry for entry in inner.dump_addresses() if entry["index"] == link["index"]]
    except NetlinkError as err:
        raise _fail(f"listing the addresses of {name!r}", err) from err
    return [f"{entry.get_attr('IFA_ADDRESS')}/{entry['prefixlen']}" for entry in found]


def _link(rtnl: Rtnl, name: str) -> Any | None:
    try:
        return rtnl.get_link(name)
    except NetlinkError as err:
        raise _fail(f"looking up interface {name!r}", err) from err


def _kind(link: Any) -> str | None:
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return str(kind) if kind is not None else None


def link_mac(rtnl: Rtnl, name: str) -> str:
    """The link's MAC address ("" if there is no such link)."""
    link = _link(rtnl, name)
    return str(link.get_attr("IFLA_ADDRESS") or "") if link is not None else ""


def link_exists(rtnl: Rtnl, name: str) -> bool:
    return _link(rtnl, name) is not None


def bridge_exists(rtnl: Rtnl, name: str) -> bool:
    link = _link(rtnl, name)
    return link is not None and _kind(link) == "bridge"


def _dump_links(rtnl: Rtnl) -> list[Any]:
    try:
        return rtnl.dump_links()
    except NetlinkError as err:
        raise _fail("listing the interfaces", err) from err


def list_links(rtnl: Rtnl) -> list[tuple[str, str | None]]:
    """(name, kind) of every link."""
    return [(str(m.get_attr("IFLA_IFNAME")), _kind(m)) for m in _dump_links(rtnl)]


def add_bridge(rtnl: Rtnl, name: str) -> None:
    """A new bridge (NetlinkError EEXIST if an interface of that name exists)."""
    rtnl.add_link([("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})])


def add_veth_pair(rtnl: Rtnl, name: str, peer: str) -> None:
    """A new veth pair, both ends in this namespace (NetlinkError if that cannot be)."""
    rtnl.add_link([("IFLA_IFNAME", name), ("IFLA_LINKINFO", _veth_info({"attrs": [("IFLA_IFNAME", peer)]}))])


def _veth_info(peer: dict[str, Any]) -> dict[str, Any]:
    return {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]}


def ensure_bridge(rtnl: Rtnl, name: str, addresses: Sequence[tuple[AnyAddress, int]]) -> tuple[int, bool]:
    """The bridge exists, holds the gateway addresses (address, prefix length) and is up; returns
    its index, and whether it had to be created. Idempotent."""
    created = False
    link = _link(rtnl, name)
    if link is None:
        try:
            add_bridge(rtnl, name)
            created = True
        except NetlinkError as err:
            if err.code != errno.EEXIST:  # EEXIST: a concurrent launch created it first
                raise _fail(f"creating bridge {name!r}", err) from err
        link = _link(rtnl, name)
    if link is None or _kind(link) != "bridge":
        raise NsrunError(
            f"setting up bridge {name!r}", "an interface of that name exists and is not a bridge", "rename or remove it"
        )
    index: int = link["index"]
    sysctl.disable_router_advertisements(name)
    try:
        if created:
            # Pin the bridge's MAC: by default it takes the lowest MAC of its ports and changes as
            # sandboxes come and go, and peers then send to a stale ARP entry for up to minutes. The
            # same MAC for the same bridge name: recreated under running sandboxes (after an
            # `ip link del`), it is still the gateway their ARP caches know.
            rtnl.set_link(index, [("IFLA_ADDRESS", bridge_mac(name))])
        for address, prefixlen in addresses:
            _ensure_address(rtnl, index, address, prefixlen, f"bridge {name!r}")
        if created or not link["flags"] & _IFF_UP:
            rtnl.set_link(index, up=True)
    except NetlinkError as err:
        raise _fail(f"setting up bridge {name!r}", err) from err
    return index, created


def ensure_ports(rtnl: Rtnl, bridge_index: int, veths: Sequence[str]) -> list[str]:
    """These veths (those that exist) are ports of the bridge and up; the ones it had to attach
    (after `ip link del` of a bridge that ran sandboxes: their veths stayed, masterless)."""
    attached = []
    for name in veths:
        link = _link(rtnl, name)
        if link is None or link.get_attr("IFLA_MASTER") == bridge_index:
            continue
        try:
            rtnl.set_link(link["index"], [("IFLA_MASTER", bridge_index)], up=True)
        except NetlinkError as err:
            raise _fail(f"attaching veth {name!r} to its bridge again", err) from err
        attached.append(name)
    return attached


def bridge_ports(rtnl: Rtnl, bridge: str) -> list[str] | None:
    """Names of the bridge's ports; None if there is no such bridge."""
    link = _link(rtnl, bridge)
    if link is None:
        return None
    return [str(m.get_attr("IFLA_IFNAME")) for m in _dump_links(rtnl) if m.get_attr("IFLA_MASTER") == link["index"]]


def bridge_mac(name: str) -> str:
    """A locally administered unicast MAC derived from the bridge's name."""
    digest = hashlib.sha256(b"nsrun bridge " + name.encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x02, *digest[:5]))


def _ensure_address(rtnl: Rtnl, index: int, address: AnyAddress, prefixlen: int, where: str) -> None:
    # IPv6 addresses skip duplicate address detection: usable at once, not after ~1.5 s of "tentative"
    flags = IFA_F_NODAD if address.version == 6 else 0  # noqa: PLR2004
    try:
        rtnl.add_address(index, address, prefixlen, flags)
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise _fail(f"adding address {address}/{prefixlen} to {where}", err) from err


def create_veth(rtnl: Rtnl, plan: AttachPlan, netns_fd: int) -> int:
    """The veth pair, in one request, both ends down: its peer created directly inside the sandbox
    namespace (when that namespace dies the kernel destroys the pair, whatever happened to nsrun),
    the host end no bridge's port yet (`attach_port`, once its filter is in place). The peer's
    index there (0: not known)."""
    mtu: list[tuple[str, Any]] = [("IFLA_MTU", plan.mtu)] if plan.mtu else []
    peer_attrs: list[tuple[str, Any]] = [
        ("IFLA_IFNAME", plan.sandbox_ifname),
        ("IFLA_NET_NS_FD", netns_fd),
        ("IFLA_ADDRESS", plan.mac),
    ]
    # the first index after lo, so that nothing need look it up; taken (a module's fallback
    # tunnels live in every new namespace), the kernel picks one
    for index in (SANDBOX_IFINDEX, 0):
        peer = {"index": index, "attrs": peer_attrs + mtu}
        try:
            rtnl.add_link([("IFLA_IFNAME", plan.host_veth), *mtu, ("IFLA_LINKINFO", _veth_info(peer))])
        except NetlinkError as err:
            if index and err.code in (errno.EBUSY, errno.EEXIST) and not link_exists(rtnl, plan.host_veth):
                continue
            raise _fail(f"creating veth {plan.host_veth!r}", err) from err
        return index
    return 0


def attach_port(rtnl: Rtnl, plan: AttachPlan, bridge_index: int) -> None:
    """The host end of a sandbox's veth becomes a port of its bridge, and up."""
    try:
        rtnl.set_link(0, [("IFLA_IFNAME", plan.host_veth), ("IFLA_MASTER", bridge_index)], up=True)
    except NetlinkError as err:
        raise _fail(f"attaching veth {plan.host_veth!r} to bridge {plan.bridge!r}", err) from err


def loopback_up(inner: Rtnl) -> None:
    try:
        inner.set_link(_LOOPBACK_INDEX, up=True)
    except NetlinkError as err:
        raise _fail("bringing up lo in the sandbox", err) from err


def configure_sandbox(inner: Rtnl, plan: AttachPlan, index: int = 0) -> None:
    """Inside the sandbox: eth0 (at `index`, 0: look it up) up, its address, the default route
    via the gateway (before its host end joins the bridge: nothing flows yet)."""
    action = f"configuring {plan.sandbox_ifname} in the sandbox"
    if not index:
        link = _link(inner, plan.sandbox_ifname)
        if link is None:
            raise NsrunError(action, f"there is no interface {plan.sandbox_ifname!r} in it", "run `nsrun doctor`")
        index = link["index"]
    try:
        inner.set_link(index, up=True)
        inner.add_address(index, plan.address, plan.subnet.prefixlen)
        if plan.address6 is not None and plan.prefixlen6 is not None:
            _ensure_address(inner, index, plan.address6, plan.prefixlen6, "the sandbox")
        if plan.default_route:
            inner.add_default_route(plan.gateway)
            if plan.gateway6 is not None:
                inner.add_default_route(plan.gateway6)
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


def delete_link(rtnl: Rtnl, name: str) -> None:
    """Delete a link; one that is already gone counts as deleted."""
    try:
        rtnl.delete_link(name)
    except NetlinkError as err:
        if err.code != errno.ENODEV:
            raise _fail(f"deleting interface {name!r}", err) from err


def delete_link_soon(name: str) -> None:
    """Ask for a link's deletion from a thread of its own, and return at once. The kernel unlists
    the link at once, but its answer comes only after an rcu_barrier, which waits for every
    pending RCU callback of the machine (20-50 ms when namespaces end nearby): the caller waits
    for the link to be gone instead (`linkwatch.wait_gone`). A failure is the caller's to find
    there: the link is still listed."""

    def delete() -> None:
        with contextlib.suppress(NsrunError, OSError), contextlib.closing(Rtnl()) as rtnl:
            delete_link(rtnl, name)

    threading.Thread(target=delete, name="nsrun-link-removal", daemon=True).start()


def default_route_mtu(rtnl: Rtnl) -> int | None:
    """MTU of the interface the host's preferred IPv4 default route leaves by, if there is one."""
    from nsrun.net.routes import default_interface, main_routes

    name = default_interface(main_routes())
    link = _link(rtnl, name) if name is not None else None
    mtu = link.get_attr("IFLA_MTU") if link is not None else None
    return int(mtu) if mtu else None


@dataclass(frozen=True)
class HostRoute:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ifname: str  # empty for routes without one interface (blackhole, unreachable, multipath)

    @property
    def label(self) -> str:
        return f"host route via {self.ifname}" if self.ifname else "host route"


def host_routes(rtnl: Rtnl, family: int = socket.AF_INET) -> list[HostRoute]:
    """Every prefix of `family` the host routes or owns (default, link-local and multicast routes
    excepted), with its interface."""
    # Links are listed last: a bridge another launch creates meanwhile must be named as ours, not
    # as an unknown interface; a prefix whose link vanished meanwhile went with it.
    by_index: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
    try:
        routes, addresses = rtnl.dump_routes(family), rtnl.dump_addresses(family)
    except NetlinkError as err:
        raise _fail("listing the host's routes", err) from err
    for route in routes:
        table = route.get_attr("RTA_TABLE") or route["table"]
        if table != _MAIN_TABLE or route["dst_len"] == 0 or route.get_attr("RTA_DST") is None:
            continue
        network = ipaddress.ip_network(f"{route.get_attr('RTA_DST')}/{route['dst_len']}", strict=False)
        by_index.append((network, route.get_attr("RTA_OIF")))
    for addr in addresses:
        network = ipaddress.ip_network(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False)
        by_index.append((network, addr["index"]))
    names = {m["index"]: str(m.get_attr("IFLA_IFNAME")) for m in _dump_links(rtnl)}
    found = {HostRoute(network, names.get(index, "")) for network, index in by_index if index is None or index in names}
    kept = [r for r in found if not (r.network.is_link_local or r.network.is_multicast)]
    return sorted(kept, key=lambda r: (int(r.network.network_address), r.network.prefixlen))
