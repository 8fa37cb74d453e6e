"""One sandbox, orchestrated: set up the host side, start the shim, tear everything down.

    sandbox = Sandbox(SandboxRequest.parse(["server"], name="web"))
    sandbox.setup()                 # record, namespace, address, veth, rules, /etc files, plan
    try:
        outcome = sandbox.run()     # the shim, in this (dedicated) process
    finally:
        sandbox.teardown()          # every undo, newest first; failures collected, not fatal

Setup validates everything first, then acts, registering each undo right after its step (and
checking `checkpoint` there, so an interruption always leaves a consistent state to undo);
teardown runs every undo, treats "already gone" as done and collects failures instead of stopping.
The shim (this process, or a subprocess the caller starts) is the holder named in the record and
the lease: if it dies, they are stale and the next nsrun reclaims them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import ConflictError, NsrunError, TeardownError, UsageError
from nsrun.launch.records import is_stale, registry
from nsrun.launch.request import JOIN_PREFIX, Attachment, NetMode, SandboxRequest
from nsrun.launch.view import plan_process
from nsrun.state import files
from nsrun.state.paths import StateDirs
from nsrun.validate import parse_address, parse_publish

if TYPE_CHECKING:
    import ipaddress
    import socket
    from collections.abc import Callable

    from nsrun.firewall.rules import PortMapping
    from nsrun.ipam.leases import Lease
    from nsrun.net.plan import AttachPlan
    from nsrun.networks.spec import NetworkSpec
    from nsrun.process.plan import ProcessPlan
    from nsrun.process.shim import Outcome, ShimFds, Started
    from nsrun.state.registry import Registry, SandboxRecord

__all__ = ["Holder", "Sandbox", "open_sandbox_netns"]

ETC_NETNS: Final = Path("/etc/netns")  # per-namespace /etc overrides, as `ip netns exec` applies them


def open_sandbox_netns() -> tuple[int, Any]:
    """A sandbox's network namespace as set-up makes it (its sysctls set, lo up): an fd holding
    it and a netlink handle inside. Nothing outside it changes, and it goes with its last holder."""
    from nsrun.net import netlink, sysctl  # pyroute2 is slow to import; --net host never needs it

    fd, inner = netlink.open_in_new_netns(inside=sysctl.prepare_sandbox_netns)
    try:
        netlink.loopback_up(inner)
    except BaseException:
        inner.close()
        os.close(fd)
        raise
    return fd, inner


@dataclass(frozen=True)
class Holder:
    """The process whose death makes the sandbox's record and lease stale: its shim."""

    pid: int
    start_time: float
    pidns: int  # the PID namespace its pid belongs to

    @classmethod
    def of(cls, pid: int) -> Holder:
        from nsrun.process import liveness

        return cls(pid, liveness.start_time(pid), liveness.pid_namespace())

    @classmethod
    def of_child(cls, pid: int, before: int, after: int) -> Holder:
        """A child this thread forked between the `liveness.boot_clock()` readings `before` and
        `after` (without waiting for its exec to be over, as reading its /proc entry would)."""
        from nsrun.process import liveness

        return cls(pid, liveness.start_time_of_child(pid, before, after), liveness.pid_namespace())


