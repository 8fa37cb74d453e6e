"""The caller's terminal while a sandbox runs on a pseudo-terminal of its own: raw mode (so Ctrl-C,
Ctrl-Z and every other key reach the sandbox's terminal, as with `docker run -it`), the window
size passed on, and the settings restored afterwards whatever happened."""

from __future__ import annotations

import fcntl
import os
import termios
import tty

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from typing import Any, Self

__all__ = ["RawMode", "copy_window_size", "is_terminal"]


def is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def copy_window_size(source: int, target: int) -> None:
    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)
    except OSError:
        pass  # not a terminal (any more): nothing to pass on


class RawMode:
    """`with RawMode(fd):` the terminal in raw mode, its settings restored on the way out
    (`enabled=False`: left as it is)."""

    def __init__(self, fd: int, *, enabled: bool = True) -> None:
        self.fd = fd
        self.enabled = enabled
        self.saved: list[Any] | None = None

    def __enter__(self) -> Self:
        if not self.enabled:
            return self
        try:
            self.saved = termios.tcgetattr(self.fd)
        except termios.error:
            return self  # not a terminal: nothing to change
        tty.setraw(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSAFLUSH, self.saved)
            except termios.error:
                pass  # the terminal is gone
