"""Checks of the host itself: privileges, chroot, kernel features, forwarding, firewalls."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nsrun.doctor.report import Check, Status
from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from collections.abc import Callable

    from nsrun.doctor.state import View

__all__ = [
    "backend",
    "chroot",
    "firewall_managers",
    "foreign_drops",
    "helper",
    "ip_forward",
    "kernel_firewalls",
    "kernel_links",
    "privileges",
]

_CAP_SYS_ADMIN: Final = 21
_CAP_NET_ADMIN: Final = 12
_UFW_CONF: Final = Path("/etc/ufw/ufw.conf")
_FIREWALLD_PID: Final = Path("/run/firewalld/firewalld.pid")
_HELPER_FAILURE_KEPT: Final = 24 * 3600.0  # a failure of the helper is shown this long
_HELPER_PING_WAIT: Final = 2.0  # seconds: a helper answers at once, even with 100 launches at once


def privileges() -> Check:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.MULTILINE)
    caps = int(match.group(1), 16) if match else 0
    missing = [
        name
        for bit, name in ((_CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (_CAP_NET_ADMIN, "CAP_NET_ADMIN"))
        if not caps >> bit & 1
    ]
    if missing:
        return Check("privileges", Status.FAIL, f"missing {', '.join(missing)}", "run nsrun as root: sudo nsrun ...")
    return Check("privileges", Status.OK, "CAP_SYS_ADMIN and CAP_NET_ADMIN held")


def chroot() -> Check:
    from nsrun.process.mounts import root_is_mount_point

    if root_is_mount_point():
        return Check("chroot", Status.OK, "/ is a mount point: sandboxes' mounts stay their own")
    return Check(
        "chroot",
        Status.FAIL,
        "/ is not a mount point (inside a chroot?): nsrun cannot keep a sandbox's mounts from the host",
        "run nsrun outside the chroot, or make its root a mount point first: mount --bind DIR DIR; chroot DIR",
    )


def _in_throwaway_netns(probe: Callable[[], None]) -> str | None:
    """Run `probe` in a forked child inside a new network namespace; None if it worked, else why."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: whatever it creates dies with its namespace when it exits
        os.close(read_end)
        code = 0
        try:
            from nsrun.process import libc

            libc.unshare(libc.CLONE_NEWNET)
            probe()
        except Exception as err:  # noqa: BLE001  # reported to the parent as text
            os.write(write_end, str(err).encode(errors="replace")[:500])
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        message = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    return None if os.waitstatus_to_exitcode(status) == 0 else (message or "failed")


def kernel_links() -> list[Check]:
    def links() -> None:
        from nsrun.net import netlink

        with contextlib.closing(netlink.Rtnl()) as rtnl:
            netlink.add_bridge(rtnl, "nsrun-probe0")
            netlink.add_veth_pair(rtnl, "nsrun-probe1", "nsrun-probe2")

    if (error := _in_throwaway_netns(lambda: None)) is not None:
        fail = Check("kernel: network namespaces", Status.FAIL, error, "a kernel with CONFIG_NET_NS, and root")
        return [fail]
    checks = [Check("kernel: network namespaces", Status.OK, "a namespace can be created")]
    error = _in_throwaway_netns(links)
    if error is None:
        checks.append(Check("kernel: veth and bridge", Status.OK, "both can be created"))
    else:
        checks.append(
            Check(
                "kernel: veth and bridge", Status.FAIL, error, "load the veth and bridge modules: modprobe veth bridge"
            )
        )
    return checks


def kernel_firewalls() -> list[Check]:
    checks = []
    try:
        from nsrun.firewall.nftables import NftablesBackend

        NftablesBackend().tables()
        checks.append(Check("kernel: nf_tables", Status.OK, "libnftables lists the ruleset"))
    except NsrunError as err:
        checks.append(Check("kernel: nf_tables", Status.WARN, str(err), "install libnftables1; load nf_tables"))
    modules = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
    kernel_dir = Path("/lib/modules") / os.uname().release
    has_ip_tables = (
        Path("/proc/net/ip_tables_names").exists()
        or "ip_tables " in modules
        or any(kernel_dir.glob("kernel/net/ipv4/netfilter/ip_tables.ko*"))
    )
    if has_ip_tables:
        checks.append(Check("kernel: ip_tables", Status.OK, "legacy x_tables available (iptables backend)"))
    else:
        checks.append(
            Check(
                "kernel: ip_tables",
                Status.WARN,
                "no ip_tables: the iptables backend cannot work",
                "use the nftables backend (the default here)",
            )
        )
    return checks


