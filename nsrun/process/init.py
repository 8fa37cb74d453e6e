"""PID 1 of the sandbox's PID namespace: a minimal init, as `docker run --init` (tini) provides.

It builds the sandbox's view (network namespace joined, its own mount, UTS and IPC namespaces,
mounts, hostname, its own terminal if asked), hands the shim descriptors of those namespaces (so
`nsrun exec` later enters what nsrun made, never what the command made), starts the command, then
forwards every signal to it and reaps whatever ends up as its child. When the command exits it
gives leftovers a moment to end on SIGTERM, reports the status (and whether anything was left)
and exits: the kernel then kills whatever is left in the namespace, grandchildren that ignore
SIGTERM included. It dies with the shim (parent-death signal), so a SIGKILL of nsrun leaves
nothing running.

Messages to the shim travel over a SOCK_SEQPACKET socket (`nsrun.process.wire`).
"""

from __future__ import annotations

import _socket
import os
import select
import time

from nsrun.process import libc, signals, wire
from nsrun.process.child import EXIT_SETUP_FAILED, become_command_ahead, exec_command
from nsrun.process.mounts import apply_mounts

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from typing import Any, Final, NoReturn

    from nsrun.process.plan import ProcessPlan

__all__ = [
    "LEFTOVER_GRACE_SECONDS",
    "NAMESPACE_KINDS",
    "CommandAhead",
    "ViewAhead",
    "forwardable_signals",
    "run_init",
    "run_init_ahead",
]

LEFTOVER_GRACE_SECONDS: Final = 1.0
_NAME: Final = "nsrun-init"
# the namespaces the shim pins for `nsrun exec`, in the order a joiner enters them
NAMESPACE_KINDS: Final = ("net", "uts", "ipc", "pid", "mnt")


def forwardable_signals() -> set[int]:
    """Every signal a process can catch; what init and shim pass on to the command."""
    return signals.valid_signals() - {signals.SIGKILL, signals.SIGSTOP}


def _send(sock: wire.Socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    try:
        wire.send(sock, message, fds)
    except OSError:
        pass  # the shim is gone: the parent-death signal ends this process


def _watch_parent(sock: wire.Socket) -> None:
    libc.prctl(libc.PR_SET_PDEATHSIG, signals.SIGKILL)
    # the shim may have died before the line above took effect; its pid is not visible from a new
    # PID namespace, but its end of the socket closed with it
    try:
        if sock.recv(1, _socket.MSG_DONTWAIT | _socket.MSG_PEEK) == b"":
            os._exit(EXIT_SETUP_FAILED)
    except BlockingIOError:
        return


_JOIN_ORDER: Final = (("net", libc.CLONE_NEWNET), ("uts", libc.CLONE_NEWUTS), ("ipc", libc.CLONE_NEWIPC))


def _build_view(plan: ProcessPlan, netns_fd: int | None, join: dict[str, int] | None) -> None:
    if join is not None:
        # `nsrun exec`: the namespaces nsrun made for the sandbox, pinned by its shim; the mount
        # namespace last, as it changes what every path means
        for kind, nstype in _JOIN_ORDER:
            libc.setns(join[kind], nstype)
        libc.setns(join["mnt"], libc.CLONE_NEWNS)
        return
    if netns_fd is not None:
        libc.setns(netns_fd, libc.CLONE_NEWNET)
    libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC)
    apply_mounts(plan.mounts)
    if plan.hostname:
        libc.sethostname(plan.hostname)


class ViewAhead:
    """A sandbox's view built before its command's plan came (a pool's spare, waiting): the mounts
    and hostname of the plan it was set up with. The plan that comes is carried out on top of it
    when it only adds tmpfs mounts to those; otherwise (volumes, whose sources must be opened as
    the host sees them; --read-only, --privileged) the view is built anew from the host's, as
    without one made ahead."""

    def __init__(self, view: ProcessPlan, netns_fd: int, sock: wire.Socket) -> None:
        self.view = view
        self.failure: Exception | None = None
        self.command: CommandAhead | None = None  # forked in the view, once it stands
        self.host_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _build_view(view, netns_fd, None)
        except Exception as err:  # noqa: BLE001  # reported once the plan comes: nobody reads it before
            self.failure = err
            return
        _send_ready(sock, None)  # read once the plan has come; sent again if the view is built anew
        try:
            self.command = CommandAhead()
        except OSError:
            return  # no fork now (no memory): it is forked when the plan comes
        # the shim offers it to the caller, which may give it the plan itself (see run_init_ahead)
        _send(sock, {"event": "command"}, [self.command.sock.fileno(), self.command.report])

    def complete(self, plan: ProcessPlan) -> bool:
        """The view `plan` asks for, from the one made ahead; whether it is that one (its
        namespaces are those reported ahead), not one built anew."""
        try:
            if self.failure is not None:
                raise self.failure
            rest = plan.view_added_to(self.view)
            if rest is not None:
                if rest:
                    apply_mounts(rest)  # the command forked ahead shares the namespace: it sees them
                return True
            if self.command is not None:
                self.command.discard()  # it stands in the view made ahead
                self.command = None
            libc.setns(self.host_mnt, libc.CLONE_NEWNS)  # the host's view again; the network stays
            _build_view(plan, None, None)
            return False
        finally:
            os.close(self.host_mnt)


