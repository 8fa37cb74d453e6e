"""How sandboxes ended, and the logs of those whose output is not a terminal (detached ones, those
the library starts).

A sandbox someone may ask about later (a named one, a logged one) gets an entry once it is set up,
/run/nsrun/exits/<id>.json: its name, command and, once it ended, its status; a logged one also
/var/lib/nsrun/logs/<id>.log (on disk: logs can be large). Both are kept after the end, so
`nsrun logs` and `nsrun wait` still answer, for a day or until a sandbox of the same name starts.

A start costs the same however many entries are kept: the last sandbox of a name is found through
/run/nsrun/exits/names/<name> (its id), and the entries older than a day are looked for at most
every SWEEP_INTERVAL seconds (/run/nsrun/exits/.swept says when they last were)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

from nsrun.state import files
from nsrun.state.schema import ID_RE, NAME_RE, CorruptStateError, parse_json

if TYPE_CHECKING:
    from pathlib import Path

    from nsrun.state.paths import StateDirs

__all__ = ["KEEP_SECONDS", "SWEEP_INTERVAL", "LogBook", "LogEntry"]

KEEP_SECONDS: Final = 24 * 3600
SWEEP_INTERVAL: Final = 600  # seconds; a sweep reads every entry kept
_NAMES: Final = "names"
_SWEPT: Final = ".swept"


@dataclass(frozen=True)
class LogEntry:
    sandbox_id: str
    name: str
    command: tuple[str, ...]
    started: float
    ended: float | None = None
    status: int | None = None  # as a shell reports it: the exit code, 128+N for signal N
    logged: bool = False  # its output went to a log file


class LogBook:
    def __init__(self, dirs: StateDirs) -> None:
        self._dirs = dirs
        self.directory = dirs.logs
        self.exits = dirs.run / "exits"

    def log_path(self, sandbox_id: str) -> Path:
        if not ID_RE.fullmatch(sandbox_id):
            raise ValueError(f"not a sandbox id: {sandbox_id!r}")
        return self.directory / f"{sandbox_id}.log"

    def _entry_path(self, sandbox_id: str) -> Path:
        if not ID_RE.fullmatch(sandbox_id):
            raise ValueError(f"not a sandbox id: {sandbox_id!r}")
        return self.exits / f"{sandbox_id}.json"

    def _name_path(self, name: str) -> Path:
        """Where the id of the last sandbox of that name is kept."""
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"not a sandbox name: {name!r}")
        return self.exits / _NAMES / name

    def open_log(self, sandbox_id: str, *, fresh: bool = True) -> int:
        """An fd to write the sandbox's log: a new, empty one (`fresh`), or the end of the one begun."""
        self._dirs.ensure(self.directory)
        return files.open_private(self.log_path(sandbox_id), os.O_WRONLY | os.O_APPEND | (os.O_TRUNC if fresh else 0))

    def record(self, entry: LogEntry) -> None:
        """Note the sandbox's start, replacing what is kept of the last one of its name."""
        self._dirs.ensure(self.exits)
        if entry.name != entry.sandbox_id:  # a name of its own, which a later sandbox may take
            self._dirs.ensure(self.exits / _NAMES)
            self._forget_last_of(entry.name)
        files.write_file(self._entry_path(entry.sandbox_id), json.dumps(asdict(entry)))
        if entry.name != entry.sandbox_id:
            files.write_file(self._name_path(entry.name), entry.sandbox_id)
        self._sweep_now_and_then()

    def ended(self, sandbox_id: str, status: int) -> None:
        entry = self.get(sandbox_id)
        if entry is not None:
            data = asdict(entry) | {"ended": time.time(), "status": status}
            files.write_file(self._entry_path(sandbox_id), json.dumps(data))

    def get(self, sandbox_id: str) -> LogEntry | None:
        path = self._entry_path(sandbox_id)
        try:
            text = files.read_file(path)
        except files.StateError:
            return None
        if text is None:
            return None
        try:
            fields = parse_json(text, path)
            ended = fields.number("ended") if fields.has("ended") else None
            return LogEntry(
                sandbox_id=fields.text("sandbox_id", ID_RE),
                name=fields.text("name", NAME_RE),
                command=fields.texts("command"),
                started=fields.number("started"),
                ended=ended,
                status=fields.optional_integer("status", 0, 255),
                logged=fields.flag("logged"),
            )
        except CorruptStateError:
            return None

    def entries(self) -> list[LogEntry]:
        if not self.exits.is_dir():
            return []
        found = []
        for name in os.listdir(self.exits):
            stem, _, suffix = name.partition(".")
            if suffix == "json" and ID_RE.fullmatch(stem) and (entry := self.get(stem)) is not None:
                found.append(entry)
        return sorted(found, key=lambda entry: entry.started)

    def find(self, name: str) -> LogEntry | None:
        """The latest sandbox of that name (or id), running or ended."""
        matches = [entry for entry in self.entries() if name in (entry.name, entry.sandbox_id)]
        return matches[-1] if matches else None

    def remove(self, sandbox_id: str) -> None:
        files.remove_file(self.log_path(sandbox_id))
        files.remove_file(self._entry_path(sandbox_id))

    def sweep(self) -> None:
        """Forget the sandboxes that ended more than a day ago."""
        now = time.time()
        for entry in self.entries():
            if entry.ended is not None and now - entry.ended > KEEP_SECONDS:
                self.remove(entry.sandbox_id)
                self._forget_name(entry)

    def _last_of(self, name: str) -> str | None:
        """The id of the last sandbox of that name, from the names' index."""
        try:
            text = files.read_file(self._name_path(name))
        except files.StateError:
            return None
        last = text.strip() if text else ""
        return last if ID_RE.fullmatch(last) else None

    def _forget_last_of(self, name: str) -> None:
        """The last sandbox of that name, if it has ended: a new one takes the name."""
        last = self._last_of(name)
        entry = self.get(last) if last is not None else None
        if last is not None and entry is not None and entry.name == name and entry.ended is not None:
            self.remove(last)

    def _forget_name(self, entry: LogEntry) -> None:
        if self._last_of(entry.name) == entry.sandbox_id:
            files.remove_file(self._name_path(entry.name))

    def _sweep_now_and_then(self) -> None:
        # stamped first: a start meanwhile need not sweep too
        if files.stamp_if_older(self.exits / _SWEPT, SWEEP_INTERVAL):
            self.sweep()
