"""Waiting for a network interface to go, on the kernel's link notifications. Stdlib only: a
teardown waits here until the host no longer lists a sandbox's veth.

Polling for it (sleeps that grow) found it up to half a wait late: it goes when the kernel gets
to it, in steps that cannot be foreseen. A netlink socket subscribed to link
notifications wakes at the change itself; a notification is only a cue to look again (an ioctl),
so none is parsed, and one lost to an overrun costs nothing but that look.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Final

__all__ = ["exists", "wait_gone"]

_NETLINK_ROUTE: Final = 0
_RTMGRP_LINK: Final = 0x1  # the multicast group of RTM_NEWLINK/RTM_DELLINK notifications
_RECEIVE: Final = 1 << 16


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
