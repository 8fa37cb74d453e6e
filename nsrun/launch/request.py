"""What a sandbox is asked to be, checked before anything is touched (UsageError otherwise)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from nsrun.errors import UsageError
from nsrun.launch.identity import User, invoking_user, resolve_user
from nsrun.validate import (
    parse_address,
    parse_dns,
    parse_env,
    parse_mac,
    parse_publish,
    validate_hostname,
    validate_name,
)

if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Mapping, Sequence

    from nsrun.firewall.rules import PortMapping

__all__ = ["JOIN_PREFIX", "Attachment", "NetMode", "SandboxRequest", "Volume", "parse_security_opt", "parse_volume"]

JOIN_PREFIX: Final = "sandbox:"
DEFAULT_NETWORK: Final = "nsrun"


class NetMode(StrEnum):
    BRIDGE = "bridge"
    NONE = "none"
    HOST = "host"
    SANDBOX = "sandbox"  # sandbox:NAME, the network namespace of a running sandbox


@dataclass(frozen=True)
class Attachment:
    """A network namespace a container engine made, to be attached to a network (a CNI ADD): no
    command of nsrun's runs in it; it lives until the engine's DEL or the namespace's end."""

    container_id: str
    ifname: str  # the interface the engine wants inside it
    netns: str  # its path, e.g. /run/netns/cni-...


@dataclass(frozen=True)
class Volume:
    """`-v SRC:DST[:ro]`: a host path bound into the sandbox's view."""

    source: str
    target: str
    readonly: bool = False


# why a relative path cannot be resolved: getcwd() fails once the directory is removed
_CWD_GONE: Final = "the current directory no longer exists (it was deleted)"


def _current_directory() -> str | None:
    """The caller's working directory; None if it was deleted since (the kernel no longer has a
    path for it)."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return None


def _workdir(workdir: str | None, cwd: str | None) -> str:
    """The command's working directory: `workdir` (relative to `cwd`), else `cwd` itself."""
    if workdir and (cwd is not None or os.path.isabs(workdir)):
        directory = os.path.normpath(os.path.join(cwd or "/", workdir))
        if not os.path.isdir(directory):
            raise UsageError(f"invalid --workdir {workdir!r}", "no such directory", "give an existing directory")
        return directory
    if cwd is None:
        # the command would start in it, as in the caller's; nsrun does not pick another for it
        raise UsageError("the command's working directory", _CWD_GONE, "cd to an existing one, or give --workdir /DIR")
    return cwd


def parse_volume(text: str, cwd: str | None) -> Volume:
    """`cwd`: the caller's working directory, which a relative source is in (None: deleted)."""
    parts = text.split(":")
    mode = "rw"
    if len(parts) == 3:  # noqa: PLR2004  # SRC:DST:MODE
        *parts, mode = parts
    if len(parts) != 2 or not all(parts) or mode not in ("ro", "rw"):  # noqa: PLR2004
        raise UsageError(f"invalid -v {text!r}", "expected SRC:DST[:ro|:rw]", "e.g. -v /srv/data:/data:ro")
    if cwd is None and not os.path.isabs(parts[0]):
        raise UsageError(f"invalid -v {text!r}", _CWD_GONE, "give its source as an absolute path")
    source = os.path.normpath(os.path.join(cwd or "/", parts[0]))
    target = os.path.normpath(parts[1])
    if not os.path.isabs(parts[1]):
        raise UsageError(f"invalid -v {text!r}", "the destination must be an absolute path")
    if not os.path.exists(source):
        raise UsageError(f"invalid -v {text!r}", f"{source} does not exist on the host")
    if not os.path.exists(target):
        # the host's filesystem is the sandbox's: creating a mount point would change the host
        raise UsageError(
            f"invalid -v {text!r}", f"{target} does not exist", "create it first (the sandbox shares the host's tree)"
        )
    if os.path.isdir(source) != os.path.isdir(target):
        raise UsageError(f"invalid -v {text!r}", "a directory can only go over a directory, a file over a file")
    return Volume(source, target, readonly=mode == "ro")


def _parse_tmpfs(text: str) -> str:
    target = os.path.normpath(text)
    if not os.path.isabs(text) or not os.path.isdir(target):
        raise UsageError(f"invalid --tmpfs {text!r}", "expected an absolute path to an existing directory")
    return target


def parse_security_opt(options: Sequence[str]) -> tuple[bool, bool]:
    """(no_new_privs, seccomp) from Docker's `--security-opt` forms."""
    no_new_privs, seccomp = True, True
    for option in options:
        key, _, value = option.replace(":", "=", 1).partition("=")
        if key == "no-new-privileges" and value in ("", "true", "false"):
            no_new_privs = value != "false"
        elif key == "seccomp" and value == "unconfined":
            seccomp = False
        else:
            raise UsageError(
                f"invalid --security-opt {option!r}",
                "nsrun does not know it",
                "use no-new-privileges[=true|false] or seccomp=unconfined",
            )
    return no_new_privs, seccomp


