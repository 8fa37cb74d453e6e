"""Waiting for a network interface to go, on the kernel's link notifications, and asking for
it to go without waiting for the request. Stdlib only: a teardown removes a sandbox's veth here.

A veth is unlisted by the kernel at once when deleted (RTM_DELLINK), or when its namespace is
taken down; the request (or the clean-up of the namespace) only returns after an rcu_barrier,
which waits for every pending RCU callback of the machine: 20-50 ms when other namespaces end
nearby, and the clean-up of namespaces is one queue: a namespace let go after another one's
waits for all of that one's. So the removal is asked for from a thread of its own (`remove_soon`),
and the teardown waits only until the interface is gone (`wait_gone`): 0.3-1 ms instead of 1-60.

Polling for it (sleeps that grow) found it up to half a wait late: it goes 0.1-12 ms after the
namespace is let go, in steps the kernel's clean-up takes. A netlink socket subscribed to link
notifications wakes at the change itself; a notification is only a cue to look again (an ioctl),
so none is parsed, and one lost to an overrun costs nothing but that look.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Final

__all__ = ["exists", "remove_soon", "wait_gone"]

_NETLINK_ROUTE: Final = 0
_RTMGRP_LINK: Final = 0x1  # the multicast group of RTM_NEWLINK/RTM_DELLINK notifications
_RECEIVE: Final = 1 << 16
_RTM_DELLINK: Final = 17
_NLM_F_REQUEST_ACK: Final = 0x1 | 0x4
_IFINFOMSG: Final = "=BxHiII"  # family, type, index, flags, change
_NLMSGHDR: Final = "=IHHII"  # length, type, flags, sequence, port


def exists(name: str) -> bool:
    """Whether this network namespace has an interface of that name (an ioctl: cheaper than a
    netlink round trip)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def wait_gone(name: str, timeout: float) -> bool:
    """Whether the interface `name` is gone within `timeout` seconds. The subscription comes
    before the first look, so its removal cannot fall between the look and the wait. Without a
    subscription (no descriptor left) it only looks: the caller deletes what is still there."""
    events = _subscribe() if timeout > 0 else None
    if events is None:
        return not exists(name)
    with events:
        deadline = time.monotonic() + timeout
        while exists(name):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if select.select([events], [], [], remaining)[0]:
                _drain(events)
        return True


def _subscribe() -> socket.socket | None:
    """A socket that receives the link notifications; None where the kernel refuses one."""
    try:
        events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, _NETLINK_ROUTE)
    except OSError:
        return None
    try:
        events.bind((0, _RTMGRP_LINK))
    except OSError:
        events.close()
        return None
    return events


def _drain(events: socket.socket) -> None:
    while True:
        try:
            events.recv(_RECEIVE)
        except BlockingIOError:
            return
        except OSError:  # ENOBUFS: notifications were lost; the look that follows tells all the same
            return


def remove_soon(name: str) -> None:
    """Ask the kernel to delete the interface `name` (a veth goes with its peer) from a thread of
    its own, which returns when the kernel's request does; `wait_gone` sees the interface go.
    Whatever fails here (already gone, no descriptor left) is for the caller's wait to find."""
    threading.Thread(target=_delete, args=(name,), name="nsrun-link-removal", daemon=True).start()


def _delete(name: str) -> None:
    try:
        index = socket.if_nametoindex(name)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE) as sock:
            body = struct.pack(_IFINFOMSG, socket.AF_UNSPEC, 0, index, 0, 0)
            header = struct.pack(
                _NLMSGHDR, struct.calcsize(_NLMSGHDR) + len(body), _RTM_DELLINK, _NLM_F_REQUEST_ACK, 1, 0
            )
            sock.send(header + body)
            sock.recv(_RECEIVE)  # the acknowledgement: the request is over
    except OSError:
        return
