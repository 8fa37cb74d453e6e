"""Leases on disk: one file per address, created with O_EXCL, all changes under one lock per network.

The lease names its holder (pid and start time, so a reused pid is not mistaken for the holder), the
host veth and the sandbox's netns inode, so that whoever finds it stale can undo what it stood for.
The directory lives under /run, which a reboot empties together with the namespaces it described.
Every lease read back is validated before anyone acts on it: its veth must be the one nsrun names
after its sandbox id, and its address the one its file is named after.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

from nsrun.state import files
from nsrun.state.locks import locked
from nsrun.state.registry import CONTAINER_ID_RE
from nsrun.state.schema import ID_RE, NAME_RE, CorruptStateError, parse_json

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["Lease", "LeaseStore"]

_LAST_RESERVED: Final = "last_reserved"
_LOCK: Final = "lock"
# written once a launch found no running sandbox of the network without its lease; gone with the
# directory (`rm -rf /run/nsrun/*`), which is when running sandboxes' addresses must be looked for
_INTACT: Final = "intact"
_VETH_RE: Final = re.compile(r"nsv[0-9a-f]{12}")
_ADDRESS_RE: Final = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_HOSTNAME_RE: Final = re.compile(r"([A-Za-z0-9][A-Za-z0-9.-]{0,63})?")


@dataclass(frozen=True)
class Lease:
    address: str
    sandbox_id: str
    pid: int  # the holder: the process whose death makes the lease stale
    start_time: float
    veth: str
    netns_inode: int
    name: str = ""
    pidns: int = 0  # the PID namespace of `pid`; 0: unknown
    hostname: str = ""  # resolvable by the network's other sandboxes, beside `name`
    command: tuple[str, ...] = ()
    created: float = 0.0
    container_id: str = ""  # a CNI attachment's: it lives while its veth does, not its holder

    @property
    def attached(self) -> bool:
        return bool(self.container_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, path: Path | str = "lease") -> Lease:
        fix = f"remove {path} if no sandbox uses that address"
        fields = parse_json(text, path, fix)
        lease = cls(
            address=fields.text("address", _ADDRESS_RE),
            sandbox_id=fields.text("sandbox_id", ID_RE),
            pid=fields.pid("pid"),
            start_time=fields.number("start_time"),
            veth=fields.text("veth", _VETH_RE),
            netns_inode=fields.integer("netns_inode", 1),
            name=fields.text("name", NAME_RE) if fields.has("name") and fields.text("name") else "",
            command=fields.texts("command"),
            created=fields.number("created", default=0.0),
            pidns=fields.integer("pidns", default=0),
            hostname=fields.text("hostname", _HOSTNAME_RE, default=""),
            container_id=fields.text("container_id", CONTAINER_ID_RE, default=""),
        )
        try:
            ipaddress.IPv4Address(lease.address)
        except ValueError as err:
            raise CorruptStateError(path, f"{lease.address!r} is not an IPv4 address", fix) from err
        if lease.veth != f"nsv{lease.sandbox_id}":
            raise CorruptStateError(path, f"veth {lease.veth!r} is not sandbox {lease.sandbox_id}'s", fix)
        return lease


class LeaseStore:
    """The leases of one network. Callers hold `locked()` around every read-modify-write."""

    def __init__(self, directory: Path, root: Path | None = None) -> None:
        self.directory = directory
        self._root = root or directory

    def ensure(self) -> None:
        files.ensure_dir(self.directory, root=self._root)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.ensure()
        with locked(self.directory / _LOCK, f"the address lock of network {self.directory.name!r}"):
            yield

    def reserve(self, lease: Lease) -> bool:
        """Write the lease if its address is free; False if another lease holds it. The file is
        complete before it appears: a crash leaves at most a dot-file, swept by `sweep_partial`."""
        if not files.create_exclusive(self._path(lease.address), lease.to_json()):
            return False
        files.write_file(self.directory / _LAST_RESERVED, lease.address)
        return True

    def partials(self) -> list[str]:
        """Names of leftovers of reservations that crashed (or of reservations under way)."""
        if not self.directory.is_dir():
            return []
        return [entry.name for entry in os.scandir(self.directory) if files.is_partial(entry.name)]

    def sweep_partial(self) -> None:
        """Remove leftovers of reservations that crashed; call under `locked()`."""
        for name in self.partials():
            files.remove_file(self.directory / name)

    def release(self, lease: Lease) -> None:
        """Remove the lease if it is still this sandbox's; a missing file counts as released.
        Call under `locked()`."""
        path = self._path(lease.address)
        with contextlib.suppress(CorruptStateError):
            current = self._read(path)
            if current is not None and current.sandbox_id == lease.sandbox_id:
                files.remove_file(path)

    def leases(self) -> list[Lease]:
        """Every valid lease; corrupt ones (listed by `corrupt()`) keep their address taken."""
        return [lease for lease in self._scan() if isinstance(lease, Lease)]

    def corrupt(self) -> list[CorruptStateError]:
        return [item for item in self._scan() if isinstance(item, CorruptStateError)]

    def _scan(self) -> list[Lease | CorruptStateError]:
        if not self.directory.is_dir():
            return []
        found: list[Lease | CorruptStateError] = []
        for name in sorted(os.listdir(self.directory)):
            if name in (_LOCK, _LAST_RESERVED, _INTACT) or files.is_partial(name):
                continue
            try:
                lease = self._read(self.directory / name)
            except (CorruptStateError, files.StateError) as err:
                found.append(
                    err if isinstance(err, CorruptStateError) else CorruptStateError(self.directory / name, err.why)
                )
                continue
            if lease is not None:
                found.append(lease)
        return found

    def intact(self) -> bool:
        """Every running sandbox of the network has its lease here, as far as nsrun knows."""
        return os.path.exists(self.directory / _INTACT)

    def mark_intact(self) -> None:
        files.write_file(self.directory / _INTACT, "")

    def get(self, address: ipaddress.IPv4Address) -> Lease | None:
        return self._read(self._path(str(address)))

    def last_reserved(self) -> ipaddress.IPv4Address | None:
        try:
            text = files.read_file(self.directory / _LAST_RESERVED, limit=64)
            return ipaddress.IPv4Address(text.strip()) if text else None
        except (ValueError, files.StateError):
            return None

    def _path(self, address: str) -> Path:
        return self.directory / address

    @staticmethod
    def _read(path: Path) -> Lease | None:
        text = files.read_file(path)
        if text is None:
            return None
        lease = Lease.from_json(text, path)
        if lease.address != path.name:
            raise CorruptStateError(path, f"it holds address {lease.address}, not {path.name}")
        return lease
