"""PID 1 of the sandbox's PID namespace: a minimal init, as `docker run --init` (tini) provides.

It builds the sandbox's view (network namespace joined, its own mount, UTS and IPC namespaces,
mounts, hostname, its own terminal if asked), hands the shim descriptors of those namespaces (so
`nsrun exec` later enters what nsrun made, never what the command made), starts the command, then
forwards every signal to it and reaps whatever ends up as its child. When the command exits it
reports the status, gives leftovers a moment to end on SIGTERM and exits: the kernel then kills
whatever is left in the namespace, grandchildren that ignore SIGTERM included. It dies with the
shim (parent-death signal), so a SIGKILL of nsrun leaves nothing running.

Messages to the shim travel over a SOCK_SEQPACKET socket, one JSON object each.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Final, NoReturn

from nsrun.process import libc
from nsrun.process.child import EXIT_SETUP_FAILED, exec_command
from nsrun.process.mounts import apply_mounts

if TYPE_CHECKING:
    from nsrun.process.plan import ProcessPlan

__all__ = ["LEFTOVER_GRACE_SECONDS", "NAMESPACE_KINDS", "forwardable_signals", "run_init", "send"]

LEFTOVER_GRACE_SECONDS: Final = 1.0
_NAME: Final = "nsrun-init"
# the namespaces the shim pins for `nsrun exec`, in the order a joiner enters them
NAMESPACE_KINDS: Final = ("net", "uts", "ipc", "pid", "mnt")


def forwardable_signals() -> set[int]:
    """Every signal a process can catch; what init and shim pass on to the command."""
    return {int(sig) for sig in signal.valid_signals()} - {signal.SIGKILL, signal.SIGSTOP}


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    payload = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [payload], fds)
    else:
        sock.send(payload)


def _watch_parent(sock: socket.socket) -> None:
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    # the shim may have died before the line above took effect; its pid is not visible from a new
    # PID namespace, but its end of the socket closed with it
    try:
        if sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
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


def _namespace_fds() -> list[int]:
    return [os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in NAMESPACE_KINDS]


def _open_terminal() -> tuple[int, int]:
    """A pseudo-terminal from the sandbox's own devpts (its /dev/ptmx): (master, slave)."""
    return os.openpty()  # both ends close-on-exec: the command gets the slave through dup2


def _start_command(plan: ProcessPlan, tty_fd: int | None) -> tuple[int, str | None]:
    """Fork the command; (its pid, None) once its exec worked, else (pid, 'CODE message')."""
    report_read, report_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(report_read)
        exec_command(plan, report_write, tty_fd)
    os.close(report_write)
    with os.fdopen(report_read, "rb") as reader:
        failure = reader.read().decode(errors="replace")
    return pid, failure or None


def _reap_until(command: int, sigs: set[int]) -> int:
    """Forward signals to the command and reap children until the command exits; its status."""
    while True:
        info = signal.sigwaitinfo(sigs)
        if info.si_signo != signal.SIGCHLD:
            with contextlib.suppress(ProcessLookupError):
                os.kill(command, info.si_signo)
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


def _end_leftovers(sigs: set[int]) -> None:
    """What the command left running gets SIGTERM and a moment; then the kernel's SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGTERM)  # from PID 1: every other process of this namespace
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        signal.sigtimedwait(sigs, remaining)


def run_init(
    plan: ProcessPlan, sock: socket.socket, netns_fd: int | None, join: dict[str, int] | None = None
) -> NoReturn:
    """The body of PID 1 (or, with `join`, of the parent of a command exec'd into a running
    sandbox, inside its PID namespace); exits, never returns."""
    sigs = forwardable_signals()
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        _watch_parent(sock)
        os.setsid()  # the caller's terminal signals the shim, which forwards them: never twice
        libc.prctl(libc.PR_SET_DUMPABLE, 0)  # the command may not read or trace its init
        libc.prctl(libc.PR_SET_NAME, _NAME)
        _build_view(plan, netns_fd, join)
        for fd in ([netns_fd] if netns_fd is not None else []) + list((join or {}).values()):
            os.close(fd)
        master, slave = _open_terminal() if plan.tty else (None, None)
        namespaces = _namespace_fds()
        send(sock, {"event": "ready"}, namespaces + ([master] if master is not None else []))
        for fd in namespaces + ([master] if master is not None else []):
            os.close(fd)
        command, failure = _start_command(plan, slave)
        if slave is not None:
            os.close(slave)
    except Exception as err:  # noqa: BLE001  # reported to the shim, which says what failed
        with contextlib.suppress(OSError):
            send(sock, {"event": "failed", "code": EXIT_SETUP_FAILED, "message": f"preparing the sandbox: {err}"})
        os._exit(EXIT_SETUP_FAILED)
    if failure is not None:
        code, _, message = failure.partition(" ")
        os.waitpid(command, 0)
        send(sock, {"event": "failed", "code": int(code) if code.isdigit() else EXIT_SETUP_FAILED, "message": message})
        os._exit(EXIT_SETUP_FAILED)
    send(sock, {"event": "started", "pid": command})
    status = _reap_until(command, sigs)
    with contextlib.suppress(OSError):
        send(sock, {"event": "exited", "status": status})
    if join is None:
        _end_leftovers(sigs)  # only PID 1 may end the whole namespace
    os._exit(0)
