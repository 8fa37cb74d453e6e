"""Who is alive: lease holders (pid + start time, so a reused pid does not count) and netns members."""

from __future__ import annotations

import os
import signal
from typing import Final

import psutil

__all__ = ["holder_alive", "kill_netns_members", "start_time"]

# psutil derives start times from boot time and clock ticks: equal for one process, within rounding
_SAME_START: Final = 0.01


def start_time(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


def holder_alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - started) < _SAME_START

    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def kill_netns_members(inode: int) -> list[int]:
    """SIGKILL every process whose network namespace has this inode; the pids it signalled."""
    killed = []
    for pid in psutil.pids():
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != inode:
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return killed


def port_holder(port: int, proto: str) -> str:
    """Who holds a local port, as `pid N (name)`, for an error message."""
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
