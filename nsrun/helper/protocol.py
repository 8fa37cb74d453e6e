"""The warm helper's protocol: marshalled dicts over a SOCK_SEQPACKET unix socket, descriptors
beside them (`nsrun.process.wire`). Light: the client imports it on every launch.

    client -> helper   {"version", "argv", "env", "cwd", "umask", "detached"}      (no descriptor)
    helper -> client   {"taken": true}                               at once: a worker has the request
                       {"fallback": why}                             run in-process instead
    client -> worker   {"stdio": true} + its stdin, stdout, stderr   the go-ahead, only after "taken"
    helper -> client   {"exit": N}                                   a command that is not a launch ran
                       {"detach": true}                              fork, then ask again from the child
                       {"launch": {...}} + netns fd, port sockets    be the sandbox's shim
    client -> helper   {"abort": signum}                             while it sets up: undo, then {"exit"}
                       {"started": {...}}  -> {"ok": true}           the command runs
                       {"ended": {"status", "ran", "id", "entry"}} -> {"release"}, {"done": [failures]}
    EOF from the client before "ended" (it was killed) is a teardown too.
    client -> helper   {"version", "ping": true} -> {"taken": true}  is it alive (`nsrun doctor`)
    client -> helper   {"version", "cni": true}                      a CNI call (`nsrun-cni`)
    helper -> client   {"taken": true}
    client -> worker   {"cni": {"env", "stdin"}}                     the go-ahead
    worker -> client   {"cni": [status, stdout]}
A client that gets no "taken" within its wait (a helper stopped or hung) runs the command line
itself and closes the connection; a worker that then finds no go-ahead does nothing. Nothing of
the client's (no descriptor) waits in a stuck helper's queue: its output ends with it.
A client of another nsrun (or another Python: marshal's format is the interpreter's) is told to
fall back before its request is acted on.
"""

from __future__ import annotations

import os
import sys

from nsrun.process import wire

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = ["LOCK_NAME", "LOG_NAME", "SOCKET_NAME", "Channel", "code_stamp", "version"]

SOCKET_NAME: Final = "helper.sock"
LOCK_NAME: Final = "helper.lock"
LOG_NAME: Final = "helper.log"  # what the running helper says (its errors)


_INSTALLED_IN: Final = frozenset({"site-packages", "dist-packages"})
_BYTECODE_CACHE: Final = "__pycache__"


def version() -> str:
    """Client and helper must run the very same nsrun on the same Python: its version, where it
    is installed, when its code last changed (an upgrade, or an edit of a checkout, retires a
    running helper) and the interpreter's."""
    import nsrun

    package = os.path.dirname(nsrun.__file__)
    return f"{nsrun.__version__} {package} {code_stamp(package)} {sys.version}"


def code_stamp(package: str) -> int:
    """When the code under `package` last changed. A copy pip installed changes only by pip, which
    removes and writes files: the folders' own times move, and 20 folders are read instead of
    100 files (1 ms less at every launch). A checkout is edited in place: there every file counts."""
    installed = os.path.basename(os.path.dirname(package)) in _INSTALLED_IN
    newest = 0
    for folder, dirs, files in os.walk(package):
        dirs[:] = [name for name in dirs if name != _BYTECODE_CACHE]  # Python writes there on import
        if installed:
            newest = max(newest, os.stat(folder).st_mtime_ns)
            continue
        for name in files:
            if name.endswith(".py"):
                newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime_ns)
    return newest


class Channel:
    """One connection: whole messages in, whole messages out."""

    def __init__(self, sock: wire.Socket) -> None:
        self.sock = sock

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        wire.send(self.sock, message, fds)

    def receive(self) -> tuple[dict[str, Any] | None, list[int]]:
        """The next message and its descriptors; (None, []) at the end of the connection (or for
        anything that is not a message of ours: the connection is as good as gone)."""
        try:
            return wire.receive(self.sock)
        except wire.WireError:
            return None, []

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def close(self) -> None:
        self.sock.close()
