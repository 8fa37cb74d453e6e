"""Who may use the helper: a process as privileged as the helper itself, where it is.

The socket is root's alone (0600), but uid 0 is not enough: a root command confined in a sandbox
(capabilities dropped, its own PID and mount namespaces) could still open it, and the helper would
then act for it with every capability. So the peer must be root, in the helper's mount, network,
PID and user namespaces, with every capability the helper has. Anyone else is told to run in its
own process (where nsrun's own checks refuse what it may not do).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import socket
import struct
from typing import Final

__all__ = ["Peer", "peer_of"]

_SO_PEERCRED_FORMAT: Final = "3i"
_SO_PEERPIDFD: Final = 77  # Linux 6.5: a pidfd of the peer, so that a reused pid cannot pass for it
_NAMESPACES: Final = ("mnt", "net", "pid", "user")


class Peer:
    """The process at the other end of a connection, as the kernel names it."""

    def __init__(self, sock: socket.socket) -> None:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_SO_PEERCRED_FORMAT))
        self.pid, self.uid, _gid = struct.unpack(_SO_PEERCRED_FORMAT, raw)
        self.pidfd: int | None = None
        with contextlib.suppress(OSError):
            self.pidfd = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD)

    def refusal(self) -> str | None:
        """Why this peer may not use the helper; None if it may."""
        try:
            reason = self._check()
        except OSError:
            reason = "it is gone"
        if reason is None and self._exited():
            reason = "it is gone"  # what was checked may have been another process by that pid
        return reason

    def _check(self) -> str | None:
        if self.uid != 0:
            return "it is not root"
        own_namespaces, own_caps = _own()
        for kind, own in zip(_NAMESPACES, own_namespaces, strict=True):
            if os.stat(f"/proc/{self.pid}/ns/{kind}").st_ino != own:
                return f"it is in another {kind} namespace"
        if own_caps & ~_effective_caps(str(self.pid)):
            return "it has fewer capabilities than the helper"
        return None

    def _exited(self) -> bool:
        if self.pidfd is None:
            return False
        readable, _, _ = select.select([self.pidfd], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


@functools.cache
def _own() -> tuple[tuple[int, ...], int]:
    """The helper's own namespaces and capabilities, read once: they do not change while it runs
    (a peer's are read at every connection)."""
    return tuple(os.stat(f"/proc/self/ns/{kind}").st_ino for kind in _NAMESPACES), _effective_caps("self")


def _effective_caps(pid: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def peer_of(sock: socket.socket) -> Peer:
    return Peer(sock)
