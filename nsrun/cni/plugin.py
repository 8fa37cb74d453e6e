"""What each CNI command does, through nsrun's own library: an ADD is a sandbox set-up whose
namespace is the engine's (same network, leases, rules, anti-spoofing, published ports, record);
a DEL is the one teardown every sandbox gets. Attachments are keyed by (network, container,
interface), so DEL and CHECK find what ADD made without any state of the engine's.

    handle(env, stdin_bytes) -> (exit status, stdout text)
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from typing import TYPE_CHECKING, Any

from nsrun.cni import spec
from nsrun.cni.spec import CniError, Invocation, NetConf
from nsrun.errors import ConflictError, NotFoundError, NsrunError, UsageError
from nsrun.state.locks import LockTimeoutError
from nsrun.state.paths import StateDirs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from nsrun.networks.spec import NetworkSpec
    from nsrun.state.registry import SandboxRecord

__all__ = ["handle"]

_COMMAND_DESCRIPTION = "cni"  # what `nsrun ls` shows as an attachment's command


def handle(env: Mapping[str, str], stdin: bytes, dirs: StateDirs | None = None) -> tuple[int, str]:
    """Run one CNI command: (exit status, what goes to stdout)."""
    version = spec.SPEC_VERSION
    try:
        invocation = spec.parse_environment(env)
        if invocation.command == "VERSION":
            return 0, json.dumps(spec.version_result(_requested_version(stdin)))
        _require_root()
        conf = spec.parse_config(stdin, invocation.command)
        version = conf.cni_version
        result = _dispatch(invocation, conf, dirs or StateDirs())
    except CniError as err:
        return 1, json.dumps(err.to_json(version))
    return 0, json.dumps(result) if result is not None else ""


def _require_root() -> None:
    if os.geteuid() != 0:
        raise CniError(spec.OPERATION_FAILED, "nsrun-cni must run as root", "container engines run it as root")


def _requested_version(stdin: bytes) -> str | None:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        data = json.loads(stdin or b"{}")
        version = data.get("cniVersion") if isinstance(data, dict) else None
        if version in spec.SUPPORTED_VERSIONS:
            return str(version)
    return None


def _dispatch(invocation: Invocation, conf: NetConf, dirs: StateDirs) -> dict[str, Any] | None:
    actions = {"ADD": add, "DEL": delete, "CHECK": check, "GC": collect, "STATUS": status}
    try:
        return actions[invocation.command](invocation, conf, dirs)
    except CniError:
        raise
    except LockTimeoutError as err:
        raise CniError.of(spec.TRY_AGAIN_LATER, err) from err
    except (UsageError, NotFoundError) as err:
        raise CniError.of(spec.INVALID_CONFIG, err) from err
    except NsrunError as err:
        raise CniError.of(spec.OPERATION_FAILED, err) from err
    except OSError as err:
        raise CniError(spec.IO_FAILURE, f"{invocation.command} failed: {err}", str(err)) from err


# -- ADD ----------------------------------------------------------------------------------------


def add(invocation: Invocation, conf: NetConf, dirs: StateDirs) -> dict[str, Any]:
    from nsrun.launch.request import Attachment, SandboxRequest
    from nsrun.launch.sandbox import Sandbox

    sandbox_id = spec.attachment_id(conf.network, invocation.container_id, invocation.ifname)
    _check_netns(invocation.netns)
    _reclaim_previous(dirs, sandbox_id, invocation)
    _ensure_network(dirs, conf)
    request = SandboxRequest.parse(
        [_COMMAND_DESCRIPTION, invocation.container_id[:12], invocation.ifname],
        network=conf.network,
        ip=conf.ip,
        mac=conf.mac,
        publish=conf.publish,
        hostname=spec.hostname_of(invocation),
        environ={},
        cwd="/",
    )
    attachment = Attachment(invocation.container_id, invocation.ifname, invocation.netns)
    sandbox = Sandbox(request, dirs, sandbox_id=sandbox_id, attachment=attachment)
    try:
        sandbox.setup()
    finally:
        sandbox.close()  # nothing of nsrun's holds the attachment: the engine's namespace does
    if sandbox.lease is None or sandbox.network is None or sandbox.mac is None:
        raise NsrunError(f"attaching container {invocation.container_id}", "set-up ended without an address")
    return spec.add_result(conf, _made(invocation, sandbox.network, sandbox_id, sandbox))


def _made(invocation: Invocation, network: NetworkSpec, sandbox_id: str, sandbox: Any) -> spec.Interfaces:
    from nsrun.net.plan import host_veth_name

    address6 = None
    if sandbox.address6 is not None and network.subnet6 is not None:
        address6 = ipaddress.IPv6Interface(f"{sandbox.address6}/{network.subnet6.prefixlen}")
    host_veth = host_veth_name(sandbox_id)
    return spec.Interfaces(
        host_veth=host_veth,
        host_mac=_link_mac(host_veth),
        ifname=invocation.ifname,
        mac=sandbox.mac,
        netns=invocation.netns,
        address=ipaddress.IPv4Interface(f"{sandbox.lease.address}/{network.subnet.prefixlen}"),
        gateway=network.gateway,
        address6=address6,
        gateway6=network.gateway6 if address6 is not None else None,
        default_route=not network.internal,
    )


def _link_mac(name: str) -> str:
    from nsrun.net import netlink

    with contextlib.closing(netlink.Rtnl()) as ipr:
        return netlink.link_mac(ipr, name)


def _reclaim_previous(dirs: StateDirs, sandbox_id: str, invocation: Invocation) -> None:
    """An ADD for an attachment that exists in this very namespace is the engine's mistake (the
    spec wants a DEL in between). One of a namespace that is gone, or is being taken down by the
    kernel (its veth lingers a few milliseconds after `ip netns del`), is reclaimed first."""
    from nsrun.launch.records import is_stale, registry
    from nsrun.launch.teardown import teardown_sandbox

    record = registry(dirs).get(sandbox_id)
    if record is None:
        return
    if not is_stale(record) and _attached_to(dirs, record) in (None, os.stat(invocation.netns).st_ino):
        raise CniError(
            spec.ATTACHMENT_EXISTS,
            f"container {invocation.container_id} already has {invocation.ifname} on this network",
            "DEL it first (the spec allows one ADD per container and interface)",
        )
    teardown_sandbox(dirs, record, pinned=False)


def _attached_to(dirs: StateDirs, record: SandboxRecord) -> int | None:
    """The inode of the namespace an attachment was made in (its lease says), None if unknown."""
    from nsrun.networks import manager

    if not record.addresses:
        return None  # its ADD runs still
    lease = manager.lease_store(dirs, record.network).get(ipaddress.IPv4Address(record.addresses[0]))
    return lease.netns_inode if lease is not None and lease.sandbox_id == record.sandbox_id else None


def _check_netns(path: str) -> None:
    """Before anything is made: CNI_NETNS is a namespace file (what it is, setns checks)."""
    try:
        found = os.stat(path)
    except OSError as err:
        raise CniError(
            spec.UNKNOWN_CONTAINER, f"the container's network namespace {path}: {err.strerror}", "is the container up?"
        ) from err
    own = os.stat("/proc/self/ns/net")
    if found.st_dev != own.st_dev:
        raise CniError(spec.INVALID_ENVIRONMENT, f"CNI_NETNS {path} is not a namespace file", "e.g. /run/netns/NAME")
    if found.st_ino == own.st_ino:
        # an interface, address and default route for a container would be the host's own
        raise CniError(
            spec.INVALID_ENVIRONMENT,
            f"CNI_NETNS {path} is the host's own network namespace (the plugin's)",
            "give the container's namespace, e.g. /run/netns/NAME",
        )


def _check_request(conf: NetConf) -> Callable[[NetworkSpec], None]:
    """What a new network must accept before it is created: the address asked for."""

    def check(network: NetworkSpec) -> None:
        if conf.ip is not None and not network.pool.is_assignable(ipaddress.IPv4Address(conf.ip)):
            raise UsageError(
                f"invalid address {conf.ip} in ips",
                f"network {network.name!r} assigns hosts of {network.subnet} except the gateway {network.gateway}",
                "ask for another address, or none",
            )

    return check


def _ensure_network(dirs: StateDirs, conf: NetConf) -> NetworkSpec | None:
    """The conf's nsrun network: an existing one (its subnet must be the conf's, if it gives
    one), or one created now with the conf's subnet."""
    from nsrun.networks import manager

    existing = manager.network_store(dirs).get(conf.network)
    if existing is not None:
        if conf.subnet is not None and existing.subnet != conf.subnet:
            raise CniError(
                spec.INVALID_CONFIG,
                f"nsrun network {conf.network!r} has subnet {existing.subnet}, not {conf.subnet}",
                'give its subnet in the conf, leave "subnet" out, or name another network',
            )
        return existing
    if conf.subnet is None:
        return None  # the default network is created on first use; any other is not found
    from nsrun.net import netlink
    from nsrun.networks.spec import NetworkRequest

    with contextlib.closing(netlink.Rtnl()) as ipr:
        try:
            request = NetworkRequest(conf.network, subnet=conf.subnet)
            return manager.create_network(dirs, ipr, request, check=_check_request(conf))
        except manager.NetworkExistsError:
            return _ensure_network(dirs, conf)  # a concurrent ADD created it: check it is the same


