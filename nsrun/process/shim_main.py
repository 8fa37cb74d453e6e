"""The shim as a process of its own, for callers that must not become one: the Python library
(a test suite, a long-lived service) starts it with `python -I -S` and drives it over a socket.

Protocol (SOCK_SEQPACKET, one JSON object per message, descriptors beside it):
  caller -> shim   {"plan": ..., "netns": bool, "join": [kinds]} with the netns fd (if "netns"), the
                   published ports' sockets (held for the sandbox's life), or the joined namespaces' fds
  shim -> caller   {"event": "started", "init_pid", "command_pid", "namespaces": {kind: fd}}
  caller -> shim   {"op": "signal", "signal": N} | {"op": "kill"}   (any time)
  shim -> caller   {"event": "ended", "status", "failure", "code"}
  caller -> shim   {"op": "done"} once the host side is torn down (the namespaces stay pinned until then)
EOF from the caller at any point ends the sandbox. A joining shim (exec into a running sandbox)
exits with its command's status, or dies of its command's signal, as the command itself would.

Stdlib only: this runs with `-S`, without site-packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Final, NoReturn

from nsrun.process.init import send
from nsrun.process.plan import ProcessPlan
from nsrun.process.shim import Shim, ShimFds

if TYPE_CHECKING:
    from nsrun.process.shim import Outcome, Started

__all__ = ["BOOT", "main"]

_MAX_MESSAGE: Final = 1 << 20
_MAX_FDS: Final = 8
# what the caller runs: `python -I -S -c BOOT <dir holding the nsrun package> <control fd>`
BOOT: Final = "import sys; sys.path.insert(0, sys.argv[1]); from nsrun.process.shim_main import main; main()"


def _receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    payload, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, _MAX_FDS)
    if not payload:
        os._exit(1)  # the caller went away before sending the plan
    data: dict[str, Any] = json.loads(payload)
    return data, fds


def _die_like(outcome: Outcome) -> NoReturn:
    if (signum := outcome.signal) is not None and signum not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    elif signum == signal.SIGKILL:
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(outcome.exit_code)


def main() -> NoReturn:
    sock = socket.socket(fileno=int(sys.argv[2]))
    request, fds = _receive(sock)
    plan = ProcessPlan.from_json(json.dumps(request["plan"]))
    join = request.get("join")
    shim_fds = ShimFds(control=sock.fileno())
    if join:
        shim_fds.join = dict(zip(join, fds, strict=True))
    elif fds and request.get("netns"):
        shim_fds.netns = fds[0]  # the rest are the published ports' sockets: held, never used

    def started(info: Started) -> None:
        event = {"init_pid": info.init_pid, "command_pid": info.command_pid, "namespaces": info.namespace_fds}
        send(sock, {"event": "started", **event})

    shim = Shim(plan, shim_fds, on_started=started)
    outcome = shim.run()
    with contextlib.suppress(OSError):
        send(
            sock, {"event": "ended", "status": outcome.status, "failure": outcome.failure, "code": outcome.failure_code}
        )
    if join:
        _die_like(outcome)
    # the namespaces stay pinned until the caller has torn the host side down (or went away)
    with contextlib.suppress(OSError):
        while (message := sock.recv(_MAX_MESSAGE)) and json.loads(message).get("op") != "done":
            pass
    shim.close()
    os._exit(0)