class CommandAhead:
    """The command's process, forked from the init once the view made ahead stands (it shares its
    namespaces): that fork, and its first steps, are then off the launch's path. It waits for the
    plan (`become_command_ahead`); it dies with the init, whose PID namespace it is in."""

    def __init__(self) -> None:
        ours, theirs = wire.socketpair()
        report_read, report_write = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            ours.close()
            os.close(report_read)
            become_command_ahead(theirs, report_write)
        theirs.close()
        os.close(report_write)
        self.pid, self.sock, self.report = pid, ours, report_read

    def start(self, plan: ProcessPlan, tty_fd: int | None, gate_fd: int | None) -> tuple[int, str | None]:
        """As `_start_command`, with the process forked ahead."""
        message = {"plan": plan.to_dict(), "tty": tty_fd is not None, "gate": gate_fd is not None}
        try:  # its stdio are the init's, which came with the plan: after the fork
            wire.send(self.sock, message, [*_STDIO, *(fd for fd in (tty_fd, gate_fd) if fd is not None)])
        finally:
            self.sock.close()
            if gate_fd is not None:
                os.close(gate_fd)
        return self.pid, _read_report(self.report)

    def hand_off(self) -> int:
        """The caller gave it the plan and reads its report: this process keeps only its pid."""
        self.sock.close()
        os.close(self.report)
        return self.pid

    def discard(self) -> None:
        self.sock.close()  # it reads the end, and exits
        os.close(self.report)
        try:
            os.kill(self.pid, signals.SIGKILL)
        except ProcessLookupError:
            pass  # gone already: reaped below
        os.waitpid(self.pid, 0)


def _send_ready(sock: wire.Socket, master: int | None) -> None:
    """The view stands: the shim gets its namespaces to pin (and the terminal's master end)."""
    fds = [os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in NAMESPACE_KINDS]
    if master is not None:
        fds.append(master)
    try:
        wire.send(sock, {"event": "ready"}, fds)
    finally:
        wire.close_fds(fds)


def _begin(sock: wire.Socket) -> None:
    """What PID 1 does first, whatever its plan: its own session (the caller's terminal signals the
    shim, which forwards them: never twice), unreadable and untraceable by the command, named."""
    signals.pthread_sigmask(signals.SIG_BLOCK, forwardable_signals())
    _watch_parent(sock)
    os.setsid()
    libc.prctl(libc.PR_SET_DUMPABLE, 0)
    libc.prctl(libc.PR_SET_NAME, _NAME)


def _open_terminal() -> tuple[int, int]:
    """A pseudo-terminal from the sandbox's own devpts (its /dev/ptmx): (master, slave)."""
    return os.openpty()  # both ends close-on-exec: the command gets the slave through dup2


def _start_command(
    plan: ProcessPlan, tty_fd: int | None, gate_fd: int | None, ahead: CommandAhead | None = None
) -> tuple[int, str | None]:
    """Fork the command (or start the one forked `ahead`); (its pid, None) once its exec worked,
    else (pid, 'CODE message'). With `gate_fd`, the child gets ready up to its exec, which waits
    for the gate to open."""
    if ahead is not None:
        return ahead.start(plan, tty_fd, gate_fd)
    report_read, report_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(report_read)
        exec_command(plan, report_write, tty_fd, gate_fd)
    os.close(report_write)
    if gate_fd is not None:
        os.close(gate_fd)
    return pid, _read_report(report_read)


def _read_report(fd: int) -> str | None:
    """What the command's process wrote before its exec; nothing (None) once the exec worked."""
    with os.fdopen(fd, "rb") as reader:
        failure = reader.read().decode(errors="replace")
    return failure or None


def _reap_until(command: int, sigs: set[int]) -> int:
    """Forward signals to the command and reap children until the command exits; its status."""
    while True:
        info = signals.sigwaitinfo(sigs)
        if info.si_signo != signals.SIGCHLD:
            try:
                os.kill(command, info.si_signo)
            except ProcessLookupError:
                pass  # it is ending: its SIGCHLD comes next
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid == 0:
                break
            if pid == command:
                return status


def _end_leftovers(sigs: set[int]) -> bool:
    """What the command left running gets SIGTERM and a moment; then the kernel's SIGKILL.
    True when there was nothing left: the namespace holds only this process."""
    try:
        os.kill(-1, signals.SIGTERM)  # from PID 1: every other process of this namespace
    except ProcessLookupError:
        return True  # nothing left
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return False
        signals.sigtimedwait(sigs, remaining)
    return False


_STDIO: Final = (0, 1, 2)
_MAX_AHEAD_FDS: Final = 5  # stdin, stdout, stderr, the netns, the gate


