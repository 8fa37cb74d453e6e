"""Signalling a running sandbox from outside it: `nsrun stop`, `kill` and `wait`.

A signal goes to the sandbox's shim, which passes it on to the command through its init (the only
process allowed to signal the init is its parent: the pid cannot have been reused); SIGKILL goes to
the init itself, which takes the whole PID namespace along. Either process is addressed through a
pidfd opened before checking that it is the one the record names (start time, or the pinned PID
namespace and parent): a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from typing import TYPE_CHECKING, Final

from nsrun.errors import NsrunError, UsageError
from nsrun.process import liveness

if TYPE_CHECKING:
    from collections.abc import Callable

    from nsrun.state.registry import SandboxRecord

__all__ = ["parse_signal", "send_signal", "stop", "wait_ended"]

_STOP_GRACE: Final = 10.0
_SLICE: Final = 0.1  # seconds between a waiting caller's checks (a Ctrl-C ends its wait this soon)


def parse_signal(text: str) -> int:
    """TERM, SIGTERM, term or 15."""
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if number in {int(s) for s in signal.valid_signals()}:
            return number
    else:
        candidate = name if name.startswith("SIG") else f"SIG{name}"
        if hasattr(signal.Signals, candidate):
            return int(signal.Signals[candidate])
    raise UsageError(f"invalid signal {text!r}", "not a signal name or number", "e.g. TERM, SIGINT or 9")


def _shim_fd(record: SandboxRecord) -> int | None:
    try:
        fd = os.pidfd_open(record.pid)
    except OSError:
        return None
    if not liveness.holder_alive(record.pid, record.start_time, record.pidns):
        os.close(fd)
        return None
    return fd


def _init_fd(record: SandboxRecord) -> int | None:
    """The sandbox's init: in the pinned PID namespace, a child of the shim."""
    if record.init_pid is None or "pid" not in record.namespaces:
        return None
    try:
        fd = os.pidfd_open(record.init_pid)
    except OSError:
        return None
    try:
        genuine = os.stat(f"/proc/{record.init_pid}/ns/pid").st_ino == record.namespaces["pid"][1]
        with open(f"/proc/{record.init_pid}/stat") as source:
            genuine = genuine and int(source.read().rsplit(")", 1)[1].split()[1]) == record.pid
    except (OSError, ValueError, IndexError):
        genuine = False
    if not genuine:
        os.close(fd)
        return None
    return fd


def refuse_attached(record: SandboxRecord, action: str) -> None:
    """A CNI attachment has no command of nsrun's: its container engine ends it (DEL)."""
    if record.attached:
        raise UsageError(
            f"{action} {record.name!r}",
            f"it is container {record.container_id[:12]}'s {record.ifname}, attached through CNI:"
            " no command of nsrun's runs in it",
            "use its container engine (e.g. podman stop, podman exec)",
        )


def send_signal(record: SandboxRecord, signum: int) -> None:
    """Pass `signum` to the command; SIGKILL ends the whole sandbox at once."""
    refuse_attached(record, "signalling")
    if signum == signal.SIGSTOP:
        raise UsageError("nsrun kill -s STOP", "a stopped shim could not pass SIGCONT on", "use -s TSTP")
    # SIGKILL goes to the init (everything in the sandbox ends with it); before the command has
    # started (a Pool's spare) there is none yet: the shim's end ends the sandbox then, as any
    # signal to a shim that waits for its command does
    started = record.init_pid is not None
    fd = _init_fd(record) if signum == signal.SIGKILL and started else _shim_fd(record)
    if fd is None:
        raise NsrunError(f"signalling sandbox {record.name!r}", "it has ended", "see `nsrun ls`")
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signum)
    finally:
        os.close(fd)


def wait_ended(
    record: SandboxRecord, timeout: float | None = None, *, between: Callable[[], None] | None = None
) -> bool:
    """Until the sandbox's shim has exited (its teardown done); False on timeout. `between` is
    called every _SLICE seconds meanwhile, and may raise to end the wait (a caller's Ctrl-C)."""
    fd = _shim_fd(record)
    if fd is None:
        return True
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = left if between is None else _SLICE if left is None else min(_SLICE, left)
            if poller.poll(None if step is None else int(step * 1000)):
                return True
            if left is not None and step is not None and left <= step:
                return False
            if between is not None:
                between()
    finally:
        os.close(fd)


def stop(record: SandboxRecord, timeout: float, *, between: Callable[[], None] | None = None) -> None:
    """SIGTERM to the command; after `timeout` seconds SIGKILL of the whole sandbox; returns once
    it is torn down (`between`: as for wait_ended)."""
    refuse_attached(record, "stopping")
    with contextlib.suppress(NsrunError):
        send_signal(record, signal.SIGTERM)
    if wait_ended(record, timeout, between=between):
        return
    with contextlib.suppress(NsrunError):
        send_signal(record, signal.SIGKILL)
    if not wait_ended(record, _STOP_GRACE, between=between):
        raise NsrunError(
            f"stopping sandbox {record.name!r}",
            f"its shim (pid {record.pid}) did not finish its teardown",
            "see `nsrun doctor`",
        )
