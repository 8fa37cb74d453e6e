"""What the sandbox's own processes do, decided beforehand as data (pure, plain values).

The library (or the warm helper) decides everything: the mounts of the sandbox's view, its
hostname, the command's identity and confinement. The shim, the init and the command's child only
carry it out, in an order the kernel imposes. The plan crosses a process boundary as a dict of
builtins (`to_dict`, marshalled), so it holds no file descriptors: those travel beside it
(`ShimFds`).

This module imports nothing: it is on the path of every launch, before the command starts, where
`typing`, `dataclasses` and `enum` would cost more than the kernel work. Its classes are small
immutable values written out by hand.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any, Self

__all__ = ["Confinement", "Identity", "Mount", "MountKind", "PlanError", "ProcessPlan"]


class PlanError(ValueError):
    """A plan that does not have the shape of one."""


class MountKind:
    """The kinds of mount of a sandbox's view (plain strings)."""

    READONLY_ROOT = "readonly-root"  # every mount of the host's tree read-only
    PROC = "proc"  # a procfs of the sandbox's PID namespace over /proc
    PROC_HARDEN = "proc-harden"  # /proc/sys and friends read-only, kernel-internal files masked
    SYSFS = "sysfs"  # a sysfs of the sandbox's network namespace over /sys
    SYS_READONLY = "sys-readonly"  # the host's /sys, read-only (--net host)
    DEV = "dev"  # a private /dev: the safe device nodes, its own pts and shm
    BIND = "bind"
    TMPFS = "tmpfs"
    ALL = frozenset({READONLY_ROOT, PROC, PROC_HARDEN, SYSFS, SYS_READONLY, DEV, BIND, TMPFS})


class _Value:
    """Equal by its fields, hashable, unchangeable once made; `replace` makes a changed copy."""

    __slots__: tuple[str, ...] = ()

    def _set(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Value) and type(other) is type(self) and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def replace(self, **changes: Any) -> Self:
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return type(self)(**values)


class Mount(_Value):
    __slots__ = ("kind", "readonly", "source", "target")
    kind: str
    target: str
    source: str
    readonly: bool

    def __init__(self, kind: str, target: str = "", source: str = "", readonly: bool = False) -> None:
        if kind not in MountKind.ALL:
            raise PlanError(f"no such kind of mount: {kind!r}")
        self._set(kind=kind, target=target, source=source, readonly=readonly)


class Identity(_Value):
    __slots__ = ("gid", "groups", "uid")
    uid: int
    gid: int
    groups: tuple[int, ...]

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...] = ()) -> None:
        self._set(uid=uid, gid=gid, groups=tuple(groups))

    @property
    def is_root(self) -> bool:
        return self.uid == 0


class Confinement(_Value):
    """What the command may do: for root the capabilities it keeps (a non-root command keeps
    none), no_new_privs, and a seccomp program built by libseccomp."""

    __slots__ = ("caps", "no_new_privs", "seccomp")
    caps: int
    no_new_privs: bool
    seccomp: bytes | None

    def __init__(self, caps: int, no_new_privs: bool = True, seccomp: bytes | None = None) -> None:
        self._set(caps=caps, no_new_privs=no_new_privs, seccomp=seccomp)

    @property
    def label(self) -> str:
        return "unconfined" if self.seccomp is None and not self.no_new_privs else "confined"


class ProcessPlan(_Value):
    __slots__ = (
        "argv",
        "confinement",
        "cwd",
        "env",
        "hostname",
        "identity",
        "mounts",
        "new_pid_namespace",
        "program",
        "tty",
    )
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str
    identity: Identity
    confinement: Confinement
    hostname: str | None
    mounts: tuple[Mount, ...]
    tty: bool  # a pseudo-terminal of the sandbox's own, relayed to the caller's terminal
    new_pid_namespace: bool
    # the program, resolved by the caller before entering (`nsrun exec`); else PATH is searched inside
    program: str | None

    def __init__(  # noqa: PLR0913  # one keyword per field
        self,
        argv: tuple[str, ...],
        env: tuple[tuple[str, str], ...],
        cwd: str,
        identity: Identity,
        confinement: Confinement,
        *,
        hostname: str | None = None,
        mounts: tuple[Mount, ...] = (),
        tty: bool = False,
        new_pid_namespace: bool = True,
        program: str | None = None,
    ) -> None:
        self._set(
            argv=tuple(argv),
            env=tuple(env),
            cwd=cwd,
            identity=identity,
            confinement=confinement,
            hostname=hostname,
            mounts=tuple(mounts),
            tty=tty,
            new_pid_namespace=new_pid_namespace,
            program=program,
        )

    def view_added_to(self, view: ProcessPlan) -> tuple[Mount, ...] | None:
        """What this plan's view adds to the view of `view` (a plan it was built for ahead): the
        tmpfs mounts on top, () for the same view; None if it must be built anew (other mounts
        or hostname, volumes, whose sources must be opened as the host sees them)."""
        made = len(view.mounts)
        rest = self.mounts[made:]
        if self.mounts[:made] != view.mounts or self.hostname != view.hostname:
            return None
        return rest if all(mount.kind == MountKind.TMPFS for mount in rest) else None

    def to_dict(self) -> dict[str, Any]:
        """Builtins only (marshal-able): how a plan crosses to the process that carries it out."""
        return {
            "argv": list(self.argv),
            "env": [list(pair) for pair in self.env],
            "cwd": self.cwd,
            "identity": [self.identity.uid, self.identity.gid, list(self.identity.groups)],
            "confinement": [self.confinement.caps, self.confinement.no_new_privs, self.confinement.seccomp],
            "hostname": self.hostname,
            "mounts": [[m.kind, m.target, m.source, m.readonly] for m in self.mounts],
            "tty": self.tty,
            "new_pid_namespace": self.new_pid_namespace,
            "program": self.program,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessPlan:
        """The plan `to_dict` gave; PlanError if it is not one."""
        try:
            uid, gid, groups = data["identity"]
            caps, no_new_privs, seccomp = data["confinement"]
            return cls(
                argv=tuple(str(word) for word in data["argv"]),
                env=tuple((str(key), str(value)) for key, value in data["env"]),
                cwd=str(data["cwd"]),
                identity=Identity(int(uid), int(gid), tuple(int(g) for g in groups)),
                confinement=Confinement(int(caps), bool(no_new_privs), bytes(seccomp) if seccomp else None),
                hostname=data["hostname"],
                mounts=tuple(Mount(str(k), str(t), str(s), bool(r)) for k, t, s, r in data["mounts"]),
                tty=bool(data["tty"]),
                new_pid_namespace=bool(data["new_pid_namespace"]),
                program=data["program"],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PlanError(f"not a process plan: {err}") from err
