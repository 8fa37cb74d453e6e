"""What the command's process does between fork and exec, described as data by the parent.

The parent decides everything (which namespaces, which files over which, which user) before it
forks; `enter` only carries that out, in an order the kernel imposes: namespaces and mounts need
root, so they come before the switch of user, which also clears the parent-death signal.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Final

from nsrun.process import namespaces

__all__ = ["ChildPlan", "Credentials", "enter"]

EXIT_SETUP_FAILED: Final = 125


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class ChildPlan:
    parent_pid: int
    netns_fd: int | None = None
    # the sandbox's own mount and UTS namespaces; a joiner (`nsrun exec`) enters existing ones instead
    private_mounts: bool = False
    hostname: str | None = None
    remount_sys: bool = False
    binds: tuple[tuple[str, str], ...] = ()  # (source file, target path)
    join_fds: tuple[tuple[int, int], ...] = ()  # (fd, CLONE_NEW* type) of namespaces to enter
    credentials: Credentials | None = None
    workdir: str | None = None
    reset_signals: tuple[int, ...] = field(default=())


def _watch_parent(parent: int) -> None:
    namespaces.prctl(namespaces.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(EXIT_SETUP_FAILED)


def enter(plan: ChildPlan) -> None:
    _watch_parent(plan.parent_pid)
    if plan.netns_fd is not None:
        namespaces.setns(plan.netns_fd, namespaces.CLONE_NEWNET)
    for fd, nstype in plan.join_fds:
        namespaces.setns(fd, nstype)
    if plan.private_mounts:
        namespaces.unshare(namespaces.CLONE_NEWNS | namespaces.CLONE_NEWUTS)
        # mounts made here must never propagate back to the host
        namespaces.mount(None, "/", None, namespaces.MS_REC | namespaces.MS_SLAVE)
        if plan.remount_sys:
            # sysfs shows the network namespace of whoever mounted it: remount it as ours
            namespaces.umount("/sys")
            namespaces.mount("sysfs", "/sys", "sysfs", 0)
        for source, target in plan.binds:
            namespaces.mount(source, target, None, namespaces.MS_BIND)
        if plan.hostname:
            namespaces.sethostname(plan.hostname)
    if plan.credentials is not None:
        creds = plan.credentials
        os.setgroups(list(creds.groups))
        os.setresgid(creds.gid, creds.gid, creds.gid)
        os.setresuid(creds.uid, creds.uid, creds.uid)  # drops every capability
        _watch_parent(plan.parent_pid)  # a change of credentials clears the parent-death signal
    if plan.workdir is not None:
        os.chdir(plan.workdir)
    for sig in plan.reset_signals:
        signal.signal(sig, signal.SIG_DFL)
