"""Where nsrun keeps state. Runtime state (leases, locks, live sandboxes) lives under /run, which a
reboot empties together with the namespaces it described; network definitions and logs live
under /var/lib and persist."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nsrun.state.files import DIR_MODE, ensure_dir

__all__ = ["LIB_DIR", "RUN_DIR", "StateDirs"]

RUN_DIR: Final = Path("/run/nsrun")
LIB_DIR: Final = Path("/var/lib/nsrun")


@dataclass(frozen=True)
class StateDirs:
    run: Path = field(default=RUN_DIR)
    lib: Path = field(default=LIB_DIR)

    @property
    def networks(self) -> Path:
        return self.lib / "networks"

    @property
    def logs(self) -> Path:
        return self.lib / "logs"

    def leases(self, network: str) -> Path:
        return self.run / "leases" / network

    def network_run(self, network: str) -> Path:
        """Runtime files of one network shared by its sandboxes (the hosts file of their names)."""
        return self.run / "networks" / network

    @property
    def sandboxes(self) -> Path:
        return self.run / "sandboxes"

    @property
    def lock(self) -> Path:
        """Serialises changes to the set of networks (create, remove, the default's first use)."""
        return self.run / "networks.lock"

    def ensure(self, directory: Path) -> Path:
        """`directory` (under one of the roots) exists with nsrun's modes; returns it."""
        root = self.run if directory == self.run or self.run in directory.parents else self.lib
        ensure_dir(directory, DIR_MODE, root=root)
        return directory
