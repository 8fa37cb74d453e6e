"""The shim: one small process per sandbox that waits beside it, as containerd's shim and Podman's
conmon do. It holds file descriptors and pids, not libraries.

It makes the sandbox's PID namespace and forks its init into it; pins the namespaces the init
built (network, UTS, IPC, PID, mount) for `nsrun exec`; forwards every signal it gets to the
command (through the init, which it alone may signal: its own child, whose pid cannot be reused
before it is reaped); relays the sandbox's terminal to the caller's; and reports the command's
status. It is the holder named in the sandbox's lease and record: if it dies, the init dies with
it (parent-death signal), the kernel ends the whole PID namespace, and the next nsrun reclaims
what is left on the host.

It runs in a process of its own (the CLI process itself, or a small subprocess the library
starts), because it changes process-wide state: the PID namespace of its children and the signal
mask. Stdlib only, and light (no typing, dataclasses, json, socket or signal module: see
`nsrun.process.wire`): it starts in milliseconds and holds a few megabytes.
"""

from __future__ import annotations

import errno
import os
import select
import time

from nsrun.process import libc, signals, terminal, wire
from nsrun.process.child import EXIT_SETUP_FAILED
from nsrun.process.init import NAMESPACE_KINDS, forwardable_signals, run_init, run_init_ahead

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

    from nsrun.process.plan import ProcessPlan

__all__ = ["COMMAND_AHEAD_FDS", "InitAhead", "Outcome", "Shim", "ShimFds", "Started", "exit_status"]

_CHUNK: Final = 65536
_MAX_FD: Final = 1 << 20
_READY_POLL: Final = 0.05
# once the init closed its socket, its end comes as SIGCHLD; this is only a backstop for that
_GONE_POLL: Final = 0.05
_STOP_GRACE: Final = 5.0  # after SIGTERM of a sandbox that never got ready, SIGKILL
_MAX_FDS: Final = 8
COMMAND_AHEAD_FDS: Final = 2  # the socket to the command's process forked ahead, its report pipe
# left to their default action on the shim itself: a shim in the background that touches the
# terminal stops, as any job does, and its shell takes the terminal back
_NOT_FORWARDED: Final = frozenset({signals.SIGTTIN, signals.SIGTTOU})


