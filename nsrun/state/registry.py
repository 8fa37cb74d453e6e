"""Live sandboxes: one record each under /run/nsrun/sandboxes, for names, `ls`, `exec` and `stop`.

A record names its holder (the sandbox's shim: pid and start time) like a lease does: a record
whose holder died is stale, and whoever finds it undoes what it stood for (its `ip netns` name, its
published ports, its files). It also says where the shim keeps the sandbox's namespaces (fd
numbers and inodes), so `nsrun exec` enters exactly those, and with which identity and
confinement the command runs, so what is exec'd runs the same way.

Every record is validated before use: its id and name match nsrun's patterns, its file is named
after its id, pids are pids; a corrupt record is reported (`corrupt()`), never acted on, and never
blocks the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import ConflictError, NotFoundError, NsrunError
from nsrun.state import files
from nsrun.state.locks import locked
from nsrun.state.schema import ID_RE, NAME_RE, CorruptStateError, parse_json

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["CONTAINER_ID_RE", "IFNAME_RE", "NETNS_DIR", "RecordHead", "Registry", "SandboxRecord"]

NETNS_DIR: Final = Path("/run/netns")  # where `ip netns` looks for named namespaces
_SUFFIX: Final = ".json"
_NETWORK_RE: Final = re.compile(rf"(sandbox:)?{NAME_RE.pattern}|none|host")
_NS_KINDS: Final = ("net", "uts", "ipc", "pid", "mnt")
_MAX_FD: Final = 1 << 20
_MAC_RE: Final = re.compile(r"([0-9a-f]{2}(:[0-9a-f]{2}){5})?")
# what the CNI spec allows for CNI_CONTAINERID and CNI_IFNAME (empty: not a CNI attachment)
CONTAINER_ID_RE: Final = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.\-]{0,254})?")
IFNAME_RE: Final = re.compile(r"(?!\.{1,2}$)([^/\s:]{1,15})?")


@dataclass(frozen=True)
class SandboxRecord:
    sandbox_id: str
    name: str
    pid: int  # the holder: the sandbox's shim
    start_time: float
    pidns: int  # the PID namespace of `pid` (and of init_pid and child_pid)
    network: str
    command: tuple[str, ...]
    created: float
    init_pid: int | None = None  # PID 1 of the sandbox's PID namespace, as the host sees it
    child_pid: int | None = None  # the command, as the host sees it
    addresses: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    netns_name: str | None = None  # the name under /run/netns, while one is bound
    # kind -> (fd in the holder, inode): the namespaces `nsrun exec` enters
    namespaces: dict[str, tuple[int, int]] = field(default_factory=dict)
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    caps: int = 0
    no_new_privs: bool = True
    seccomp: bool = True
    privileged: bool = False
    hostname: str = ""
    cwd: str = "/"
    mac: str = ""  # of its eth0: what its bridge-port filter admits
    # an attachment a container engine made through CNI (ADD) rather than a sandbox nsrun started:
    # its namespace is the engine's; it lives until DEL or until that namespace is gone
    container_id: str = ""
    ifname: str = ""  # its interface in the container's namespace

    @property
    def attached(self) -> bool:
        """A CNI attachment: no shim, no command of nsrun's."""
        return bool(self.container_id)

    def to_json(self) -> str:
        # shallow: asdict's deep copy of the environment costs a launch more than the write itself
        # (json writes tuples as lists)
        return json.dumps({item.name: getattr(self, item.name) for item in dataclass_fields(self)})

    @classmethod
    def from_json(cls, text: str, path: Path | str = "record") -> SandboxRecord:
        fields = parse_json(text, path)
        namespaces: dict[str, tuple[int, int]] = {}
        for kind, value in fields.mapping("namespaces").items():
            ok = (
                kind in _NS_KINDS
                and isinstance(value, list)
                and len(value) == 2  # noqa: PLR2004  # (fd, inode)
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
                and value[0] < _MAX_FD
            )
            if not ok:
                raise CorruptStateError(path, f"namespace entry {kind!r} is not (fd, inode)")
            namespaces[kind] = (value[0], value[1])
        netns_name = fields.optional_text("netns_name", NAME_RE)
        return cls(
            sandbox_id=fields.text("sandbox_id", ID_RE),
            name=fields.text("name", NAME_RE),
            pid=fields.pid("pid"),
            start_time=fields.number("start_time"),
            pidns=fields.integer("pidns", default=0),
            network=fields.text("network", _NETWORK_RE),
            command=fields.texts("command"),
            created=fields.number("created"),
            init_pid=fields.optional_pid("init_pid"),
            child_pid=fields.optional_pid("child_pid"),
            addresses=fields.texts("addresses"),
            ports=fields.texts("ports"),
            netns_name=netns_name,
            namespaces=namespaces,
            uid=fields.integer("uid", default=0),
            gid=fields.integer("gid", default=0),
            groups=fields.integers("groups"),
            env=fields.pairs("env"),
            caps=fields.integer("caps", default=0),
            no_new_privs=fields.flag("no_new_privs", default=True),
            seccomp=fields.flag("seccomp", default=True),
            privileged=fields.flag("privileged"),
            hostname=fields.text("hostname", default=""),
            cwd=fields.text("cwd", default="/"),
            mac=fields.text("mac", _MAC_RE, default=""),
            container_id=fields.text("container_id", CONTAINER_ID_RE, default=""),
            ifname=fields.text("ifname", IFNAME_RE, default=""),
        )


