"""The last steps before the command runs, in the forked child that becomes it.

Order matters and is the kernel's: a new session first (no controlling terminal of the caller's
to inject into) and signals back to defaults (both may come before the plan: the process may be
forked ahead), then the terminal of its own, the capability bounding
set, the user switch (which empties a non-root command's capabilities), the capabilities a root
command keeps, no_new_privs, and seccomp last but one, so the filter sees only the exec. Any
failure is written to `report_fd` (close-on-exec: silence means the exec worked) and ends the
child with 127 (not found) or 126 (not executable) or 125.
"""

from __future__ import annotations

import errno
import fcntl
import os
import termios

from nsrun.process import libc, signals, wire

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from typing import Final, NoReturn

    from nsrun.process.plan import ProcessPlan

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_NOT_FOUND",
    "EXIT_SETUP_FAILED",
    "become_command_ahead",
    "exec_command",
    "exit_code_for",
]

EXIT_SETUP_FAILED: Final = 125
EXIT_CANNOT_EXECUTE: Final = 126
EXIT_NOT_FOUND: Final = 127
_CAP_LAST_CAP: Final = "/proc/sys/kernel/cap_last_cap"
_DEFAULT_CAP_LAST: Final = 40
_NOT_FOUND: Final = (errno.ENOENT, errno.ENOTDIR)
_STDIO: Final = (0, 1, 2)
_MAX_AHEAD_FDS: Final = 5  # stdin, stdout, stderr, its terminal, the gate


def exit_code_for(code: int) -> int:
    return EXIT_NOT_FOUND if code in _NOT_FOUND else EXIT_CANNOT_EXECUTE


def _last_cap() -> int:
    try:
        with open(_CAP_LAST_CAP) as source:
            return int(source.read())
    except (OSError, ValueError):
        return _DEFAULT_CAP_LAST


def _reset_signals() -> None:
    signals.pthread_sigmask(signals.SIG_SETMASK, set())
    for sig in signals.valid_signals():
        if sig not in (signals.SIGKILL, signals.SIGSTOP):
            try:
                signals.signal(sig, signals.SIG_DFL)
            except (OSError, ValueError):
                continue


def _take_terminal(tty_fd: int) -> None:
    fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(tty_fd, target)
    if tty_fd > 2:  # noqa: PLR2004  # stdio are 0-2
        os.close(tty_fd)


class _Held:
    """The capabilities this process may keep: what it holds (the host's own root may lack some,
    a container's bounding set) and the kernel's highest (read ahead of the plan, where it can)."""

    def __init__(self) -> None:
        self.permitted = libc.capget()[1]
        self.last = _last_cap()


def _drop_privileges(plan: ProcessPlan, held: _Held) -> None:
    keep = plan.confinement.caps & held.permitted if plan.identity.is_root else 0
    for cap in range(held.last + 1):
        if not keep >> cap & 1:
            libc.prctl(libc.PR_CAPBSET_DROP, cap)
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    if not plan.confinement.no_new_privs and plan.confinement.seccomp is not None:
        # without no_new_privs only CAP_SYS_ADMIN may install a filter: do it while it is held
        libc.load_seccomp(plan.confinement.seccomp)
    identity = plan.identity
    os.setgroups(list(identity.groups))
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(identity.uid, identity.uid, identity.uid)  # a non-root uid loses every capability
    libc.capset(keep, keep, 0)
    if plan.confinement.no_new_privs:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        if plan.confinement.seccomp is not None:
            libc.load_seccomp(plan.confinement.seccomp)


def _unsearchable_parent(path: str) -> str | None:
    """The first directory on `path` this (already switched) user may not search."""
    parent = os.path.dirname(path)
    parts = [p for p in parent.split("/") if p]
    current = "/"
    for part in parts:
        current = os.path.join(current, part)
        if os.path.isdir(current) and not os.access(current, os.X_OK):
            return current
    return None


def _search_path(name: str, env: dict[str, str]) -> list[str]:
    if "/" in name:
        return [name]
    directories = env.get("PATH", os.defpath).split(os.pathsep)
    return [os.path.join(directory or ".", name) for directory in directories]


def _explain(code: int, argv0: str, tried: str | None) -> str:
    if code in _NOT_FOUND:
        return f"running {argv0!r}: command not found (check its name and PATH)"
    if code == errno.EACCES and tried is not None:
        blocked = _unsearchable_parent(tried)
        if blocked is not None:
            return (
                f"running {tried!r}: the directory {blocked} is not searchable by uid {os.getuid()}"
                " (move the program elsewhere, or run it as another --user)"
            )
        return f"running {tried!r}: permission denied (is it executable by uid {os.getuid()}?)"
    return f"running {argv0!r}: {os.strerror(code).lower()}"


