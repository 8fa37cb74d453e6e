"""Who is alive: lease holders (pid + start time, so a reused pid does not count) and netns members."""

from __future__ import annotations

import os
import signal

import psutil

__all__ = ["holder_alive", "kill_netns_members", "start_time"]


def start_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def holder_alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - started) < 0.01  # noqa: PLR2004
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
