"""The `nsrun` command as a thin client of the warm helper. Stdlib only and light (no typing,
json, socket or signal module: see `nsrun.process.wire`): it starts in a few milliseconds and,
while its sandbox runs, holds a few megabytes.

It sends its command line, environment, working directory and stdio to the helper; for most
commands the helper's worker does everything and the client only passes on the exit status. For a
launch the worker sets the sandbox up and hands it over: this process becomes the sandbox's shim
(the command stays its child: its terminal, its signals, its exit status), says when the command
started and ended, and the helper tears down. `Unavailable` means: do it all in this process.
"""

from __future__ import annotations

import _socket
import fcntl
import marshal
import os
import select
import struct
import sys
import time

from nsrun.helper.protocol import LOCK_NAME, LOG_NAME, SOCKET_NAME, Channel, version
from nsrun.process import signals, wire

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, NoReturn

    from nsrun.process.shim import Started

__all__ = [
    "ABORT_WAIT",
    "ENV_HELPER",
    "RUN_DIR",
    "SENT",
    "TAKEN_WAIT",
    "Unavailable",
    "helper_wanted",
    "ping",
    "run_cni",
    "run_through_helper",
    "start_helper",
]

RUN_DIR: Final = "/run/nsrun"
# NSRUN_HELPER=off: every command in its own process, never through the warm helper
ENV_HELPER: Final = "NSRUN_HELPER"
_HELPER_OFF: Final = frozenset({"off", "0", "no", "false"})
_RETRY_AFTER_FAILURE: Final = 60.0
# seconds: the helper takes a request at once (its main loop only reads it and hands it to a
# worker; with 100 launches at once, the last within a second); one that does not is stuck
TAKEN_WAIT: Final = 5.0
# seconds: a set-up undone on a signal answers within milliseconds; a helper that does not is stuck
ABORT_WAIT: Final = 5.0
EXIT_LOST: Final = 125  # nsrun failed: a worker that ran a subcommand vanished before its answer
_ENV_IDLE: Final = "NSRUN_HELPER_IDLE"  # passed on to the helper it starts
_SO_PEERCRED_FORMAT: Final = "3i"
_HELPER_BOOT: Final = (
    "import sys; sys.path[:0] = sys.argv[1:]; del sys.argv[1:]; "
    "import runpy; runpy.run_module('nsrun.helper', run_name='__main__')"
)


class Unavailable(Exception):  # noqa: N818  # not an error: the in-process path takes over
    pass


SENT: Final = "sent"  # Unavailable's last argument when the helper went away after the request


