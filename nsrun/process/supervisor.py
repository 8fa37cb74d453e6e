"""The command as nsrun's child: spawned into the sandbox, signals forwarded, leftovers reaped.

nsrun stays the parent so it can report the command's status and clean up after it. It is a child
subreaper, so anything the command leaves running is re-parented to nsrun, not to init, and can be
found and ended when the command exits: such a process would otherwise keep the sandbox's
namespace, veth and address alive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import subprocess
from typing import TYPE_CHECKING, Final

from nsrun.errors import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, CommandError, NsrunError
from nsrun.process import child, namespaces

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from types import FrameType

    from nsrun.process.child import ChildPlan

__all__ = ["FORWARDED_SIGNALS", "Supervisor", "exit_status"]

# SIGINT is not forwarded: the terminal already sends it to the whole foreground process group,
# the command included, and a second copy would make a shell or a REPL act twice.
FORWARDED_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
LEFTOVER_GRACE_SECONDS: Final = 1.0


def exit_status(returncode: int) -> int:
    """Shell convention: a command killed by signal N exits 128+N."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._pending: list[int] = []

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Forward signals to the command for the whole life of the sandbox, teardown included.

        Signals that arrive before the command exists are held and delivered once it does; after it
        is gone they are dropped, so a SIGTERM cannot interrupt teardown half-way.
        """
        namespaces.prctl(namespaces.PR_SET_CHILD_SUBREAPER, 1)
        previous = {sig: signal.signal(sig, self._forward) for sig in FORWARDED_SIGNALS}
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if self._child is None:
            self._pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._child.pid, signum)

    def spawn(
        self,
        argv: Sequence[str],
        plan: ChildPlan,
        *,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        plan = dataclasses.replace(plan, parent_pid=os.getpid(), reset_signals=(signal.SIGINT, *FORWARDED_SIGNALS))
        # Popen reports any failure between fork and exec as one generic error: the child writes
        # the real reason here first (the pipe closes on exec, so silence means it worked)
        reason_read, reason_write = os.pipe()

        def enter_sandbox() -> None:
            try:
                child.enter(plan)
            except BaseException as err:
                os.write(reason_write, str(err).encode()[:512])
                raise

        try:
            # restore_signals resets SIGPIPE and SIGXFSZ, which Python ignores and exec would keep ignored
            process = subprocess.Popen(argv, preexec_fn=enter_sandbox, env=env, restore_signals=True)  # noqa: PLW1509
        except FileNotFoundError as err:
            raise CommandError(
                f"running {argv[0]!r}", "command not found", "check its name and PATH", exit_code=EXIT_NOT_FOUND
            ) from err
        except PermissionError as err:
            raise CommandError(
                f"running {argv[0]!r}", "permission denied", "is it executable?", exit_code=EXIT_CANNOT_EXECUTE
            ) from err
        except OSError as err:
            if err.errno in (errno.ENOEXEC, errno.EISDIR, errno.EACCES):
                raise CommandError(
                    f"running {argv[0]!r}", err.strerror or str(err), exit_code=EXIT_CANNOT_EXECUTE
                ) from err
            raise NsrunError(f"running {argv[0]!r}", err.strerror or str(err)) from err
        except subprocess.SubprocessError as err:
            os.close(reason_write)
            reason_write = -1
            with os.fdopen(reason_read, "rb") as reader:
                reason_read = -1
                why = reader.read().decode() or str(err)
            raise NsrunError(f"preparing the sandbox for {argv[0]!r}", why) from err
        finally:
            for fd in (reason_read, reason_write):
                if fd >= 0:
                    os.close(fd)
        self._child = process
        for signum in self._pending:
            self._forward(signum, None)
        self._pending.clear()
        return process

    @property
    def child_pid(self) -> int | None:
        return self._child.pid if self._child else None

    def wait(self) -> int:
        if self._child is None:
            raise RuntimeError("wait() before spawn()")
        return exit_status(self._child.wait())

    def reap_leftovers(self) -> list[int]:
        """End every process the command left behind (SIGTERM, then SIGKILL); the pids found."""
        import psutil  # only needed once the command has exited

        leftovers = psutil.Process().children(recursive=True)
        for process in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=LEFTOVER_GRACE_SECONDS)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=LEFTOVER_GRACE_SECONDS)
        return [process.pid for process in leftovers]
