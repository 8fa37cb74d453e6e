"""The process plan of a sandbox: its filesystem view, its command's environment, identity and
confinement, all decided from the request (nothing here touches the kernel)."""

from __future__ import annotations

import grp
from typing import TYPE_CHECKING, Final

from nsrun.confine.capabilities import resolve_caps
from nsrun.launch.identity import command_environment
from nsrun.process.plan import Confinement, Mount, MountKind, ProcessPlan

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nsrun.launch.request import SandboxRequest

__all__ = ["confinement_for", "plan_mounts", "plan_process"]

_TTY_GROUP: Final = "tty"
_DEFAULT_TTY_GID: Final = 5


def _tty_gid() -> int:
    try:
        return grp.getgrnam(_TTY_GROUP).gr_gid
    except KeyError:
        return _DEFAULT_TTY_GID


def confinement_for(request: SandboxRequest) -> Confinement:
    seccomp: bytes | None = None
    if request.seccomp:
        from nsrun.confine.seccomp_bpf import sandbox_filter

        seccomp = sandbox_filter()
    caps = resolve_caps(request.cap_add, request.cap_drop, privileged=request.privileged)
    return Confinement(caps=caps, no_new_privs=request.no_new_privs, seccomp=seccomp)


def plan_mounts(request: SandboxRequest, etc_binds: Sequence[tuple[str, str]]) -> tuple[Mount, ...]:
    """In order: the read-only root first (so what follows stays writable), then the sandbox's
    own /proc, /sys and /dev, its /etc files (read-only: the network's shared hosts file must not
    be writable from one of its sandboxes), then what the user asked to add."""
    mounts: list[Mount] = []
    if request.read_only:
        mounts.append(Mount(MountKind.READONLY_ROOT))
    mounts.append(Mount(MountKind.PROC))
    if not request.privileged:
        mounts.append(Mount(MountKind.PROC_HARDEN))
    if request.owns_netns or request.join is not None:
        mounts.append(Mount(MountKind.SYSFS, readonly=not request.privileged))
    elif not request.privileged:
        mounts.append(Mount(MountKind.SYS_READONLY))
    if not request.privileged:
        mounts.append(Mount(MountKind.DEV, source=str(_tty_gid())))
    if request.read_only:
        # mount points in the sandbox's view, each a private tmpfs: no file of the host is involved
        mounts.append(Mount(MountKind.TMPFS, "/tmp"))  # noqa: S108
        if request.privileged:
            mounts.append(Mount(MountKind.TMPFS, "/dev/shm"))  # noqa: S108
    mounts += [Mount(MountKind.BIND, target, source, readonly=True) for source, target in etc_binds]
    mounts += [Mount(MountKind.BIND, v.target, v.source, readonly=v.readonly) for v in request.volumes]
    mounts += [Mount(MountKind.TMPFS, target) for target in request.tmpfs]
    return tuple(mounts)


def plan_process(request: SandboxRequest, hostname: str, etc_binds: Sequence[tuple[str, str]]) -> ProcessPlan:
    env = command_environment(dict(request.environ), request.user, request.env)
    return ProcessPlan(
        argv=request.argv,
        env=tuple(env.items()),
        cwd=request.cwd,
        identity=request.user.identity,
        confinement=confinement_for(request),
        hostname=hostname,
        mounts=plan_mounts(request, etc_binds),
        tty=request.tty,
    )
