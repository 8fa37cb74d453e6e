"""Capabilities by name, the default set a sandboxed root keeps, and `--cap-add`/`--cap-drop`."""

from __future__ import annotations

from typing import Final

from nsrun.errors import UsageError

__all__ = ["ALL_CAPS", "CAPABILITIES", "DEFAULT_CAPS", "cap_names", "parse_cap", "resolve_caps"]

# linux/capability.h, in number order
CAPABILITIES: Final = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
ALL_CAPS: Final = (1 << len(CAPABILITIES)) - 1

# Docker's default list (moby oci/caps/defaults.go) minus NET_RAW, which lets a sandbox forge
# packets and ARP on its neighbours' bridge (ICMP echo works without it: nsrun opens
# net.ipv4.ping_group_range in the sandbox), and minus MKNOD, which Docker only keeps behind a
# device cgroup nsrun does not have: with it a root command could create a node for the host's
# disk on the shared filesystem.
DEFAULT_CAP_NAMES: Final = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)


def parse_cap(text: str) -> int:
    """The bit of `NAME`, `CAP_NAME` or `cap_name`; UsageError for unknown ones."""
    name = text.strip().upper().removeprefix("CAP_")
    if name not in CAPABILITIES:
        raise UsageError(
            f"unknown capability {text!r}",
            "not a Linux capability name",
            "see capabilities(7); e.g. --cap-add NET_ADMIN, or ALL",
        )
    return 1 << CAPABILITIES.index(name)


def _mask(names: tuple[str, ...]) -> int:
    mask = 0
    for name in names:
        mask |= ALL_CAPS if name.strip().upper() in ("ALL", "CAP_ALL") else parse_cap(name)
    return mask


DEFAULT_CAPS: Final = _mask(DEFAULT_CAP_NAMES)


def resolve_caps(cap_add: tuple[str, ...] = (), cap_drop: tuple[str, ...] = (), *, privileged: bool = False) -> int:
    """The capabilities a root command keeps: the default set (every one if privileged), minus
    `--cap-drop`, plus `--cap-add` (as with Docker, adding wins over dropping ALL)."""
    base = ALL_CAPS if privileged else DEFAULT_CAPS
    return (base & ~_mask(cap_drop)) | _mask(cap_add)


def cap_names(mask: int) -> list[str]:
    return [name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1]
