"""A launch reclaims what dead sandboxes left at most once a second (it reads every record and
lease), whoever reclaimed last; in between it costs the same however many are alive."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from nsrun.launch.records import RECLAIM_EVERY, RECLAIM_STAMP, reclaim_due, reclaim_stale, registry
from nsrun.state.paths import StateDirs
from nsrun.state.registry import SandboxRecord

if TYPE_CHECKING:
    from pathlib import Path


def test_one_launch_a_second_reclaims(tmp_path: Path) -> None:
    dirs = StateDirs(run=tmp_path / "run", lib=tmp_path / "lib")
    assert reclaim_due(dirs)  # none before it
    assert not reclaim_due(dirs)
    stamp = dirs.run / RECLAIM_STAMP
    assert stamp.stat().st_mode & 0o777 == 0o600
    past = time.time() - RECLAIM_EVERY - 0.1
    os.utime(stamp, (past, past))  # the last reclaim, the helper's or a launch's, is a second old
    assert reclaim_due(dirs)
    assert not reclaim_due(dirs)


def _record(sandbox_id: str, pid: int) -> SandboxRecord:
    from nsrun.process import liveness

    start, pidns = liveness.start_time(os.getpid()), liveness.pid_namespace()
    return SandboxRecord(sandbox_id, f"s{sandbox_id}", pid, start, pidns, "none", ("true",), time.time())


def _reclaim_while_locked(dirs: StateDirs) -> bool:
    """Whether a background reclaim ended while a launch held the registry lock."""
    reg = registry(dirs)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (reclaim_stale(dirs), done.set()), daemon=True)
    with reg.locked():
        worker.start()
        ended = done.wait(1)
    worker.join(10)
    return ended


def test_a_background_reclaim_takes_the_lock_only_for_something_to_reclaim(tmp_path: Path) -> None:
    # it runs at the lowest priority: a launch waiting for a lock it held would wait for it to
    # get a CPU, so it reads the records without the lock and takes it only if one is stale
    dirs = StateDirs(run=tmp_path / "run", lib=tmp_path / "lib")
    reg = registry(dirs)
    alive = _record("0123456789ab", os.getpid())
    reg.update(alive)
    assert _reclaim_while_locked(dirs)  # nothing stale: it never waited for the lock
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = _record("ba9876543210", gone.pid)  # its holder is gone
    reg.update(dead)
    assert not _reclaim_while_locked(dirs)  # it waited for the lock, then reclaimed
    assert reg.get(dead.sandbox_id) is None
    assert reg.get(alive.sandbox_id) == alive
