"""A sandbox's files directory (its /etc files) without a record is reclaimed: a launch writes
its record first and a teardown removes it first, so such a directory was left by a process
killed in between (a helper's worker killed mid-launch)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from nsrun.launch.records import registry
from nsrun.process import liveness
from nsrun.state.paths import StateDirs
from nsrun.state.registry import SandboxRecord

if TYPE_CHECKING:
    from pathlib import Path


def _record(sandbox_id: str) -> SandboxRecord:
    start, pidns = liveness.start_time(os.getpid()), liveness.pid_namespace()
    return SandboxRecord(sandbox_id, f"s{sandbox_id}", os.getpid(), start, pidns, "none", ("true",), time.time())


def test_a_files_directory_without_a_record_is_reclaimed(tmp_path: Path) -> None:
    reg = registry(StateDirs(run=tmp_path / "run", lib=tmp_path / "lib"))
    kept = _record("aaaaaaaaaaaa")
    reg.register(kept, lambda _record: False)
    reg.files(kept.sandbox_id).mkdir()
    (reg.files(kept.sandbox_id) / "hosts").write_text("kept\n")
    orphan = reg.files("bbbbbbbbbbbb")
    orphan.mkdir()
    (orphan / "hosts").write_text("left by a worker killed mid-launch\n")
    assert reg.any_stale(lambda _record: False)  # a background reclaim has something to do
    assert [record.sandbox_id for record in reg.live(lambda _record: False)] == ["aaaaaaaaaaaa"]
    assert not orphan.exists()
    assert (reg.files(kept.sandbox_id) / "hosts").read_text() == "kept\n"
    assert not reg.any_stale(lambda _record: False)
