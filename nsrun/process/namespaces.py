"""A new network namespace for the calling thread, held by an fd, with a guaranteed way back."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Final

from nsrun.errors import EXIT_NSRUN_FAILED, NsrunError
from nsrun.process import libc

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["entered_netns", "netns_inode", "new_netns"]

_THREAD_NETNS: Final = "/proc/thread-self/ns/net"


def netns_inode(path: str = _THREAD_NETNS) -> int:
    return os.stat(path).st_ino


def _return_or_die(home: int) -> None:
    """Back to the thread's own namespace. A thread that cannot get back would go on creating
    links, rules and sockets in a sandbox's namespace: the process must not continue."""
    try:
        libc.setns(home, libc.CLONE_NEWNET)
    except OSError as err:
        os.write(2, f"nsrun: fatal: cannot return to the host's network namespace: {err}\n".encode(errors="replace"))
        sys.stderr.flush()
        os._exit(EXIT_NSRUN_FAILED)


@contextlib.contextmanager
def new_netns() -> Iterator[int]:
    """Create a network namespace and yield an fd that keeps it alive, with this thread inside it.

    Network namespaces are per thread: other threads of the process are not affected. The body
    runs inside the new namespace (sockets opened there stay bound to it); the thread is switched
    back in `finally`, whatever the body does. The namespace lives as long as the fd, a socket
    bound to it or a process in it: a crash of nsrun frees it.
    """
    home = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            libc.unshare(libc.CLONE_NEWNET)
        except OSError as err:
            raise NsrunError(
                "creating a network namespace", err.strerror or str(err), "nsrun needs root (CAP_SYS_ADMIN)"
            ) from err
        try:
            fd = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
            yield fd
        finally:
            _return_or_die(home)
    finally:
        os.close(home)


@contextlib.contextmanager
def entered_netns(fd: int, what: str) -> Iterator[None]:
    """This thread inside the network namespace `fd` (`what` names it in errors) for the body,
    and back in `finally`, whatever the body does."""
    home = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            libc.setns(fd, libc.CLONE_NEWNET)
        except OSError as err:
            raise NsrunError(
                f"entering {what}", err.strerror or str(err), "give the path of a network namespace (/proc/PID/ns/net)"
            ) from err
        try:
            yield
        finally:
            _return_or_die(home)
    finally:
        os.close(home)