def run_init_ahead(sock: wire.Socket) -> NoReturn:
    """The body of PID 1 forked before its plan is known (`nsrun.process.shim.InitAhead`). It may
    first get {"view": plan} with the sandbox's netns: the view of the plan the sandbox was set up
    with, built at once (`ViewAhead`). Then it waits for {"plan", "netns": bool, "gate": bool}
    with its stdin, stdout, stderr, then the netns and the gate (if so), and goes on as
    `run_init`; unless the command forked ahead was given its plan by the caller meanwhile
    (`_run_direct`). It dies with the shim meanwhile; no plan, no command."""
    from nsrun.process.plan import ProcessPlan

    ahead: ViewAhead | None = None
    try:
        _begin(sock)
        message, fds = wire.receive(sock, _MAX_AHEAD_FDS)
        if message is not None and "view" in message and fds:
            ahead = ViewAhead(ProcessPlan.from_dict(message["view"]), fds[0], sock)
            wire.close_fds(fds)
            if ahead.command is not None and _given_elsewhere(sock, ahead.command):
                _run_direct(sock, ahead)
            message, fds = wire.receive(sock, _MAX_AHEAD_FDS)
        if message is None or len(fds) < len(_STDIO):
            os._exit(EXIT_SETUP_FAILED)  # the shim went away before a plan came
        plan = ProcessPlan.from_dict(message["plan"])
    except (OSError, wire.WireError, ValueError, KeyError):
        os._exit(EXIT_SETUP_FAILED)
    for target, fd in zip(_STDIO, fds[: len(_STDIO)], strict=True):
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    rest = fds[len(_STDIO) :]
    netns = rest.pop(0) if message.get("netns") and rest else None
    gate = rest.pop(0) if message.get("gate") and rest else None
    if ahead is not None and netns is not None:
        os.close(netns)  # joined already
        netns = None
    run_init(plan, sock, netns, None, gate, ahead, begun=True)


def _given_elsewhere(sock: wire.Socket, command: CommandAhead) -> bool:
    """Wait for whichever comes first: the plan from the shim (False), or the end of the command's
    socket (True): the caller gave the command's process its plan itself, for the view made
    ahead, and it closed its end at its exec (or as it exited)."""
    ready, _, _ = select.select([sock, command.sock], [], [])
    return sock not in ready


def _run_direct(sock: wire.Socket, ahead: ViewAhead) -> NoReturn:
    """The caller gave the command forked ahead its plan itself (and reads whether its exec
    worked; the shim gets the plan from the caller too, and sends nothing here): this init only
    waits for the command, as `run_init` does once it runs."""
    if ahead.command is None:
        os._exit(EXIT_SETUP_FAILED)
    os.close(ahead.host_mnt)  # its view stays as it was made
    _finish(sock, ahead.command.hand_off(), forwardable_signals(), join=None)


def _finish(sock: wire.Socket, command: int, sigs: set[int], join: dict[str, int] | None) -> NoReturn:
    """The command runs: wait for it, end what it left, report, exit."""
    status = _reap_until(command, sigs)
    # only PID 1 may end the whole namespace; "alone": nothing else is left in it, so the sandbox
    # has ended once this process exits (which tearing down its namespaces makes slow: 0.3-0.6 ms)
    alone = _end_leftovers(sigs) if join is None else False
    _send(sock, {"event": "exited", "status": status, "alone": alone})
    os._exit(0)


def run_init(
    plan: ProcessPlan,
    sock: wire.Socket,
    netns_fd: int | None,
    join: dict[str, int] | None = None,
    gate_fd: int | None = None,
    ahead: ViewAhead | None = None,
    *,
    begun: bool = False,
) -> NoReturn:
    """The body of PID 1 (or, with `join`, of the parent of a command exec'd into a running
    sandbox, inside its PID namespace); exits, never returns. `gate_fd`: the sandbox's network is
    still being set up (an early hand-over); its view is built and its command made ready
    meanwhile, and the command execs once whoever sets it up writes to the gate. `ahead`: its view,
    made before the plan came (see run_init_ahead); `begun`: `_begin` was done then."""
    sigs = forwardable_signals()
    try:
        if not begun:
            _begin(sock)
        kept = ahead.complete(plan) if ahead is not None else False
        if ahead is None:
            _build_view(plan, netns_fd, join)
        for fd in ([netns_fd] if netns_fd is not None else []) + list((join or {}).values()):
            os.close(fd)
        master, slave = _open_terminal() if plan.tty else (None, None)
        if not kept or master is not None:
            _send_ready(sock, master)  # the namespaces reported ahead, if any, are replaced
        command, failure = _start_command(plan, slave, gate_fd, ahead.command if ahead is not None else None)
        if slave is not None:
            os.close(slave)
    except Exception as err:  # noqa: BLE001  # reported to the shim, which says what failed
        _send(sock, {"event": "failed", "code": EXIT_SETUP_FAILED, "message": f"preparing the sandbox: {err}"})
        os._exit(EXIT_SETUP_FAILED)
    if failure is not None:
        code, _, message = failure.partition(" ")
        os.waitpid(command, 0)
        _send(sock, {"event": "failed", "code": int(code) if code.isdigit() else EXIT_SETUP_FAILED, "message": message})
        os._exit(EXIT_SETUP_FAILED)
    _send(sock, {"event": "started", "pid": command})
    _finish(sock, command, sigs, join)
