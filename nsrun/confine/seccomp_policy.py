"""The sandbox's seccomp policy as data: which system calls are refused, and with which error.

Everything else is allowed: the rules below are the part of Docker's default profile
(moby profiles/seccomp/default.json) that matters once the command runs without the
capabilities those calls would need anyway; they are defence in depth, and the ones that keep the
command inside its namespaces and off its caller's terminal hold even for a command given
capabilities back with --cap-add. System calls of other ABIs (i386 through int 0x80, x32) kill
the process: libseccomp only admits the native one.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Final

__all__ = ["ArgMatch", "SyscallRule", "sandbox_rules"]

# linux/sched.h: a clone() with any of these would put the caller in a namespace of its own
CLONE_NEW_FLAGS: Final = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
TIOCSTI: Final = 0x5412  # push bytes into a terminal's input: a command typed in the caller's shell
TIOCLINUX: Final = 0x541C  # the console's selection buffer: the same injection on a virtual console
_LOW_32_BITS: Final = 0xFFFFFFFF


@dataclass(frozen=True)
class ArgMatch:
    """Argument `index`, masked with `mask`, equals `value`."""

    index: int
    mask: int
    value: int


@dataclass(frozen=True)
class SyscallRule:
    syscall: str
    errno: int = errno.EPERM
    arg: ArgMatch | None = None


# the command stays in the namespaces nsrun made for it, and cannot make new ones (a new user
# namespace would hand it every capability over anything it creates there)
_NAMESPACES: Final = ("setns", "unshare")
# mounting, in every generation of the API
_MOUNTS: Final = (
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
)
# the kernel itself: modules, keyrings, kexec, and interfaces with a history of escapes
_KERNEL: Final = (
    "init_module",
    "finit_module",
    "delete_module",
    "add_key",
    "request_key",
    "keyctl",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "lookup_dcookie",
    "open_by_handle_at",
    "quotactl",
    "nfsservctl",
    "uselib",
    "iopl",
    "ioperm",
    "io_uring_setup",  # its operations bypass seccomp: Docker refuses it too
    "io_uring_enter",
    "io_uring_register",
)


def sandbox_rules() -> tuple[SyscallRule, ...]:
    rules = [SyscallRule(name) for name in (*_NAMESPACES, *_MOUNTS, *_KERNEL)]
    rules += [SyscallRule("clone", arg=ArgMatch(0, flag, flag)) for flag in CLONE_NEW_FLAGS.values()]
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc fall back to clone
    rules.append(SyscallRule("clone3", errno.ENOSYS))
    rules += [SyscallRule("ioctl", arg=ArgMatch(1, _LOW_32_BITS, request)) for request in (TIOCSTI, TIOCLINUX)]
    return tuple(rules)