@dataclass
class Sandbox:
    request: SandboxRequest
    dirs: StateDirs = field(default_factory=StateDirs)
    holder: Holder = field(default_factory=lambda: Holder.of(os.getpid()))
    sandbox_id: str = field(default_factory=lambda: secrets.token_hex(6))
    checkpoint: Callable[[], None] | None = None  # raises to abort set-up (an interrupt)
    # reclaim what dead sandboxes left (records, leases) on the way; False: the caller does it
    # later, off the launch's path (the warm helper), and a launch costs the same however many run
    sweep: bool = True
    # a container engine's namespace to attach (CNI ADD) instead of one of nsrun's own
    attachment: Attachment | None = None
    # a namespace made ahead by `open_sandbox_netns` (a warm helper's spare worker makes one while
    # it waits): set-up takes it instead of making one; the sandbox owns it either way
    ready_netns: tuple[int, Any] | None = None
    # an early hand-over: called once the process plan is made (and the namespace and published
    # ports are held), before the bridge, firewall and veth are; the command must not run before
    # set-up has returned
    on_planned: Callable[[], None] | None = None
    netns_fd: int | None = field(default=None, init=False)
    network: NetworkSpec | None = field(default=None, init=False)
    lease: Lease | None = field(default=None, init=False)
    record: SandboxRecord | None = field(default=None, init=False)
    address6: ipaddress.IPv6Address | None = field(default=None, init=False)
    mac: str | None = field(default=None, init=False)
    publish: tuple[PortMapping, ...] = field(default=(), init=False)  # host ports as reserved
    hosts: Path | None = field(default=None, init=False)  # the network's shared hosts file
    not_ready: bool = field(default=False, init=False)  # stopped because `ready` never held
    rollback_failures: list[str] = field(default_factory=list, init=False)
    plan: ProcessPlan | None = field(default=None, init=False)
    etc_binds: tuple[tuple[str, str], ...] = field(default=(), init=False)  # its /etc files in its view
    warnings: list[str] = field(default_factory=list, init=False)
    held: list[socket.socket] = field(default_factory=list, init=False)  # the published host ports
    # undoes the host side if set-up fails half-way; once it succeeded, the record says what to undo
    _undo: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False)
    # resources of set-up only (netlink sockets), closed when it ends
    _scratch: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False)
    # what the shim needs for the sandbox's life (its namespace, the held ports), closed by close()
    _kept: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False)
    _failures: list[str] = field(default_factory=list, init=False)

    @property
    def name(self) -> str:
        return self.request.name or self.sandbox_id

    @property
    def hostname(self) -> str:
        return self.request.hostname or self.name

    @property
    def address(self) -> str | None:
        return self.lease.address if self.lease else None

    # -- lifecycle -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Everything before the command runs; on failure everything done is undone, and what
        could not be undone is in `rollback_failures`."""
        from nsrun.process.mounts import root_is_mount_point

        if not root_is_mount_point():
            raise NsrunError(
                "starting a sandbox",
                "/ is not a mount point (inside a chroot?): the sandbox's mounts could not be kept from the host",
                "run nsrun outside the chroot, or make its root a mount point first: mount --bind DIR DIR; chroot DIR",
            )
        self._failures = []
        try:
            self._setup()
        except BaseException:
            self.record = None  # rolled back: nothing of it is left for a teardown
            raise
        finally:
            self.rollback_failures = list(self._failures)
            self._drop_ready_netns()  # taken by now, or not wanted (--net host, a joined namespace)

    def _setup(self) -> None:
        # the undo runs first, while set-up's sockets are still open (it deletes the veth with them)
        with contextlib.ExitStack() as scratch, contextlib.ExitStack() as undo:
            self._undo, self._scratch = undo, scratch
            undo.callback(self._kept.close)  # a failed set-up closes what it kept too
            self._register()
            if self.attachment is not None:
                self._setup_bridged()
                self._note_addresses()
                undo.pop_all()
                return
            if self.request.net is NetMode.NONE:
                # its socket inside is not needed: closed now, it stops holding the namespace
                # sooner (an RCU grace period after the close: see _make_veth)
                self._open_netns().close()
            elif self.request.net is NetMode.BRIDGE:
                self._setup_bridged()
            elif self.request.net is NetMode.SANDBOX:
                self._join_netns()
            if self.plan is None:
                self._plan()
            self._note_addresses()
            undo.pop_all()  # from here on the record says what to undo

    def _plan(self) -> None:
        """The sandbox's /etc files and its process plan: all its command's side needs."""
        self.etc_binds = tuple(self._write_etc_files())
        self.plan = plan_process(self.request, self.hostname, self.etc_binds)
        if self.on_planned is not None:
            self.on_planned()

    def _note_addresses(self) -> None:
        """The record holds the sandbox's addresses and MAC before its command runs: its teardown,
        whoever does it, releases them even if the command never started."""
        if self.record is None or not (self.lease or self.mac):
            return
        addresses: tuple[str, ...] = (self.lease.address,) if self.lease else ()
        if self.address6 is not None:
            addresses += (str(self.address6),)
        self.record = replace(self.record, addresses=addresses, mac=self.mac or "")
        self._registry().update(self.record)

    def shim_fds(self) -> ShimFds:
        from nsrun.process.shim import ShimFds

        return ShimFds(netns=self.netns_fd)

    def handoff_fds(self) -> list[int]:
        """What a shim in another process must hold for the sandbox's life: its network namespace
        (first, if it has one) and the published host ports' sockets."""
        return ([self.netns_fd] if self.netns_fd is not None else []) + [sock.fileno() for sock in self.held]

    def close(self) -> None:
        """Close this process's copies of what the sandbox kept (once a shim holds its own)."""
        self._kept.close()
        self._drop_ready_netns()

    def _drop_ready_netns(self) -> None:
        ready, self.ready_netns = self.ready_netns, None
        if ready is not None:
            ready[1].close()
            os.close(ready[0])

    def run(
        self,
        *,
        ready: Callable[[int], bool] | None = None,
        ready_timeout: float = 0.0,
        on_ready: Callable[[], None] | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> Outcome:
        """The shim, in this process: call only from a process dedicated to this sandbox.
        `ready` (given the init's pid) is polled from the command's start for `ready_timeout`
        seconds; not ready by then, the sandbox is stopped and `not_ready` set."""
        from nsrun.process.shim import Shim

        if self.plan is None:
            raise RuntimeError("run() before setup()")

        def started(info: Started) -> None:
            self.started(info)
            if on_started is not None:
                on_started()

        shim = Shim(
            self.plan,
            self.shim_fds(),
            on_started=started,
            ready=ready,
            ready_timeout=ready_timeout,
            on_ready=on_ready,
        )
        # the pinned namespaces close after the teardown: whatever joined the sandbox is ended while they hold
        self._kept.callback(shim.close)
        outcome = shim.run()
        self.not_ready = shim.not_ready
        return outcome

    def started(self, started: Started) -> None:
        """The command runs: record where its namespaces are pinned and give its netns its name."""
        if self.record is None:
            raise RuntimeError("started() before setup()")
        from nsrun.launch.records import note_started

        self.record = note_started(self.dirs, self.record, started)

    def assign(self, request: SandboxRequest) -> None:
        """Give a sandbox set up ahead (a pool's spare, its shim not started yet) the command and
        process options of `request`: its plan and its record follow them (`save_record` writes
        the record, which until then still says "(pool spare)"). Its network was made
        for the request it was set up with, so `request` must ask for nothing of the network's
        (UsageError): no other network, name, hostname, address, MAC, published port or DNS."""
        if self.record is None or self.plan is None:
            raise RuntimeError("assign() before setup()")
        ours = self.request
        if (request.net, request.network, request.dns) != (ours.net, ours.network, ours.dns) or any(
            (request.name, request.hostname, request.ip, request.mac, request.publish)
        ):
            raise UsageError(
                "starting a pooled sandbox",
                f"it was set up ahead on --net {ours.net.value} (network {ours.network!r}); the request asks for"
                " another network, or a name, hostname, address, MAC, DNS server or published port of its own",
                "give the network's options to the pool, or start the sandbox without one",
            )
        self.request = request
        self.plan = plan_process(request, self.hostname, self.etc_binds)
        self.record = replace(_with_process(self.record, request), command=request.argv, created=time.time())

    def save_record(self) -> None:
        """Write the record as it stands (after `assign`: while the shim starts the command)."""
        if self.record is None:
            raise RuntimeError("save_record() before setup()")
        self._registry().update(self.record)

    def teardown(self, release: Callable[[], None] | None = None) -> None:
        """Undo what the sandbox's record says was made; raise TeardownError listing what failed
        (every step still ran). Half-way, once what joined the sandbox is ended, the descriptors
        go: this process's copies, and through `release` the shim's, if it is another process."""
        from nsrun.launch.teardown import teardown_sandbox

        def close_all() -> None:
            if release is not None:
                release()
            self.close()

        failures = teardown_sandbox(self.dirs, self.record, pinned=True, release=close_all) if self.record else []
        self.record = None
        self.close()
        if failures:
            raise TeardownError(failures)

    # -- steps ---------------------------------------------------------------------------------

    def _step(self, description: str, undo: Callable[..., Any], *args: Any) -> None:
        """Register an undo that records its failure instead of stopping the others; then let an
        interrupt through, now that what was just done will be undone."""

        def guarded() -> None:
            try:
                undo(*args)
            except Exception as err:  # noqa: BLE001  # every undo must run; failures are reported together
                self._failures.append(f"{description}: {err}")

        self._undo.callback(guarded)
        if self.checkpoint is not None:
            self.checkpoint()

    def _registry(self) -> Registry:
        return registry(self.dirs)

    def _register(self) -> None:
        from nsrun.state.registry import SandboxRecord

        request = self.request
        attachment = self.attachment or Attachment("", "", "")
        record = SandboxRecord(
            sandbox_id=self.sandbox_id,
            name=self.name,
            pid=self.holder.pid,
            start_time=self.holder.start_time,
            pidns=self.holder.pidns,
            network=self._network_label(),
            command=request.argv,
            created=time.time(),
            netns_name=request.name if request.name and request.owns_netns else None,
            ports=tuple(mapping.spec() for mapping in request.publish),
            hostname=self.hostname,
            container_id=attachment.container_id,
            ifname=attachment.ifname,
        )
        record = _with_process(record, request)
        reg = self._registry()
        held: list[socket.socket] = []

        def reserve(live: list[SandboxRecord]) -> SandboxRecord:
            sockets, self.publish = self._reserve_ports(live)
            held.extend(sockets)
            return replace(record, ports=tuple(mapping.spec() for mapping in self.publish))

        try:
            self.record = reg.register(
                record, is_stale, check=reserve if self.request.publish else None, sweep=self.sweep
            )
        except BaseException:
            for sock in held:
                sock.close()
            raise
        record = self.record
        self._step("removing the sandbox's record", reg.remove, record)
        self.held = held
        for sock in held:  # held for the sandbox's whole life
            self._kept.callback(sock.close)

    def _network_label(self) -> str:
        if self.request.net is NetMode.BRIDGE:
            return self.request.network
        if self.request.net is NetMode.SANDBOX:
            return f"{JOIN_PREFIX}{self.request.join}"
        return self.request.net.value

    def _reserve_ports(self, live: list[SandboxRecord]) -> tuple[list[socket.socket], tuple[PortMapping, ...]]:
        """Under the registry's lock: no live sandbox publishes these host ports, and no host
        process holds them; each is then held by a socket until teardown. Returns the sockets and
        the mappings with their host ports (those chosen for port 0 included)."""
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
        resolved: list[PortMapping] = []
        try:
            for mapping in self.request.publish:
                sock, chosen = reserve_host_port(mapping)
                held.append(sock)
                resolved.append(chosen)
        except BaseException:
            for sock in held:
                sock.close()
            raise
        return held, tuple(resolved)

    def _write_etc_files(self) -> list[tuple[str, str]]:
        """The sandbox's hosts, hostname and resolv.conf; returns (source, /etc target) binds."""
        from nsrun import etc

        own_net = self.request.net is not NetMode.HOST
        directory = self._registry().files(self.sandbox_id)
        files.ensure_dir(directory, root=self.dirs.run)
        resolv = etc.plan_resolv(etc.read_host_resolv(), self.request.dns)
        if resolv.warning and own_net:
            self.warnings.append(resolv.warning)
        hosts = etc.hosts_file(self.hostname, self.lease.address if self.lease else None)
        for filename, text in (("resolv.conf", resolv.text), ("hosts", hosts), ("hostname", self.hostname + "\n")):
            files.write_file(directory / filename, text, files.PUBLIC_FILE_MODE)
        # a bridge sandbox sees its network's shared hosts file: it resolves its neighbours' names
        binds = [(str(self.hosts or directory / "hosts"), "/etc/hosts")]
        if Path("/etc/hostname").exists():
            binds.append((str(directory / "hostname"), "/etc/hostname"))
        if own_net or self.request.dns:
            binds.append((str(directory / "resolv.conf"), "/etc/resolv.conf"))
        overrides = ETC_NETNS / self.name
        if self.request.name and overrides.is_dir():
            for path in sorted(overrides.iterdir()):
                if path.is_file() and not (path.name == "resolv.conf" and self.request.dns):
                    binds = [b for b in binds if b[1] != f"/etc/{path.name}"] + [(str(path), f"/etc/{path.name}")]
        return [(src, dst) for src, dst in binds if Path(dst).exists()]

    def _join_netns(self) -> None:
        from nsrun.launch.joining import open_pinned

        if self.request.join is None:
            raise UsageError("--net sandbox:", "no sandbox name given", "e.g. --net sandbox:web")
        target = self._registry().find(self.request.join, is_stale)
        fd = open_pinned(target, "net")
        self.netns_fd = fd
        self._kept.callback(os.close, fd)

    def _open_netns(self) -> Any:
        ready, self.ready_netns = self.ready_netns, None
        fd, inner = ready if ready is not None else open_sandbox_netns()
        self.netns_fd = fd
        self._kept.callback(os.close, fd)
        self._scratch.callback(inner.close)
        return inner

    def _open_attached_netns(self) -> Any:
        from nsrun.net import netlink

        if self.attachment is None:
            raise RuntimeError("no namespace to attach")
        fd, inner = netlink.open_in_netns(self.attachment.netns, "the container's network namespace")
        self.netns_fd = fd
        self._kept.callback(os.close, fd)
        self._scratch.callback(inner.close)
        return inner

    def _setup_bridged(self) -> None:
        from nsrun.ipam.leases import LeaseStore
        from nsrun.net import netlink
        from nsrun.net.plan import host_veth_name
        from nsrun.networks import manager

        host = netlink.Rtnl()
        self._scratch.callback(host.close)
        network = manager.load_network(self.dirs, host, self.request.network, check=self._check_address)
        self.network = network
        inner = self._open_attached_netns() if self.attachment else self._open_netns()
        veth = host_veth_name(self.sandbox_id)
        store = LeaseStore(self.dirs.leases(network.name), root=self.dirs.run)
        with store.locked():
            manager.ensure_loaded(self.dirs, network, store)
            if self.sweep:
                manager.sweep_stale_leases(host, store)
            lease = self._allocate(host, network, store, veth)
            self.lease = lease
            self._undo.callback(self._release, store, lease, network)
            # every sandbox of the network resolves this one's name from now on
            self.hosts = manager.add_host_entries(self.dirs, network, store, lease)
            if self.attachment is None:
                self._plan()  # as early as it can be made: an early hand-over then overlaps the rest
            plan = self._attach_plan(host, network, lease, veth)
            self._make_veth(host, inner, plan)
            host_side = manager.ensure_host_side(self.dirs, host, network, store, launching=veth)
            bridge_index, network = host_side.bridge_index, host_side.spec
            self.network = network
        if host_side.repaired:
            from nsrun.launch.records import repair_sandbox_rules

            # after a flush or a firewall reload, the running sandboxes' own rules are gone too
            repair_sandbox_rules(self.dirs, network, skip=self.sandbox_id)
        if self.checkpoint is not None:
            self.checkpoint()
        self._guard_port(network, plan)  # before the port joins the bridge: from its first packet on
        netlink.attach_port(host, plan, bridge_index)
        if self.request.publish:
            self._publish(network, plan.address)

    def _attach_plan(self, host: Any, network: NetworkSpec, lease: Lease, veth: str) -> AttachPlan:
        from nsrun.net import netlink
        from nsrun.net.plan import SANDBOX_IFNAME, AttachPlan, sandbox_mac

        address = parse_address(lease.address)
        plan = AttachPlan(
            bridge=network.bridge,
            host_veth=veth,
            address=address,
            subnet=network.subnet,
            gateway=network.gateway,
            mac=self.request.mac or sandbox_mac(os.urandom(6)),
            sandbox_ifname=self.attachment.ifname if self.attachment else SANDBOX_IFNAME,
            mtu=network.mtu or netlink.default_route_mtu(host),
            default_route=not network.internal,
            address6=network.address6_for(address),
            prefixlen6=network.subnet6.prefixlen if network.subnet6 else None,
            gateway6=network.gateway6,
        )
        self.address6 = plan.address6
        return plan

    def _make_veth(self, host: Any, inner: Any, plan: AttachPlan) -> None:
        """The veth pair, its sandbox end up with its address and routes, its host end down and
        out of the bridge (it joins once its filter is in place); then the netlink socket inside
        the sandbox's namespace is closed. As early as set-up can: a socket holds its namespace
        until an RCU grace period after its close (measured with ip(8) alone: a namespace
        deleted just after `ip -n NS link show` takes its veth 15-19 ms later, 3 ms otherwise),
        and a short command's teardown waits for the veth to go with the namespace."""
        from nsrun.net import netlink

        if self.netns_fd is None:
            raise RuntimeError("the sandbox's namespace is opened first")
        index = netlink.create_veth(host, plan, self.netns_fd)
        self._step(f"deleting veth {plan.host_veth}", netlink.delete_link, host, plan.host_veth)
        netlink.configure_sandbox(inner, plan, index)
        inner.close()

    def _firewall_lock(self) -> contextlib.AbstractContextManager[None]:
        from nsrun.networks.manager import firewall_lock

        return firewall_lock(self.dirs)

    def _allocate(self, host: Any, network: NetworkSpec, store: Any, veth: str) -> Lease:
        """An address for the sandbox; without the sweep on the way, what dead sandboxes hold is
        reclaimed only when no address (or not the one asked for) is free."""
        from nsrun.ipam.allocator import allocate
        from nsrun.networks import manager

        def attempt() -> Lease:
            in_use = manager.unleased_addresses(network, store)
            return allocate(network.name, network.pool, store, self._lease_factory(veth), self.request.ip, in_use)

        try:
            return attempt()
        except ConflictError:
            if self.sweep or not manager.sweep_stale_leases(host, store):
                raise
            return attempt()

    def _guard_port(self, network: NetworkSpec, plan: AttachPlan) -> None:
        """Before the port joins the bridge: it may only send as the sandbox's own MAC and addresses."""
        from nsrun.firewall import host as firewall
        from nsrun.firewall.portguard import PortGuard
        from nsrun.networks.manager import firewall_memo

        mac = self.mac = plan.mac
        memo = firewall_memo(self.dirs)
        remove = functools.partial(firewall.remove_sandbox_rules, memo=memo)
        self._step("removing the sandbox's own rules", remove, self.sandbox_id)
        guard = PortGuard(self.sandbox_id, plan.host_veth, mac, plan.address, plan.address6)
        if not firewall.guard_port(network.firewall, guard, self._firewall_lock, memo) and network.firewall != "none":
            self.warnings.append(
                "nf_tables is not available: what the sandbox sends into its bridge is not filtered"
                " (its MAC and addresses are not enforced)"
            )

    def _release(self, store: Any, lease: Lease, network: NetworkSpec) -> None:
        """The lease goes under its network's lock, as every change of the leases does; so does
        the sandbox's name from the network's hosts file."""
        from nsrun.networks import manager

        try:
            with store.locked():
                store.release(lease)
                manager.remove_host_entries(self.dirs, network, lease)
        except Exception as err:  # noqa: BLE001  # reported with the other teardown failures
            self._failures.append(f"releasing address {lease.address}: {err}")

    def _publish(self, network: NetworkSpec, address: ipaddress.IPv4Address) -> None:
        from nsrun.firewall import host as firewall
        from nsrun.firewall.rules import PortRules
        from nsrun.net import netlink
        from nsrun.networks.manager import firewall_memo

        # removed with the sandbox's other rules (the undo registered with its bridge-port filter)
        firewall.publish_ports(
            network.firewall, PortRules(self.sandbox_id, address, self.publish), memo=firewall_memo(self.dirs)
        )
        for mapping in self.publish:
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
        from nsrun.process import namespaces

        if self.netns_fd is None:
            raise RuntimeError("the sandbox's namespace is opened first")
        inode = namespaces.netns_inode(f"/proc/self/fd/{self.netns_fd}")

        def make(address: ipaddress.IPv4Address) -> Lease:
            return Lease(
                address=str(address),
                sandbox_id=self.sandbox_id,
                pid=self.holder.pid,
                start_time=self.holder.start_time,
                pidns=self.holder.pidns,
                veth=veth,
                netns_inode=inode,
                name=self.name,
                command=self.request.argv,
                created=time.time(),
                hostname=self.hostname,
                container_id=self.attachment.container_id if self.attachment else "",
            )

        return make


def _with_process(record: SandboxRecord, request: SandboxRequest) -> SandboxRecord:
    """The record with what `nsrun exec` gives whatever joins the sandbox: the command's user,
    environment, working directory and confinement."""
    from nsrun.confine.capabilities import resolve_caps
    from nsrun.launch.identity import command_environment

    identity = request.user.identity
    return replace(
        record,
        uid=identity.uid,
        gid=identity.gid,
        groups=identity.groups,
        env=tuple(command_environment(dict(request.environ), request.user, request.env).items()),
        caps=resolve_caps(request.cap_add, request.cap_drop, privileged=request.privileged),
        no_new_privs=request.no_new_privs,
        seccomp=request.seccomp,
        privileged=request.privileged,
        cwd=request.cwd,
    )
