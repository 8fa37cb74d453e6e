"""The `nsrun` entry point. Signal handling comes first, before any heavy import, so that a signal
at any moment is either held for an orderly abort (set-up is undone, then nsrun dies of that same
signal, as a shell expects) or, once the command runs, forwarded to it; never a traceback."""

from __future__ import annotations

import os
import sys

from nsrun.process import signals

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from typing import Final, NoReturn

__all__ = ["EndBySignal", "Interrupted", "checkpoint", "die_by", "main", "pending_signal", "pending_signals"]

# every signal whose default action would end nsrun without its teardown
HELD_SIGNALS: Final = (
    signals.SIGINT,
    signals.SIGTERM,
    signals.SIGHUP,
    signals.SIGQUIT,
    signals.SIGUSR1,
    signals.SIGUSR2,
    signals.SIGALRM,
    signals.SIGVTALRM,
    signals.SIGPROF,
    signals.SIGXCPU,
    signals.SIGXFSZ,
    signals.SIGPWR,
)
_DUMPS_CORE: Final = frozenset(
    {
        signals.SIGQUIT,
        signals.SIGXCPU,
        signals.SIGXFSZ,
        signals.SIGABRT,
        signals.SIGSEGV,
        signals.SIGBUS,
        signals.SIGFPE,
        signals.SIGILL,
        signals.SIGTRAP,
        signals.SIGSYS,
    }
)
_pending: list[int] = []


class Interrupted(BaseException):  # like KeyboardInterrupt: not an error to report
    """A held signal, raised at a point where everything done so far will be undone."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class EndBySignal(BaseException):  # not an error: how nsrun ends once its command did
    """nsrun ends by this signal, as the command it ran did (`nsrun exec`), once it has unwound;
    in the warm helper's worker, its client does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _hold(signum: int, _frame: object) -> None:
    _pending.append(signum)


def pending_signal() -> int | None:
    return _pending[0] if _pending else None


def pending_signals() -> list[int]:
    """Every signal held so far, oldest first; still held (nsrun dies of the first at its end)."""
    return list(_pending)


def take_pending() -> list[int]:
    """Signals held so far, handed on (to a shim that forwards them); no longer held here."""
    taken = list(_pending)
    _pending.clear()
    return taken


def checkpoint() -> None:
    """Raise Interrupted if a signal arrived; call where an abort leaves nothing inconsistent."""
    if _pending:
        raise Interrupted(_pending[0])


def die_by(signum: int) -> NoReturn:
    """End nsrun by `signum`, as its command did, so a shell loop stops on Ctrl-C."""
    sys.stdout.flush()
    sys.stderr.flush()
    if signum in _DUMPS_CORE:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the command's crash, not nsrun's
    if signum not in (signals.SIGKILL, signals.SIGSTOP):  # neither can be caught nor blocked
        signals.signal(signum, signals.SIG_DFL)
        signals.pthread_sigmask(signals.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a signal whose default action is not to terminate


def hold_signals() -> None:
    for sig in HELD_SIGNALS:
        signals.signal(sig, _hold)


# the entry point's module: held from the moment it is imported, before typer and the rest load
hold_signals()


def _through_helper(argv: list[str]) -> int | None:
    """Root's command lines go to the warm helper (it has nsrun's libraries loaded); None: run it
    here, because the helper is off, not running yet, or not usable by this process."""
    if os.geteuid() != 0:
        return None
    from nsrun.helper.client import Unavailable, helper_wanted, run_through_helper

    if not helper_wanted():
        return None
    try:
        return run_through_helper(argv)
    except Unavailable:
        return None


_STDIO: Final = (0, 1, 2)


def _open_standard_descriptors() -> None:
    """A standard descriptor its caller closed (`nsrun ... >&-`) is /dev/null from here on, as
    glibc does for set-uid programs: else the first file or socket nsrun opens would take its
    number and become the command's stdin, stdout or stderr (the helper's connection did)."""
    for fd in _STDIO:
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: `fd` itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # noqa: FBT003  # os.open gives none: the command inherits its stdio
    # Python made no stream for a descriptor closed at its start
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  # lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")  # noqa: SIM115


def main() -> NoReturn:
    _open_standard_descriptors()
    argv = sys.argv[1:]

    status = _through_helper(argv)
    if status is not None:
        if (signum := pending_signal()) is not None:
            die_by(signum)
        # the thin client holds nothing to finalise: a few milliseconds of interpreter shutdown
        # (module teardown, collection) are not worth waiting for
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass  # a reader that went away (`nsrun ... | head`): nothing more to say to it
        os._exit(status)
    from nsrun.cli.app import run_cli

    try:
        status = run_cli(argv)
    except (Interrupted, EndBySignal) as ending:  # a subcommand that waited (wait, logs -f, stop), exec
        die_by(ending.signum)
    if (signum := pending_signal()) is not None:
        die_by(signum)
    sys.exit(status)
