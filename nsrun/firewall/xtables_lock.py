"""The lock every iptables(8) process takes; libiptc does not take it, so nsrun must."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import TYPE_CHECKING, Final

from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["xtables_lock"]

DEFAULT_LOCKFILE: Final = "/run/xtables.lock"
WAIT_SECONDS: Final = 10.0
_POLL_SECONDS: Final = 0.01


@contextlib.contextmanager
def xtables_lock() -> Iterator[None]:
    path = os.environ.get("XTABLES_LOCKFILE", DEFAULT_LOCKFILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NsrunError(
                        "changing iptables rules",
                        f"the xtables lock {path} stayed busy for {WAIT_SECONDS:.0f}s",
                        "another firewall tool is holding it; retry when it is done",
                    ) from None
                time.sleep(_POLL_SECONDS)
        yield
    finally:
        os.close(fd)
