"""Reading back what nsrun wrote, trusting nothing: each field is checked for type and shape
before any code acts on it (a pid to signal, an interface to delete, a path to remove)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ID_RE", "NAME_RE", "CorruptStateError", "Fields", "parse_json"]

ID_RE: Final = re.compile(r"[0-9a-f]{12}")
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_MAX_PID: Final = 1 << 22  # the kernel's PID_MAX_LIMIT


class CorruptStateError(NsrunError):
    """A state file that parses but does not hold what nsrun writes there."""

    def __init__(self, path: Path | str, why: str, fix: str | None = None) -> None:
        self.path = str(path)
        super().__init__(f"reading {path}", f"it is corrupt: {why}", fix or f"remove {path}")


def parse_json(text: str, path: Path | str, fix: str | None = None) -> Fields:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CorruptStateError(path, f"not JSON ({err})", fix) from err
    return Fields(data, path, fix)


class Fields:
    """Typed access to one JSON object; any mismatch raises CorruptStateError naming the file."""

    def __init__(self, data: Any, path: Path | str, fix: str | None = None) -> None:
        if not isinstance(data, dict):
            raise CorruptStateError(path, f"expected a JSON object, found {type(data).__name__}", fix)
        self._data = data
        self._path = path
        self._fix = fix

    def _bad(self, key: str, expected: str) -> CorruptStateError:
        found = self._data.get(key, None)
        shown = json.dumps(found)[:40] if key in self._data else "nothing"
        return CorruptStateError(self._path, f"{key!r} should be {expected}, found {shown}", self._fix)

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def text(self, key: str, pattern: re.Pattern[str] | None = None, *, default: str | None = None) -> str:
        value = self._data.get(key, default)
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise self._bad(key, "a string" if pattern is None else f"a string matching {pattern.pattern}")
        return value

    def optional_text(self, key: str, pattern: re.Pattern[str] | None = None) -> str | None:
        return self.text(key, pattern) if self.has(key) else None

    def number(self, key: str, *, default: float | None = None) -> float:
        value = self._data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "a number")
        return float(value)

    def integer(self, key: str, minimum: int = 0, maximum: int | None = None, *, default: int | None = None) -> int:
        value = self._data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._bad(key, f"an integer of at least {minimum}")
        if maximum is not None and value > maximum:
            raise self._bad(key, f"an integer of at most {maximum}")
        return value

    def optional_integer(self, key: str, minimum: int = 0, maximum: int | None = None) -> int | None:
        return self.integer(key, minimum, maximum) if self.has(key) else None

    def pid(self, key: str) -> int:
        return self.integer(key, 1, _MAX_PID)

    def optional_pid(self, key: str) -> int | None:
        return self.pid(key) if self.has(key) else None

    def flag(self, key: str, *, default: bool = False) -> bool:
        value = self._data.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def texts(self, key: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        value = self._data.get(key, [])
        ok = isinstance(value, list) and all(
            isinstance(v, str) and (pattern is None or pattern.fullmatch(v)) for v in value
        )
        if not ok:
            raise self._bad(key, "a list of strings")
        return tuple(value)

    def integers(self, key: str) -> tuple[int, ...]:
        value = self._data.get(key, [])
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            raise self._bad(key, "a list of non-negative integers")
        return tuple(value)

    def pairs(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self._data.get(key, [])
        ok = isinstance(value, list) and all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)  # noqa: PLR2004
            for pair in value
        )
        if not ok:
            raise self._bad(key, "a list of [key, value] pairs")
        return tuple((pair[0], pair[1]) for pair in value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._data.get(key, {})
        if not isinstance(value, dict):
            raise self._bad(key, "an object")
        return value
