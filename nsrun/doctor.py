"""`nsrun doctor`: one row per check of the host, ok/warn/fail with the exact fix.

Checks only look: the kernel features are tried in a throwaway namespace of a forked child, which
takes everything it made with it when it exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from nsrun.net.netlink import IPRoute
    from nsrun.networks.spec import NetworkSpec
    from nsrun.state.paths import StateDirs

__all__ = ["Check", "Status", "exit_code", "render_json", "render_table", "run_checks"]

_CAP_SYS_ADMIN: Final = 21
_CAP_NET_ADMIN: Final = 12
_UFW_CONF: Final = Path("/etc/ufw/ufw.conf")
_FIREWALLD_PID: Final = Path("/run/firewalld/firewalld.pid")


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


def render_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status.value:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    data = {"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}
    return json.dumps(data, indent=2)


# -- probes -----------------------------------------------------------------------------------------


def _capabilities() -> Check:
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
            os.write(write_end, str(err).encode()[:500])
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        message = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    return None if os.waitstatus_to_exitcode(status) == 0 else (message or "failed")


def _kernel_links() -> list[Check]:
    def links() -> None:
        from nsrun.net import netlink

        with contextlib.closing(netlink.IPRoute()) as ipr:
            ipr.link("add", ifname="nsrun-probe0", kind="bridge")
            ipr.link("add", ifname="nsrun-probe1", kind="veth", peer={"ifname": "nsrun-probe2"})

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


def _kernel_firewalls() -> list[Check]:
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


def _ip_forward(networks: list[NetworkSpec]) -> Check:
    from nsrun.net import sysctl

    value = sysctl.read_sysctl(sysctl.IP_FORWARD)
    if value == "1":
        return Check("ip_forward", Status.OK, "net.ipv4.ip_forward=1")
    fix = "sysctl -w net.ipv4.ip_forward=1 (and set it in /etc/sysctl.d/ so it survives reboots and sysctl reloads)"
    if networks:
        return Check("ip_forward", Status.FAIL, "net.ipv4.ip_forward=0: sandboxes cannot reach beyond the host", fix)
    return Check("ip_forward", Status.WARN, "net.ipv4.ip_forward=0; nsrun turns it on at the first launch", fix)


def _backend() -> Check:
    from nsrun.firewall.select import ENV_FIREWALL, requested_backend, resolve_auto

    requested = requested_backend()
    chosen, why = resolve_auto()
    if requested != "auto":
        return Check("firewall backend", Status.OK, f"{requested} ({ENV_FIREWALL}); auto would pick {chosen}: {why}")
    return Check("firewall backend", Status.OK, f"auto picks {chosen}: {why}")


def _network_rules(networks: list[NetworkSpec]) -> Iterator[Check]:
    from nsrun.firewall import host
    from nsrun.firewall.base import open_backend

    for spec in networks:
        name = f"rules of network {spec.name}"
        if spec.firewall == "none":
            yield Check(name, Status.OK, "firewall none: nsrun manages no rules")
            continue
        try:
            present = open_backend(spec.firewall).network_present(spec.rules)
            coexist = host.coexistence_status(spec.firewall, spec.rules)
        except NsrunError as err:
            yield Check(name, Status.FAIL, str(err), "run `nsrun doctor` as root")
            continue
        repair = f"nsrun --network {spec.name} -- true (every launch restores them)"
        yield _guard_check(spec)
        if present:
            yield Check(name, Status.OK, f"{spec.firewall}: masquerade and forward rules in place")
        else:
            yield Check(name, Status.FAIL, f"{spec.firewall}: rules missing (a firewall reload or flush?)", repair)
        for chain, ok in coexist:
            detail = f"{chain.describe()} drops by policy"
            if ok:
                yield Check(f"foreign DROP ({spec.name})", Status.OK, f"{detail}; nsrun's accepts are in place")
            else:
                yield Check(
                    f"foreign DROP ({spec.name})", Status.FAIL, f"{detail} and nsrun's accepts are missing", repair
                )


def _guard_check(spec: NetworkSpec) -> Check:
    """route_localnet lets the host's 127.0.0.1 reach published ports; without the loopback guard
    it would also let a sandbox (given NET_ADMIN) reach the host's loopback services."""
    from nsrun.firewall.base import open_backend
    from nsrun.net import sysctl

    name = f"loopback guard ({spec.name})"
    localnet = sysctl.route_localnet(spec.bridge)
    try:
        guarded = open_backend(spec.firewall).guard_present(spec.rules)
    except NsrunError as err:
        return Check(name, Status.FAIL, str(err), "run `nsrun doctor` as root")
    if guarded:
        return Check(name, Status.OK, "loopback destinations not arriving on lo are dropped")
    if localnet:
        return Check(
            name,
            Status.FAIL,
            f"route_localnet is on for {spec.bridge} but the guard is missing: a sandbox given NET_ADMIN"
            " could reach the host's 127.0.0.1",
            f"nsrun --network {spec.name} -- true (restores the guard), or"
            f" sysctl -w net.ipv4.conf.{spec.bridge}.route_localnet=0",
        )
    return Check(name, Status.OK, f"route_localnet is off for {spec.bridge}")


