"""A launch reclaims what dead sandboxes left at most once a second (it reads every record and
lease), whoever reclaimed last; in between it costs the same however many are alive."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from nsrun.launch.records import RECLAIM_EVERY, RECLAIM_STAMP, reclaim_due
from nsrun.state.paths import StateDirs

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
