"""Live sandboxes: one record each under /run/nsrun/sandboxes, for names, `nsrun ls` and `exec`.

A record names its holder (nsrun's pid and start time) like a lease does: a record whose holder
died is stale, and whoever finds it undoes what it stood for (its `ip netns` name, its files).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nsrun.errors import ConflictError, NotFoundError, NsrunError
from nsrun.paths import flocked

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["NETNS_DIR", "Registry", "SandboxRecord"]

NETNS_DIR: Final = Path("/run/netns")  # where `ip netns` looks for named namespaces


@dataclass(frozen=True)
class SandboxRecord:
    sandbox_id: str
    name: str
    pid: int  # nsrun's
    start_time: float
    network: str
    command: tuple[str, ...]
    created: float
    child_pid: int | None = None
    addresses: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    netns_name: str | None = None  # the name under /run/netns, while one is bound

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SandboxRecord:
        data = json.loads(text)
        for key in ("command", "addresses", "ports"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


class Registry:
    def __init__(
        self,
        directory: Path,
        netns_dir: Path = NETNS_DIR,
        on_stale: Callable[[SandboxRecord], None] | None = None,
    ) -> None:
        """`on_stale` undoes what a dead sandbox left beyond its record (its port rules)."""
        self.directory = directory
        self.netns_dir = netns_dir
        self.on_stale = on_stale
        self._lock = directory.with_name(directory.name + ".lock")

    def files(self, sandbox_id: str) -> Path:
        """A private directory for the sandbox's generated files."""
        return self.directory / sandbox_id

    def register(
        self,
        record: SandboxRecord,
        is_stale: Callable[[SandboxRecord], bool],
        check: Callable[[list[SandboxRecord]], None] | None = None,
    ) -> None:
        """Add the record; its name must be free among live sandboxes and under /run/netns, and
        `check` (given the live records, under the same lock) must not raise."""
        with flocked(self._lock):
            live = self._sweep(is_stale)
            if check is not None:
                check(live)
            holder = next((r for r in live if record.name in (r.name, r.sandbox_id)), None)
            if holder is not None:
                raise ConflictError(
                    f"sandbox name {record.name!r}",
                    f"already used by the sandbox of pid {holder.child_pid or holder.pid}",
                    "choose another --name",
                )
            if record.netns_name and (self.netns_dir / record.netns_name).exists():
                raise ConflictError(
                    f"sandbox name {record.name!r}",
                    f"a network namespace {self.netns_dir / record.netns_name} exists",
                    "choose another --name, or remove it with `ip netns del`",
                )
            self._write(record)

    def update(self, record: SandboxRecord) -> None:
        self._write(record)

    def remove(self, record: SandboxRecord) -> None:
        (self.directory / f"{record.sandbox_id}.json").unlink(missing_ok=True)
        shutil.rmtree(self.files(record.sandbox_id), ignore_errors=True)

    def live(self, is_stale: Callable[[SandboxRecord], bool]) -> list[SandboxRecord]:
        with flocked(self._lock):
            return self._sweep(is_stale)

    def find(self, name: str, is_stale: Callable[[SandboxRecord], bool]) -> SandboxRecord:
        for record in self.live(is_stale):
            if name in (record.name, record.sandbox_id):
                return record
        raise NotFoundError(f"sandbox {name!r}", "no running sandbox has that name or id", "see `nsrun ls`")

    # -- the netns name `ip netns exec` uses ------------------------------------------------------

    def bind_netns(self, record: SandboxRecord, netns_path: str) -> None:
        from nsrun.process import namespaces

        assert record.netns_name is not None  # noqa: S101  # only named sandboxes get one
        target = self.netns_dir / record.netns_name
        self.netns_dir.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=False)
        try:
            namespaces.mount(netns_path, str(target), None, namespaces.MS_BIND)
        except OSError as err:
            target.unlink(missing_ok=True)
            raise NsrunError(f"naming the sandbox's namespace {target}", str(err)) from err

    def unbind_netns(self, record: SandboxRecord) -> None:
        from nsrun.process import namespaces

        if not record.netns_name:
            return
        target = self.netns_dir / record.netns_name
        with contextlib.suppress(OSError):  # not mounted (any more): only the file is left
            namespaces.umount(str(target))
        target.unlink(missing_ok=True)

    # -- helpers --------------------------------------------------------------------------------

    def _sweep(self, is_stale: Callable[[SandboxRecord], bool]) -> list[SandboxRecord]:
        live: list[SandboxRecord] = []
        if not self.directory.is_dir():
            return live
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = SandboxRecord.from_json(path.read_text())
            except (OSError, ValueError, TypeError):
                continue
            if is_stale(record):
                if self.on_stale is not None:
                    self.on_stale(record)
                self.unbind_netns(record)
                self.remove(record)
            else:
                live.append(record)
        return live

    def _write(self, record: SandboxRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".{record.sandbox_id}.json"
        partial.write_text(record.to_json())
        partial.replace(self.directory / f"{record.sandbox_id}.json")
