"""Where nsrun keeps state. Runtime state (leases, locks) lives under /run, which a reboot empties
together with the namespaces it described; network definitions live under /var/lib and persist."""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["StateDirs", "flocked"]

RUN_DIR: Final = Path("/run/nsrun")
LIB_DIR: Final = Path("/var/lib/nsrun")


@dataclass(frozen=True)
class StateDirs:
    run: Path = field(default=RUN_DIR)
    lib: Path = field(default=LIB_DIR)

    @property
    def networks(self) -> Path:
        return self.lib / "networks"

    def leases(self, network: str) -> Path:
        return self.run / "leases" / network

    @property
    def sandboxes(self) -> Path:
        return self.run / "sandboxes"

    @property
    def lock(self) -> Path:
        """Serialises changes to the set of networks (create, remove, the default's first use)."""
        return self.run / "networks.lock"


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
