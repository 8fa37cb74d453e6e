"""What the sandbox's own processes do, decided beforehand as data (pure, JSON-serialisable).

The library (or the warm helper) decides everything: the mounts of the sandbox's view, its
hostname, the command's identity and confinement. The shim, the init and the command's child only
carry it out, in an order the kernel imposes. The plan crosses a process boundary as JSON, so it
holds no file descriptors: those travel beside it (`ShimFds`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Confinement", "Identity", "Mount", "MountKind", "ProcessPlan"]


class MountKind(StrEnum):
    READONLY_ROOT = "readonly-root"  # every mount of the host's tree read-only
    PROC = "proc"  # a procfs of the sandbox's PID namespace over /proc
    PROC_HARDEN = "proc-harden"  # /proc/sys and friends read-only, kernel-internal files masked
    SYSFS = "sysfs"  # a sysfs of the sandbox's network namespace over /sys
    SYS_READONLY = "sys-readonly"  # the host's /sys, read-only (--net host)
    DEV = "dev"  # a private /dev: the safe device nodes, its own pts and shm
    BIND = "bind"
    TMPFS = "tmpfs"


@dataclass(frozen=True)
class Mount:
    kind: MountKind
    target: str = ""
    source: str = ""
    readonly: bool = False


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @property
    def is_root(self) -> bool:
        return self.uid == 0


@dataclass(frozen=True)
class Confinement:
    """What the command may do: for root the capabilities it keeps (a non-root command keeps
    none), no_new_privs, and a seccomp program built by libseccomp."""

    caps: int
    no_new_privs: bool = True
    seccomp: bytes | None = None

    @property
    def label(self) -> str:
        return "unconfined" if self.seccomp is None and not self.no_new_privs else "confined"


@dataclass(frozen=True)
class ProcessPlan:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str
    identity: Identity
    confinement: Confinement
    hostname: str | None = None
    mounts: tuple[Mount, ...] = ()
    tty: bool = False  # a pseudo-terminal of the sandbox's own, relayed to the caller's terminal
    new_pid_namespace: bool = True
    # the program, resolved by the caller before entering (`nsrun exec`); else PATH is searched inside
    program: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        seccomp = self.confinement.seccomp
        data["confinement"]["seccomp"] = base64.b64encode(seccomp).decode() if seccomp is not None else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ProcessPlan:
        data: dict[str, Any] = json.loads(text)
        confinement = data["confinement"]
        seccomp = confinement.get("seccomp")
        return cls(
            argv=tuple(data["argv"]),
            env=tuple((str(k), str(v)) for k, v in data["env"]),
            cwd=data["cwd"],
            identity=Identity(data["identity"]["uid"], data["identity"]["gid"], tuple(data["identity"]["groups"])),
            confinement=Confinement(
                confinement["caps"], confinement["no_new_privs"], base64.b64decode(seccomp) if seccomp else None
            ),
            hostname=data.get("hostname"),
            mounts=tuple(Mount(MountKind(m["kind"]), m["target"], m["source"], m["readonly"]) for m in data["mounts"]),
            tty=data["tty"],
            new_pid_namespace=data["new_pid_namespace"],
            program=data.get("program"),
        )
