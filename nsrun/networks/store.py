"""Network definitions on disk: /var/lib/nsrun/networks/<name>.json, written atomically and
durably, each read back validated: one corrupt file names itself and blocks nothing else."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from nsrun.networks.spec import NetworkSpec
from nsrun.state import files
from nsrun.state.schema import NAME_RE, CorruptStateError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["NetworkStore"]

_SUFFIX = ".json"


class NetworkStore:
    def __init__(self, directory: Path, root: Path | None = None) -> None:
        self.directory = directory
        self._root = root or directory

    def get(self, name: str) -> NetworkSpec | None:
        """The definition, None if there is none; CorruptStateError if it cannot be used."""
        path = self._path(name)
        text = files.read_file(path)
        if text is None:
            return None
        spec = NetworkSpec.from_json(text, path)
        if spec.name != name:
            raise CorruptStateError(path, f"it defines network {spec.name!r}, not {name!r}", f"fix or remove {path}")
        return spec

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(
            entry[: -len(_SUFFIX)]
            for entry in os.listdir(self.directory)
            if entry.endswith(_SUFFIX) and NAME_RE.fullmatch(entry[: -len(_SUFFIX)])
        )

    def all(self) -> list[NetworkSpec]:
        """Every usable definition; the corrupt ones are listed by `corrupt()`."""
        return [item for item in self._scan() if isinstance(item, NetworkSpec)]

    def corrupt(self) -> list[CorruptStateError]:
        return [item for item in self._scan() if isinstance(item, CorruptStateError)]

    def _scan(self) -> list[NetworkSpec | CorruptStateError]:
        found: list[NetworkSpec | CorruptStateError] = []
        for name in self.names():
            try:
                spec = self.get(name)
            except CorruptStateError as err:
                found.append(err)
                continue
            except files.StateError as err:
                found.append(CorruptStateError(self._path(name), err.why))
                continue
            if spec is not None:
                found.append(spec)
        return found

    def add(self, spec: NetworkSpec) -> bool:
        """Write a new definition; False if one of that name exists. Never seen half-written."""
        files.ensure_dir(self.directory, root=self._root)
        return files.create_exclusive(self._path(spec.name), spec.to_json(), durable=True)

    def replace(self, spec: NetworkSpec) -> None:
        """Overwrite an existing definition atomically (write aside, rename over)."""
        files.ensure_dir(self.directory, root=self._root)
        files.write_file(self._path(spec.name), spec.to_json(), durable=True)

    def remove(self, name: str) -> None:
        files.remove_file(self._path(name))

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}{_SUFFIX}"