# -- DEL, CHECK, GC, STATUS ----------------------------------------------------------------------


def delete(invocation: Invocation, conf: NetConf, dirs: StateDirs) -> None:
    """Undo what ADD made; what is already gone (or never was) counts as done."""
    from nsrun.launch.records import registry
    from nsrun.launch.teardown import teardown_sandbox

    sandbox_id = spec.attachment_id(conf.network, invocation.container_id, invocation.ifname)
    record = registry(dirs).get(sandbox_id)
    if record is None or not record.attached:
        return  # never made, or gone already (its record goes last: nothing of it is left)
    failures = teardown_sandbox(dirs, record, pinned=False)
    if failures:
        raise CniError(spec.OPERATION_FAILED, f"DEL of container {invocation.container_id}", "; ".join(failures))


def check(invocation: Invocation, conf: NetConf, dirs: StateDirs) -> None:
    """The attachment is as ADD left it: its record, its veth on the bridge, the container's
    interface with its address, and its own rules."""
    from nsrun.launch.records import is_stale, missing_sandbox_rules, registry

    sandbox_id = spec.attachment_id(conf.network, invocation.container_id, invocation.ifname)
    record = registry(dirs).get(sandbox_id)
    what = f"container {invocation.container_id}'s {invocation.ifname} on {conf.network!r}"
    if record is None or not record.attached or is_stale(record):
        raise CniError(spec.CHECK_FAILED, f"{what}: not attached", "ADD it again")
    problems = _interface_problems(dirs, invocation, record)
    problems += [f"missing {item}" for item in missing_sandbox_rules(record)]
    if problems:
        raise CniError(
            spec.CHECK_FAILED, f"{what}: {'; '.join(problems)}", "DEL and ADD it again, or run `nsrun doctor`"
        )


