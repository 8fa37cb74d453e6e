"""One error base class; every message reads `<what failed>: <why> (<what to do>)`."""

from __future__ import annotations

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_NOT_FOUND",
    "EXIT_NSRUN_FAILED",
    "EXIT_USAGE",
    "CommandError",
    "ConflictError",
    "NotFoundError",
    "NsrunError",
    "TeardownError",
    "UsageError",
]

EXIT_USAGE = 2
EXIT_NSRUN_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class NsrunError(Exception):
    """A failure nsrun can explain; anything else is a bug and shows a traceback with --debug."""

    exit_code = EXIT_NSRUN_FAILED

    def __init__(self, what: str, why: str, fix: str | None = None) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.what}: {self.why}"
        return f"{text} ({self.fix})" if self.fix else text


class UsageError(NsrunError):
    """Malformed input, rejected before anything is touched."""

    exit_code = EXIT_USAGE


class NotFoundError(NsrunError):
    """A named thing (network, sandbox) does not exist."""


class ConflictError(NsrunError):
    """The request collides with existing state: a name, an address, a subnet in use."""


class CommandError(NsrunError):
    """The sandbox was ready but the command could not be executed."""

    def __init__(self, what: str, why: str, fix: str | None = None, *, exit_code: int) -> None:
        super().__init__(what, why, fix)
        self.exit_code = exit_code


class TeardownError(NsrunError):
    """Some teardown steps failed; every step still ran."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = failures
        super().__init__("teardown", "; ".join(failures), "run `nsrun doctor` to find what was left")
