"""Thin ctypes bindings to the system calls Python 3.11 does not expose: unshare, setns, mount,
prctl, capget/capset, signalfd, close_range, mount_setattr; and what C code prints, captured
without touching descriptor 1. Each raises OSError with errno on failure; nothing here decides
anything. Stdlib only: the sandbox's processes import it.
"""

from __future__ import annotations

import _thread
import ctypes
import os
import struct

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

__all__ = [
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "MS_SLAVE",
    "attach_tree",
    "capget",
    "capset",
    "capture_c_stdout",
    "clone_tree",
    "close_range_cloexec",
    "mount",
    "mount_setattr_readonly",
    "prctl",
    "sethostname",
    "setns",
    "signalfd",
    "umount",
    "unshare",
]

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_REMOUNT: Final = 0x20
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 1 << 18
MS_SLAVE: Final = 1 << 19
MNT_DETACH: Final = 2

PR_SET_PDEATHSIG: Final = 1
PR_SET_DUMPABLE: Final = 4
PR_SET_NAME: Final = 15
PR_SET_SECCOMP: Final = 22
PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
SECCOMP_MODE_FILTER: Final = 2

_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_SFD_NONBLOCK: Final = os.O_NONBLOCK
_SFD_CLOEXEC: Final = os.O_CLOEXEC
_SIGSET_BYTES: Final = 128
_SYS_CLOSE_RANGE: Final = 436
_SYS_MOUNT_SETATTR: Final = 442
_SYS_OPEN_TREE: Final = 428  # the same number on every architecture (added after the tables merged)
_SYS_MOVE_MOUNT: Final = 429
_OPEN_TREE_CLONE: Final = 1
_MOVE_MOUNT_F_EMPTY_PATH: Final = 0x4
_CLOSE_RANGE_CLOEXEC: Final = 1 << 2
_AT_FDCWD: Final = -100
_AT_RECURSIVE: Final = 0x8000
_MOUNT_ATTR_RDONLY: Final = 0x1


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_loaded: list[ctypes.CDLL] = []  # the C library, set up once per process (functools costs an import)


def _libc() -> ctypes.CDLL:
    if _loaded:
        return _loaded[0]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
    libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
    libc.signalfd.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    libc.syscall.restype = ctypes.c_long
    _loaded.append(libc)
    return libc


def _check(result: int, call: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{call}: {os.strerror(code)}")
    return result


def unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc().setns(fd, nstype), "setns")


def prctl(option: int, arg2: int | str = 0, arg3: int = 0) -> int:
    if isinstance(arg2, str):  # PR_SET_NAME: a pointer to the name
        name = ctypes.create_string_buffer(arg2.encode(errors="replace")[:15])
        return _check(_libc().prctl(option, ctypes.addressof(name), arg3, 0, 0), "prctl")
    return _check(_libc().prctl(option, arg2, arg3, 0, 0), "prctl")


def _enc(value: str | None) -> bytes | None:
    """A path (or mount option) as the kernel has it: os.fsencode, so that a name that is not
    UTF-8 (given as surrogates) comes back as the bytes it was."""
    return os.fsencode(value) if value is not None else None


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc().mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc().umount2(os.fsencode(target), flags), f"umount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc().sethostname(raw, len(raw)), "sethostname")


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread, as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc().capget(ctypes.byref(header), data), "capget")

    def joined(field: str) -> int:
        low: int = getattr(data[0], field)
        high: int = getattr(data[1], field)
        return low | high << 32

    return joined("effective"), joined("permitted"), joined("inheritable")


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index, shift in enumerate((0, 32)):
        data[index].effective = effective >> shift & 0xFFFFFFFF
        data[index].permitted = permitted >> shift & 0xFFFFFFFF
        data[index].inheritable = inheritable >> shift & 0xFFFFFFFF
    _check(_libc().capset(ctypes.byref(header), data), "capset")


def load_seccomp(program: bytes) -> None:
    """Install a BPF program built by libseccomp (its export_bpf output) on this thread."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


def signalfd(signals: list[int]) -> int:
    """A non-blocking fd that reads the given (blocked) signals as 128-byte records."""
    mask = 0
    for sig in signals:
        mask |= 1 << (sig - 1)
    raw = mask.to_bytes(_SIGSET_BYTES, "little")
    return _check(_libc().signalfd(-1, raw, _SFD_NONBLOCK | _SFD_CLOEXEC), "signalfd")


SIGNALFD_RECORD: Final = 128


def signalfd_read(fd: int) -> list[tuple[int, int, int]]:
    """Pending signals as (signo, code, sender pid); empty when none are pending."""
    found: list[tuple[int, int, int]] = []
    while True:
        try:
            raw = os.read(fd, SIGNALFD_RECORD * 16)
        except BlockingIOError:
            return found
        for offset in range(0, len(raw), SIGNALFD_RECORD):
            signo, _errno, code, pid = struct.unpack_from("<IiiI", raw, offset)
            found.append((signo, code, pid))


def close_range_cloexec(first: int) -> None:
    """Mark every fd from `first` on close-on-exec: nothing of nsrun's reaches the command."""
    _check(_libc().syscall(_SYS_CLOSE_RANGE, first, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC), "close_range")


def mount_setattr_readonly(path: str, *, readonly: bool = True) -> None:
    """Make the mount at `path` and every mount below it read-only, or writable again
    (mount_setattr, Linux 5.12)."""
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0) if readonly else _MountAttr(0, _MOUNT_ATTR_RDONLY, 0, 0)
    flags = _AT_RECURSIVE
    result = _libc().syscall(
        _SYS_MOUNT_SETATTR, _AT_FDCWD, os.fsencode(path), flags, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(result, f"mount_setattr {path}")


def clone_tree(path: str) -> int:
    """A detached copy of the mount at `path` and of every mount below it, as they are now
    (open_tree, Linux 5.2): attached later, it shows none of what this mount namespace mounted
    meanwhile (what propagates from the host's mounts still does, as to a bind)."""
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE
    return _check(_libc().syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(path), flags), f"open_tree {path}")


def attach_tree(tree_fd: int, target: str) -> None:
    """Mount a tree `clone_tree` made on `target` (move_mount, Linux 5.2)."""
    result = _libc().syscall(_SYS_MOVE_MOUNT, tree_fd, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH)
    _check(result, f"move_mount {target}")


_C_STDOUT_LOCK = _thread.allocate_lock()  # `stdout` is one stream for the whole process


def capture_c_stdout(call: Callable[[], object]) -> bytes:
    """What `call` (C code, through ctypes) prints to the C library's `stdout` stream. The stream
    is swapped for a memory stream meanwhile, under a lock; descriptor 1 is never touched, and
    Python's own output (which does not go through that stream) is not captured."""
    libc = _libc()
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    for name in ("fflush", "fclose", "free"):
        getattr(libc, name).argtypes = [ctypes.c_void_p]
    stdout = ctypes.c_void_p.in_dll(libc, "stdout")
    buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    if not stream:
        code = ctypes.get_errno()
        raise OSError(code, f"open_memstream: {os.strerror(code)}")
    try:
        with _C_STDOUT_LOCK:
            previous = stdout.value
            stdout.value = stream
            try:
                call()
            finally:
                libc.fflush(stream)
                stdout.value = previous
    finally:
        libc.fclose(stream)  # sets buffer and size for the last time
    try:
        return ctypes.string_at(buffer.value, size.value) if buffer.value else b""
    finally:
        libc.free(buffer)
