"""The command's side of a launch, the same whoever set the sandbox up (this process, or the warm
helper): run the shim here, tell the controller when the command started and ended (it records,
then tears down), and end as the command did. Stdlib only, and light: the thin client imports it
(no typing, dataclasses or json on this path; see `nsrun.process.wire`).
"""

from __future__ import annotations

import marshal
import os
import select
import sys

from nsrun.process import signals, wire

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, Protocol

    from nsrun.process.plan import ProcessPlan
    from nsrun.process.shim import Outcome, Shim, ShimFds, Started

    class Controller(Protocol):
        """Whoever set the sandbox up, and will tear it down."""

        def started(self, info: Started) -> tuple[int, Callable[[], bool]] | None:
            """Record the start; or say it, and return a descriptor whose answer comes while the
            command runs, with what reads it (False once read)."""
            ...

        def ended(self, status: int, release: Callable[[], None]) -> list[str]:
            """Tear down; what could not be undone. `status` as a shell reports it. Half-way
            (what joined the sandbox ended) `release` closes the shim side's descriptors."""
            ...

    class SetupGate(Protocol):
        """An early hand-over: the set-up goes on elsewhere while the command gets ready here."""

        def fileno(self) -> int:
            """Readable once the set-up has ended."""
            ...

        def outcome(self) -> dict[str, Any] | None:
            """How it ended: {"go": {}} (it opened the gate: the command runs), {"exit": STATUS}
            (it failed, said why and undid itself), or None (whoever set it up went away)."""
            ...

        def abort(self, signum: int) -> None:
            """Ask the set-up to stop and undo itself (its outcome then says whether it did)."""
            ...


__all__ = [
    "Launch",
    "Reporter",
    "SetupFailed",
    "detach",
    "drive",
    "read_report",
    "redirect_output",
    "show_report",
    "warn",
]

EXIT_NSRUN_FAILED: Final = 125
_LOG_TAIL_LINES: Final = 20
_REPORT_CHUNK: Final = 65536


class Launch:
    """What the shim side needs of a sandbox set up elsewhere."""

    def __init__(
        self,
        plan: ProcessPlan,
        fds: ShimFds,
        name: str,
        readiness: tuple[int, float] | None = None,
        log: str | None = None,  # a detached sandbox's log
        warnings: list[str] | None = None,
        owned: list[int] | None = None,  # descriptors this side holds for the sandbox's life
        # its teardown needs the namespaces pinned until it says "release"; else they are let go
        # when the command ends: the kernel then takes the network namespace down (and its veth)
        # while the teardown is asked for, not after
        pinned_for_teardown: bool = True,
    ) -> None:
        self.plan = plan
        self.fds = fds
        self.name = name
        self.readiness = readiness
        self.log = log
        self.warnings = warnings or []
        self.owned = owned or []
        self.pinned_for_teardown = pinned_for_teardown

    def release(self) -> None:
        wire.close_fds(self.owned)
        self.owned = []


