"""Who is alive: holders of leases and records (pid + start time, so a reused pid does not count),
and the processes in a network namespace. Reads /proc directly: no library on the launch path."""

from __future__ import annotations

import os
import signal
import time
from typing import Final

__all__ = [
    "attachment_alive",
    "boot_clock",
    "holder_alive",
    "kill_netns_members",
    "pid_namespace",
    "port_holder",
    "start_time",
    "start_time_of_child",
]

_STARTTIME_FIELD: Final = 19  # of /proc/PID/stat, counted after the command name
_STATE_FIELD: Final = 0
_NS_PER_SECOND: Final = 1_000_000_000


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as source:
            raw = source.read().decode(errors="replace")
    except OSError:
        return None
    # the command name is in parentheses and may itself contain spaces and parentheses
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> float:
    """When `pid` started, in clock ticks since boot: with the pid, it names one process ever."""
    fields = _stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return float(fields[_STARTTIME_FIELD])


def boot_clock() -> int:
    """CLOCK_BOOTTIME in ns: the clock the kernel stamps a process's start with (in ticks in /proc)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def start_time_of_child(pid: int, before: int, after: int) -> float:
    """`start_time` of a child this thread forked between two `boot_clock()` readings: the clock
    tick both fall in, when they fall in one (the kernel stamps a fork with that clock and shows
    the stamp in whole ticks), so /proc is not read: reading a child's stat while it is in the
    middle of its exec blocks until that is done (2-4 ms after `subprocess.Popen` returned, for
    a Python). Read from /proc when they straddle a tick (one fork in a hundred)."""
    tick = _NS_PER_SECOND // os.sysconf("SC_CLK_TCK")
    if before // tick == after // tick:
        return float(before // tick)
    return start_time(pid)


def pid_namespace() -> int:
    """The inode of this process's PID namespace: the one its pids (and a holder's) belong to."""
    return os.stat("/proc/self/ns/pid").st_ino


def holder_alive(pid: int, started: float, pidns: int = 0) -> bool:
    """Whether the process (pid, start time) of PID namespace `pidns` still runs. From another PID
    namespace (nsrun inside a sandbox) its pid means nothing: it counts as alive, so that state
    is never reclaimed by someone who cannot see its holder."""
    if pidns and pidns != pid_namespace():
        return True
    fields = _stat_fields(pid)
    if fields is None or fields[_STATE_FIELD] in ("Z", "X"):
        return False
    return float(fields[_STARTTIME_FIELD]) == started


def attachment_alive(veth: str) -> bool:
    """Whether a CNI attachment's host veth still exists (in this network namespace, the host's):
    the engine's namespace holds its peer, so the pair lives exactly as long as the container's
    network does."""
    from nsrun.net import linkwatch

    return linkwatch.exists(veth)


_KILL_PASSES: Final = 5  # a joiner caught between its setns() and our scan shows up in the next one


def kill_netns_members(inode: int) -> list[int]:
    """SIGKILL every process whose network namespace has this inode; the pids it signalled.
    Call only while holding that namespace (an fd), so the inode cannot have been reused, and
    once its name is unbound, so that no new process can join by name. One that was joining
    meanwhile shows up in a later pass: they repeat until one finds no process not yet signalled."""
    killed: list[int] = []
    for _ in range(_KILL_PASSES):
        found = [pid for pid in _netns_members(inode) if pid not in killed]
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
        if not found:
            break
    return killed


def _netns_members(inode: int) -> list[int]:
    members = []
    own = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                members.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return members


def port_holder(port: int, proto: str) -> str:
    """Who holds a local port, as `pid N (name)`, for an error message."""
    import psutil  # only on this error path

    kind = "tcp4" if proto == "tcp" else "udp4"
    for conn in psutil.net_connections(kind=kind):
        if conn.laddr and conn.laddr.port == port and (proto == "udp" or conn.status == psutil.CONN_LISTEN):
            if conn.pid is None:
                return "a process nsrun cannot see"
            try:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
            except psutil.NoSuchProcess:
                return f"pid {conn.pid}"
    return "another socket"
