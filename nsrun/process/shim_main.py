"""The shim as a process of its own, for callers that must not become one: the Python library
(a test suite, a long-lived service) starts it with `python -I -S` and drives it over a socket.

Protocol (SOCK_SEQPACKET, `nsrun.process.wire`: one marshalled dict per message, descriptors beside it):
  caller -> shim   {"view": plan} with the netns fd, first, optionally (with AHEAD): the view of the
                   plan the sandbox was set up with, which its init forked ahead builds meanwhile
  shim -> caller   {"event": "ahead", and what "started" says} with the socket and the report pipe
                   of the command's process the init forked in that view, once it stands: the
                   caller may give that process a plan of that view itself ({"plan", "tty": False,
                   "gate": False} with stdin, stdout, stderr); the report pipe ends at its exec, or
                   says why it failed; the init sees it take the plan (the end of its socket)
  caller -> shim   {"plan": ..., "log": bool, "netns": bool, "join": [kinds], "direct": bool} with the log
                   (if "log": it becomes the shim's stdout and stderr), the netns fd (if "netns"), the
                   published ports' sockets (held for the sandbox's life), or the joined namespaces'
                   fds; "direct": the caller gave the plan to the command's process made ahead
  shim -> caller   {"event": "planned"} at once, if the caller asked for it ("ack")
  shim -> caller   {"event": "started", "init_pid", "command_pid", "namespaces": {kind: fd}, "inodes": {kind: ino}}
                   (not after "direct": the caller knows it from "ahead" and the report pipe)
  caller -> shim   {"op": "signal", "signal": N} | {"op": "kill"}   (any time)
  shim -> caller   {"event": "ended", "status", "failure", "code"}
  caller -> shim   {"op": "release"} half-way through the teardown: close the namespaces (and the ports)
  shim -> caller   {"event": "released"} once it did (its init is reaped by then)
  caller -> shim   {"op": "done"} once the host side is torn down
EOF from the caller at any point ends the sandbox. A joining shim (exec into a running sandbox)
exits with its command's status, or dies of its command's signal, as the command itself would.

Stdlib only, and light: this runs with `-S`, without site-packages, at every launch.
"""

from __future__ import annotations

import os
import select
import sys

from nsrun.process import signals, wire
from nsrun.process.plan import ProcessPlan
from nsrun.process.shim import InitAhead, Shim, ShimFds, Started

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, NoReturn

    from nsrun.process.shim import Outcome

__all__ = ["AHEAD", "BOOT", "main"]

_MAX_FDS: Final = 64  # the log, the netns, the published ports' sockets
# what the caller runs: `python -I -S -c BOOT <dir holding the nsrun package> <control fd> [AHEAD]`
# (AHEAD: fork the sandbox's init before the plan comes; for a sandbox of its own, not a join)
AHEAD: Final = "ahead"
BOOT: Final = "import sys; sys.path.insert(0, sys.argv[1]); from nsrun.process.shim_main import main; main()"


def _send(sock: wire.Socket, message: dict[str, Any]) -> None:
    try:
        wire.send(sock, message)
    except OSError:
        pass  # the caller is gone: the sandbox ends all the same


