"""Leases on disk: one file per address, created with O_EXCL, all changes under one flock per network.

The lease names its holder (pid and start time, so a reused pid is not mistaken for the holder), the
host veth and the sandbox's netns inode, so that whoever finds it stale can undo what it stood for.
The directory lives under /run, which a reboot empties together with the namespaces it described.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from nsrun.errors import NsrunError
from nsrun.paths import flocked

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["Lease", "LeaseStore"]

_LAST_RESERVED = "last_reserved"
_LOCK = "lock"


@dataclass(frozen=True)
class Lease:
    address: str
    sandbox_id: str
    pid: int
    start_time: float
    veth: str
    netns_inode: int
    name: str = ""
    command: tuple[str, ...] = ()
    created: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Lease:
        data: dict[str, Any] = json.loads(text)
        data["command"] = tuple(data.get("command", ()))
        return cls(**data)


class LeaseStore:
    """The leases of one network. Callers hold `locked()` around every read-modify-write."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with flocked(self.directory / _LOCK):
            yield

    def reserve(self, lease: Lease) -> bool:
        """Write the lease if its address is free; False if another lease holds it.

        The content is written to a private file first and linked into place, so a lease file is
        never seen half-written: a crash leaves at most a dot-file, swept by `sweep_partial`.
        """
        path = self._path(lease.address)
        partial = self.directory / f".{lease.sandbox_id}.{lease.address}"
        partial.write_text(lease.to_json())
        try:
            os.link(partial, path)
        except FileExistsError:
            return False
        finally:
            partial.unlink(missing_ok=True)
        (self.directory / _LAST_RESERVED).write_text(lease.address)
        return True

    def sweep_partial(self) -> None:
        """Remove leftovers of reservations that crashed; call under `locked()`."""
        for path in self.directory.glob(".*"):
            path.unlink(missing_ok=True)

    def release(self, lease: Lease) -> None:
        """Remove the lease if it is still this sandbox's; a missing file counts as released."""
        path = self._path(lease.address)
        current = self._read(path)
        if current is not None and current.sandbox_id == lease.sandbox_id:
            path.unlink(missing_ok=True)

    def leases(self) -> list[Lease]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.iterdir()):
            if path.name in (_LOCK, _LAST_RESERVED) or path.name.startswith("."):
                continue
            lease = self._read(path)
            if lease is not None:
                found.append(lease)
        return found

    def get(self, address: ipaddress.IPv4Address) -> Lease | None:
        return self._read(self._path(str(address)))

    def last_reserved(self) -> ipaddress.IPv4Address | None:
        try:
            return ipaddress.IPv4Address((self.directory / _LAST_RESERVED).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _path(self, address: str) -> Path:
        return self.directory / address

    @staticmethod
    def _read(path: Path) -> Lease | None:
        try:
            return Lease.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as err:
            raise NsrunError(
                f"reading lease {path}", f"it is corrupt: {err}", f"remove {path} if no sandbox uses that address"
            ) from err