def ip_forward(view: View) -> Check:
    from nsrun.net import sysctl

    value = sysctl.read_sysctl(sysctl.IP_FORWARD)
    if value == "1":
        return Check("ip_forward", Status.OK, "net.ipv4.ip_forward=1")
    fix = "sysctl -w net.ipv4.ip_forward=1 (and set it in /etc/sysctl.d/ so it survives reboots and sysctl reloads)"
    if any(view.busy(spec.name) for spec in view.networks if not spec.internal):
        return Check(
            "ip_forward", Status.FAIL, "net.ipv4.ip_forward=0: running sandboxes cannot reach beyond the host", fix
        )
    return Check("ip_forward", Status.WARN, "net.ipv4.ip_forward=0; the next launch turns it on", fix)


def backend() -> Check:
    from nsrun.firewall.select import ENV_FIREWALL, requested_backend, resolve_auto

    requested = requested_backend()
    chosen, why = resolve_auto()
    if requested != "auto":
        return Check("firewall backend", Status.OK, f"{requested} ({ENV_FIREWALL}); auto would pick {chosen}: {why}")
    return Check("firewall backend", Status.OK, f"auto picks {chosen}: {why}")


def foreign_drops() -> Check:
    from nsrun.firewall.iptables import legacy_filter_in_use

    found: list[str] = []
    with contextlib.suppress(NsrunError):
        from nsrun.firewall.nftables import NftablesBackend

        found += [chain.describe() for chain in NftablesBackend().foreign_drops()]
    if legacy_filter_in_use():
        with contextlib.suppress(NsrunError):
            from nsrun.firewall.iptables import IptablesBackend

            found += [chain.describe() for chain in IptablesBackend().foreign_drops()]
    if not found:
        return Check("foreign DROP policies", Status.OK, "no other tool drops forwarded traffic by policy")
    return Check("foreign DROP policies", Status.OK, f"{', '.join(found)}: nsrun adds scoped accepts at each launch")


def firewall_managers() -> list[Check]:
    checks = []
    if _FIREWALLD_PID.exists():
        checks.append(
            Check(
                "firewalld",
                Status.WARN,
                "running: `firewall-cmd --reload` removes other tools' rules until nsrun's next launch",
                "firewall-cmd --permanent --zone=trusted --add-interface=nsrun0 (each nsrun bridge), then --reload",
            )
        )
    if _UFW_CONF.exists() and re.search(r"^ENABLED=yes", _UFW_CONF.read_text(), re.MULTILINE):
        checks.append(
            Check(
                "ufw",
                Status.WARN,
                "enabled: it drops forwarded traffic by default",
                "ufw route allow in on nsrun0 (each nsrun bridge)",
            )
        )
    if not checks:
        checks.append(Check("firewall managers", Status.OK, "neither firewalld nor ufw is active"))
    return checks


def helper(run_dir: Path) -> Check:
    """The warm helper: running or not (both fine), and whether it failed lately."""
    import time

    from nsrun.helper.client import TAKEN_WAIT, helper_wanted, ping
    from nsrun.helper.protocol import LOG_NAME

    if not helper_wanted():
        return Check("warm helper", Status.OK, "off (NSRUN_HELPER=off): every command runs in its own process")
    log = run_dir / LOG_NAME
    with contextlib.suppress(OSError):
        age = time.time() - log.stat().st_mtime
        last = log.read_text(errors="replace").strip().splitlines()[-1:]
        if age < _HELPER_FAILURE_KEPT:
            return Check(
                "warm helper",
                Status.WARN,
                f"it failed {age / 60:.0f} min ago: {last[0] if last else 'see the log'}",
                f"see {log}; launches run in-process meanwhile (NSRUN_HELPER=off to do without it)",
            )
    pid, answered = ping(str(run_dir), _HELPER_PING_WAIT)
    if pid is None:
        return Check("warm helper", Status.OK, "not running: the next launch starts it, and it exits when idle")
    if not answered:
        return Check(
            "warm helper",
            Status.WARN,
            f"pid {pid} did not answer within {_HELPER_PING_WAIT:g}s (stopped or hung?): launches wait"
            f" {TAKEN_WAIT:g}s for it, then run in-process",
            f"kill {pid}: the next launch starts another",
        )
    return Check("warm helper", Status.OK, f"pid {pid} sets launches up; it exits after a while without any")
