"""Entering a running sandbox: `nsrun exec` and `--net sandbox:NAME`.

Only the namespaces nsrun made for the sandbox are ever entered, through the descriptors its shim
pins for the sandbox's whole life: never /proc/<pid>/ns/* of a process the command controls
(which could have made namespaces of its own, with a program of its choosing mounted over /usr/bin).
A descriptor is taken only from the very shim the record names (pid and start time, checked before
and after) and only if it is the namespace the record says (its kind and inode): a pid that was
reused is never entered. What is exec'd runs with the sandbox's own confinement and, unless told
otherwise, as the sandbox's user.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from nsrun.errors import NsrunError, UsageError
from nsrun.launch.identity import command_environment, resolve_user
from nsrun.launch.records import is_stale, registry
from nsrun.process import liveness
from nsrun.process.plan import Confinement, Identity, ProcessPlan
from nsrun.state.paths import StateDirs
from nsrun.validate import parse_env

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nsrun.process.shim import Outcome
    from nsrun.state.registry import SandboxRecord

__all__ = ["exec_in", "open_pinned", "plan_exec"]

_JOINED_KINDS = ("net", "uts", "ipc", "pid", "mnt")


def _refuse(record: SandboxRecord, why: str) -> NsrunError:
    return NsrunError(f"entering sandbox {record.name!r}", why, "is it still running? see `nsrun ls`")


def open_pinned(record: SandboxRecord, kind: str) -> int:
    """A new descriptor of the sandbox's `kind` namespace, taken from its shim."""
    if kind not in record.namespaces:
        raise _refuse(record, "its command has not started yet")
    fd_number, inode = record.namespaces[kind]
    if not liveness.holder_alive(record.pid, record.start_time, record.pidns):
        raise _refuse(record, "it has ended")
    path = f"/proc/{record.pid}/fd/{fd_number}"
    try:
        target = os.readlink(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise _refuse(record, err.strerror or str(err)) from err
    info = os.fstat(fd)
    genuine = target == f"{kind}:[{inode}]" and info.st_ino == inode
    if not genuine or not liveness.holder_alive(record.pid, record.start_time, record.pidns):
        os.close(fd)
        raise _refuse(record, f"its shim (pid {record.pid}) no longer holds its {kind} namespace")
    return fd


def _program(argv0: str, env: dict[str, str]) -> str | None:
    """The program, resolved before entering with the command's PATH; None if not found here
    (it may exist only inside, in a volume: then it is searched for there)."""
    if "/" in argv0:
        return os.path.abspath(argv0) if os.path.exists(argv0) else None
    return shutil.which(argv0, path=env.get("PATH", os.defpath))


def plan_exec(
    record: SandboxRecord,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Sequence[str] = (),
    workdir: str | None = None,
    tty: bool = False,
) -> ProcessPlan:
    """The exec'd command: the sandbox's confinement, its user unless `user`, its environment."""
    from nsrun.confine.seccomp_bpf import sandbox_filter

    if not argv or not argv[0]:
        raise UsageError("invalid command ''", "its name is empty", "give the program to run after the sandbox's name")
    environment = dict(record.env)
    identity = Identity(record.uid, record.gid, record.groups)
    if user is not None:
        chosen = resolve_user(user)
        identity = chosen.identity
        environment = command_environment(environment, chosen, ())
    environment |= dict(parse_env(item) for item in env)
    confinement = Confinement(
        caps=record.caps,
        no_new_privs=record.no_new_privs,
        seccomp=sandbox_filter() if record.seccomp else None,
    )
    return ProcessPlan(
        argv=tuple(argv),
        env=tuple(environment.items()),
        # a relative one is in the sandbox's (entering its mount namespace leaves this process in /)
        cwd=os.path.normpath(os.path.join(record.cwd, workdir)) if workdir else record.cwd,
        identity=identity,
        confinement=confinement,
        tty=tty,
        new_pid_namespace=False,
        program=_program(argv[0], environment),
    )


def exec_in(
    name: str,
    plan_for: Callable[[SandboxRecord], ProcessPlan],
    *,
    dirs: StateDirs | None = None,
) -> Outcome:
    """Run a command inside a running sandbox, in this (dedicated) process; how it ended."""
    from nsrun.launch.control import refuse_attached
    from nsrun.process.shim import Shim, ShimFds

    record = registry(dirs or StateDirs()).find(name, is_stale)
    refuse_attached(record, "nsrun exec in")
    plan = plan_for(record)
    opened: dict[str, int] = {}
    try:
        for kind in _JOINED_KINDS:
            opened[kind] = open_pinned(record, kind)
        shim = Shim(plan.replace(new_pid_namespace=False), ShimFds(join=opened))
        try:
            return shim.run()
        finally:
            shim.close()
    finally:
        for fd in opened.values():
            os.close(fd)
