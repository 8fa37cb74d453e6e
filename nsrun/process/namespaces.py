"""Thin ctypes bindings to unshare(2), setns(2) and prctl(2); Python 3.11 has no os.unshare/os.setns."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from typing import TYPE_CHECKING, Final

from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_REC",
    "MS_SLAVE",
    "PR_SET_CHILD_SUBREAPER",
    "PR_SET_PDEATHSIG",
    "mount",
    "netns_inode",
    "new_netns",
    "prctl",
    "sethostname",
    "setns",
    "umount",
    "unshare",
]

CLONE_NEWNS: Final = 0x00020000
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_SLAVE: Final = 1 << 19
MNT_DETACH: Final = 2
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWNET: Final = 0x40000000
PR_SET_PDEATHSIG: Final = 1
PR_SET_CHILD_SUBREAPER: Final = 36


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return libc


def _check(result: int, call: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{call}: {os.strerror(code)}")


def unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc().setns(fd, nstype), "setns")


def prctl(option: int, arg: int) -> None:
    _check(_libc().prctl(option, arg, 0, 0, 0), "prctl")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    def enc(value: str | None) -> bytes | None:
        return value.encode() if value is not None else None

    _check(_libc().mount(enc(source), enc(target), enc(fstype), flags, None), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc().umount2(target.encode(), flags), f"umount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc().sethostname(raw, len(raw)), "sethostname")


def netns_inode(path: str = "/proc/thread-self/ns/net") -> int:
    return os.stat(path).st_ino


@contextlib.contextmanager
def new_netns() -> Iterator[int]:
    """Create a network namespace and yield an fd that keeps it alive, with this thread inside it.

    The body runs inside the new namespace (sockets opened there stay bound to it); the thread is
    switched back to its own namespace in `finally`, whatever the body does. The namespace lives as
    long as the fd, a socket bound to it or a process in it: a crash of nsrun frees it.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            unshare(CLONE_NEWNET)
        except OSError as err:
            raise NsrunError(
                "creating a network namespace", err.strerror or str(err), "nsrun needs root (CAP_SYS_ADMIN)"
            ) from err
        try:
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            yield fd
        finally:
            setns(home, CLONE_NEWNET)
    finally:
        os.close(home)
