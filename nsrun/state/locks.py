"""Exclusive locks on files under nsrun's state: every wait is bounded, and a timeout names the
process holding the lock, so one stuck nsrun is found instead of silently hanging every launch.

A lock is an flock on an open file description: threads of one process exclude each other too,
and the kernel drops the lock when its holder dies, whatever killed it.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Final

from nsrun.errors import NsrunError, UsageError
from nsrun.state.files import FILE_MODE, open_private

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["DEFAULT_TIMEOUT", "ENV_LOCK_TIMEOUT", "LockTimeoutError", "locked"]

ENV_LOCK_TIMEOUT: Final = "NSRUN_LOCK_TIMEOUT"
DEFAULT_TIMEOUT: Final = 30.0  # a launch holds a lock for milliseconds; this is a stuck holder
_FIRST_POLL: Final = 0.001
_MAX_POLL: Final = 0.05
_HOLDER_LIMIT: Final = 200


class LockTimeoutError(NsrunError):
    """A lock stayed held beyond the wait bound."""


def lock_timeout() -> float:
    """NSRUN_LOCK_TIMEOUT: seconds to wait for a lock, 0 or more (`inf`: no bound); else 30."""
    text = os.environ.get(ENV_LOCK_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds) or seconds < 0:
        raise UsageError(
            f"invalid {ENV_LOCK_TIMEOUT}={text!r}",
            "expected the seconds to wait for a lock (0 or more)",
            f"e.g. {ENV_LOCK_TIMEOUT}={DEFAULT_TIMEOUT:g}",
        )
    return seconds


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, _HOLDER_LIMIT, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    alive = os.path.exists(f"/proc/{pid}")
    return f"pid {pid} ({command or '?'})" if alive else "another process"


def _announce(fd: int) -> None:
    """Write who holds the lock into it, for whoever times out waiting."""
    # an argument that is not UTF-8 (surrogates) is shown escaped: this is for people to read
    text = f"{os.getpid()} {' '.join(sys.argv)[: _HOLDER_LIMIT - 12]}\n".encode(errors="backslashreplace")
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock at `path` (created if missing) for the body; `what` names it in errors."""
    fd = open_private(path, os.O_RDWR, FILE_MODE)
    try:
        limit = lock_timeout() if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = _FIRST_POLL
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"waiting for {what} ({path})",
                        f"{_holder(fd)} has held it for more than {limit:g}s",
                        "if that process is stuck, end it: the lock is freed when it exits"
                        f" (the wait bound is {ENV_LOCK_TIMEOUT}, in seconds)",
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, _MAX_POLL)
        _announce(fd)
        yield
    finally:
        os.close(fd)