def _interface_problems(dirs: StateDirs, invocation: Invocation, record: SandboxRecord) -> list[str]:
    from nsrun.net import netlink
    from nsrun.networks import manager

    network = manager.network_store(dirs).get(record.network)
    problems = []
    with contextlib.closing(netlink.Rtnl()) as ipr:
        ports = netlink.bridge_ports(ipr, network.bridge) if network is not None else None
    if ports is None or f"nsv{record.sandbox_id}" not in ports:
        problems.append(f"veth nsv{record.sandbox_id} is not a port of the network's bridge")
    fd, inner = netlink.open_in_netns(invocation.netns, "the container's network namespace")
    try:
        addresses = netlink.interface_addresses(inner, invocation.ifname)
    finally:
        inner.close()
        os.close(fd)
    if addresses is None:
        problems.append(f"no interface {invocation.ifname} in {invocation.netns}")
    elif record.addresses and not any(a.split("/")[0] == record.addresses[0] for a in addresses):
        problems.append(f"{invocation.ifname} lost its address {record.addresses[0]}")
    return problems


def collect(_invocation: Invocation, conf: NetConf, dirs: StateDirs) -> None:
    """GC: attachments of this network that the engine no longer knows go, and with them
    whatever dead sandboxes and ADDs left."""
    from nsrun.launch.records import live_sandboxes, reclaim_stale
    from nsrun.launch.teardown import teardown_sandbox
    from nsrun.networks import manager

    valid = conf.valid_attachments or frozenset()
    failures: list[str] = []
    for record in live_sandboxes(dirs):
        if record.attached and record.network == conf.network and (record.container_id, record.ifname) not in valid:
            failures += teardown_sandbox(dirs, record, pinned=False)
    if manager.network_store(dirs).get(conf.network) is not None:
        reclaim_stale(dirs, conf.network)
    if failures:
        raise CniError(spec.OPERATION_FAILED, "GC left attachments behind", "; ".join(failures))


def status(_invocation: Invocation, conf: NetConf, dirs: StateDirs) -> None:
    """STATUS: whether an ADD could be served now: the network exists (or can be made), its
    bridge and rules are in place (repaired if not), and its pool has a free address."""
    from nsrun.net import netlink
    from nsrun.networks import manager

    try:
        network = _ensure_network(dirs, conf)
        with contextlib.closing(netlink.Rtnl()) as ipr:
            if network is None:
                network = manager.load_network(dirs, ipr, conf.network)
            store = manager.lease_store(dirs, network.name)
            with store.locked():
                manager.ensure_host_side(dirs, ipr, network, store)
                manager.sweep_stale_leases(ipr, store)
                leased = len(store.leases())
        if leased >= network.pool.capacity:
            raise ConflictError(
                f"network {network.name!r}", f"every address of {network.subnet} is in use", "DEL unused attachments"
            )
    except CniError as err:
        raise CniError(spec.NOT_AVAILABLE, err.msg, err.details) from err
    except (NsrunError, OSError) as err:
        raise CniError(spec.NOT_AVAILABLE, f"network {conf.network!r} cannot serve ADD: {err}", str(err)) from err
