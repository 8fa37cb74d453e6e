"""The library's arguments, checked as subprocess checks its own: lists of strings (paths, for a
command's words), a mapping of strings for an environment; never a string iterated by character
or a None that becomes the word "None". UsageError otherwise."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from nsrun.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["environment", "flag", "port", "publish_specs", "seconds", "signal_number", "text", "user", "words"]


def words(what: str, value: object, *, paths: bool = False) -> list[str]:
    """A list of strings given for `what` (a command's words may be paths); UsageError otherwise,
    rather than a string iterated by character or a None that becomes the word "None"."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        example = f"[{value!r}]" if isinstance(value, str) else "a list of strings"
        raise UsageError(f"invalid {what}", f"a list is expected, not {type(value).__name__}", f"use {example}")
    found = []
    for item in value:
        word = os.fspath(item) if paths and isinstance(item, os.PathLike) else item
        if not isinstance(word, str):
            raise UsageError(f"invalid {what}", f"{item!r} is not a string", "give every item as a str")
        found.append(word)
    return found


def text(what: str, value: object, *, paths: bool = False) -> str | None:
    """An optional string option (a path too, for `paths`); UsageError for anything else."""
    if value is None:
        return None
    word = os.fspath(value) if paths and isinstance(value, os.PathLike) else value
    if not isinstance(word, str):
        raise UsageError(f"invalid {what}", f"{value!r} is not a string", f"give {what} as a str")
    return word


def user(value: object) -> str | None:
    """USER[:GROUP] as the CLI takes it, or a uid as subprocess takes one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text("user", value)


def flag(what: str, value: object) -> bool:
    """True or False, nothing else: privileged="no" is a string, and a string is true."""
    if not isinstance(value, bool):
        raise UsageError(f"invalid {what}", f"{value!r} is not True or False", f"e.g. {what}=True")
    return value


_MAX_PORT = 65535


def port(value: object) -> int:
    """A port inside the sandbox: an int from 1 to 65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_PORT:
        raise UsageError(f"invalid port {value!r}", f"a port is an int from 1 to {_MAX_PORT}", "e.g. 8080")
    return value


def seconds(what: str, value: object) -> float:
    """A timeout: a number of seconds, 0 or more (inf: no bound); not a string, a bool or NaN,
    which would fail deep inside or wait forever."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:  # NaN is not >= 0
        raise UsageError(f"invalid {what} {value!r}", "a number of seconds, 0 or more, is expected", f"e.g. {what}=10")
    return float(value)


def signal_number(value: object) -> int:
    """A signal to send: its number (signal.SIGTERM) or its name ("TERM", "SIGTERM")."""
    import signal

    if isinstance(value, str):
        name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
        number = getattr(signal.Signals, name, None) if not name.startswith("SIG_") else None
    else:
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if number is None or int(number) not in signal.valid_signals():
        raise UsageError(f"invalid signal {value!r}", "not a signal name or number", "e.g. signal.SIGTERM or 'TERM'")
    return int(number)


def environment(env: Mapping[str, str] | None) -> list[str]:
    """KEY=VALUE items of `env`, whose keys and values must be strings (as for subprocess)."""
    if env is None:
        return []
    if not isinstance(env, Mapping):
        raise UsageError("invalid env", f"a mapping is expected, not {type(env).__name__}", "e.g. env={'A': '1'}")
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UsageError("invalid env", f"{key!r}: {value!r}: names and values are strings", "e.g. env={'A': '1'}")
    return [f"{key}={value}" for key, value in env.items()]


def publish_specs(publish: Sequence[int | str | tuple[int, int]]) -> list[str]:
    """6379 (a free host port), "16379:6379", (16379, 6379), "127.0.0.1:8080:80/udp"."""
    if isinstance(publish, (str, int)):
        raise UsageError("invalid publish", f"a list is expected, not {type(publish).__name__}", f"use [{publish!r}]")
    specs = []
    for item in publish:
        if isinstance(item, bool):
            raise UsageError(
                f"invalid publish {item!r}", "expected a port, 'HOST:PORT' or (HOST, PORT)", "e.g. publish=[6379]"
            )
        if isinstance(item, int):
            specs.append(str(item))
        elif isinstance(item, tuple):
            if len(item) != 2:  # noqa: PLR2004  # (HOST, PORT)
                raise UsageError(
                    f"invalid publish {item!r}", "a tuple is (HOST_PORT, PORT)", "e.g. publish=[(8080, 80)]"
                )
            specs.append(f"{item[0]}:{item[1]}")
        else:
            specs.append(str(item))
    return specs
