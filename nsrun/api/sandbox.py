"""`nsrun.Sandbox`: a handle on one sandbox, for test suites and other long-lived Python programs.

    from nsrun import Sandbox

    with Sandbox(["redis-server", "--port", "6379"], publish=[6379], name="cache") as redis:
        redis.wait_for_port(6379)
        client = Redis(host="127.0.0.1", port=redis.host_port(6379))   # or redis.address:6379

The handle touches only its own sandbox's processes: its shim is a small subprocess of its own
(nothing is done to the caller's children, signal handlers, environment, working directory or
other threads' namespaces), each handle has its own lock, and it prints nothing: failures raise
NsrunError subclasses, warnings are in `warnings`. The command's output goes to a log file
(`logs()`, `wait_for_log()`), kept after the sandbox ends. With `pool=` (`nsrun.Pool`), it starts
in a sandbox set up ahead.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Final, Self

from nsrun.api import arguments
from nsrun.errors import NsrunError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from types import TracebackType

    from nsrun.api.pool import Pool
    from nsrun.api.prepared import CommandAhead, Prepared
    from nsrun.launch.sandbox import Sandbox as Launch
    from nsrun.process.plan import ProcessPlan
    from nsrun.process.shim import Started
    from nsrun.state.paths import StateDirs

__all__ = ["Sandbox", "SandboxExitedError", "SandboxTimeoutError"]

_POLL: Final = 0.02
_START_TIMEOUT: Final = 60.0
_REPORT_MAX: Final = 4096  # what a command's process writes when its exec failed: 1 KiB at most
_LOG_TAIL: Final = 2000
_RELEASED_WAIT: Final = 5.0  # seconds: a shim answers "release" within a millisecond or two


class SandboxExitedError(NsrunError):
    """The sandbox's command ended while something waited for it to be ready."""


class SandboxTimeoutError(NsrunError):
    """Something waited longer than its timeout."""


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    from nsrun.process import wire

    wire.send(sock, message, fds)


def _receive(sock: socket.socket, timeout: float | None = None) -> dict[str, Any] | None:
    from nsrun.process import wire

    sock.settimeout(timeout)
    try:
        message, fds = wire.receive(sock, 0)
    except (TimeoutError, OSError, wire.WireError):
        return None
    wire.close_fds(fds)
    return message


def _direct(prepared: Prepared) -> CommandAhead | None:
    """The command's process forked ahead in the spare's view, if its plan runs in that view as
    it is (no volumes, tmpfs or terminal of its own): it is then given the plan directly."""
    ahead = prepared.command_ahead()
    plan, view = prepared.launch.plan, prepared.view
    if ahead is None or plan is None or view is None or plan.tty or plan.view_added_to(view) != ():
        return None
    return ahead


def _returncode_of(ended: dict[str, Any] | None) -> tuple[int, str | None]:
    """The return code (as subprocess's) and the failure of the shim's "ended" message; none came: killed."""
    status = ended.get("status") if ended else None
    if status is not None:
        return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), None
    if ended and ended.get("failure"):
        return int(ended.get("code", 125)), str(ended["failure"])
    return -signal.SIGKILL, None


class _SpareLost(Exception):  # noqa: N818  # not an error of the caller's: the shim is gone
    """The shim ended before it took its plan: nothing of the command ran."""


def _check_pooled(*, net: str, network: str | None, own: tuple[Any, ...]) -> None:
    """A pooled sandbox's network was made ahead, as its pool says: it cannot ask for its own."""
    if net != "bridge" or network is not None or any(own):
        raise UsageError(
            "options of a sandbox with pool=",
            "its network was made ahead by the pool: net, network, name, hostname, ip, mac, publish, dns"
            " and dirs are the pool's",
            "give net, network and dns to Pool(...); for a name, an address or a published port, leave pool out",
        )