def exit_status(status: int) -> int:
    """A raw wait status as a shell reports it: the exit code, or 128+N for death by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else EXIT_SETUP_FAILED


class ShimFds:
    """Descriptors the shim is handed, numbers in its own process."""

    def __init__(  # one keyword per descriptor
        self,
        netns: int | None = None,  # the sandbox's network namespace (None: the host's)
        join: dict[str, int] | None = None,  # `nsrun exec`: the running sandbox's pinned namespaces
        control: int | None = None,  # to the controller: EOF means it died and the sandbox must end
        # an early hand-over: the set-up goes on elsewhere; the command execs once this pipe gives a byte
        gate: int | None = None,
        stdin: int = 0,  # the command's stdio (and the terminal relayed, with a tty)
        stdout: int = 1,
        stderr: int = 2,
    ) -> None:
        self.netns = netns
        self.join = join
        self.control = control
        self.gate = gate
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr


class Started:
    """The command runs: its init, its pid (in the host's PID namespace), and the namespaces the
    shim holds for the sandbox's life (kind -> fd), with their inode numbers if the shim gave them
    (kind -> inode; else they are read through /proc, 0.1-0.2 ms each)."""

    def __init__(
        self,
        init_pid: int,
        command_pid: int,
        namespace_fds: dict[str, int],
        namespace_inodes: dict[str, int] | None = None,
    ) -> None:
        self.init_pid = init_pid
        self.command_pid = command_pid
        self.namespace_fds = namespace_fds
        self.namespace_inodes = namespace_inodes or {}

    @classmethod
    def pinned(cls, init_pid: int, command_pid: int, namespace_fds: dict[str, int]) -> Started:
        """As the shim that holds `namespace_fds` reports it: with their inode numbers."""
        inodes = {kind: os.fstat(fd).st_ino for kind, fd in namespace_fds.items()}
        return cls(init_pid, command_pid, dict(namespace_fds), inodes)

    def to_message(self) -> dict[str, Any]:
        """What "started" (and the offer of a command's process made ahead) says of it."""
        return {
            "init_pid": self.init_pid,
            "command_pid": self.command_pid,
            "namespaces": self.namespace_fds,
            "inodes": self.namespace_inodes,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Started:
        """The caller's side of `to_message`; KeyError, TypeError or ValueError if it is not one."""
        namespaces = {str(kind): int(fd) for kind, fd in dict(message["namespaces"]).items()}
        inodes = {str(kind): int(inode) for kind, inode in dict(message.get("inodes") or {}).items()}
        return cls(int(message["init_pid"]), int(message["command_pid"]), namespaces, inodes)


class Outcome:
    """How the sandbox ended: the command's raw wait status, or why it never ran."""

    def __init__(self, status: int | None = None, failure: str | None = None, failure_code: int = 125) -> None:
        self.status = status
        self.failure = failure
        self.failure_code = failure_code

    @property
    def exit_code(self) -> int:
        if self.failure is not None:
            return self.failure_code
        return exit_status(self.status if self.status is not None else 0)

    @property
    def signal(self) -> int | None:
        if self.failure is None and self.status is not None and os.WIFSIGNALED(self.status):
            return os.WTERMSIG(self.status)
        return None


class InitAhead:
    """PID 1 of a sandbox's new PID namespace, forked before the sandbox's plan is known (the shim
    of a pool's spare, waiting for its command): that fork, the costliest step of a start (the
    child's first steps copy the interpreter's pages on write), is then off the launch's path.
    It waits for `Shim(..., ahead=...).run()` to hand it the plan; it dies with the shim."""

    def __init__(self) -> None:
        # its end is read by run(), from a signalfd made only then: SIGCHLD waits blocked till then
        self.previous = signals.pthread_sigmask(signals.SIG_BLOCK, {signals.SIGCHLD})
        libc.unshare(libc.CLONE_NEWPID)  # the next child is PID 1 of a new namespace
        ours, theirs = wire.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            _close_all_but({theirs.fileno()})
            run_init_ahead(theirs)
        theirs.close()
        self.sock, self.pid = ours, pid
        self.namespace_fds: dict[str, int] = {}  # those of the view it made ahead, once it says so

    def receive_ahead(self) -> list[int] | None:
        """One thing the init says while it waits for its plan: its view's namespaces (kept
        here), or the command's process it forked in that view ([its socket, its report pipe],
        returned). None once it is gone."""
        try:
            message, fds = wire.receive(self.sock, _MAX_FDS)
        except (OSError, wire.WireError):
            return None
        if message is None:
            return None
        if message.get("event") == "ready":
            wire.close_fds(list(self.namespace_fds.values()))
            self.namespace_fds = dict(zip(NAMESPACE_KINDS, fds, strict=False))
            return []
        if message.get("event") == "command" and len(fds) == COMMAND_AHEAD_FDS:
            return fds
        wire.close_fds(fds)
        return []

    def command_pid(self) -> int | None:
        """The command's process forked ahead, as the host sees it: the init's only child."""
        return _only_child(self.pid)


class Shim:
    def __init__(  # noqa: PLR0913  # one keyword per hook
        self,
        plan: ProcessPlan,
        fds: ShimFds | None = None,
        *,
        on_started: Callable[[Started], None] | None = None,
        on_control: Callable[[dict[str, Any]], None] | None = None,
        # readiness (--wait-port): checked from the command's start; not ready in time ends the sandbox
        ready: Callable[[int], bool] | None = None,  # given the init's pid
        ready_timeout: float = 0.0,
        on_ready: Callable[[], None] | None = None,
        # signals the caller caught before this shim took over signals (they go to the command too)
        held: Callable[[], list[int]] | None = None,
        ahead: InitAhead | None = None,  # its init, forked already: run() hands it the plan
        direct: bool = False,  # the caller handed the plan to the command forked ahead (see InitAhead)
        # the command's outcome as soon as nothing else is left in the sandbox, while its init
        # exits; run() returns once it has (the control fd is no longer read meanwhile)
        on_ended: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.plan = plan
        self.fds = fds if fds is not None else ShimFds()
        self.on_started = on_started
        self.on_control = on_control
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.on_ready = on_ready
        self.held = held
        self.ahead = ahead
        self.direct = direct and ahead is not None
        self.on_ended = on_ended
        self.ended_early = False  # on_ended was called before the init was reaped
        self.gated = self.fds.gate is not None
        # while gated (until `gate_opened()`), a signal goes to `on_gated_signal` first, which takes
        # it (True: it aborts the set-up still under way) or leaves it to the usual handling
        self.on_gated_signal: Callable[[int], bool] | None = None
        self.not_ready = False
        self.namespace_fds: dict[str, int] = {}
        self.init_pid: int | None = None
        self.command_pid: int | None = None
        self._master: int | None = None
        self._outcome = Outcome()
        self._init_status: int | None = None
        self._command_done = False
        self._ready_deadline: float | None = None
        self._kill_deadline: float | None = None
        self._watched: dict[int, list[Callable[[], bool]]] = {}

    def watch(self, fd: int, handler: Callable[[], bool]) -> None:
        """Call `handler` whenever `fd` is readable while the sandbox runs, until it returns
        False (a caller's answer that may come while the command runs, not waited for). A second
        handler of the same fd waits for the first to be done."""
        self._watched.setdefault(fd, []).append(handler)

    def run(self) -> Outcome:
        """Start the sandbox's processes and wait until its init is gone; the namespace fds stay
        open (call `close()` once the teardown no longer needs them)."""
        sigs = forwardable_signals() - _NOT_FORWARDED
        previous = signals.pthread_sigmask(signals.SIG_BLOCK, sigs)
        if self.ahead is not None:
            previous = self.ahead.previous
        signal_fd = libc.signalfd(sorted(sigs))
        try:
            sock = self._fork_init() if self.ahead is None else self._hand_plan_ahead(self.ahead)
            for signo in self.held() if self.held is not None else []:
                self.forward(signo)  # the init holds them until the command runs
            try:
                self._loop(sock, signal_fd)
            finally:
                sock.close()
        finally:
            os.close(signal_fd)
            # the caller's mask and PID namespace for children again: after a gated start that
            # failed, the caller goes on (and may fork, or start another sandbox)
            signals.pthread_sigmask(signals.SIG_SETMASK, previous)
            _own_pid_namespace_for_children()
        return self._outcome

    def gate_opened(self, passed_on: list[int] | None = None) -> None:
        """The set-up ended and opened the gate: signals are the command's again. `passed_on`:
        signals that came meanwhile, too late to abort the set-up: the command gets them."""
        self.gated = False
        for signo in passed_on or []:
            self.forward(signo)  # the init holds it until the command runs

    def close(self) -> None:
        wire.close_fds(list(self.namespace_fds.values()))
        self.namespace_fds.clear()

    # -- start ------------------------------------------------------------------------------------

    def _fork_init(self) -> wire.Socket:
        if self.fds.join is not None:
            libc.setns(self.fds.join["pid"], libc.CLONE_NEWPID)  # the next child is inside it
        elif self.plan.new_pid_namespace:
            libc.unshare(libc.CLONE_NEWPID)  # the next child is PID 1 of a new namespace
        ours, theirs = wire.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            self._child_stdio()
            keep = {theirs.fileno(), *(fd for fd in (self.fds.netns, self.fds.gate) if fd is not None)}
            _close_all_but(keep | set((self.fds.join or {}).values()))
            run_init(self.plan, theirs, self.fds.netns, self.fds.join, self.fds.gate)
        theirs.close()
        self.init_pid = pid
        return ours

    def _hand_plan_ahead(self, ahead: InitAhead) -> wire.Socket:
        """The init forked ahead gets the plan, the stdio, the netns and the gate; unless
        `direct`: the caller gave the command's process forked ahead its plan itself (and read
        whether its exec worked), and the init, which saw that process take it, only waits for it."""
        if self.fds.join is not None or not self.plan.new_pid_namespace:
            raise ValueError("an init forked ahead makes a sandbox of its own, it joins none")
        self.namespace_fds, ahead.namespace_fds = ahead.namespace_fds, {}
        self.init_pid = ahead.pid
        if not self.direct:
            extra = [fd for fd in (self.fds.netns, self.fds.gate) if fd is not None]
            message = {"plan": self.plan.to_dict(), "netns": self.fds.netns is not None, "gate": self.gated}
            wire.send(ahead.sock, message, [self.fds.stdin, self.fds.stdout, self.fds.stderr, *extra])
        return ahead.sock

    def _child_stdio(self) -> None:
        for fd, target in ((self.fds.stdin, 0), (self.fds.stdout, 1), (self.fds.stderr, 2)):
            if fd != target:
                os.dup2(fd, target)

    # -- wait -------------------------------------------------------------------------------------

    def _loop(self, sock: wire.Socket, signal_fd: int) -> None:
        relay = _Relay(self.fds.stdin, self.fds.stdout) if self.plan.tty else None
        control = self.fds.control
        raw = relay is not None and terminal.is_terminal(self.fds.stdin)
        talking = True  # the init's socket is open; at its end, reading it again would spin
        with terminal.RawMode(self.fds.stdin, enabled=raw):
            while self._init_status is None:
                readers = [signal_fd, *([sock.fileno()] if talking else [])]
                readers += [*([control] if control is not None else []), *self._watched]
                if relay is not None:
                    readers += relay.readers(self._master)
                try:
                    ready, _, _ = select.select(readers, [], [], self._poll_interval(talking))
                except InterruptedError:
                    continue
                self._check_ready()
                if talking and sock.fileno() in ready:
                    talking = self._on_message(sock)
                if not talking:
                    self._reap()  # the init is exiting: SIGCHLD says when, this is the backstop
                if signal_fd in ready:
                    self._on_signals(libc.signalfd_read(signal_fd), relay)
                if control is not None and control in ready and not self._on_control(control):
                    control = None
                if self.ended_early:
                    control = None  # what the controller says next is for after run()
                self._on_watched(ready)
                if relay is not None and self._master is not None:
                    relay.pump(ready, self._master)
            while select.select([sock], [], [], 0)[0] and self._on_message(sock):
                pass  # what the init said before it exited
            if relay is not None and self._master is not None:
                relay.drain(self._master)

    def _on_watched(self, ready: list[int]) -> None:
        # handlers of one fd take its answers in the order they were asked for: an early
        # hand-over's outcome, then the acknowledgement of "started", on the same connection
        for fd in [fd for fd in self._watched if fd in ready]:
            handlers = self._watched[fd]
            if not handlers[0]():
                handlers.pop(0)
                if not handlers:
                    del self._watched[fd]

    def _poll_interval(self, talking: bool) -> float | None:
        if self._ready_deadline is not None or self._kill_deadline is not None:
            return _READY_POLL
        return None if talking else _GONE_POLL

    def _check_ready(self) -> None:
        now = time.monotonic()
        if self._kill_deadline is not None and now >= self._kill_deadline:
            self._kill_deadline = None
            self.kill()
        if self._ready_deadline is None or self.init_pid is None or self._command_done:
            return
        if self.ready is not None and self.ready(self.init_pid):
            self._ready_deadline = None
            if self.on_ready is not None:
                self.on_ready()
        elif now >= self._ready_deadline:
            self._ready_deadline = None
            self.not_ready = True
            self.forward(signals.SIGTERM)
            self._kill_deadline = now + _STOP_GRACE

    def _on_signals(self, received: list[tuple[int, int, int]], relay: _Relay | None) -> None:
        for signo, _code, _sender in received:
            if signo == signals.SIGCHLD:
                self._reap()
            elif self.gated and self.on_gated_signal is not None and self.on_gated_signal(signo):
                pass  # taken to abort the set-up
            elif signo == signals.SIGWINCH and relay is not None and self._master is not None:
                terminal.copy_window_size(self.fds.stdin, self._master)
            elif signo == signals.SIGTSTP and relay is None:
                # job control without a terminal of its own: the command stops, and so does
                # nsrun, so the shell gets the terminal back; `fg` sends SIGCONT, passed on too
                self.forward(signo)
                os.kill(os.getpid(), signals.SIGSTOP)
            else:
                self.forward(signo)

    def forward(self, signo: int) -> None:
        """Pass a signal on to the command (through its init); dropped once the command ended."""
        if self.init_pid is None or self._init_status is not None or self._command_done:
            return
        try:
            os.kill(self.init_pid, signo)
        except ProcessLookupError:
            pass  # it is ending: its SIGCHLD comes next

    def kill(self) -> None:
        """End the whole sandbox at once: SIGKILL of its init takes every process in it along."""
        if self.init_pid is not None and self._init_status is None:
            try:
                os.kill(self.init_pid, signals.SIGKILL)
            except ProcessLookupError:
                pass  # already gone

    def _reap(self) -> None:
        if self.init_pid is None:
            return
        try:
            pid, status = os.waitpid(self.init_pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.init_pid, 0
        if pid != self.init_pid:
            return
        self._init_status = status
        if self._outcome.status is None and self._outcome.failure is None:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_SETUP_FAILED:
                self._outcome.failure = "preparing the sandbox: its init failed"
            else:
                self._outcome.status = status  # the init was killed: the command with it

    def _on_message(self, sock: wire.Socket) -> bool:
        """Handle one message of the init; False when there was none (it closed its end)."""
        try:
            message, fds = wire.receive(sock, _MAX_FDS)
        except wire.WireError:
            return True  # that message is consumed and skipped: the next may be read
        except OSError:
            return False
        if message is None:
            return False
        event = message.get("event")
        if event == "ready":
            self.close()  # those of a view made ahead, built anew since
            self.namespace_fds = dict(zip(NAMESPACE_KINDS, fds, strict=False))
            if self.plan.tty and len(fds) > len(NAMESPACE_KINDS):
                self._master = fds[len(NAMESPACE_KINDS)]
                terminal.copy_window_size(self.fds.stdin, self._master)
        elif event == "command":
            wire.close_fds(fds)  # offered after the plan came: the init hands the plan on itself
        elif event == "started":
            self._command_started()
        elif event == "exited":
            self._command_done = True
            self._outcome.status = int(message["status"])
            if message.get("alone") and self.on_ended is not None and not self.ended_early:
                self.ended_early = True
                self.on_ended(self._outcome)
        elif event == "failed":
            self._outcome.failure = str(message.get("message", "preparing the sandbox failed"))
            self._outcome.failure_code = int(message.get("code", EXIT_SETUP_FAILED))
        return True

    def _command_started(self) -> None:
        self.command_pid = self._command_host_pid()
        if self.ready is not None:
            self._ready_deadline = time.monotonic() + self.ready_timeout
        if self.on_started is not None and self.init_pid is not None:
            self.on_started(Started.pinned(self.init_pid, self.command_pid or self.init_pid, self.namespace_fds))

    def _command_host_pid(self) -> int | None:
        """The command's pid as the host sees it: the init's only child."""
        return _only_child(self.init_pid) if self.init_pid is not None else None

    def _on_control(self, fd: int) -> bool:
        """A request from the controller; False once it is gone (then the sandbox ends)."""
        try:
            request, fds = wire.receive_on(fd, 0)
        except (OSError, wire.WireError):
            request, fds = None, []
        wire.close_fds(fds)
        if request is None:
            self.kill()
            return False
        if self.on_control is not None:
            self.on_control(request)
        elif request.get("op") == "signal":
            signo = request.get("signal")
            if isinstance(signo, int) and 0 < signo < signals.NSIG:  # anything else: not a signal to pass
                self.forward(signo)
        elif request.get("op") == "kill":
            self.kill()
        return True


def _only_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as source:
            children = source.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _own_pid_namespace_for_children() -> None:
    """Children of this process go into its own PID namespace again, not the sandbox's (whose
    init has ended: a fork into it fails, and a process can make a PID namespace only once)."""
    fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(fd, libc.CLONE_NEWPID)
    finally:
        os.close(fd)


def _close_all_but(keep: set[int]) -> None:
    """In the forked init: nothing of its parent's (sockets, pipes a caller waits on) stays open."""
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, _MAX_FD)


class _Relay:
    """Bytes between the caller's terminal and the sandbox's pseudo-terminal."""

    def __init__(self, stdin: int, stdout: int) -> None:
        self.stdin: int | None = stdin
        self.stdout = stdout
        self.master_open = True

    def readers(self, master: int | None) -> list[int]:
        found = []
        if self.stdin is not None and master is not None:
            found.append(self.stdin)
        if master is not None and self.master_open:
            found.append(master)
        return found

    def pump(self, ready: list[int], master: int) -> None:
        if self.stdin is not None and self.stdin in ready:
            data = _read(self.stdin)
            if data:
                _write_all(master, data)
            elif data is not None:
                self.stdin = None  # the caller's input ended; the sandbox keeps its output
        if self.master_open and master in ready:
            data = _read(master)
            if data:
                _write_all(self.stdout, data)
            elif data is not None:
                self.master_open = False

    def drain(self, master: int) -> None:
        while self.master_open and select.select([master], [], [], 0)[0]:
            data = _read(master)
            if not data:
                break
            _write_all(self.stdout, data)


def _read(fd: int) -> bytes | None:
    """Data, b"" at the end, None when there is nothing to read yet."""
    try:
        return os.read(fd, _CHUNK)
    except BlockingIOError:
        return None
    except OSError as err:
        if err.errno in (errno.EIO, errno.EBADF):  # the terminal's other side closed
            return b""
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError as err:
            if err.errno in (errno.EPIPE, errno.EIO, errno.EBADF):
                return  # nobody reads any more: drop the output, as a closed terminal would
            raise