def _die_like(outcome: Outcome) -> NoReturn:
    if (signum := outcome.signal) is not None and signum not in (signals.SIGKILL, signals.SIGSTOP):
        signals.signal(signum, signals.SIG_DFL)
        signals.pthread_sigmask(signals.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    elif signum == signals.SIGKILL:
        os.kill(os.getpid(), signals.SIGKILL)
    os._exit(outcome.exit_code)


def _await_done(sock: wire.Socket, release: Callable[[], None]) -> None:
    """Until the caller says the host side is torn down (or goes away); half-way, it says when
    the namespaces may go."""
    while True:
        try:
            message, fds = wire.receive(sock, 0)
        except (OSError, wire.WireError):
            return
        wire.close_fds(fds)
        if message is None or message.get("op") == "done":
            return
        if message.get("op") == "release":
            release()
            # this process's run is over, so its init is reaped by now: the caller's wait() may
            # return once it reads this (nothing of the sandbox runs any more)
            _send(sock, {"event": "released"})


def _take_output(log: int) -> None:
    """The sandbox's log becomes this process's stdout and stderr: its command's output."""
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def _pass_view(ahead: InitAhead | None, request: dict[str, Any], fds: list[int]) -> bool:
    """The view goes to the init forked ahead, with the netns, and is built while the plan comes;
    whether it went."""
    try:
        if ahead is not None and fds:
            wire.send(ahead.sock, {"view": request["view"]}, fds[:1])
            return True
    except OSError:
        pass  # the init is gone: the plan's hand-over says so
    finally:
        wire.close_fds(fds)
    return False


def _offer_command(sock: wire.Socket, ahead: InitAhead, offered: list[int]) -> None:
    """The init forked the command's process in its view made ahead: the caller gets it (its
    socket and report pipe) with what "started" would say, to give it a plan of that view itself."""
    command_pid = ahead.command_pid()
    if command_pid is not None and ahead.namespace_fds:
        started = Started.pinned(ahead.pid, command_pid, ahead.namespace_fds)
        try:
            wire.send(sock, {"event": "ahead", **started.to_message()}, offered)
        except OSError:
            pass  # the caller is gone: the wait for the plan ends
    wire.close_fds(offered)


def _await_plan(sock: wire.Socket, ahead: InitAhead) -> None:
    """Until the caller's plan comes, what the init says ahead is taken in: its view's
    namespaces, then the command's process, offered to the caller. What it says after that
    (once that process ran) is for `Shim.run`."""
    watched = [sock.fileno(), ahead.sock.fileno()]
    while len(watched) > 1:
        if sock.fileno() in select.select(watched, [], [])[0]:
            return
        offered = ahead.receive_ahead()
        if offered is None:
            watched.remove(ahead.sock.fileno())  # it is gone: the plan's hand-over says so
        elif offered:
            _offer_command(sock, ahead, offered)
            return


def _receive_plan(sock: wire.Socket, ahead: InitAhead | None) -> tuple[dict[str, Any], list[int], ProcessPlan]:
    """The caller's request with its plan (after the view, if one comes first); exits if the
    caller went away first or sent no plan."""
    try:
        request, fds = wire.receive(sock, _MAX_FDS)
        if request is not None and "view" in request:
            if _pass_view(ahead, request, fds) and ahead is not None:
                _await_plan(sock, ahead)
            request, fds = wire.receive(sock, _MAX_FDS)
        if request is None:
            os._exit(1)  # the caller went away before sending the plan
        return request, fds, ProcessPlan.from_dict(request["plan"])
    except (OSError, wire.WireError, ValueError, KeyError):
        os._exit(1)


def main() -> NoReturn:
    sock = wire.Socket(fileno=int(sys.argv[2]))
    # a pool's spare: its init is forked now, while the shim waits for its command
    ahead = InitAhead() if sys.argv[3:4] == [AHEAD] else None
    request, fds, plan = _receive_plan(sock, ahead)
    if request.get("ack"):
        _send(sock, {"event": "planned"})  # from here on, the caller may not hand the plan to another shim
    if request.get("log") and fds:
        _take_output(fds.pop(0))
    join = request.get("join")
    shim_fds = ShimFds(control=sock.fileno())
    held: list[int] = []
    if join:
        shim_fds.join = dict(zip(join, fds, strict=True))
    else:
        held = fds  # the netns first (if it has one), then the published ports' sockets: held
        if fds and request.get("netns"):
            shim_fds.netns = fds[0]

    def started(info: Started) -> None:
        _send(sock, {"event": "started", **info.to_message()})

    def ended(outcome: Outcome) -> None:
        event = {"status": outcome.status, "failure": outcome.failure, "code": outcome.failure_code}
        _send(sock, {"event": "ended", **event})

    # a sandbox of its own ends as soon as its command has and nothing else is left in it: the
    # caller's teardown goes on while the init exits (and is reaped before this process exits)
    shim = Shim(
        plan,
        shim_fds,
        on_started=started,
        ahead=ahead if not join else None,
        direct=bool(request.get("direct")),
        on_ended=None if join else ended,
    )
    outcome = shim.run()
    if not shim.ended_early:
        ended(outcome)
    if join:
        if outcome.failure is not None:  # said where the command's errors go, as `nsrun exec` says it
            try:
                os.write(2, f"nsrun: {outcome.failure}\n".encode(errors="replace"))
            except OSError:
                pass  # no stderr to say it on: the status says it
        _die_like(outcome)
    # the namespaces stay pinned until the caller has ended what joined the sandbox (or went away)

    def release() -> None:
        shim.close()
        wire.close_fds(held)
        held.clear()

    _await_done(sock, release)
    os._exit(0)