def _execute(plan: ProcessPlan) -> tuple[int, str | None]:
    """exec; only returns (errno, the path whose failure counts) when every candidate failed."""
    env = dict(plan.env)
    argv = list(plan.argv)
    candidates = [plan.program] if plan.program else _search_path(argv[0], env)
    first_error: tuple[int, str | None] = (errno.ENOENT, None)
    for path in candidates:
        try:
            os.execve(path, argv, env)  # noqa: S606  # the user's command, argv as given: no shell
        except OSError as err:
            code = err.errno or errno.ENOENT
            # as execvp does: a missing candidate lets the search go on; the first other failure
            # (found but not executable) is the one to report
            if code not in _NOT_FOUND and first_error[1] is None:
                first_error = (code, path)
    return first_error


def _await_gate(gate_fd: int) -> None:
    """Wait, confined and ready to exec, until the sandbox's set-up has ended (a byte). An end
    of file means it failed, or whoever made it went away: nothing runs."""
    opened = os.read(gate_fd, 1)
    os.close(gate_fd)
    if not opened:
        raise RuntimeError("its network set-up did not complete")


def _leave_the_init() -> None:
    """What the command's process does first, before anything of its plan is known."""
    os.setsid()
    _reset_signals()


def become_command_ahead(sock: wire.Socket, report_fd: int) -> NoReturn:
    """The command's process forked before its plan came (`nsrun.process.init.CommandAhead`): it
    leaves the init's session and signals, then waits for {"plan", "tty": bool, "gate": bool}
    with its stdin, stdout and stderr, then the terminal and the gate (if so), and goes on as
    `exec_command`. Nothing, or anything else: it exits, and nothing runs."""
    from nsrun.process.plan import ProcessPlan

    try:
        _leave_the_init()
        held = _Held()
        message, fds = wire.receive(sock, _MAX_AHEAD_FDS)
        if message is None or len(fds) < len(_STDIO):
            os._exit(EXIT_SETUP_FAILED)
        plan = ProcessPlan.from_dict(message["plan"])
        for target, fd in zip(_STDIO, fds[: len(_STDIO)], strict=True):
            os.dup2(fd, target)
            os.close(fd)
    except (OSError, wire.WireError, ValueError, KeyError):
        os._exit(EXIT_SETUP_FAILED)
    # its end stays open until the exec (close-on-exec) or the exit: then the init knows it ran,
    # where the caller gave it its plan (see init.run_init_ahead)
    sock.detach()
    fds = fds[len(_STDIO) :]
    tty = fds.pop(0) if message.get("tty") and fds else None
    gate = fds.pop(0) if message.get("gate") and fds else None
    exec_command(plan, report_fd, tty, gate, held)


def exec_command(
    plan: ProcessPlan, report_fd: int, tty_fd: int | None, gate_fd: int | None = None, held: _Held | None = None
) -> NoReturn:
    """Become the command. Never returns: either the exec replaces this process, or it exits.
    With `gate_fd`, everything up to the exec is done first, then the exec waits for the gate.
    `held`: it has left the init's session and signals already, and read what it holds
    (`become_command_ahead`)."""
    code = EXIT_SETUP_FAILED
    try:
        if held is None:
            _leave_the_init()
            held = _Held()
        if tty_fd is not None:
            _take_terminal(tty_fd)
        libc.close_range_cloexec(3)  # nothing of nsrun's reaches the command (report_fd included)
        _drop_privileges(plan, held)
        try:
            os.chdir(plan.cwd)
        except OSError as err:  # said as it is (an OSError's text would start with its number)
            raise RuntimeError(f"changing to directory {plan.cwd!r}: {os.strerror(err.errno or 0).lower()}") from err
        if gate_fd is not None:
            _await_gate(gate_fd)
        failure, tried = _execute(plan)
        code = exit_code_for(failure)
        message = _explain(failure, plan.argv[0], tried)
    except BaseException as err:  # noqa: BLE001  # anything here is reported, then the child ends
        message = f"preparing the sandbox: {err}"
    try:
        os.write(report_fd, f"{code} {message}".encode(errors="backslashreplace")[:1024])
    finally:
        os._exit(code)