def _parse_net(net: str, network: str | None) -> tuple[NetMode, str | None]:
    join = None
    if net.startswith(JOIN_PREFIX):
        join = validate_name(net.removeprefix(JOIN_PREFIX), what="sandbox name in --net")
        net = NetMode.SANDBOX.value
    modes = {m.value: m for m in NetMode if m is not NetMode.SANDBOX or join is not None}
    if net not in modes:
        raise UsageError(f"invalid --net {net!r}", "choose one of: bridge, none, host, sandbox:NAME")
    if network is not None and modes[net] is not NetMode.BRIDGE:
        raise UsageError(f"--network with --net {net}", "only bridge sandboxes join a network", "leave one out")
    validate_name(network or DEFAULT_NETWORK)
    return modes[net], join


def _parse_publish(publish: Sequence[str], mode: NetMode) -> tuple[PortMapping, ...]:
    mappings = tuple(parse_publish(item) for item in publish)
    if mappings and mode is not NetMode.BRIDGE:
        raise UsageError(f"-p with --net {mode.value}", "published ports need a bridge", "use --net bridge")
    for index, mapping in enumerate(mappings):
        if any(mapping.collides(other) for other in mappings[:index]):
            raise UsageError(f"invalid -p {mapping.spec()}", "the host port is given twice", "give each host port once")
    return mappings


def _check_caps(names: Sequence[str]) -> None:
    from nsrun.confine.capabilities import parse_cap

    for cap in names:
        if cap.strip().upper() not in ("ALL", "CAP_ALL"):
            parse_cap(cap)


@dataclass(frozen=True)
class SandboxRequest:
    argv: tuple[str, ...]
    user: User
    env: tuple[tuple[str, str], ...] = ()  # -e, on top of the environment the user gets
    environ: tuple[tuple[str, str], ...] = ()  # the caller's environment
    cwd: str = "/"
    net: NetMode = NetMode.BRIDGE
    network: str = DEFAULT_NETWORK
    ip: ipaddress.IPv4Address | None = None
    mac: str | None = None
    name: str | None = None
    hostname: str | None = None
    dns: tuple[str, ...] = ()
    join: str | None = None  # with --net sandbox:NAME
    publish: tuple[PortMapping, ...] = ()
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    no_new_privs: bool = True
    seccomp: bool = True
    read_only: bool = False
    volumes: tuple[Volume, ...] = ()
    tmpfs: tuple[str, ...] = ()
    tty: bool = False
    explicit_user: bool = field(default=False, compare=False)

    @property
    def owns_netns(self) -> bool:
        return self.net in (NetMode.BRIDGE, NetMode.NONE)

    @classmethod
    def parse(  # noqa: PLR0913  # one keyword per CLI option
        cls,
        argv: Sequence[str],
        *,
        net: str = "bridge",
        network: str | None = None,
        ip: str | None = None,
        mac: str | None = None,
        name: str | None = None,
        hostname: str | None = None,
        dns: Sequence[str] = (),
        user: str | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        publish: Sequence[str] = (),
        privileged: bool = False,
        cap_add: Sequence[str] = (),
        cap_drop: Sequence[str] = (),
        security_opt: Sequence[str] = (),
        read_only: bool = False,
        volumes: Sequence[str] = (),
        tmpfs: Sequence[str] = (),
        tty: bool = False,
        environ: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> SandboxRequest:
        """Check every option before anything is touched; raises UsageError."""
        if not argv:
            raise UsageError("no command given", "nsrun runs a command", "usage: nsrun [OPTIONS] [--] CMD [ARGS...]")
        if not argv[0]:
            raise UsageError("invalid command ''", "its name is empty", "usage: nsrun [OPTIONS] [--] CMD [ARGS...]")
        caller_env = dict(os.environ if environ is None else environ)
        caller_cwd = cwd or _current_directory()
        mode, join = _parse_net(net, network)
        address = parse_address(ip) if ip is not None else None
        hwaddr = parse_mac(mac) if mac is not None else None
        if mode is not NetMode.BRIDGE and (address or hwaddr):
            raise UsageError(f"--ip and --mac with --net {mode.value}", "they need a bridge", "use --net bridge")
        if name is not None:
            validate_name(name, what="--name")
        if hostname is not None:
            validate_hostname(hostname)
        who = resolve_user(user) if user is not None else invoking_user(caller_env)
        directory = _workdir(workdir, caller_cwd)
        mappings = _parse_publish(publish, mode)
        _check_caps((*cap_add, *cap_drop))
        no_new_privs, seccomp = parse_security_opt(security_opt)
        return cls(
            argv=tuple(argv),
            user=who,
            env=tuple(parse_env(item) for item in env),
            environ=tuple(caller_env.items()),
            cwd=directory,
            net=mode,
            network=network or DEFAULT_NETWORK,
            ip=address,
            mac=hwaddr,
            name=name,
            hostname=hostname,
            dns=tuple(parse_dns(server) for server in dns),
            join=join,
            publish=mappings,
            privileged=privileged,
            cap_add=tuple(cap_add),
            cap_drop=tuple(cap_drop),
            no_new_privs=no_new_privs and not privileged,
            seccomp=seccomp and not privileged,
            read_only=read_only,
            volumes=tuple(parse_volume(item, caller_cwd) for item in volumes),
            tmpfs=tuple(_parse_tmpfs(item) for item in tmpfs),
            tty=tty,
            explicit_user=user is not None,
        )