class Sandbox:
    """One sandbox: `start()` it (or use it as a context manager), then `stop()` it."""

    def __init__(  # noqa: PLR0913  # the keywords mirror the CLI's options
        self,
        command: Sequence[str],
        *,
        net: str = "bridge",
        network: str | None = None,
        name: str | None = None,
        hostname: str | None = None,
        ip: str | None = None,
        mac: str | None = None,
        publish: Sequence[int | str | tuple[int, int]] = (),
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        dns: Sequence[str] = (),
        volumes: Sequence[str] = (),
        tmpfs: Sequence[str] = (),
        read_only: bool = False,
        cap_add: Sequence[str] = (),
        cap_drop: Sequence[str] = (),
        privileged: bool = False,
        dirs: StateDirs | None = None,
        pool: Pool | None = None,
    ) -> None:
        """Checks every option now (UsageError); nothing is touched before `start()`. With `pool`,
        it starts in one of the pool's sandboxes made ahead: its network options are the pool's."""
        from nsrun.launch.request import SandboxRequest
        from nsrun.state.paths import StateDirs

        argv = arguments.words("command", command, paths=True)
        # scalars as the CLI would have them (a None where a string belongs says so here)
        net = arguments.text("net", net) or ""
        network = arguments.text("network", network)
        name = arguments.text("name", name)
        hostname = arguments.text("hostname", hostname)
        ip = arguments.text("ip", ip)
        mac = arguments.text("mac", mac)
        workdir = arguments.text("workdir", workdir, paths=True)
        read_only = arguments.flag("read_only", read_only)
        privileged = arguments.flag("privileged", privileged)
        if pool is not None:
            _check_pooled(net=net, network=network, own=(name, hostname, ip, mac, publish, dns, dirs))
            net, network, dns = pool.net, pool.network, pool.dns
        self._pool = pool
        self._request = SandboxRequest.parse(
            argv,
            net=net,
            network=network,
            name=name,
            hostname=hostname,
            ip=ip,
            mac=mac,
            publish=arguments.publish_specs(publish),
            user=arguments.user(user),
            env=arguments.environment(env),
            workdir=workdir,
            dns=arguments.words("dns", dns),
            volumes=arguments.words("volumes", volumes),
            tmpfs=arguments.words("tmpfs", tmpfs),
            read_only=read_only,
            cap_add=arguments.words("cap_add", cap_add),
            cap_drop=arguments.words("cap_drop", cap_drop),
            privileged=privileged,
        )
        self._dirs = pool.dirs if pool is not None else dirs or StateDirs()
        self._lock = threading.RLock()
        self._ended = threading.Condition(self._lock)
        self._launch: Launch | None = None
        self._shim: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._watcher: threading.Thread | None = None
        self._release_sent = False  # the shim was told to release the namespaces (and answers)
        self._returncode: int | None = None
        self._failure: str | None = None
        self._log: Path | None = None
        self._last_words = ""  # the log's end, of a start that failed
        self._started: dict[str, Any] = {}
        self.stopped = False  # stop() or kill() was asked for: an end that is no surprise
        self.warnings: list[str] = []

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Set the sandbox up and start its command; returns once the command runs (its exec worked).
        Raises NsrunError (the command not found, no free address, ...); nothing is left then."""
        from nsrun.launch.privileges import require_root

        require_root()
        with self._lock:
            if self._launch is not None:
                raise NsrunError(f"starting sandbox {self.name!r}", "it was started already", "use a new Sandbox")
            self._start()
        return self

    def _start(self) -> None:
        from nsrun.api.prepared import Prepared

        # a pool's spare whose shim died before it took its plan is passed over: nothing of its
        # command ran (the shim says when it took the plan), so the next one may run it
        for _ in range(self._pool.size if self._pool is not None else 0):
            spare = self._pool.take() if self._pool is not None else None
            if spare is None:
                break
            try:
                self._start_prepared(spare)
            except _SpareLost:
                continue
            return
        try:
            self._start_prepared(Prepared.make(self._request, self._dirs))  # raises, leaving nothing
        except _SpareLost:
            raise self._shim_lost() from None

    def _start_prepared(self, prepared: Prepared) -> None:
        from nsrun.state.logbook import LogBook, LogEntry

        launch = prepared.launch
        self._launch, self._shim, self._control, self._log = launch, prepared.shim, prepared.control, prepared.log
        logbook = LogBook(self._dirs)
        decided = threading.Event()  # the start succeeded (the watcher takes over) or failed
        try:
            assigned = launch.request is not self._request
            if assigned:
                launch.assign(self._request)  # a pool's: made ahead, it gets its command now
            self.warnings = list(launch.warnings)
            plan = launch.plan.to_dict() if launch.plan is not None else {}
            ahead = _direct(prepared)
            try:
                if ahead is not None:
                    prepared.hand_over_direct(plan, ahead)
                else:
                    prepared.hand_over({"plan": plan, "netns": launch.netns_fd is not None})
            except OSError:
                raise _SpareLost from None
            # the watcher's thread is started while the shim starts the command, off the launch's path
            self._watcher = threading.Thread(
                target=self._watch, args=(launch, decided), name=f"nsrun-{launch.sandbox_id}", daemon=True
            )
            self._watcher.start()
            # the books are written while the shim starts the command; if they cannot be, the
            # sandbox is ended and the start fails, as if it had failed before
            if ahead is not None:
                self._note_started(launch, ahead.started)  # as it will be once its exec worked
            elif assigned:
                launch.save_record()
            logbook.record(LogEntry(launch.sandbox_id, launch.name, self._request.argv, time.time(), logged=True))
            if ahead is not None:
                self._await_exec(ahead)
            else:
                self._await_start(launch)
        except BaseException:
            self._abort()
            decided.set()  # the watcher, if it was started, ends: there is nothing to watch
            self._last_words = self.logs()[-_LOG_TAIL:]  # what a shim that died said: for the error
            with contextlib.suppress(NsrunError):
                logbook.remove(launch.sandbox_id)  # a start that failed leaves nothing; the error says why
            raise
        decided.set()

    def _shim_lost(self) -> NsrunError:
        said = f"; it said: {self._last_words.strip()!r}" if self._last_words.strip() else ""
        return NsrunError(
            f"starting sandbox {self.name!r}",
            f"its shim ({sys.executable} -I -S) ended before the command started{said}",
            "`nsrun doctor` checks the installation",
        )

    def _await_start(self, launch: Launch) -> None:
        from nsrun.process.shim import Started

        if self._control is None:
            return
        message = _receive(self._control, _START_TIMEOUT)
        while message is not None and message.get("event") == "ahead":  # offered too late (and closed)
            message = _receive(self._control, _START_TIMEOUT)
        if message is None:
            raise _SpareLost  # it never took the plan
        if message.get("event") == "planned":
            message = _receive(self._control, _START_TIMEOUT)
        if message is None:
            raise self._shim_lost()
        if message.get("event") == "ended":
            self._control_done()
            failure = message.get("failure") or "the command ended at once"
            from nsrun.errors import CommandError

            raise CommandError(
                f"starting sandbox {self.name!r}",
                failure,
                None,  # the init's message says what to do where it knows (as the CLI shows it)
                exit_code=int(message.get("code", 125)),
            )
        self._note_started(launch, Started.from_message(message))

    def _note_started(self, launch: Launch, started: Started) -> None:
        self._started = {"init_pid": started.init_pid, "command_pid": started.command_pid}
        launch.started(started)

    def _await_exec(self, ahead: CommandAhead) -> None:
        """The command's process forked ahead was given its plan here: its report pipe comes to
        its end at its exec, or says first why that failed."""
        from nsrun.errors import CommandError

        try:
            if not select.select([ahead.report], [], [], _START_TIMEOUT)[0]:
                raise self._shim_lost()
            said = b""
            while chunk := os.read(ahead.report, _REPORT_MAX):
                said += chunk  # it exits right after it wrote
        finally:
            ahead.close()
        if said:
            code, _, failure = said.decode(errors="replace").partition(" ")
            raise CommandError(
                f"starting sandbox {self.name!r}",
                failure,
                None,  # its message says what to do where it knows (as the CLI shows it)
                exit_code=int(code) if code.isdigit() else 125,
            )

    def _abort(self) -> None:
        """Undo a start that failed half-way: the shim goes (with everything in the sandbox)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._shim is not None:
            with contextlib.suppress(ProcessLookupError):
                self._shim.kill()
            self._shim.wait()
        if self._launch is not None or self._shim is not None:
            launch = self._launch
            self._launch = None
            if launch is not None:
                with contextlib.suppress(NsrunError):
                    launch.teardown()

    def _watch(self, started: Launch, decided: threading.Event) -> None:
        """Once the start of `started` succeeded: wait for the command to end, then tear the host
        side down and release the shim."""
        decided.wait()
        if self._launch is not started:
            return  # that start failed, and was undone (a pool's next spare may be tried)
        message = None
        while self._control is not None:
            message = _receive(self._control)
            if message is None or message.get("event") == "ended":
                break
        launch = self._launch
        failures = []
        if launch is not None:
            try:
                launch.teardown(self._release_shim)
            except NsrunError as err:
                failures.append(str(err))
            self._await_released()
        self._control_done()
        returncode, failure = _returncode_of(message)
        if launch is not None:
            self._note_end(launch.sandbox_id, returncode)
        with self._lock:
            self._returncode, self._failure = returncode, failure
            self.warnings += failures
            self._ended.notify_all()
        # the shim holds nothing of the sandbox's any more, and was told it is done: it is
        # reaped as it exits (0.4-0.8 ms later), after the waiters are told the sandbox ended
        if self._shim is not None:
            self._shim.wait()

    def _note_end(self, sandbox_id: str, returncode: int) -> None:
        from nsrun.state.logbook import LogBook

        with contextlib.suppress(NsrunError):
            LogBook(self._dirs).ended(sandbox_id, 128 - returncode if returncode < 0 else returncode)

    def _release_shim(self) -> None:
        """Half-way through the teardown: the shim closes the namespaces it pins."""
        if self._control is not None:
            with contextlib.suppress(OSError):
                _send(self._control, {"op": "release"})
                self._release_sent = True

    def _await_released(self) -> None:
        """The shim answers "release" once its init is reaped: wait() returns only once nothing
        of the sandbox runs (the init exits while the host side is torn down, so the answer has
        most often come by then; under load it had not, once in a CI run)."""
        if not self._release_sent:
            return
        deadline = time.monotonic() + _RELEASED_WAIT
        while self._control is not None and (remaining := deadline - time.monotonic()) > 0:
            message = _receive(self._control, remaining)
            if message is None or message.get("event") == "released":
                return  # answered, or the shim is gone (and its init with it)

    def _control_done(self) -> None:
        if self._control is not None:
            with contextlib.suppress(OSError):
                _send(self._control, {"op": "done"})
            self._control.close()
            self._control = None

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM to the command; after `timeout` seconds SIGKILL of the whole sandbox. Its
        return code (negative: the signal that ended it)."""
        timeout = arguments.seconds("timeout", timeout)
        with self._lock:
            if self._launch is None:
                raise NsrunError(f"stopping sandbox {self.name!r}", "it was not started", "call start() first")
            self.stopped = True
            if self._returncode is None:
                self.send_signal(signal.SIGTERM)
                if not self._ended.wait_for(lambda: self._returncode is not None, timeout):
                    self.kill()
        return self.wait()

    def send_signal(self, signum: int | str) -> None:
        """Pass a signal to the command (through the sandbox's init): a number (signal.SIGTERM)
        or a name ("TERM", "SIGTERM"); UsageError for anything else."""
        signo = arguments.signal_number(signum)
        with self._lock:
            if self._returncode is None and self._control is not None:
                with contextlib.suppress(OSError):
                    _send(self._control, {"op": "signal", "signal": signo})

    def kill(self) -> None:
        """End the whole sandbox at once (SIGKILL of its init: everything in it goes)."""
        with self._lock:
            self.stopped = True
            if self._returncode is None and self._control is not None:
                with contextlib.suppress(OSError):
                    _send(self._control, {"op": "kill"})

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the sandbox has ended and been torn down; its return code."""
        if timeout is not None:
            timeout = arguments.seconds("timeout", timeout)
        with self._lock:
            if self._launch is None:
                raise NsrunError(f"waiting for sandbox {self.name!r}", "it was not started", "call start() first")
            if not self._ended.wait_for(lambda: self._returncode is not None, timeout):
                raise SandboxTimeoutError(
                    f"waiting for sandbox {self.name!r}", f"still running after {timeout}s", "stop() it"
                )
            return self._returncode if self._returncode is not None else -signal.SIGKILL

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._launch is not None:
            self.stop()

    # -- what it is -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        launch = self._launch
        return launch.name if launch is not None else (self._request.name or "sandbox")

    @property
    def id(self) -> str | None:
        return self._launch.sandbox_id if self._launch is not None else None

    @property
    def pid(self) -> int | None:
        """The command's pid, as this host sees it."""
        return int(self._started["command_pid"]) if self._started else None

    @property
    def returncode(self) -> int | None:
        """None while it runs; then its exit code, or -N if signal N ended it (as subprocess)."""
        return self._returncode

    @property
    def address(self) -> str | None:
        return self._launch.address if self._launch is not None else None

    @property
    def address6(self) -> str | None:
        launch = self._launch
        return str(launch.address6) if launch is not None and launch.address6 is not None else None

    def host_port(self, port: int, proto: str = "tcp") -> int:
        """The host port the sandbox's `port` is published on (chosen at start for `publish=[port]`)."""
        port = arguments.port(port)
        launch = self._launch
        mappings = launch.publish if launch is not None else ()
        for mapping in mappings:
            if mapping.port == port and mapping.proto == proto:
                return mapping.host_port
        raise NsrunError(
            f"host port of {port}/{proto}", f"sandbox {self.name!r} does not publish it", "pass publish=[port]"
        )

    # -- readiness and output -------------------------------------------------------------------

    def _ready_loop(self, what: str, timeout: float, check: Any) -> Any:
        deadline = time.monotonic() + arguments.seconds("timeout", timeout)
        while True:
            result = check()
            if result:
                return result
            if self._returncode is not None:
                raise SandboxExitedError(
                    f"waiting for {what} of sandbox {self.name!r}",
                    f"its command ended with {self._returncode}; its log ends with: {self.logs()[-_LOG_TAIL:]!r}",
                    "see why in its log",
                )
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(
                    f"waiting for {what} of sandbox {self.name!r}",
                    f"not there after {timeout}s; its log ends with: {self.logs()[-_LOG_TAIL:]!r}",
                    "give it a longer timeout, or see why in its log",
                )
            time.sleep(_POLL)

    def wait_for_port(self, port: int, timeout: float = 10) -> None:
        """Until a TCP socket listens on `port` inside the sandbox (no connection is made)."""
        from nsrun.process.readiness import listening

        port = arguments.port(port)
        init = int(self._started["init_pid"]) if self._started else 0
        self._ready_loop(f"port {port}", timeout, lambda: listening(init, port))

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10) -> re.Match[str]:
        """Until the command's output matches `pattern`; the match."""
        if not isinstance(pattern, str) and not (isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str)):
            raise UsageError(f"invalid pattern {pattern!r}", "the log is text: give a str pattern", "e.g. 'Ready'")
        try:
            regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        except re.error as err:
            raise UsageError(f"invalid pattern {pattern!r}", str(err), "give a regular expression (re syntax)") from err
        match: re.Match[str] | None = self._ready_loop(f"{regex.pattern!r}", timeout, lambda: regex.search(self.logs()))
        if match is None:
            raise SandboxTimeoutError(f"waiting for {regex.pattern!r}", "no match", "see logs()")
        return match

    def logs(self) -> str:
        """Everything the command wrote to its stdout and stderr so far."""
        if self._log is None:
            return ""
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def log_path(self) -> Path | None:
        return self._log

    # -- more commands inside -------------------------------------------------------------------

    def popen(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` inside the running sandbox (as `nsrun exec`): its namespaces, its
        confinement, its user unless `user`. The Popen's return code is the command's."""
        from nsrun.api.prepared import shim_command
        from nsrun.launch.joining import open_pinned, plan_exec

        words, environment = arguments.words("command", argv, paths=True), arguments.environment(env)
        record = self._record()
        plan: ProcessPlan = plan_exec(record, words, user=user, env=environment, workdir=workdir)
        kinds = ("net", "uts", "ipc", "pid", "mnt")
        fds = [open_pinned(record, kind) for kind in kinds]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(  # nsrun's own shim, argv as a list
                shim_command(theirs.fileno()),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
            _send(ours, {"plan": plan.to_dict(), "join": list(kinds)}, fds)
        finally:
            theirs.close()
            for fd in fds:
                os.close(fd)
        # the shim reports on this socket; closing our end would end the command: keep it with the Popen
        process.nsrun_control = ours  # type: ignore[attr-defined]
        return process

    def exec(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        input: bytes | None = None,  # noqa: A002  # as subprocess.run
        timeout: float | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` inside the sandbox to the end; its output and return code (as subprocess.run)."""
        argv = arguments.words("command", argv, paths=True)  # once: an iterator is read here
        if timeout is not None:
            timeout = arguments.seconds("timeout", timeout)
        process = self.popen(
            argv,
            user=user,
            env=env,
            workdir=workdir,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        with process:
            try:
                out, err = process.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired as expired:
                process.kill()
                process.wait()
                # as subprocess.run says it: the command that timed out, not nsrun's shim
                raise subprocess.TimeoutExpired(list(argv), expired.timeout, expired.output, expired.stderr) from None
            finally:
                process.nsrun_control.close()  # type: ignore[attr-defined]
        result = subprocess.CompletedProcess(list(argv), process.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def _record(self) -> Any:
        from nsrun.launch.records import is_stale, registry

        if self._launch is None:
            raise NsrunError(f"entering sandbox {self.name!r}", "it was not started", "start() it first")
        if self._returncode is not None:
            raise SandboxExitedError(
                f"entering sandbox {self.name!r}",
                f"it has ended (its command ended with {self._returncode})",
                "start a new Sandbox; logs() shows what it said",
            )
        return registry(self._dirs).find(self._launch.sandbox_id, is_stale)

    def __repr__(self) -> str:
        state = (
            "new" if self._launch is None else "running" if self._returncode is None else f"ended {self._returncode}"
        )
        return f"<nsrun.Sandbox {self.name} {state}>"
