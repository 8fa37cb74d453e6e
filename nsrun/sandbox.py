"""The sandbox library: set up a network namespace for one command, run it, tear everything down.

The CLI calls this in-process; test suites and a future warm helper call the same API:

    request = SandboxRequest.parse(["server"], net="bridge", network="lab")
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
from typing import TYPE_CHECKING, Any, Self

from nsrun.errors import TeardownError, UsageError
from nsrun.paths import StateDirs
from nsrun.validate import parse_address, parse_mac, validate_name

if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from nsrun.ipam.leases import Lease
    from nsrun.networks.spec import NetworkSpec
    from nsrun.process.supervisor import Supervisor

__all__ = ["NetMode", "Sandbox", "SandboxRequest"]


class NetMode(StrEnum):
    BRIDGE = "bridge"
    NONE = "none"
    HOST = "host"


@dataclass(frozen=True)
class SandboxRequest:
    argv: tuple[str, ...]
    net: NetMode = NetMode.BRIDGE
    network: str = "nsrun"
    ip: ipaddress.IPv4Address | None = None
    mac: str | None = None

    @classmethod
    def parse(
        cls,
        argv: Sequence[str],
        *,
        net: str = "bridge",
        network: str = "nsrun",
        ip: str | None = None,
        mac: str | None = None,
    ) -> SandboxRequest:
        """Check every option before anything is touched; raises UsageError."""
        if not argv:
            raise UsageError("no command given", "nsrun runs a command", "usage: nsrun [OPTIONS] [--] CMD [ARGS...]")
        try:
            mode = NetMode(net)
        except ValueError:
            choices = ", ".join(m.value for m in NetMode)
            raise UsageError(f"invalid --net {net!r}", f"choose one of: {choices}") from None
        validate_name(network)
        address = parse_address(ip) if ip is not None else None
        hwaddr = parse_mac(mac) if mac is not None else None
        if mode is not NetMode.BRIDGE and (address or hwaddr):
            raise UsageError(f"--ip and --mac with --net {mode.value}", "they need a bridge", "use --net bridge")
        return cls(tuple(argv), mode, network, address, hwaddr)


@dataclass
class Sandbox:
    request: SandboxRequest
    dirs: StateDirs = field(default_factory=StateDirs)
    sandbox_id: str = field(default_factory=lambda: secrets.token_hex(6))
    netns_fd: int | None = field(default=None, init=False)
    network: NetworkSpec | None = field(default=None, init=False)
    lease: Lease | None = field(default=None, init=False)
    supervisor: Supervisor | None = field(default=None, init=False)
    _undo: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False)
    _failures: list[str] = field(default_factory=list, init=False)

    # -- lifecycle -----------------------------------------------------------------------------

    def setup(self) -> None:
        with contextlib.ExitStack() as stack:
            self._undo = stack
            if self.request.net is NetMode.NONE:
                self._setup_isolated()
            elif self.request.net is NetMode.BRIDGE:
                self._setup_bridged()
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
            supervisor.spawn(self.request.argv, netns_fd=self.netns_fd)
            return supervisor.wait()
        finally:
            supervisor.reap_leftovers()

    # -- steps ---------------------------------------------------------------------------------

    def _step(self, description: str, undo: Callable[..., Any], *args: Any) -> None:
        """Register an undo that records its failure instead of stopping the others."""

        def guarded() -> None:
            try:
                undo(*args)
            except Exception as err:  # noqa: BLE001  # every undo must run; failures are reported together
                self._failures.append(f"{description}: {err}")

        self._undo.callback(guarded)

    def _open_netns(self) -> Any:
        from nsrun.net import netlink  # pyroute2 is slow to import; --net host never needs it

        fd, inner = netlink.open_in_new_netns()
        self.netns_fd = fd
        self._step("closing the sandbox namespace", os.close, fd)
        self._step("closing the sandbox netlink socket", inner.close)
        netlink.loopback_up(inner)
        return inner

    def _setup_isolated(self) -> None:
        self._open_netns()

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
        requested = self.request.ip
        inner = self._open_netns()
        veth = host_veth_name(self.sandbox_id)
        store = LeaseStore(self.dirs.leases(network.name))
        with store.locked():
            manager.ensure_loaded(self.dirs, network)
            manager.sweep_stale_leases(host, store)
            lease = allocate(network.name, network.pool, store, self._lease_factory(veth), requested)
            self.lease = lease
            self._step(f"releasing address {lease.address}", store.release, lease)
            bridge_index, network = manager.ensure_host_side(self.dirs, host, network)
            self.network = network
        plan = AttachPlan(
            bridge=network.bridge,
            host_veth=veth,
            address=parse_address(lease.address),
            subnet=network.subnet,
            gateway=network.gateway,
            mac=self.request.mac,
        )
        assert self.netns_fd is not None  # noqa: S101  # set by _open_netns
        netlink.create_veth(host, plan, self.netns_fd)
        self._step(f"deleting veth {veth}", netlink.delete_link, host, veth)
        netlink.attach_veth(host, plan, bridge_index)
        netlink.configure_sandbox(inner, plan)

    def _check_address(self, network: NetworkSpec) -> None:
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
                command=self.request.argv,
                created=time.time(),
            )

        return make
