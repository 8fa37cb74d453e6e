"""The `nsrun` entry point. Signal handling comes first, before any heavy import, so that a signal
at any moment is either held for an orderly abort (set-up is undone, then nsrun dies of that same
signal, as a shell expects) or, once the command runs, forwarded to it; never a traceback."""

from __future__ import annotations

import os
import resource
import signal
import sys
from typing import Final, NoReturn

__all__ = ["Interrupted", "checkpoint", "die_by", "main", "pending_signal"]

# every signal whose default action would end nsrun without its teardown
HELD_SIGNALS: Final = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGXCPU,
    signal.SIGXFSZ,
    signal.SIGPWR,
)
_DUMPS_CORE: Final = frozenset(
    {
        signal.SIGQUIT,
        signal.SIGXCPU,
        signal.SIGXFSZ,
        signal.SIGABRT,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGTRAP,
        signal.SIGSYS,
    }
)
_pending: list[int] = []


class Interrupted(BaseException):  # like KeyboardInterrupt: not an error to report
    """A held signal, raised at a point where everything done so far will be undone."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _hold(signum: int, _frame: object) -> None:
    _pending.append(signum)


def pending_signal() -> int | None:
    return _pending[0] if _pending else None


def checkpoint() -> None:
    """Raise Interrupted if a signal arrived; call where an abort leaves nothing inconsistent."""
    if _pending:
        raise Interrupted(_pending[0])


def die_by(signum: int) -> NoReturn:
    """End nsrun by `signum`, as its command did, so a shell loop stops on Ctrl-C."""
    sys.stdout.flush()
    sys.stderr.flush()
    if signum in _DUMPS_CORE:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the command's crash, not nsrun's
    if signum not in (signal.SIGKILL, signal.SIGSTOP):  # neither can be caught nor blocked
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a signal whose default action is not to terminate


def hold_signals() -> None:
    for sig in HELD_SIGNALS:
        signal.signal(sig, _hold)


# the entry point's module: held from the moment it is imported, before typer and the rest load
hold_signals()


def main() -> NoReturn:
    from nsrun.cli.app import run_cli

    status = run_cli(sys.argv[1:])
    if (signum := pending_signal()) is not None:
        die_by(signum)
    sys.exit(status)
