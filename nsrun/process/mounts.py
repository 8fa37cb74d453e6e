"""The sandbox's view of the filesystem, built by its init inside its own mount namespace.

The host's tree stays (shared by default, as documented), seen through a slave copy: mounts made
here never propagate back. What changes is what a container runtime changes: a procfs of the
sandbox's PID namespace with the kernel's knobs read-only (as Docker does: /proc/sys writable by
uid 0 would let a root command set core_pattern and run code as host root), a sysfs of its network
namespace, a private /dev holding only safe device nodes and its own pseudo-terminals (no host
disks, no other users' terminals), and the binds, tmpfs and read-only root the plan asks for.
"""

from __future__ import annotations

import os
import stat

from nsrun.process import libc
from nsrun.process.plan import Mount, MountKind

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Final

__all__ = ["apply_mounts", "root_is_mount_point"]

_PROC_FLAGS: Final = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
# Docker's readonlyPaths and maskedPaths (moby oci/defaults.go)
_PROC_READONLY: Final = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
_PROC_MASKED: Final = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
)
_SYS_MASKED: Final = ("/sys/firmware", "/sys/devices/virtual/powercap")
# (name, major, minor): what a program may need and no sandbox can misuse
_DEVICES: Final = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
_DEV_LINKS: Final = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
_TTY_GROUP: Final = 5  # Debian's tty group, the owner of terminals


def _readonly(path: str) -> None:
    libc.mount_setattr_readonly(path)


def _bind(tree_fd: int, target: str, *, readonly: bool) -> None:
    if not os.path.lexists(target):
        # the request was checked against the host's tree: a missing target is in a tmpfs of the
        # sandbox's own (--read-only's /tmp), where making the mount point changes nothing of the host
        if stat.S_ISDIR(os.fstat(tree_fd).st_mode):
            os.makedirs(target, 0o755)
        else:
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    libc.attach_tree(tree_fd, target)
    # a bind takes the flags of where its source is mounted: under --read-only's read-only tree a
    # volume asked for writable must be made writable again
    libc.mount_setattr_readonly(target, readonly=readonly)


def _mask(path: str) -> None:
    if not os.path.lexists(path):
        return
    if os.path.isdir(path):
        libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY | _PROC_FLAGS, "size=0")
    else:
        libc.mount("/dev/null", path, None, libc.MS_BIND)


def _proc() -> None:
    try:
        libc.umount("/proc")  # the host's procfs, and what is mounted under it
    except OSError:
        pass  # nothing mounted there
    libc.mount("proc", "/proc", "proc", _PROC_FLAGS)


def _harden_proc() -> None:
    for path in _PROC_READONLY:
        if os.path.exists(path):
            libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
            _readonly(path)
    for path in _PROC_MASKED:
        _mask(path)


def _sysfs(*, readonly: bool) -> None:
    try:
        libc.umount("/sys")
    except OSError:
        pass  # nothing mounted there
    # sysfs shows the network namespace of whoever mounts it: this one is the sandbox's
    libc.mount("sysfs", "/sys", "sysfs", _PROC_FLAGS | (libc.MS_RDONLY if readonly else 0))
    if readonly:
        for path in _SYS_MASKED:
            _mask(path)


def _dev(tty_group: int) -> None:
    libc.mount("tmpfs", "/dev", "tmpfs", libc.MS_NOSUID | libc.MS_NOEXEC, "mode=755,size=64k")
    for name, major, minor in _DEVICES:
        path = f"/dev/{name}"
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(path, 0o666)  # noqa: S103  # /dev/null and friends are for everyone, as on the host
    for name in ("pts", "shm", "mqueue"):
        os.mkdir(f"/dev/{name}", 0o755)
    # a devpts instance of the sandbox's own: its terminals, none of the host's
    libc.mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc.MS_NOSUID | libc.MS_NOEXEC,
        f"newinstance,ptmxmode=0666,mode=620,gid={tty_group}",
    )
    libc.mount("shm", "/dev/shm", "tmpfs", _PROC_FLAGS, "mode=1777")  # noqa: S108  # the sandbox's own
    libc.mount("mqueue", "/dev/mqueue", "mqueue", _PROC_FLAGS)
    for name, target in _DEV_LINKS:
        os.symlink(target, f"/dev/{name}")


def _tmpfs(target: str) -> None:
    libc.mount("tmpfs", target, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=1777")


def _apply(mount: Mount, tree_fd: int | None) -> None:
    kind = mount.kind
    if kind == MountKind.READONLY_ROOT:
        _readonly("/")
    elif kind == MountKind.PROC:
        _proc()
    elif kind == MountKind.PROC_HARDEN:
        _harden_proc()
    elif kind == MountKind.SYSFS:
        _sysfs(readonly=mount.readonly)
    elif kind == MountKind.SYS_READONLY:
        _readonly("/sys")
    elif kind == MountKind.DEV:
        _dev(int(mount.source) if mount.source.isdigit() else _TTY_GROUP)
    elif kind == MountKind.BIND and tree_fd is not None:
        _bind(tree_fd, mount.target, readonly=mount.readonly)
    elif kind == MountKind.TMPFS:
        _tmpfs(mount.target)


_MOUNT_POINT_FIELD: Final = 4  # of /proc/self/mountinfo


def root_is_mount_point() -> bool:
    """A chroot's root is usually not a mount point: then a sandbox's mounts cannot be kept from
    propagating back to the host (its root cannot be made a slave)."""
    try:
        with open("/proc/self/mountinfo") as source:
            return any(line.split()[_MOUNT_POINT_FIELD] == "/" for line in source)
    except (OSError, IndexError):
        return True


def apply_mounts(mounts: Iterable[Mount]) -> None:
    """Carry out the plan's mounts in order; call in a fresh mount namespace, as root."""
    # nothing mounted from here on may propagate back to the host
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
    plan = list(mounts)
    # each bind's source is copied, with the mounts below it, before anything is mounted: what
    # the sandbox mounts (its /etc/hosts, a private /tmp, its /proc) must neither hide a volume's
    # source nor show up inside it (-v /etc/hosts:/x is the host's file, -v /etc:/x the host's /etc)
    trees: dict[int, int] = {}
    try:
        for index, mount in enumerate(plan):
            if mount.kind == MountKind.BIND:
                try:
                    trees[index] = libc.clone_tree(mount.source)
                except OSError as err:
                    raise OSError(err.errno, f"opening {mount.source}: {os.strerror(err.errno or 0)}") from err
        for index, mount in enumerate(plan):
            try:
                _apply(mount, trees.get(index))
            except OSError as err:
                where = mount.target or mount.kind
                raise OSError(err.errno, f"mounting {where}: {os.strerror(err.errno or 0)}") from err
    finally:
        for fd in trees.values():
            os.close(fd)
