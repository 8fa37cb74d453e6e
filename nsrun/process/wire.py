"""Messages between nsrun's own processes (shim, init, the library's shim, the warm helper and its
clients): one marshalled dict per SOCK_SEQPACKET message, file descriptors beside it (SCM_RIGHTS).

Both ends are the same nsrun on the same Python (the helper checks before it reads anything else),
so `marshal` does: it is built in, where `json` would load `re` and `socket` would load `enum`,
milliseconds at every launch. Over `_socket`, the C core of `socket`, for the same reason.
"""

from __future__ import annotations

import _socket
import marshal
import os
import struct

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "MAX_FDS",
    "MAX_MESSAGE",
    "Socket",
    "WireError",
    "close_fds",
    "receive",
    "receive_on",
    "send",
    "socketpair",
    "unix_socket",
]

Socket = _socket.socket
MAX_MESSAGE = 1 << 20
MAX_FDS = 64
_INT = struct.Struct("i")


class WireError(ValueError):
    """A message that is not one of nsrun's."""


def unix_socket() -> Socket:
    return _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)


def socketpair() -> tuple[Socket, Socket]:
    first, second = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    return first, second


def send(sock: Socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """One message, with `fds` passed beside it (the receiver gets copies; ours stay open)."""
    payload = marshal.dumps(message)
    if fds:
        rights = b"".join(_INT.pack(fd) for fd in fds)
        sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
    else:
        sock.sendall(payload)


def receive(sock: Socket, max_fds: int = MAX_FDS, flags: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and the descriptors that came with it; (None, []) at the end of the
    connection. WireError (descriptors closed) for anything that is not a message of ours. The
    descriptors are close-on-exec, as every descriptor Python opens."""
    space = _socket.CMSG_LEN(max_fds * _INT.size)
    payload, ancillary, _flags, _address = sock.recvmsg(MAX_MESSAGE, space, flags | _socket.MSG_CMSG_CLOEXEC)
    fds = [
        _INT.unpack_from(data, offset)[0]
        for level, kind, data in ancillary
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
        for offset in range(0, len(data) - len(data) % _INT.size, _INT.size)
    ]
    if not payload:
        close_fds(fds)
        return None, []
    try:
        message = marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as err:
        close_fds(fds)
        raise WireError(f"not a message of nsrun's: {err}") from err
    if not isinstance(message, dict):
        close_fds(fds)
        raise WireError("not a message of nsrun's")
    return message, fds


def receive_on(fd: int, max_fds: int = MAX_FDS) -> tuple[dict[str, Any] | None, list[int]]:
    """`receive` on a socket known by its descriptor only (which stays open)."""
    sock = Socket(fileno=fd)
    try:
        return receive(sock, max_fds)
    finally:
        sock.detach()


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