def _peer(sock: wire.Socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end (SO_PEERCRED)."""
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize(_SO_PEERCRED_FORMAT))
    pid, uid, _ = struct.unpack(_SO_PEERCRED_FORMAT, raw)
    return int(pid), int(uid)


def _connect(path: str) -> wire.Socket | None:
    sock = wire.unix_socket()
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    if _peer(sock)[1] != 0:
        sock.close()  # only root's helper is trusted with root's commands
        return None
    return sock


def ping(run_dir: str = RUN_DIR, timeout: float = 2.0) -> tuple[int | None, bool]:
    """The running helper's pid (None: none runs) and whether it answered within `timeout`
    seconds (`nsrun doctor`: a stopped or hung one does not)."""
    sock = _connect(os.path.join(run_dir, SOCKET_NAME))
    if sock is None:
        return None, False
    channel = Channel(sock)
    try:
        pid = _peer(sock)[0]
        channel.send({"version": version(), "ping": True})
        return pid, not _unanswered(channel, timeout)
    except OSError:
        return None, False  # it went away meanwhile
    finally:
        channel.close()


def _helper_starting(run_dir: str) -> bool:
    """Whether a helper holds its lock: it runs, or is loading its modules."""
    try:
        fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def start_helper(run_dir: str = RUN_DIR) -> None:
    """Start a helper in the background (unless one runs or starts), for the commands that come
    next: called once a launch in-process has set its sandbox up, so that a command line that
    fails starts nothing. It is not started for NSRUN_HELPER=off, nor by anyone but root."""
    if os.geteuid() != 0 or not helper_wanted() or _helper_starting(run_dir) or _failed_lately(run_dir):
        return
    try:
        _spawn_helper()
    except OSError:
        pass  # the next command runs in-process too, and tries again


def _failed_lately(run_dir: str) -> bool:
    """A helper failed in the last minute (it says why in helper.log): not again so soon."""
    try:
        return time.time() - os.stat(os.path.join(run_dir, LOG_NAME)).st_mtime < _RETRY_AFTER_FAILURE
    except OSError:
        return False


def helper_wanted() -> bool:
    return os.environ.get(ENV_HELPER, "").strip().lower() not in _HELPER_OFF


def _spawn_helper() -> None:
    """Start a helper in the background, in a session of its own, with this nsrun's modules."""
    import subprocess

    import nsrun

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(nsrun.__file__)))
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # deleted: no path of the module path can be it
        cwd = None
    # this process's module path, less the script's directory or working directory it starts with
    path = [package_parent, *(p for p in sys.path[1:] if os.path.isabs(p) and p != cwd)]
    subprocess.Popen(  # nsrun's own helper, argv as a list
        [sys.executable, "-I", "-S", "-c", _HELPER_BOOT, *path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        env={"PATH": os.environ.get("PATH", os.defpath)} | {k: v for k, v in os.environ.items() if k == _ENV_IDLE},
        start_new_session=True,
        close_fds=True,
    )


def connect(run_dir: str = RUN_DIR) -> Channel:
    """A connection to the running helper; Unavailable if none runs (the command runs in-process,
    and a launch starts one for the commands that come next)."""
    sock = _connect(os.path.join(run_dir, SOCKET_NAME))
    if sock is None:
        raise Unavailable("no helper runs")
    return Channel(sock)


def _unanswered(channel: Channel, timeout: float) -> bool:
    """Whether nothing came from the helper within `timeout` seconds (a last look after it)."""
    return not select.select([channel.fileno()], [], [], max(0.0, timeout))[0]


class _Waiter:
    """Waits for the helper's answers; a signal meanwhile ends this process, or asks the helper
    to undo the set-up.

    The helper says at once that it took the request ({"taken"}); only then does this process
    send its stdio, which is the worker's go-ahead. A helper that does not within TAKEN_WAIT
    (stopped, hung) is passed over: Unavailable, the command line runs in-process, and the
    worker, should it ever get to the request, finds the connection closed and does nothing (the
    request held no descriptor, so none of this process's stays open in the helper's queue). A
    signal before that ends this process at once (nothing was taken); after it, the helper undoes
    the set-up and answers, and one that does not within ABORT_WAIT is left: this process dies of
    the signal, and what the helper made in its name is reclaimed once it is gone. A subcommand
    (exec, wait, stop...) is not a set-up: once the worker says it acts, this process's signals
    are passed on to the worker, as signals."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.aborted: int | None = None
        self.taken = False
        self.acting: int | None = None  # the worker's pid, once it said a subcommand acts there

    def await_taken(self) -> tuple[dict[str, Any] | None, list[int]]:
        """{"taken"}, or the helper's refusal ({"fallback"}; None: it went away)."""
        message, fds = self._next(time.monotonic() + TAKEN_WAIT)
        self.taken = message is not None and "taken" in message
        return message, fds

    def receive(self) -> tuple[dict[str, Any] | None, list[int]]:
        """The worker's answer, once the request was taken."""
        return self._next(None)

    def _next(self, deadline: float | None) -> tuple[dict[str, Any] | None, list[int]]:
        from nsrun.cli.entry import die_by, pending_signal

        wakeup = signals.Wakeup()
        with wakeup as wake:
            while True:
                if self.acting is not None:
                    self._pass_on()
                elif (signum := pending_signal()) is not None and self.aborted is None:
                    if not self.taken:
                        self.channel.close()
                        die_by(signum)
                    self.aborted = signum
                    deadline = time.monotonic() + ABORT_WAIT
                    try:
                        self.channel.send({"abort": signum})
                    except OSError:
                        pass  # the helper is gone: its answer (none) says so
                timeout = max(0.0, deadline - time.monotonic()) if deadline is not None else None
                ready, _, _ = select.select([self.channel.fileno(), wake], [], [], timeout)
                if self.channel.fileno() in ready:
                    message, fds = self.channel.receive()
                    if message is None or "acting" not in message:
                        if self.acting is not None:
                            signals.signal(signals.SIGWINCH, signals.SIG_DFL)
                        return message, fds
                    self._act(int(message["acting"]))
                    deadline = None  # a subcommand takes its time (`nsrun wait`, exec's command)
                if not ready and _unanswered(self.channel, 0):
                    self._give_up()
                wakeup.drain()

    def _act(self, worker: int) -> None:
        """The worker runs a subcommand (exec, wait, stop...): from now on this process's
        signals are the worker's, as they would be this process's own without a helper."""
        self.acting = worker
        # a terminal's resize: exec's relay there copies the new size to the sandbox's terminal
        signals.signal(signals.SIGWINCH, lambda _signum, _frame: _kill(worker, signals.SIGWINCH))
        if self.aborted is not None:  # it came before: the abort asked for it, this delivers it
            _kill(worker, self.aborted)
            self.aborted = None
        self._pass_on()

    def _pass_on(self) -> None:
        from nsrun.cli.entry import take_pending

        for signum in take_pending():
            if self.acting is not None:
                _kill(self.acting, signum)

    def _give_up(self) -> NoReturn:
        from nsrun.cli.entry import die_by

        pid = _peer(self.channel.sock)[0]
        self.channel.close()
        if self.aborted is not None:
            die_by(self.aborted)
        # one line: why this command line waited, and that it runs in-process now
        sys.stderr.write(
            f"nsrun: warning: the warm helper (pid {pid}) did not take the command within {TAKEN_WAIT:g}s:"
            f" running it in-process (if it stays so, `kill {pid}`: the next launch starts another)\n"
        )
        sys.stderr.flush()
        raise Unavailable("the helper did not take the request")


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it ended: its answer is coming


class _HelperController:
    """The helper set the sandbox up: tell it when the command started and ended."""

    def __init__(self, channel: Channel, sandbox_id: str, *, entry: bool) -> None:
        self.channel = channel
        self.sandbox_id = sandbox_id
        self.entry = entry
        self.lost = False
        self.ran = False
        self._started: Started | None = None  # said, its acknowledgement not read yet

    def _ask(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if self.lost:
            return None
        try:
            self.channel.send(message)
        except OSError:
            self.lost = True
            return None
        return self._answer()

    def _answer(self) -> dict[str, Any] | None:
        try:
            answer, fds = self.channel.receive()
        except OSError:
            answer, fds = None, []
        wire.close_fds(fds)
        if answer is None:
            self.lost = True
        return answer

    # an early hand-over (`SetupGate`): the worker goes on setting the sandbox up, then says how it ended
    def fileno(self) -> int:
        return self.channel.fileno()

    def outcome(self) -> dict[str, Any] | None:
        answer = self._answer()
        return None if answer is None or ("go" not in answer and "exit" not in answer) else answer

    def abort(self, signum: int) -> None:
        try:
            self.channel.send({"abort": signum})
        except OSError:
            pass  # the worker is gone: its outcome (none) says so

    def started(self, info: Started) -> tuple[int, Callable[[], bool]] | None:
        """Said, not waited for: the helper notes it in the record (1-2 ms) while the command
        runs. Its acknowledgement is read when it comes, or before the end is said."""
        self.ran = True
        data = {
            "id": self.sandbox_id,
            "init_pid": info.init_pid,
            "command_pid": info.command_pid,
            "namespaces": info.namespace_fds,
            "entry": self.entry,
        }
        try:
            self.channel.send({"started": data})
        except OSError:
            self.lost = True
        if self.lost:
            self._fallback_started(info)
            return None
        self._started = info
        return self.channel.fileno(), self._acknowledged

    def _acknowledged(self) -> bool:
        """The helper's answer to "started"; without one (it went away) the record is noted here."""
        info, self._started = self._started, None
        if info is not None and self._answer() is None:
            self._fallback_started(info)
        return False

    def ended(self, status: int, release: Callable[[], None]) -> list[str]:
        if self._started is not None:  # the answers come in order: "started"'s first
            self._started = None
            # unanswered (the helper went away), its start is not noted: the sandbox has ended
            # (its descriptors may be closed already) and is torn down next
            self._answer()
        # its id too: a command interrupted before it started never said "started"
        ended = {"status": status, "ran": self.ran, "id": self.sandbox_id, "entry": self.entry}
        answer = self._ask({"ended": ended})
        if answer is not None and "release" in answer:
            release()  # what joined the sandbox is ended: the namespaces may go
            answer = self._answer()
        if answer is not None:
            return [str(failure) for failure in answer.get("done", [])]
        return self._fallback_teardown(status, release)

    # without the helper (it died meanwhile): this process loads what it takes, only now
    def _record(self) -> Any:
        from nsrun.launch.records import registry
        from nsrun.state.paths import StateDirs

        record = registry(StateDirs()).get(self.sandbox_id)
        return record if record is not None and record.pid == os.getpid() else None

    def _fallback_started(self, info: Started) -> None:
        from nsrun.launch.records import note_started
        from nsrun.state.paths import StateDirs

        record = self._record()
        if record is not None:
            note_started(StateDirs(), record, info)

    def _fallback_teardown(self, status: int, release: Callable[[], None]) -> list[str]:
        from nsrun.errors import NsrunError
        from nsrun.launch.teardown import teardown_sandbox
        from nsrun.state.logbook import LogBook
        from nsrun.state.paths import StateDirs

        record = self._record()
        failures = teardown_sandbox(StateDirs(), record, pinned=True, release=release) if record is not None else []
        if self.entry:
            try:
                logbook = LogBook(StateDirs())
                if self.ran:
                    logbook.ended(self.sandbox_id, status)
                else:
                    logbook.remove(self.sandbox_id)
            except NsrunError as err:
                failures.append(str(err))
        return failures


def _request(argv: list[str], *, detached: bool) -> dict[str, Any]:
    umask = os.umask(0)
    os.umask(umask)
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        # deleted: the worker could not start where this process is; in-process, the command
        # line gets the error that says so (or runs, given an absolute --workdir)
        raise Unavailable("the current directory was deleted") from None
    return {
        "version": version(),
        "argv": argv,
        "env": dict(os.environ),
        "cwd": cwd,
        "umask": umask,
        "detached": detached,
    }


def _launch(channel: Channel, info: dict[str, Any], fds: list[int], report: int | None) -> int:
    from nsrun.cli.drive import Launch, Reporter, SetupFailed, drive, redirect_output
    from nsrun.process.plan import ProcessPlan
    from nsrun.process.shim import ShimFds

    gate = fds.pop() if info.get("gated") and fds else None  # an early hand-over's (sent last)
    if info.get("log") and fds:
        redirect_output(fds.pop())  # a detached sandbox writes to its log
    # the netns first (if it has one), then the published ports' sockets: held for the sandbox's life
    netns = fds[0] if info.get("netns") and fds else None
    readiness = info.get("readiness")
    launch = Launch(
        plan=ProcessPlan.from_dict(info["plan"]),
        fds=ShimFds(netns=netns, gate=gate),
        name=str(info["name"]),
        readiness=(int(readiness[0]), float(readiness[1])) if readiness else None,
        log=info.get("log"),
        warnings=[str(w) for w in info.get("warnings", [])],
        owned=fds + ([gate] if gate is not None else []),
        pinned_for_teardown=bool(info.get("pinned_for_teardown", True)),
    )
    controller = _HelperController(channel, str(info["id"]), entry=bool(info.get("entry")))
    try:
        return drive(launch, controller, Reporter(report), controller if gate is not None else None)
    except SetupFailed as failure:
        if failure.status is not None:
            return failure.status  # the worker said why, and undid its set-up
        _reclaim_own()  # the worker went away half-way: nothing ran, so the command line runs here
        raise Unavailable("the helper went away") from None


def _detach(argv: list[str]) -> int:
    """The sandbox's shim must outlive this process: a keeper of its own, in a new session, asks
    again; this one waits for its report."""
    from nsrun.cli.drive import detach, show_report

    def keep(report: int) -> int:
        try:
            return _serve(argv, detached=True, report=report)
        except Unavailable:
            os.write(report, marshal.dumps({"fallback": True}))  # the helper went away: the parent runs it
            return 125

    report = detach(keep)
    if report.get("fallback"):
        raise Unavailable("the helper went away")
    return show_report(report)


def _load_shim() -> None:
    """While the helper works: load what running a sandbox takes, in case it is a launch."""
    import nsrun.cli.drive
    import nsrun.process.readiness
    import nsrun.process.shim  # noqa: F401  # loaded, not used yet


def _ask(argv: list[str], *, detached: bool) -> tuple[Channel, dict[str, Any], list[int], int | None]:
    """Send the command line; the helper's answer (and the signal that aborted its set-up, if
    one came meanwhile). Unavailable whenever the helper cannot be used, whatever the reason:
    nothing has run yet, so the command line runs in-process instead."""
    channel = connect()
    waiter = _Waiter(channel)
    try:
        channel.send(_request(argv, detached=detached))
        message, fds = waiter.await_taken()
        if waiter.taken:
            channel.send({"stdio": True}, [0, 1, 2])  # the worker's go-ahead
            _load_shim()
            message, fds = waiter.receive()
    except Exception as err:  # a closed stdio descriptor, a helper that just went away
        channel.close()
        raise Unavailable(str(err)) from err
    if message is None and waiter.acting is not None:
        # a subcommand ran there and may have acted (exec's command ran): never run it again
        sys.stderr.write(
            f"nsrun: running the command line in the warm helper: its worker (pid {waiter.acting}) ended"
            " before it answered, and what it ran may have taken effect: not run again (see"
            f" {os.path.join(RUN_DIR, LOG_NAME)}; `nsrun doctor` checks the host)\n"
        )
        return channel, {"exit": EXIT_LOST}, [], None
    if message is None or "fallback" in message:
        channel.close()
        wire.close_fds(fds)
        if waiter.aborted is not None:
            from nsrun.cli.entry import die_by

            die_by(waiter.aborted)  # nothing runs in-process now; what the helper made is reclaimed
        if message is None:
            _reclaim_own()
        raise Unavailable(str(message.get("fallback") if message else "the helper went away"))
    return channel, message, fds, waiter.aborted


def _reclaim_own() -> None:
    """The helper went away while it set a sandbox up for this process: what it made (held in
    this process's name) goes before the command line runs in-process."""
    from nsrun.errors import NsrunError
    from nsrun.launch.records import registry
    from nsrun.launch.teardown import teardown_sandbox
    from nsrun.state.paths import StateDirs

    dirs = StateDirs()
    try:
        records = [record for record in registry(dirs).all_records() if record.pid == os.getpid()]
        for record in records:
            teardown_sandbox(dirs, record, pinned=False)
    except NsrunError:
        pass  # what is left is reclaimed once this process has ended


def _serve(argv: list[str], *, detached: bool, report: int | None = None) -> int:
    from nsrun.cli.entry import die_by

    channel, message, fds, aborted = _ask(argv, detached=detached)
    try:
        if "exit" in message:
            if message.get("die") is not None:
                die_by(int(message["die"]))  # as in-process: the command died of it, or a wait was interrupted
            if aborted is not None:
                die_by(aborted)
            if report is not None:
                # it ended before a launch (bad input): the worker said why on this stderr already
                os.write(report, marshal.dumps({"code": int(message["exit"]), "said": True}))
            return int(message["exit"])
        if "detach" in message:
            return _detach(argv)
        if "launch" in message:
            return _launch(channel, message["launch"], fds, report)
        wire.close_fds(fds)
        raise Unavailable(f"an answer nsrun does not know: {sorted(message)}")
    finally:
        channel.close()


def run_cni(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
    """A CNI call through the helper: (exit status, stdout). Unavailable: run it here (with SENT
    as its last argument if the helper's worker may have acted on it)."""
    channel = connect()
    try:
        try:
            channel.send({"version": version(), "cni": True})
        except OSError as err:
            raise Unavailable(str(err)) from err
        if _unanswered(channel, TAKEN_WAIT) and _unanswered(channel, 0):
            raise Unavailable("the helper did not take the call")  # its worker will find this closed
        message, fds = channel.receive()
        if message is not None and "taken" in message:
            try:
                channel.send({"cni": {"env": env, "stdin": stdin}})  # the worker's go-ahead
            except OSError as err:
                raise Unavailable(str(err)) from err  # not sent: its worker does nothing
            message, fds = channel.receive()
    finally:
        channel.close()
    wire.close_fds(fds)
    if message is None:
        raise Unavailable("the helper went away", SENT)
    if "cni" not in message:
        raise Unavailable(str(message.get("fallback", "the helper did not answer the CNI call")))
    status, out = message["cni"]
    return int(status), str(out)


def run_through_helper(argv: list[str]) -> int:
    """Run this command line through the helper; its exit status. Unavailable: run it here."""
    return _serve(argv, detached=False)
