"""The signal calls nsrun's own processes make, over `_signal`, the C core of `signal`.

`import signal` loads `enum` to wrap numbers in enums: a few milliseconds at every launch, on the
path between `nsrun` starting and the command running. The numbers are all nsrun needs.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub: typed by the wrappers below
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import FrameType

    Handler = Callable[[int, FrameType | None], object] | int

__all__ = [
    "NSIG",
    "SIGABRT",
    "SIGALRM",
    "SIGBUS",
    "SIGCHLD",
    "SIGCONT",
    "SIGFPE",
    "SIGHUP",
    "SIGILL",
    "SIGINT",
    "SIGKILL",
    "SIGPIPE",
    "SIGPROF",
    "SIGPWR",
    "SIGQUIT",
    "SIGSEGV",
    "SIGSTOP",
    "SIGSYS",
    "SIGTERM",
    "SIGTRAP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGUSR1",
    "SIGUSR2",
    "SIGVTALRM",
    "SIGWINCH",
    "SIGXCPU",
    "SIGXFSZ",
    "SIG_BLOCK",
    "SIG_DFL",
    "SIG_IGN",
    "SIG_SETMASK",
    "SIG_UNBLOCK",
    "Wakeup",
    "pthread_sigmask",
    "set_wakeup_fd",
    "signal",
    "sigtimedwait",
    "sigwaitinfo",
    "valid_signals",
]

SIGABRT: int = _signal.SIGABRT
SIGALRM: int = _signal.SIGALRM
SIGBUS: int = _signal.SIGBUS
SIGCHLD: int = _signal.SIGCHLD
SIGCONT: int = _signal.SIGCONT
SIGFPE: int = _signal.SIGFPE
SIGHUP: int = _signal.SIGHUP
SIGILL: int = _signal.SIGILL
SIGINT: int = _signal.SIGINT
SIGKILL: int = _signal.SIGKILL
SIGPIPE: int = _signal.SIGPIPE
SIGPROF: int = _signal.SIGPROF
SIGPWR: int = _signal.SIGPWR
SIGQUIT: int = _signal.SIGQUIT
SIGSEGV: int = _signal.SIGSEGV
SIGSTOP: int = _signal.SIGSTOP
SIGSYS: int = _signal.SIGSYS
SIGTERM: int = _signal.SIGTERM
SIGTRAP: int = _signal.SIGTRAP
SIGTSTP: int = _signal.SIGTSTP
SIGTTIN: int = _signal.SIGTTIN
SIGTTOU: int = _signal.SIGTTOU
SIGUSR1: int = _signal.SIGUSR1
SIGUSR2: int = _signal.SIGUSR2
SIGVTALRM: int = _signal.SIGVTALRM
SIGWINCH: int = _signal.SIGWINCH
SIGXCPU: int = _signal.SIGXCPU
SIGXFSZ: int = _signal.SIGXFSZ
SIG_BLOCK: int = _signal.SIG_BLOCK
SIG_UNBLOCK: int = _signal.SIG_UNBLOCK
SIG_SETMASK: int = _signal.SIG_SETMASK
SIG_DFL: int = _signal.SIG_DFL
SIG_IGN: int = _signal.SIG_IGN
NSIG: int = _signal.NSIG  # signal numbers are below it


class SigInfo:
    """What sigwaitinfo tells (the fields nsrun reads)."""

    si_signo: int


def signal(signum: int, handler: Handler) -> Handler:
    """Set a handler; the previous one."""
    previous: Handler = _signal.signal(signum, handler)
    return previous


def pthread_sigmask(how: int, mask: Iterable[int]) -> set[int]:
    return {int(signum) for signum in _signal.pthread_sigmask(how, mask)}


def valid_signals() -> set[int]:
    return {int(signum) for signum in _signal.valid_signals()}


def set_wakeup_fd(fd: int) -> int:
    previous: int = _signal.set_wakeup_fd(fd)
    return previous


class Wakeup:
    """`with Wakeup() as fd`: a pipe that becomes readable when a signal arrives
    (set_wakeup_fd), so that a select() loop wakes for a signal a handler only held; `drain()`
    empties it; the previous wakeup descriptor comes back at the end."""

    def __enter__(self) -> int:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous = set_wakeup_fd(self._write)
        return self._read

    def __exit__(self, *_exc: object) -> None:
        set_wakeup_fd(self._previous)
        os.close(self._read)
        os.close(self._write)

    def drain(self) -> None:
        try:
            while os.read(self._read, 64):
                pass
        except BlockingIOError:
            pass


def sigwaitinfo(mask: Iterable[int]) -> SigInfo:
    info: SigInfo = _signal.sigwaitinfo(mask)
    return info


def sigtimedwait(mask: Iterable[int], timeout: float) -> SigInfo | None:
    info: SigInfo | None = _signal.sigtimedwait(mask, timeout)
    return info
