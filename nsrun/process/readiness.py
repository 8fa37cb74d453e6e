"""Is a sandbox ready? A port listening inside its network namespace, read from the kernel's own
socket tables (/proc/<pid>/net/tcp of a process in that namespace): no connection is made, and a
server that listens only on the sandbox's 127.0.0.1 counts too. Stdlib only."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from typing import Final


__all__ = ["listening"]

_LISTEN: Final = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_STATE_COLUMN: Final = 3
_LOCAL_COLUMN: Final = 1


def listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of process `pid`."""
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as source:
                next(source, None)  # the header
                for line in source:
                    fields = line.split()
                    if len(fields) <= _STATE_COLUMN or fields[_STATE_COLUMN] != _LISTEN:
                        continue
                    if int(fields[_LOCAL_COLUMN].rsplit(":", 1)[1], 16) == port:
                        return True
        except (OSError, ValueError, IndexError):
            continue
    return False