def _foreign_drops() -> Check:
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


def _firewall_managers() -> list[Check]:
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


def _overlaps(ipr: IPRoute, networks: list[NetworkSpec]) -> Iterator[Check]:
    from nsrun.net import netlink
    from nsrun.networks.spec import first_overlap

    ours = {spec.bridge for spec in networks}
    routes = [(r.network, r.label) for r in netlink.host_routes(ipr) if r.ifname not in ours]
    for spec in networks:
        clash = first_overlap(spec.subnet, routes)
        if clash:
            yield Check(
                f"subnet of network {spec.name}",
                Status.FAIL,
                f"{spec.subnet} overlaps {clash[0]} ({clash[1]}): sandbox traffic may be misrouted",
                f"nsrun network rm {spec.name} && nsrun network create {spec.name} (a free subnet is picked)",
            )
    if networks and not any(first_overlap(s.subnet, routes) for s in networks):
        yield Check("subnets", Status.OK, "no nsrun subnet overlaps a host route")


def _leftovers(dirs: StateDirs, ipr: IPRoute, networks: list[NetworkSpec]) -> Iterator[Check]:
    from nsrun.net import netlink
    from nsrun.net.plan import HOST_VETH_PREFIX
    from nsrun.networks.manager import lease_store
    from nsrun.process import liveness

    live_veths = set()
    found = False
    for spec in networks:
        stale = []
        for lease in lease_store(dirs, spec.name).leases():
            if liveness.holder_alive(lease.pid, lease.start_time, lease.pidns):
                live_veths.add(lease.veth)
            else:
                stale.append(lease.address)
        if stale:
            found = True
            yield Check(
                f"leases of network {spec.name}",
                Status.WARN,
                f"{len(stale)} stale (holder gone): {', '.join(stale)}",
                f"nsrun network inspect {spec.name} (reclaims them)",
            )
    orphans = [
        name for name, _ in netlink.list_links(ipr) if name.startswith(HOST_VETH_PREFIX) and name not in live_veths
    ]
    if orphans:
        found = True
        fix = "; ".join(f"ip link del {name}" for name in orphans)
        yield Check("orphan veths", Status.WARN, f"{', '.join(orphans)}: no live sandbox owns them", fix)
    yield from _orphan_rules(networks)
    if not found:
        yield Check("leftover state", Status.OK, "no stale leases or orphan veths")


def _orphan_rules(networks: list[NetworkSpec]) -> Iterator[Check]:
    known = {spec.name for spec in networks}
    with contextlib.suppress(NsrunError):
        from nsrun.firewall.nftables import NftablesBackend

        for network, fix in NftablesBackend().orphans(known):
            yield Check("rules of removed network", Status.WARN, f"nftables rules tagged nsrun:{network}", fix)
    from nsrun.firewall.iptables import legacy_filter_in_use

    if legacy_filter_in_use():
        with contextlib.suppress(NsrunError):
            from nsrun.firewall.iptables import IptablesBackend

            for network, fix in IptablesBackend().orphans(known):
                yield Check(
                    "rules of removed network", Status.WARN, f"legacy iptables rules tagged nsrun:{network}", fix
                )


def run_checks(dirs: StateDirs) -> list[Check]:
    from nsrun.net import netlink
    from nsrun.networks.manager import network_store

    checks = [_capabilities()]
    if checks[0].status is Status.FAIL:
        return checks
    networks = network_store(dirs).all()
    checks += _kernel_links()
    checks += _kernel_firewalls()
    checks.append(_ip_forward(networks))
    checks.append(_backend())
    checks.append(_foreign_drops())
    checks += _firewall_managers()
    with contextlib.closing(netlink.IPRoute()) as ipr:
        checks += _network_rules(networks)
        checks += _overlaps(ipr, networks)
        checks += _leftovers(dirs, ipr, networks)
    return checks