@dataclass(frozen=True)
class RecordHead:
    """A record as far as a launch needs it: its holder (for staleness), name, ports, pids."""

    sandbox_id: str
    name: str
    pid: int
    start_time: float
    pidns: int
    child_pid: int | None
    ports: tuple[str, ...]
    container_id: str = ""  # a CNI attachment's

    @classmethod
    def from_json(cls, text: str) -> RecordHead | None:
        """The head, or None if the text does not hold one (ValueError for what is not JSON)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            return None
        ints = [data.get(key) for key in ("pid", "pidns")]
        ports = data.get("ports", [])
        child = data.get("child_pid")
        ok = (
            isinstance(data.get("sandbox_id"), str)
            and isinstance(data.get("name"), str)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in ints)
            and isinstance(data.get("start_time"), (int, float))
            and (child is None or (isinstance(child, int) and not isinstance(child, bool)))
            and isinstance(ports, list)
            and all(isinstance(p, str) for p in ports)
        )
        if not ok:
            return None
        container_id = data.get("container_id", "")
        if not isinstance(container_id, str):
            return None
        return cls(
            data["sandbox_id"],
            data["name"],
            data["pid"],
            float(data["start_time"]),
            data["pidns"],
            child,
            tuple(ports),
            container_id,
        )


class Registry:
    def __init__(
        self,
        directory: Path,
        netns_dir: Path = NETNS_DIR,
        on_stale: Callable[[SandboxRecord], None] | None = None,
        root: Path | None = None,
    ) -> None:
        """`on_stale` undoes what a dead sandbox left beyond its record (its port rules)."""
        self.directory = directory
        self.netns_dir = netns_dir
        self.on_stale = on_stale
        self._root = root or directory
        self._lock = directory.with_name(directory.name + ".lock")

    def files(self, sandbox_id: str) -> Path:
        """A private directory for the sandbox's generated files."""
        if not ID_RE.fullmatch(sandbox_id):
            raise ValueError(f"not a sandbox id: {sandbox_id!r}")
        return self.directory / sandbox_id

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        files.ensure_dir(self.directory, root=self._root)
        with locked(self._lock, "the sandbox registry lock"):
            yield

    def register(
        self,
        record: SandboxRecord,
        is_stale: Callable[[Any], bool],
        check: Callable[[list[Any]], SandboxRecord | None] | None = None,
        *,
        sweep: bool = True,
    ) -> SandboxRecord:
        """Add the record; its name must be free among live sandboxes and under /run/netns, and
        `check` (given the live records, under the same lock) must not raise; a record it returns
        is written instead (completed with what the check reserved). Returns what was written.
        `sweep=False`: stale records are not reclaimed here (the caller sees to it later, off
        the launch's path), and the live ones are only read (as heads: who holds them, their
        names and ports) when a name or a check needs them, whatever their number."""
        with self.locked():
            if sweep:
                live: list[Any] = self._sweep(is_stale)
            elif check is not None or record.name != record.sandbox_id:
                live = []
                for head in self._heads():
                    if not is_stale(head):
                        live.append(head)
                    elif head.name == record.name or head.ports:
                        self._reclaim(head.sandbox_id)  # what this launch could collide with goes now
            else:
                live = []
            if check is not None:
                record = check(live) or record
            holder = next((r for r in live if record.name in (r.name, r.sandbox_id)), None)
            if holder is not None:
                raise ConflictError(
                    f"sandbox name {record.name!r}",
                    f"already used by the sandbox of pid {holder.child_pid or holder.pid}",
                    "choose another --name",
                )
            if record.netns_name and os.path.lexists(self.netns_dir / record.netns_name):
                raise ConflictError(
                    f"sandbox name {record.name!r}",
                    f"a network namespace {self.netns_dir / record.netns_name} exists",
                    "choose another --name, or remove it with `ip netns del`",
                )
            self._write(record)
            return record

    def update(self, record: SandboxRecord) -> None:
        with self.locked():
            self._write(record)

    def remove(self, record: SandboxRecord) -> None:
        files.remove_file(self.directory / f"{record.sandbox_id}{_SUFFIX}")
        files.remove_tree(self.files(record.sandbox_id))

    def live(self, is_stale: Callable[[SandboxRecord], bool]) -> list[SandboxRecord]:
        with self.locked():
            return self._sweep(is_stale)

    def any_stale(self, is_stale: Callable[[SandboxRecord], bool]) -> bool:
        """Whether `live` would reclaim anything: a stale record, or a half-written one (which
        may also be a write under way). Read without the lock, which it leaves to launches: a
        reclaim in the background, at low priority, must not hold it while it reads them all."""
        if self._partials() or self._orphans():
            return True
        return any(isinstance(item, SandboxRecord) and is_stale(item) for item in self._scan())

    def _orphans(self) -> list[str]:
        """Ids whose files directory has no record: a launch writes its record before the
        directory and a teardown removes it first, so such a directory was left by a process
        killed in between (a helper's worker killed mid-launch) or is going right now."""
        if not self.directory.is_dir():
            return []
        names = set(os.listdir(self.directory))
        return sorted(
            name
            for name in names
            if ID_RE.fullmatch(name) and f"{name}{_SUFFIX}" not in names and (self.directory / name).is_dir()
        )

    def _partials(self) -> list[str]:
        """Names of half-written records (or of writes under way)."""
        if not self.directory.is_dir():
            return []
        return [name for name in os.listdir(self.directory) if files.is_partial(name)]

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        """The record of that sandbox (live or stale), or None; CorruptStateError if it is not one."""
        if not ID_RE.fullmatch(sandbox_id):
            return None
        path = self.directory / f"{sandbox_id}{_SUFFIX}"
        try:
            text = files.read_file(path)
        except files.StateError as err:
            raise CorruptStateError(path, err.why) from err
        if text is None:
            return None
        record = SandboxRecord.from_json(text, path)
        return record if record.sandbox_id == sandbox_id else None

    def all_records(self) -> list[SandboxRecord]:
        """Every valid record, live or stale, read without the sweep."""
        return [item for item in self._scan() if isinstance(item, SandboxRecord)]

    def corrupt(self) -> list[CorruptStateError]:
        return [item for item in self._scan() if isinstance(item, CorruptStateError)]

    def find(self, name: str, is_stale: Callable[[SandboxRecord], bool]) -> SandboxRecord:
        for record in self.live(is_stale):
            if name in (record.name, record.sandbox_id):
                return record
        raise NotFoundError(f"sandbox {name!r}", "no running sandbox has that name or id", "see `nsrun ls`")

    # -- the netns name `ip netns exec` uses ------------------------------------------------------

    def bind_netns(self, record: SandboxRecord, netns_path: str) -> None:
        from nsrun.process import libc

        if record.netns_name is None:
            raise ValueError("only named sandboxes get a netns name")
        target = self.netns_dir / record.netns_name
        self.netns_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        except FileExistsError as err:
            raise ConflictError(
                f"naming the sandbox's namespace {target}", "it exists", "choose another --name"
            ) from err
        os.close(fd)
        try:
            libc.mount(netns_path, str(target), None, libc.MS_BIND)
        except OSError as err:
            files.remove_file(target)
            raise NsrunError(
                f"naming the sandbox's namespace {target}", err.strerror or str(err), "run `nsrun doctor`"
            ) from err

    def unbind_netns(self, record: SandboxRecord) -> None:
        from nsrun.process import libc

        if not record.netns_name:
            return
        target = self.netns_dir / record.netns_name
        with contextlib.suppress(OSError):  # not mounted (any more): only the file is left
            libc.umount(str(target))
        files.remove_file(target)

    # -- helpers --------------------------------------------------------------------------------

    def _scan(self) -> list[SandboxRecord | CorruptStateError]:
        found: list[SandboxRecord | CorruptStateError] = []
        if not self.directory.is_dir():
            return found
        for name in sorted(os.listdir(self.directory)):
            sandbox_id = name.removesuffix(_SUFFIX)
            if not name.endswith(_SUFFIX) or not ID_RE.fullmatch(sandbox_id):
                continue
            path = self.directory / name
            try:
                text = files.read_file(path)
                if text is None:
                    continue
                record = SandboxRecord.from_json(text, path)
            except CorruptStateError as err:
                found.append(err)
                continue
            except files.StateError as err:
                found.append(CorruptStateError(path, err.why))
                continue
            if record.sandbox_id != sandbox_id:
                found.append(CorruptStateError(path, f"it describes sandbox {record.sandbox_id}, not {sandbox_id}"))
                continue
            found.append(record)
        return found

    def _heads(self) -> list[RecordHead]:
        """What a launch checks of every record, read without validating the rest; a record that
        does not even give that much is skipped here (it is reported by `corrupt()`)."""
        found: list[RecordHead] = []
        if not self.directory.is_dir():
            return found
        for name in os.listdir(self.directory):
            sandbox_id = name.removesuffix(_SUFFIX)
            if not name.endswith(_SUFFIX) or not ID_RE.fullmatch(sandbox_id):
                continue
            try:
                text = files.read_file(self.directory / name)
                head = RecordHead.from_json(text) if text is not None else None
            except (files.StateError, ValueError):
                continue
            if head is not None and head.sandbox_id == sandbox_id:
                found.append(head)
        return found

    def _reclaim(self, sandbox_id: str) -> None:
        """A stale record's full teardown (as a sweep does); a corrupt one is left to doctor."""
        path = self.directory / f"{sandbox_id}{_SUFFIX}"
        try:
            text = files.read_file(path)
            record = SandboxRecord.from_json(text, path) if text is not None else None
        except (CorruptStateError, files.StateError):
            return
        if record is None:
            return
        if self.on_stale is not None:
            self.on_stale(record)
        else:
            self.unbind_netns(record)
            self.remove(record)

    def _sweep(self, is_stale: Callable[[SandboxRecord], bool]) -> list[SandboxRecord]:
        """Live records; stale ones are reclaimed, half-written ones and files directories
        without a record removed. Call locked."""
        live: list[SandboxRecord] = []
        for name in self._partials():
            files.remove_file(self.directory / name)
        for sandbox_id in self._orphans():
            files.remove_tree(self.files(sandbox_id))
        for item in self._scan():
            if not isinstance(item, SandboxRecord):
                continue
            if is_stale(item):
                if self.on_stale is not None:
                    self.on_stale(item)  # removes the record with the rest
                else:
                    self.unbind_netns(item)
                    self.remove(item)
            else:
                live.append(item)
        return live

    def _write(self, record: SandboxRecord) -> None:
        files.write_file(self.directory / f"{record.sandbox_id}{_SUFFIX}", record.to_json())


def record_data(record: SandboxRecord) -> dict[str, Any]:
    """The record as `nsrun ls --json` shows it."""
    data = asdict(record)
    data.pop("env", None)  # may hold secrets given with -e
    data["namespaces"] = {kind: value[1] for kind, value in record.namespaces.items()}
    return data
