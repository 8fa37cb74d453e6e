"""One request, in a worker the helper forks for it: the client's stdio, environment, working
directory and umask become the worker's, and the ordinary command line runs. A launch is set up
here with the client as the sandbox's holder, then handed over (plan and descriptors); the worker
ends and the helper keeps watching the client's connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Final, NoReturn

from nsrun.helper.protocol import Channel
from nsrun.process import wire

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from nsrun.launch.request import SandboxRequest
    from nsrun.state.paths import StateDirs

__all__ = ["HANDED_OVER", "handle_cni", "handle_request", "prepare", "record_started", "rehearse", "teardown"]

HANDED_OVER: Final = 3  # the worker's exit status when the client now runs a sandbox
_RECLAIM_QUEUED: Final = "reclaim.queued.lock"  # held by the one reclaim waiting to start
_MAX_FD: Final = 1 << 16
_TEARDOWN_FAILED: Final = 4
_STDIO: Final = (0, 1, 2)


_DYING_CLIENT_WAIT: Final = 2.0  # seconds
_DYING_CLIENT_POLL: Final = 0.002


# this spare's network namespace made ahead (`prepare`), for its job if that is a launch that needs one
_ready_netns: list[tuple[int, Any]] = []


class _Handover(BaseException):  # not an error: how a launch leaves the command line (past its handlers)
    pass


class _Launcher:
    """Stands in for the command line's own launch: sets up here, hands over to the client."""

    def __init__(self, channel: Channel, client_pid: int, *, detached: bool) -> None:
        self.channel = channel
        self.client_pid = client_pid
        self.detached = detached

    def checkpoint(self) -> None:
        """Set-up asks between its steps: the client sends {"abort": N} when it got signal N."""
        from nsrun.cli.entry import Interrupted

        try:
            data = self.channel.sock.recv(4096, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except BlockingIOError:
            return
        if not data:
            raise Interrupted(9)  # the client is gone
        message, _ = self.channel.receive()
        if message and "abort" in message:
            raise Interrupted(int(message["abort"]))

    def __call__(self, request: SandboxRequest, readiness: tuple[int, float] | None, detach: bool) -> int:
        from nsrun.cli.entry import Interrupted
        from nsrun.launch.sandbox import Holder, Sandbox
        from nsrun.state.logbook import LogBook, LogEntry

        if detach and not self.detached:
            # the sandbox's shim must be a process of its own: the client forks, its child asks again
            self.channel.send({"detach": True})
            raise _Handover

        # what dead sandboxes left is reclaimed after the hand-over (_reclaim_later), not on the way
        try:
            holder = Holder.of(self.client_pid)
        except ProcessLookupError:
            raise Interrupted(signal.SIGKILL) from None  # the client died meanwhile: nothing to set up
        sandbox = Sandbox(
            request,
            holder=holder,
            checkpoint=self.checkpoint,
            sweep=False,
            ready_netns=_ready_netns.pop() if _ready_netns else None,
        )
        logbook = LogBook(sandbox.dirs)
        entry = None
        if self.detached or request.name is not None:
            entry = LogEntry(sandbox.sandbox_id, sandbox.name, request.argv, time.time(), logged=self.detached)
        log_fd = logbook.open_log(sandbox.sandbox_id) if self.detached else None
        # an attached launch is handed over early: the client builds the sandbox's view and readies
        # its command while the network is set up here (a detached one reports to its caller first)
        gate = os.pipe2(os.O_CLOEXEC) if not self.detached else None
        if gate is not None:
            sandbox.on_planned = lambda: self._hand_over(sandbox, readiness, log_fd, logbook, entry, gate[0])
        try:
            sandbox.setup()
            if entry is not None:
                logbook.record(entry)
        except (Interrupted, Exception):
            if log_fd is not None:
                os.close(log_fd)
                logbook.remove(sandbox.sandbox_id)
            raise  # the gate closes with this process: the command never runs
        try:
            if gate is not None:
                self._open_gate(sandbox, gate[1])
            else:
                self._hand_over(sandbox, readiness, log_fd, logbook, entry, None)
        except OSError:
            self._abandon(sandbox, logbook, entry)
        sandbox.close()
        _reclaim_later(sandbox.dirs, sandbox.network.name if sandbox.network else None)
        raise _Handover

    def _hand_over(
        self,
        sandbox: Any,
        readiness: tuple[int, float] | None,
        log_fd: int | None,
        logbook: Any,
        entry: Any,
        gate: int | None,
    ) -> None:
        """The client becomes the sandbox's shim. With `gate` (a pipe's reading end), set-up goes
        on here: the command, ready to exec, waits for its byte; "exit" instead says the set-up
        failed (and undid itself). OSError: the client is gone."""
        from nsrun.cli.entry import Interrupted

        gated = gate is not None

        plan = sandbox.plan.to_dict() if sandbox.plan is not None else {}
        launch: dict[str, Any] = {
            "id": sandbox.sandbox_id,
            "name": sandbox.name,
            "plan": plan,
            "netns": sandbox.netns_fd is not None,
            "readiness": list(readiness) if readiness else None,
            "log": str(logbook.log_path(sandbox.sandbox_id)) if log_fd is not None else None,
            "entry": entry is not None,
            "warnings": [] if gated else list(sandbox.warnings),  # gated: said by `_open_gate`
            # its teardown ends what joined it by name first (`ip netns exec`), through the pins
            "pinned_for_teardown": bool(sandbox.record and sandbox.record.netns_name),
            "gated": gated,
        }
        # the gate last: the client takes it first
        fds = sandbox.handoff_fds() + [fd for fd in (log_fd, gate) if fd is not None]
        try:
            self.channel.send({"launch": launch}, fds)
        except OSError:
            if gated:
                raise Interrupted(9) from None  # the client is gone: set-up undoes itself
            raise
        if gate is not None:
            os.close(gate)

    def _open_gate(self, sandbox: Any, gate: int) -> None:
        """The set-up is complete: its warnings (on the client's stderr, which is this worker's),
        then the command execs, and the client hears so. OSError: the client is gone."""
        from nsrun.cli.drive import warn

        for warning in sandbox.warnings:
            warn(warning)
        sys.stderr.flush()
        os.write(gate, b"g")
        os.close(gate)
        self.channel.send({"go": {}})

    @staticmethod
    def _abandon(sandbox: Any, logbook: Any, entry: Any) -> NoReturn:
        """The client went away before it got its sandbox: nothing of that stays."""
        from nsrun.errors import NsrunError

        with contextlib.suppress(NsrunError):
            sandbox.teardown()
        if entry is not None:
            with contextlib.suppress(NsrunError):
                logbook.remove(sandbox.sandbox_id)
        os._exit(0)


def _reclaim_later(dirs: StateDirs, network: str | None) -> None:
    """After a hand-over, in a process of its own at the lowest priority (so that it takes no
    time from launches), at most once a second and one at a time: what dead sandboxes left
    (their client and the helper killed together; in-process launches killed) is reclaimed, as
    a launch in-process does on its way. A reclaim always starts after this launch: this one
    queues one, unless one is queued already (it has not started yet, so it will see the same)."""
    from nsrun.state.files import open_private

    queued = open_private(dirs.run / _RECLAIM_QUEUED, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(queued, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(queued)
        return
    if os.fork() != 0:
        os.close(queued)  # the queued place is the child's now (the lock goes with its last fd)
        return
    try:
        # nothing of the launch's: not the client's stdio (a caller reading the command's output
        # until its end would wait for this process too), its namespace or its socket
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.closerange(3, queued)
        os.closerange(queued + 1, _MAX_FD)
        os.nice(19)
        from nsrun.launch.records import RECLAIM_EVERY, RECLAIM_STAMP, reclaim_stale

        fd = open_private(dirs.run / RECLAIM_STAMP, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)  # after the one that runs, if one does
        time.sleep(max(0.0, os.fstat(fd).st_mtime + RECLAIM_EVERY - time.time()))
        os.close(queued)  # started: the next launch queues another
        os.utime(fd)
        reclaim_stale(dirs, network)
    finally:
        os._exit(0)


class _Rehearsed(BaseException):  # how a rehearsed launch stops, before it would set anything up
    pass


def prepare(job_waiting: Callable[[], bool] = lambda: False, *, ready_netns: bool = False) -> None:
    """What a job would pay for on first use, paid while the spare waits for it: the netlink
    sockets' first use, libnftables' context (kept per process), and the pages a job touches.

    A fork shares the helper's memory until either side writes it, and Python writes wherever it
    runs (reference counts): the first pass over a path copies its pages. A launch's command line
    took 5-6 ms to parse in a fresh worker, 0.5 ms in one that had parsed one before (measured).
    So the spare rehearses both kinds of job: it parses a launch's command line up to the set-up,
    plans its process, encodes the netlink requests and the record a set-up makes, and reads what
    a teardown reads; nothing is changed. It does so at idle priority (never taking a CPU from a
    launch) and stops as soon as its job is there. With `ready_netns` (a spare for command lines),
    it then makes a launch's network namespace."""
    from nsrun.errors import NsrunError
    from nsrun.firewall.nftables import open_nftables
    from nsrun.net import netlink

    with contextlib.suppress(NsrunError, OSError), contextlib.closing(netlink.Rtnl()) as rtnl:
        netlink.link_exists(rtnl, "lo")
    with contextlib.suppress(NsrunError, OSError):
        open_nftables()
    netlink.ruleset_generation()  # its socket is kept: opened now, not right after someone's commit
    with _idle_priority():
        for step in _REHEARSAL:
            if job_waiting():
                return
            with contextlib.suppress(Exception):  # a rehearsal that fails costs the job its speed only
                step()
    if ready_netns and not job_waiting():  # the rehearsal, at idle priority, got through: time to spare
        _make_ready_netns()


def _make_ready_netns() -> None:
    """A launch's network namespace, made before its job comes (2-3 ms of its set-up, measured).
    Only once the rehearsal got through at idle priority (nothing else wanted the CPUs), and then at
    normal priority: making one holds kernel locks (the RTNL) that every launch needs, which a
    process at idle priority could keep while others run. Nothing outside it changes; a job that
    does not take it (a teardown, `--net host`) ends, and the namespace with it."""
    from nsrun.errors import NsrunError
    from nsrun.launch.sandbox import open_sandbox_netns

    with contextlib.suppress(NsrunError, OSError):  # the job then makes its own, and says what fails
        _ready_netns.append(open_sandbox_netns())


@contextlib.contextmanager
def _idle_priority() -> Iterator[None]:
    normal = os.sched_getscheduler(0), os.sched_getparam(0)
    with contextlib.suppress(OSError):  # not allowed here: at normal priority then
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # kept idle, the job is slow, not wrong
            os.sched_setscheduler(0, normal[0], normal[1])


def rehearse() -> None:
    """The whole rehearsal `prepare` makes, raising what failed."""
    for step in _REHEARSAL:
        step()


def _rehearse_firewall() -> None:
    from nsrun.errors import NsrunError
    from nsrun.firewall.nftables import NftablesBackend

    with contextlib.suppress(NsrunError):  # no nf_tables here: nothing of it to rehearse
        NftablesBackend().rehearse()


def _rehearse_teardown() -> None:
    """What a teardown reads: the networks' definitions, a lease (its own, encoded here)."""
    from nsrun.ipam.leases import Lease
    from nsrun.networks.manager import network_store
    from nsrun.state.paths import StateDirs

    network_store(StateDirs()).all()
    lease = Lease(address="192.0.2.2", sandbox_id="0" * 12, pid=1, start_time=0.0, veth="nsv" + "0" * 12, netns_inode=1)
    Lease.from_json(lease.to_json())


def _rehearse_launch() -> None:
    from nsrun.cli import run
    from nsrun.cli.app import run_cli
    from nsrun.errors import NsrunError
    from nsrun.launch.view import plan_process
    from nsrun.state.registry import SandboxRecord

    def rehearsed(request: SandboxRequest, _readiness: object, _detach: bool) -> int:
        plan_process(request, "rehearsal", []).to_dict()
        record = SandboxRecord("0" * 12, "rehearsal", 1, 0.0, 0, "none", request.argv, 0.0, env=request.environ)
        SandboxRecord.from_json(record.to_json())
        raise _Rehearsed

    previous, run.LAUNCHER = run.LAUNCHER, rehearsed
    try:
        status = run_cli(["--", "true"])
    except _Rehearsed:
        return
    finally:
        run.LAUNCHER = previous
    raise NsrunError(
        "rehearsing a launch", f"its command line ended (status {status}) before the set-up", "run `nsrun -- true`"
    )


def _rehearse_netlink() -> None:
    from nsrun.net import netlink

    netlink.rehearse()


_REHEARSAL: Final = (_rehearse_launch, _rehearse_netlink, _rehearse_firewall, _rehearse_teardown)


def _go_ahead(channel: Channel, kind: str, fds_wanted: int) -> tuple[Any, list[int]]:
    """The client's go-ahead, sent once it saw "taken": `kind`'s message and its descriptors.
    A client that waited in vain ran its command line itself and closed the connection (or it
    died): then this worker does nothing and exits."""
    message, fds = channel.receive()
    if message is None or kind not in message or len(fds) != fds_wanted:
        wire.close_fds(fds)
        os._exit(0)
    return message[kind], fds


def handle_cni(connection: wire.Socket) -> NoReturn:
    """One CNI call (`nsrun-cni`): its answer, then this worker's end."""
    from nsrun.cni.plugin import handle

    call, _ = _go_ahead(Channel(connection), "cni", 0)
    status, out = handle(dict(call["env"]), bytes(call["stdin"]))
    with contextlib.suppress(OSError):
        wire.send(connection, {"cni": [status, out]})
    os._exit(0)


def handle_request(sock: wire.Socket, client_pid: int, request: dict[str, Any]) -> NoReturn:
    """The worker's whole life: run the request, answer, exit (HANDED_OVER after a launch)."""
    from nsrun.cli import common, run
    from nsrun.cli.app import run_cli
    from nsrun.cli.entry import EndBySignal, Interrupted, pending_signal, take_pending

    take_pending()  # one the helper held before this worker was forked is not this request's
    channel = Channel(sock)
    _, fds = _go_ahead(channel, "stdio", len(_STDIO))

    for fd, target in zip(fds, _STDIO, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request.get("env", {}).items()})
    try:
        os.chdir(str(request.get("cwd", "/")))
    except OSError as err:
        # the client's directory went since it asked (deleted): the command line runs in the
        # client's own process, where it gets what it would get without a helper
        with contextlib.suppress(OSError):
            channel.send({"fallback": f"its working directory: {os.strerror(err.errno or 0).lower()}"})
        os._exit(0)
    os.umask(int(request.get("umask", 0o022)))
    launcher = _Launcher(channel, client_pid, detached=bool(request.get("detached")))
    run.LAUNCHER = launcher
    common.ACTING = lambda: _acting(channel)
    common.INTERRUPTION = launcher.checkpoint  # `nsrun wait`, `logs -f`: the client's end ends them
    status = 0
    die: int | None = None
    handed_over = False
    try:
        launcher.checkpoint()  # the client died, or got a signal, since its go-ahead: nothing runs
        status = run_cli([str(word) for word in request.get("argv", [])])
    except _Handover:
        handed_over = True
    except (Interrupted, EndBySignal) as ending:
        # the set-up was undone, a subcommand's wait interrupted, or exec's command died of it
        status, die = 128 + ending.signum, ending.signum
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    if handed_over:
        os._exit(HANDED_OVER)
    die = die if die is not None else pending_signal()  # held while a subcommand acted: as in-process
    try:
        channel.send({"exit": status, "die": die} if die is not None else {"exit": status})
    finally:
        os._exit(0)


def _acting(channel: Channel) -> None:
    """A subcommand (not a launch) is about to act: the client hears it (it will not run the
    command line again, and passes its signals on to this process), and the signals it passes on
    are held here as in the client's own process (exec's command gets them, a wait ends)."""
    from nsrun.cli.entry import hold_signals

    hold_signals()
    with contextlib.suppress(OSError):  # gone: the next checkpoint finds out
        channel.send({"acting": os.getpid()})


def teardown(connection: wire.Socket, dirs: StateDirs, client_pid: int, job: dict[str, Any]) -> list[str]:
    """The record-driven teardown of one sandbox the client held, in a worker of the helper:
    half-way the client is told to release its descriptors (unless it is gone already)."""
    from nsrun.errors import NsrunError
    from nsrun.launch.teardown import finish_teardown, release_namespaces
    from nsrun.state.logbook import LogBook

    if job.get("sandbox") is None:
        return _reclaim_dead_client(dirs, client_pid)
    sandbox_id, status, pinned = str(job["sandbox"]), job.get("status"), bool(job.get("pinned"))
    failures: list[str] = []
    try:
        record = _record_of(dirs, sandbox_id, client_pid)
    except NsrunError:
        record = None  # already torn down (or reclaimed): nothing of it left
    if record is not None:
        failures += release_namespaces(dirs, record, pinned=pinned)
    if pinned:
        with contextlib.suppress(OSError):  # the client died meanwhile: its descriptors closed with it
            wire.send(connection, {"release": True})
    if record is not None:
        failures += finish_teardown(dirs, record)
    if job.get("entry") and isinstance(status, int):
        try:
            if job.get("ran", True):
                LogBook(dirs).ended(sandbox_id, status)
            else:
                LogBook(dirs).remove(sandbox_id)  # interrupted before it ran: nothing kept
        except NsrunError as err:
            failures.append(str(err))
    return failures


def _reclaim_dead_client(dirs: StateDirs, client_pid: int) -> list[str]:
    """A client died after it got its sandbox and before it said which one was running: what it
    held (its records, stale now that it is gone) is torn down."""
    from nsrun.launch.records import is_stale, registry
    from nsrun.launch.teardown import teardown_sandbox

    failures: list[str] = []
    for record in registry(dirs).all_records():
        if record.pid == client_pid and _ended(record, is_stale):
            failures += teardown_sandbox(dirs, record, pinned=False)
    return failures


def _ended(record: Any, is_stale: Any) -> bool:
    """The client's connection closed: it is dying. Its files close before the kernel marks it a
    zombie, so it may still look alive for a moment; wait for that (a bounded while)."""
    deadline = time.monotonic() + _DYING_CLIENT_WAIT
    while not is_stale(record):
        if time.monotonic() > deadline:
            return False  # it closed its connection and lives on: its record stays its own
        time.sleep(_DYING_CLIENT_POLL)
    return True


def _record_of(dirs: StateDirs, sandbox_id: str, holder: int) -> Any:
    """The record of a sandbox the asking client holds; NsrunError for anything else."""
    from nsrun.errors import NsrunError
    from nsrun.launch.records import registry

    record = registry(dirs).get(sandbox_id)
    if record is None or record.pid != holder:
        raise NsrunError(f"sandbox {sandbox_id}", "no sandbox of this client has that id", "run `nsrun doctor`")
    return record


def record_started(dirs: StateDirs, client_pid: int, info: dict[str, Any]) -> None:
    """The client's command runs: note it in its sandbox's record."""
    from nsrun.launch.records import note_started
    from nsrun.process.shim import Started

    record = _record_of(dirs, str(info["id"]), client_pid)
    namespaces = {str(kind): int(fd) for kind, fd in dict(info["namespaces"]).items()}
    note_started(dirs, record, Started(int(info["init_pid"]), int(info["command_pid"]), namespaces))