class Reporter:
    """The answer a detached sandbox owes the nsrun that waits for it: said once, then closed."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @property
    def waiting(self) -> bool:
        """Someone waits for the report (the nsrun that detached the sandbox)."""
        return self._fd is not None

    def send(self, report: dict[str, Any]) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, marshal.dumps(report))
        except OSError:
            pass  # the caller is gone: it did not wait for the answer
        finally:
            os.close(fd)


def detach(body: Callable[[int], int]) -> dict[str, Any]:
    """Run `body` in a process of its own, in a new session (a detached sandbox's keeper, which
    outlives this one), and return what it reported on the descriptor `body` is given. A bug in
    it is reported as an internal error (its output goes to the sandbox's log by then)."""
    report_read, report_write = os.pipe()
    if (keeper := os.fork()) == 0:
        os.close(report_read)
        os.setsid()
        status = EXIT_NSRUN_FAILED
        try:
            status = body(report_write)
        except Exception as err:  # noqa: BLE001  # a bug: said by the nsrun that waits
            failure = f"internal error: {type(err).__name__}: {err} (rerun with --debug and report it)"
            try:
                os.write(report_write, marshal.dumps({"error": failure, "code": EXIT_NSRUN_FAILED}))
            except OSError:
                pass  # nobody waits any more
        finally:
            os._exit(status)
    os.close(report_write)
    return read_report(report_read, keeper)


def read_report(fd: int, keeper: int) -> dict[str, Any]:
    """What a detached sandbox's keeper reported (closes `fd`); {} if it said nothing. Signals
    to this process meanwhile (a Ctrl-C: `keeper` is in a session of its own) are passed on to
    `keeper`, which takes them as a foreground nsrun does (the set-up is undone, or the command
    gets them), and the report says so ("interrupted": the first). The first report is the one
    read: one sent after it does not count."""
    from nsrun.cli.entry import pending_signals

    raw, passed = b"", 0
    wakeup = signals.Wakeup()
    try:
        with wakeup as wake:
            while True:
                held = pending_signals()
                for signo in held[passed:]:
                    try:
                        os.kill(keeper, signo)
                    except ProcessLookupError:
                        pass  # it has ended: its report says how
                passed = len(held)
                ready = select.select([fd, wake], [], [])[0]
                if wake in ready:
                    wakeup.drain()
                if fd in ready:
                    if not (chunk := os.read(fd, _REPORT_CHUNK)):
                        break
                    raw += chunk
    finally:
        os.close(fd)
    try:
        report = marshal.loads(raw) if raw else {}  # from our own child, over a pipe
    except (EOFError, ValueError, TypeError):
        report = {}
    report = report if isinstance(report, dict) else {}
    held = pending_signals()
    return report | {"interrupted": held[0]} if held else report


def show_report(report: dict[str, Any]) -> int:
    """In the nsrun that detached a sandbox: print its name once it runs, or why not."""
    if "name" in report:
        print(report["name"], flush=True)
        return 0
    if report.get("said") or report.get("interrupted"):  # said why itself, or the user stopped it
        return int(report.get("code", EXIT_NSRUN_FAILED))
    print(f"nsrun: {report.get('error', 'the sandbox ended before its command started')}", file=sys.stderr)
    if report.get("log"):
        print(report["log"], end="" if report["log"].endswith("\n") else "\n", file=sys.stderr)
    return int(report.get("code", EXIT_NSRUN_FAILED))


def redirect_output(log_fd: int) -> None:
    """A detached sandbox: no terminal, output (the command's and nsrun's own) to the log."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)


def _log_tail(path: str | None) -> str:
    if path is None:
        return ""
    try:
        with open(path, errors="replace") as source:
            return "".join(source.readlines()[-_LOG_TAIL_LINES:])
    except OSError:
        return ""


def warn(text: str) -> None:
    print(f"nsrun: warning: {text}", file=sys.stderr)


class SetupFailed(Exception):  # noqa: N818  # not an error of this process: the set-up said why
    """The set-up behind an early hand-over failed (its exit status) or its maker went away (None)."""

    def __init__(self, status: int | None) -> None:
        super().__init__(status)
        self.status = status


def drive(launch: Launch, controller: Controller, reporter: Reporter, gate: SetupGate | None = None) -> int:
    """Run the sandbox's shim in this process; its status (or death by its command's signal).
    With `gate`, the set-up is still under way: the command runs once it has ended, and if it
    fails, nothing runs (SetupFailed; death by the signal that aborted it)."""
    from nsrun.cli.entry import die_by, take_pending
    from nsrun.process.readiness import listening
    from nsrun.process.shim import Shim

    for warning in launch.warnings:
        warn(warning)
    port = launch.readiness[0] if launch.readiness else None

    acknowledged: list[Callable[[], bool]] = []

    def started(info: Started) -> None:
        if (answer := controller.started(info)) is not None:
            shim.watch(*answer)
            acknowledged.append(answer[1])
        if port is None:
            report({"name": launch.name})

    def report(message: dict[str, Any]) -> None:
        # whoever hears that the sandbox runs may join it next (`nsrun exec`): its record says so first
        if reporter.waiting:
            for settle in acknowledged:
                settle()
        reporter.send(message)

    shim = Shim(
        launch.plan,
        launch.fds,
        on_started=started,
        ready=(lambda init: listening(init, port)) if port is not None else None,
        ready_timeout=launch.readiness[1] if launch.readiness else 0.0,
        on_ready=(lambda: report({"name": launch.name})) if port is not None else None,
        held=take_pending,
    )
    watch = _GateWatch(gate, shim) if gate is not None else None
    try:
        outcome = _run(shim, watch)

        def release() -> None:
            shim.close()
            launch.release()

        if not launch.pinned_for_teardown:
            release()
        failures = controller.ended(outcome.exit_code, release)
    finally:
        shim.close()
        launch.release()
    for failure in failures:
        warn(f"{failure} (run `nsrun doctor`)")
    return _conclude(launch, shim.not_ready, outcome, reporter, die_by)


class _GateWatch:
    """The gated shim's side of an early hand-over: "go" opens the gate; a failed set-up ends the
    init (the command never ran); a signal meanwhile aborts the set-up, as it would before it."""

    def __init__(self, gate: SetupGate, shim: Shim) -> None:
        self.gate = gate
        self.shim = shim
        self.aborted: list[int] = []
        self.failed: list[dict[str, Any] | None] = []
        shim.on_gated_signal = self.on_signal
        shim.watch(gate.fileno(), self.on_outcome)

    def on_signal(self, signum: int) -> bool:
        from nsrun.cli.entry import HELD_SIGNALS

        if signum not in HELD_SIGNALS:
            return False
        if not self.aborted:
            self.gate.abort(signum)
        self.aborted.append(signum)
        return True

    def on_outcome(self) -> bool:
        if (message := self.gate.outcome()) is not None and "go" in message:
            self.shim.gate_opened(self.aborted)  # too late to abort: the command gets them, as it would have
        else:
            self.failed.append(message)
            self.shim.kill()  # its init, and the command waiting to exec, go unrun
        return False

    def settle(self, signum: int) -> None:
        """A signal came before the shim ran: the set-up is asked to stop. If it did, nothing runs
        (death by the signal); if it had ended already, the sandbox is torn down as interrupted."""
        from nsrun.cli.entry import die_by

        self.gate.abort(signum)
        message = self.gate.outcome()
        if message is None or "go" not in message:
            die_by(signum)

    def conclude(self) -> None:
        """After the shim: SetupFailed (or death by the signal that aborted it) if it never ran."""
        from nsrun.cli.entry import die_by

        if self.shim.gated:
            # the init ended before the set-up's outcome was read (the gate closed unopened, or
            # the command ran and ended at once): it comes, or the connection's end does
            self.on_outcome()
        if not self.failed:
            return
        if self.aborted:
            die_by(self.aborted[0])
        message = self.failed[0]
        raise SetupFailed(int(message["exit"]) if message is not None and "exit" in message else None)


def _run(shim: Shim, watch: _GateWatch | None) -> Outcome:
    from nsrun.cli.entry import pending_signal

    if (signum := pending_signal()) is not None:
        # a signal that came while it was set up: the command never starts
        if watch is not None:
            watch.settle(signum)
        return _interrupted(signum)
    outcome = shim.run()
    if watch is not None:
        watch.conclude()
    return outcome


def _interrupted(signum: int) -> Outcome:
    from nsrun.process.shim import Outcome

    return Outcome(status=signum)  # as if the command had died of it


def _conclude(launch: Launch, not_ready: bool, outcome: Outcome, reporter: Reporter, die_by: Any) -> int:
    failure, code = outcome.failure, outcome.exit_code
    if not_ready and launch.readiness is not None:
        port, timeout = launch.readiness
        failure = f"sandbox {launch.name!r}: port {port} did not listen within {timeout:g}s, so it was stopped"
        code = EXIT_NSRUN_FAILED
    if failure is not None:
        reporter.send({"error": failure, "code": code, "log": _log_tail(launch.log)})
        print(f"nsrun: {failure}", file=sys.stderr)
        return code
    reporter.send({"error": "the command ended before it was ready", "code": code})
    if (signum := outcome.signal) is not None:
        die_by(signum)
    return code
