"""A sandbox made up to its command: its host side set up (record, namespace, address, veth,
rules, /etc files) and its shim started, waiting for the process plan. `Sandbox.start()` makes
one and hands it its command at once; a `Pool` makes them ahead and hands them out.

Until its shim has the plan, the caller's process holds the sandbox's network namespace; the
shim, whose death makes the record and the lease stale, ends when the caller goes away. So a
crash at any point leaves nothing the next nsrun does not reclaim.

Once a spare's view made ahead stands, its shim offers the command's process its init forked
there (`CommandAhead`): a plan that runs in that view as it is goes to that process directly,
and its exec is read from its report pipe; caller, shim, init and command then hand the plan
over twice instead of three times, and its exec's news once instead of three times.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from nsrun.launch.request import SandboxRequest
    from nsrun.launch.sandbox import Sandbox as Launch
    from nsrun.process.plan import ProcessPlan
    from nsrun.process.shim import Started
    from nsrun.state.paths import StateDirs

__all__ = ["CommandAhead", "Prepared", "shim_command"]

_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])


def shim_command(control: int, *, ahead: bool = False) -> list[str]:
    """nsrun's own shim, in a light interpreter of its own, driven over the socket `control`.
    `ahead`: for a sandbox of its own, whose init it forks before the plan comes."""
    from nsrun.process.shim_main import AHEAD, BOOT

    return [sys.executable, "-I", "-S", "-c", BOOT, _PACKAGE_ROOT, str(control), *([AHEAD] if ahead else [])]


@dataclass
class CommandAhead:
    """The command's process a spare's init forked in its view made ahead, as its shim offers it:
    a plan sent to `sock` runs at once (two hand-overs fewer than through the shim and the init);
    `report` comes to its end at the exec, or says why that failed first. `started` is what the
    shim would report once the command runs."""

    sock: socket.socket
    report: int
    started: Started

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.close(self.report)


@dataclass
class Prepared:
    launch: Launch
    shim: subprocess.Popen[bytes]
    control: socket.socket  # our end; closing it before the plan is sent ends the shim
    log: Path  # the shim's stdout and stderr: the command's output, once it runs
    spare: bool = False  # no log yet (see make)
    view: ProcessPlan | None = None  # the plan whose view its init makes ahead (send_view)
    ahead: CommandAhead | None = None  # the command's process forked there, once offered

    @classmethod
    def make(cls, request: SandboxRequest, dirs: StateDirs, *, spare: bool = False) -> Prepared:
        """Set it up; raises NsrunError (no free address, no such network, ...) and leaves nothing
        then. A `spare` (a pool's) has no log until it is handed out: if its program dies first,
        no log file is left; the shim's own output goes nowhere meanwhile. Otherwise the shim
        writes to the log from its start (what a broken interpreter says is there)."""
        from nsrun.launch.records import reclaim_due
        from nsrun.launch.sandbox import Holder
        from nsrun.launch.sandbox import Sandbox as Launch
        from nsrun.process.liveness import boot_clock
        from nsrun.state.logbook import LogBook

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        launch = Launch(request, dirs=dirs, holder=Holder(0, 0.0, 0), sweep=reclaim_due(dirs))
        logbook = LogBook(dirs)
        try:
            output = subprocess.DEVNULL if spare else logbook.open_log(launch.sandbox_id)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        try:
            not_before = boot_clock()  # the shim is forked between the two readings
            shim = subprocess.Popen(  # nsrun's own shim, argv as a list
                shim_command(theirs.fileno(), ahead=True),  # its init is forked while the sandbox is set up
                stdin=subprocess.DEVNULL,
                stdout=output,  # the sandbox's log in any case, once it is handed its plan
                stderr=output,
                pass_fds=[theirs.fileno()],
                start_new_session=True,  # a Ctrl-C meant for the caller reaches the command only by stop()
            )
            not_after = boot_clock()
        except BaseException:
            ours.close()
            with contextlib.suppress(NsrunError):
                logbook.remove(launch.sandbox_id)
            raise
        finally:
            theirs.close()
            if output != subprocess.DEVNULL:
                os.close(output)
        prepared = cls(launch, shim, ours, logbook.log_path(launch.sandbox_id), spare)
        try:
            # the shim holds the lease and the record; set-up goes on while it execs
            launch.holder = Holder.of_child(shim.pid, not_before, not_after)
            launch.setup()  # a failure rolls back what it did
        except BaseException:
            prepared.discard(set_up=False)
            raise
        prepared.send_view()
        return prepared

    def send_view(self) -> None:
        """The sandbox's view (its mounts and hostname, those of the plan it was set up with) is
        built by its init while it waits for a command: a plan that adds tmpfs mounts adds them to
        it; one with volumes, --read-only or --privileged has it built anew."""
        from nsrun.process import wire

        plan, netns = self.launch.plan, self.launch.netns_fd
        if plan is None or netns is None:
            return
        with contextlib.suppress(OSError):  # a shim gone: the hand-over finds out
            wire.send(self.control, {"view": plan.to_dict()}, [netns])
            self.view = plan

    def command_ahead(self) -> CommandAhead | None:
        """The command's process its init forked in the view made ahead, if its shim offered it
        by now (it does once that view stands)."""
        from nsrun.process import wire
        from nsrun.process.shim import COMMAND_AHEAD_FDS, Started

        if self.ahead is None:
            try:
                message, fds = wire.receive(self.control, COMMAND_AHEAD_FDS, socket.MSG_DONTWAIT)
            except (OSError, wire.WireError):
                return None  # none yet (or the shim is gone: the hand-over finds out)
            if message is None or message.get("event") != "ahead" or len(fds) != COMMAND_AHEAD_FDS:
                wire.close_fds(fds)
                return None
            try:
                started = Started.from_message(message)
                self.ahead = CommandAhead(socket.socket(fileno=fds[0]), fds[1], started)
            except (KeyError, TypeError, ValueError, OSError):
                wire.close_fds(fds)
                return None  # none usable: the plan goes through the shim and the init
        return self.ahead

    @property
    def alive(self) -> bool:
        return self.shim.poll() is None

    def hand_over(self, message: dict[str, Any]) -> None:
        """Start it: the shim gets `message` (the process plan), the sandbox's log as its output,
        and what it holds for the sandbox's life; this process's copies are closed."""
        from nsrun.process import wire
        from nsrun.state.logbook import LogBook

        if self.ahead is not None:
            self.ahead.close()  # the init hands the plan on itself
        log = LogBook(self.launch.dirs).open_log(self.launch.sandbox_id, fresh=self.spare)
        try:
            wire.send(self.control, {**message, "log": True, "ack": True}, [log, *self.launch.handoff_fds()])
        finally:
            os.close(log)
        self.launch.close()

    def hand_over_direct(self, plan: dict[str, Any], ahead: CommandAhead) -> None:
        """Start it through the command's process forked ahead (for a plan of the view made
        ahead, without a terminal): that process gets the plan, the sandbox's log as its output
        and /dev/null as its input; then its shim gets the plan, as `hand_over` gives it, and
        hands only the wait for it to the init. OSError if that process is gone (so is its shim:
        nothing ran, another spare may run the command); NsrunError if only the shim is."""
        from nsrun.process import wire
        from nsrun.state.logbook import LogBook

        log = LogBook(self.launch.dirs).open_log(self.launch.sandbox_id, fresh=self.spare)
        nothing = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # the command's process first: its start is the launch's path, the shim's and the
            # init's part is not (they only wait for it); were the shim gone, so is it (its init
            # dies with the shim, and it with its PID namespace)
            wire.send(ahead.sock, {"plan": plan, "tty": False, "gate": False}, [nothing, log, log])
            shim = {"plan": plan, "netns": self.launch.netns_fd is not None, "log": True, "direct": True}
            try:
                wire.send(self.control, shim, [log, *self.launch.handoff_fds()])
            except OSError as err:  # it went after its command's process took the plan: no other spare runs it
                raise NsrunError(
                    "starting a pooled sandbox",
                    f"its shim ended as its command was given its plan ({os.strerror(err.errno or 0).lower()})",
                    "see its log; `nsrun doctor` checks the installation",
                ) from err
        finally:
            os.close(nothing)
            os.close(log)
            ahead.sock.close()
        self.launch.close()

    def discard(self, *, set_up: bool = True) -> list[str]:
        """Undo it before its command has run: the shim goes, then the host side. What could
        not be undone."""
        from nsrun.state.logbook import LogBook

        if self.ahead is not None:
            self.ahead.close()
        self.control.close()
        with contextlib.suppress(ProcessLookupError):
            self.shim.kill()
        self.shim.wait()
        with contextlib.suppress(NsrunError):
            LogBook(self.launch.dirs).remove(self.launch.sandbox_id)  # it never ran: no log is kept
        if not set_up:
            return []
        try:
            self.launch.teardown()
        except NsrunError as err:
            return [str(err)]
        return []
