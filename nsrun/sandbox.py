"""The sandbox library: set up namespaces for one command, run it, tear everything down.

The CLI calls this in-process; test suites and a future warm helper call the same API:

    request = SandboxRequest.parse(["server"], net="bridge", network="lab", name="web")
    with Sandbox(request) as sandbox:           # setup(); teardown() on exit, whatever happened
        status = sandbox.run()                  # the command's exit status (128+N for signal N)

Setup validates everything first, then acts, registering each undo right after its step; teardown
runs every undo, treats "already gone" as done and collects failures instead of stopping.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from nsrun.errors import TeardownError, UsageError
from nsrun.paths import StateDirs
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
    import socket
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from nsrun.firewall.rules import PortMapping
    from nsrun.ipam.leases import Lease
    from nsrun.networks.spec import NetworkSpec
    from nsrun.process.child import ChildPlan, Credentials
    from nsrun.process.supervisor import Supervisor
    from nsrun.registry import Registry, SandboxRecord

__all__ = ["NetMode", "Sandbox", "SandboxRequest", "exec_in", "live_sandboxes"]

ETC_NETNS = Path("/etc/netns")  # per-namespace /etc overrides, as `ip netns exec` applies them


class NetMode(StrEnum):
    BRIDGE = "bridge"
    NONE = "none"
    HOST = "host"
    SANDBOX = "sandbox"  # sandbox:NAME, the network namespace of a running sandbox


JOIN_PREFIX = "sandbox:"


@dataclass(frozen=True)
class SandboxRequest:
    argv: tuple[str, ...]
    net: NetMode = NetMode.BRIDGE
    network: str = "nsrun"
    ip: ipaddress.IPv4Address | None = None
    mac: str | None = None
    name: str | None = None
    hostname: str | None = None
    dns: tuple[str, ...] = ()
    credentials: Credentials | None = None
    user_env: tuple[tuple[str, str], ...] = ()  # LOGNAME/USER/HOME of --user
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    join: str | None = None  # with --net sandbox:NAME
    publish: tuple[PortMapping, ...] = ()

    def environment(self) -> dict[str, str]:
        """nsrun's own environment, then --user's HOME/USER/LOGNAME, then every --env."""
        return dict(os.environ) | dict(self.user_env) | dict(self.env)

    @property
    def owns_netns(self) -> bool:
        return self.net in (NetMode.BRIDGE, NetMode.NONE)

    @classmethod
    def parse(  # noqa: PLR0913  # one keyword per CLI option
        cls,
        argv: Sequence[str],
        *,
        net: str = "bridge",
        network: str = "nsrun",
        ip: str | None = None,
        mac: str | None = None,
        name: str | None = None,
        hostname: str | None = None,
        dns: Sequence[str] = (),
        user: str | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        publish: Sequence[str] = (),
    ) -> SandboxRequest:
        """Check every option before anything is touched; raises UsageError."""
        if not argv:
            raise UsageError("no command given", "nsrun runs a command", "usage: nsrun [OPTIONS] [--] CMD [ARGS...]")
        join = None
        if net.startswith(JOIN_PREFIX):
            join = validate_name(net.removeprefix(JOIN_PREFIX), what="sandbox name in --net")
            net = NetMode.SANDBOX.value
        modes = {m.value: m for m in NetMode if m is not NetMode.SANDBOX or join is not None}
        if net not in modes:
            raise UsageError(f"invalid --net {net!r}", "choose one of: bridge, none, host, sandbox:NAME")
        mode = modes[net]
        validate_name(network)
        address = parse_address(ip) if ip is not None else None
        hwaddr = parse_mac(mac) if mac is not None else None
        if mode is not NetMode.BRIDGE and (address or hwaddr):
            raise UsageError(f"--ip and --mac with --net {mode.value}", "they need a bridge", "use --net bridge")
        if name is not None:
            validate_name(name, what="--name")
        if hostname is not None:
            validate_hostname(hostname)
        credentials: Credentials | None = None
        user_env: tuple[tuple[str, str], ...] = ()
        if user is not None:
            from nsrun.users import resolve_user

            credentials, login, home = resolve_user(user)
            user_env = (("HOME", home), ("USER", login), ("LOGNAME", login))
        if workdir is not None and not os.path.isdir(workdir):
            raise UsageError(f"invalid --workdir {workdir!r}", "no such directory")
        mappings = tuple(parse_publish(item) for item in publish)
        if mappings and mode is not NetMode.BRIDGE:
            raise UsageError(f"-p with --net {net}", "published ports need a bridge", "use --net bridge")
        for index, mapping in enumerate(mappings):
            if any(mapping.collides(other) for other in mappings[:index]):
                raise UsageError(f"invalid -p {mapping.spec()}", "the host port is given twice")
        return cls(
            argv=tuple(argv),
            net=mode,
            network=network,
            ip=address,
            mac=hwaddr,
            name=name,
            hostname=hostname,
            dns=tuple(parse_dns(server) for server in dns),
            credentials=credentials,
            user_env=user_env,
            env=tuple(parse_env(item) for item in env),
            workdir=os.path.abspath(workdir) if workdir else None,
            join=join,
            publish=mappings,
        )


@dataclass
class Sandbox:
    request: SandboxRequest
    dirs: StateDirs = field(default_factory=StateDirs)
    sandbox_id: str = field(default_factory=lambda: secrets.token_hex(6))
    netns_fd: int | None = field(default=None, init=False)
    network: NetworkSpec | None = field(default=None, init=False)
    lease: Lease | None = field(default=None, init=False)
    record: SandboxRecord | None = field(default=None, init=False)
    address6: ipaddress.IPv6Address | None = field(default=None, init=False)
    _undo: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False)
    _failures: list[str] = field(default_factory=list, init=False)

    @property
    def name(self) -> str:
        return self.request.name or self.sandbox_id

    @property
    def hostname(self) -> str:
        return self.request.hostname or self.name

    # -- lifecycle -----------------------------------------------------------------------------

    def setup(self) -> None:
        with contextlib.ExitStack() as stack:
            self._undo = stack
            self._register()
            if self.request.net is NetMode.NONE:
                self._open_netns()
            elif self.request.net is NetMode.BRIDGE:
                self._setup_bridged()
            elif self.request.net is NetMode.SANDBOX:
                self._join_netns()
            self._write_etc_files()
            self._undo = stack.pop_all()

    def teardown(self) -> None:
        """Undo every setup step, newest first; raise TeardownError listing what failed."""
        self._failures = []
        self._undo.close()
        if self._failures:
            raise TeardownError(self._failures)

    def __enter__(self) -> Self:
        self.setup()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.teardown()
        except TeardownError as err:
            if exc is None:
                raise
            print(f"nsrun: warning: {err}", file=sys.stderr)

    def run(self, supervisor: Supervisor | None = None) -> int:
        """Run the command in the sandbox, wait for it, end what it left running; its exit status."""
        from nsrun.process.supervisor import Supervisor

        supervisor = supervisor or Supervisor()
        try:
            process = supervisor.spawn(self.request.argv, self.child_plan(), env=self.request.environment())
            self._announce(process.pid)
            return supervisor.wait()
        finally:
            supervisor.reap_leftovers()

    def child_plan(self) -> ChildPlan:
        from nsrun.process.child import ChildPlan

        files = self._registry().files(self.sandbox_id)
        own_net = self.request.net is not NetMode.HOST
        binds = [(str(files / "hosts"), "/etc/hosts")]
        if Path("/etc/hostname").exists():
            binds.append((str(files / "hostname"), "/etc/hostname"))
        if own_net or self.request.dns:
            binds.append((str(files / "resolv.conf"), "/etc/resolv.conf"))
        overrides = ETC_NETNS / self.name
        if self.request.name and overrides.is_dir():
            for path in sorted(overrides.iterdir()):
                if path.is_file() and not (path.name == "resolv.conf" and self.request.dns):
                    binds = [b for b in binds if b[1] != f"/etc/{path.name}"] + [(str(path), f"/etc/{path.name}")]
        return ChildPlan(
            parent_pid=os.getpid(),
            netns_fd=self.netns_fd,
            private_mounts=True,
            hostname=self.hostname,
            remount_sys=own_net,
            binds=tuple((src, dst) for src, dst in binds if Path(dst).exists()),
            credentials=self.request.credentials,
            workdir=self.request.workdir,
        )

    # -- steps ---------------------------------------------------------------------------------

    def _step(self, description: str, undo: Callable[..., Any], *args: Any) -> None:
        """Register an undo that records its failure instead of stopping the others."""

        def guarded() -> None:
            try:
                undo(*args)
            except Exception as err:  # noqa: BLE001  # every undo must run; failures are reported together
                self._failures.append(f"{description}: {err}")

        self._undo.callback(guarded)

    def _registry(self) -> Registry:
        return _registry(self.dirs)

    def _register(self) -> None:
        from nsrun.process import liveness
        from nsrun.registry import SandboxRecord

        pid = os.getpid()
        record = SandboxRecord(
            sandbox_id=self.sandbox_id,
            name=self.name,
            pid=pid,
            start_time=liveness.start_time(pid),
            network=self._network_label(),
            command=self.request.argv,
            created=time.time(),
            netns_name=self.request.name if self.request.name and self.request.owns_netns else None,
            ports=tuple(mapping.spec() for mapping in self.request.publish),
        )
        registry = self._registry()
        held: list[socket.socket] = []
        try:
            registry.register(record, _record_is_stale, check=lambda live: held.extend(self._reserve_ports(live)))
        except BaseException:
            for sock in held:
                sock.close()
            raise
        self.record = record
        self._step("removing the sandbox's record", registry.remove, record)
        # closed before the record goes, so a port is never both unlisted and still held
        for sock in held:
            self._step("releasing a published host port", sock.close)

    def _network_label(self) -> str:
        if self.request.net is NetMode.BRIDGE:
            return self.request.network
        if self.request.net is NetMode.SANDBOX:
            return f"{JOIN_PREFIX}{self.request.join}"
        return self.request.net.value

    def _reserve_ports(self, live: list[SandboxRecord]) -> list[socket.socket]:
        """Under the registry's lock: no live sandbox publishes these host ports, and no host
        process holds them; each is then held by a bound socket until teardown."""
        from nsrun.errors import ConflictError
        from nsrun.net.hostports import reserve_host_port

        for mapping in self.request.publish:
            for record in live:
                if any(mapping.collides(parse_publish(spec)) for spec in record.ports):
                    raise ConflictError(
                        f"publishing host port {mapping.host_port}/{mapping.proto}",
                        f"sandbox {record.name!r} (pid {record.child_pid or record.pid}) publishes it",
                        "choose another host port, or end that sandbox",
                    )
        held: list[socket.socket] = []
        try:
            held.extend(reserve_host_port(mapping) for mapping in self.request.publish)
        except BaseException:
            for sock in held:
                sock.close()
            raise
        return held

    def _announce(self, child_pid: int) -> None:
        """The command runs: record its pid (for `ls` and `exec`) and give its namespace its name."""
        from dataclasses import replace

        from nsrun.process import liveness

        assert self.record is not None  # noqa: S101  # registered in setup
        registry = self._registry()
        addresses: tuple[str, ...] = (self.lease.address,) if self.lease else ()
        if self.address6 is not None:
            addresses += (str(self.address6),)
        self.record = replace(self.record, child_pid=child_pid, addresses=addresses)
        registry.update(self.record)
        if self.netns_fd is not None and self.request.owns_netns:
            inode = os.fstat(self.netns_fd).st_ino
            # whatever joined the namespace (`nsrun exec`, `ip netns exec`) ends with the sandbox
            self._step("ending processes left in the sandbox", liveness.kill_netns_members, inode)
        if self.record.netns_name:
            registry.bind_netns(self.record, f"/proc/{os.getpid()}/fd/{self.netns_fd}")
            self._step(f"removing /run/netns/{self.record.netns_name}", registry.unbind_netns, self.record)

    def _write_etc_files(self) -> None:
        from nsrun import etc

        files = self._registry().files(self.sandbox_id)
        files.mkdir(parents=True, exist_ok=True)
        resolv = etc.plan_resolv(etc.read_host_resolv(), self.request.dns)
        if resolv.warning and self.request.net is not NetMode.HOST:
            print(f"nsrun: warning: {resolv.warning}", file=sys.stderr)
        (files / "resolv.conf").write_text(resolv.text)
        (files / "hosts").write_text(etc.hosts_file(self.hostname, self.lease.address if self.lease else None))
        (files / "hostname").write_text(self.hostname + "\n")

    def _join_netns(self) -> None:
        assert self.request.join is not None  # noqa: S101  # parse() sets it with the mode
        target = self._registry().find(self.request.join, _record_is_stale)
        fd = _open_namespace(target, "net")
        self.netns_fd = fd
        self._step("closing the joined namespace", os.close, fd)

    def _open_netns(self) -> Any:
        from nsrun.net import netlink, sysctl  # pyroute2 is slow to import; --net host never needs it

        fd, inner = netlink.open_in_new_netns(inside=sysctl.allow_unprivileged_ports)
        self.netns_fd = fd
        self._step("closing the sandbox namespace", os.close, fd)
        self._step("closing the sandbox netlink socket", inner.close)
        netlink.loopback_up(inner)
        return inner

    def _setup_bridged(self) -> None:
        from nsrun.ipam.allocator import allocate
        from nsrun.ipam.leases import LeaseStore
        from nsrun.net import netlink
        from nsrun.net.plan import AttachPlan, host_veth_name
        from nsrun.networks import manager

        host = netlink.IPRoute()
        self._step("closing the host netlink socket", host.close)
        network = manager.load_network(self.dirs, host, self.request.network, check=self._check_address)
        self.network = network
        inner = self._open_netns()
        veth = host_veth_name(self.sandbox_id)
        store = LeaseStore(self.dirs.leases(network.name))
        with store.locked():
            manager.ensure_loaded(self.dirs, network)
            manager.sweep_stale_leases(host, store)
            lease = allocate(network.name, network.pool, store, self._lease_factory(veth), self.request.ip)
            self.lease = lease
            self._step(f"releasing address {lease.address}", store.release, lease)
            bridge_index, network = manager.ensure_host_side(self.dirs, host, network)
            self.network = network
        address = parse_address(lease.address)
        plan = AttachPlan(
            bridge=network.bridge,
            host_veth=veth,
            address=address,
            subnet=network.subnet,
            gateway=network.gateway,
            mac=self.request.mac,
            mtu=network.mtu or netlink.default_route_mtu(host),
            default_route=not network.internal,
            address6=network.address6_for(address),
            prefixlen6=network.subnet6.prefixlen if network.subnet6 else None,
            gateway6=network.gateway6,
        )
        self.address6 = plan.address6
        assert self.netns_fd is not None  # noqa: S101  # set by _open_netns
        netlink.create_veth(host, plan, self.netns_fd)
        self._step(f"deleting veth {veth}", netlink.delete_link, host, veth)
        netlink.attach_veth(host, plan, bridge_index)
        netlink.configure_sandbox(inner, plan)
        if self.request.publish:
            self._publish(network, plan.address)

    def _publish(self, network: NetworkSpec, address: ipaddress.IPv4Address) -> None:
        from nsrun.firewall import host as firewall
        from nsrun.firewall.rules import PortRules
        from nsrun.net import netlink

        firewall.publish_ports(network.firewall, PortRules(self.sandbox_id, address, self.request.publish))
        self._step("removing published ports", firewall.unpublish_ports, self.sandbox_id)
        for mapping in self.request.publish:
            if mapping.proto == "udp":
                netlink.flush_udp_conntrack(mapping.host_port)

    def _check_address(self, network: NetworkSpec) -> None:
        if self.request.publish and network.internal:
            raise UsageError(
                f"-p on network {network.name!r}", "it is internal: nothing outside may reach it", "use another network"
            )
        requested = self.request.ip
        if requested is not None and not network.pool.is_assignable(requested):
            raise UsageError(
                f"invalid --ip {requested}",
                f"network {network.name!r} assigns hosts of {network.subnet} except the gateway {network.gateway}",
                "pick another address, or leave --ip out",
            )

    def _lease_factory(self, veth: str) -> Callable[[ipaddress.IPv4Address], Lease]:
        from nsrun.ipam.leases import Lease
        from nsrun.process import liveness, namespaces

        assert self.netns_fd is not None  # noqa: S101  # the namespace is opened first
        pid = os.getpid()
        started = liveness.start_time(pid)
        inode = namespaces.netns_inode(f"/proc/self/fd/{self.netns_fd}")

        def make(address: ipaddress.IPv4Address) -> Lease:
            return Lease(
                address=str(address),
                sandbox_id=self.sandbox_id,
                pid=pid,
                start_time=started,
                veth=veth,
                netns_inode=inode,
                name=self.name,
                command=self.request.argv,
                created=time.time(),
            )

        return make


def _open_namespace(record: SandboxRecord, kind: str) -> int:
    from nsrun.errors import NsrunError

    if record.child_pid is None:
        raise NsrunError(f"entering sandbox {record.name!r}", "its command has not started yet", "retry in a moment")
    try:
        return os.open(f"/proc/{record.child_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise NsrunError(f"entering sandbox {record.name!r}", err.strerror or str(err), "is it still running?") from err


def exec_in(  # one keyword per CLI option
    name: str,
    argv: Sequence[str],
    *,
    dirs: StateDirs | None = None,
    user: str | None = None,
    env: Sequence[str] = (),
    workdir: str | None = None,
) -> int:
    """Run a command inside a running sandbox's network, mount and UTS namespaces; its status."""
    from nsrun.process import namespaces
    from nsrun.process.child import ChildPlan
    from nsrun.process.supervisor import Supervisor

    request = SandboxRequest.parse(argv, net="host", user=user, env=env, workdir=workdir)
    record = _registry(dirs or StateDirs()).find(name, _record_is_stale)
    kinds = (("net", namespaces.CLONE_NEWNET), ("uts", namespaces.CLONE_NEWUTS), ("mnt", namespaces.CLONE_NEWNS))
    fds: list[tuple[int, int]] = []
    try:
        for kind, nstype in kinds:
            fds.append((_open_namespace(record, kind), nstype))
        plan = ChildPlan(
            parent_pid=os.getpid(),
            join_fds=tuple(fds),
            credentials=request.credentials,
            workdir=request.workdir,
        )
        supervisor = Supervisor()
        with supervisor.handling_signals():
            try:
                supervisor.spawn(request.argv, plan, env=request.environment())
                return supervisor.wait()
            finally:
                supervisor.reap_leftovers()
    finally:
        for fd, _ in fds:
            os.close(fd)


def _registry(dirs: StateDirs) -> Registry:
    from nsrun.registry import Registry

    return Registry(dirs.sandboxes, on_stale=_reclaim_record)


def _reclaim_record(record: SandboxRecord) -> None:
    """A sandbox whose nsrun died: its port rules go before a new sandbox could collide with them."""
    if record.ports:
        from nsrun.firewall import host as firewall

        firewall.unpublish_ports(record.sandbox_id)


def _record_is_stale(record: SandboxRecord) -> bool:
    from nsrun.process import liveness

    return not liveness.holder_alive(record.pid, record.start_time)


def live_sandboxes(dirs: StateDirs | None = None) -> list[SandboxRecord]:

    return _registry(dirs or StateDirs()).live(_record_is_stale)
