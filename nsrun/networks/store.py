"""Network definitions on disk: /var/lib/nsrun/networks/<name>.json, written atomically."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from nsrun.errors import NsrunError
from nsrun.networks.spec import NetworkSpec

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["NetworkStore"]


class NetworkStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, name: str) -> NetworkSpec | None:
        path = self._path(name)
        try:
            return NetworkSpec.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError) as err:
            raise NsrunError(f"reading network {name!r}", f"{path} is corrupt: {err}", f"fix or remove {path}") from err

    def all(self) -> list[NetworkSpec]:
        if not self.directory.is_dir():
            return []
        names = sorted(p.stem for p in self.directory.glob("*.json"))
        return [spec for name in names if (spec := self.get(name)) is not None]

    def add(self, spec: NetworkSpec) -> bool:
        """Write a new definition; False if one of that name exists. Never seen half-written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".{spec.name}.{os.getpid()}"
        partial.write_text(spec.to_json())
        try:
            os.link(partial, self._path(spec.name))
        except FileExistsError:
            return False
        finally:
            partial.unlink(missing_ok=True)
        return True

    def replace(self, spec: NetworkSpec) -> None:
        """Overwrite an existing definition atomically (write aside, rename over)."""
        partial = self.directory / f".{spec.name}.{os.getpid()}"
        partial.write_text(spec.to_json())
        partial.replace(self._path(spec.name))

    def remove(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"
