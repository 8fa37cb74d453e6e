"""The helper hands a job to a spare made for its kind, else to any other, else to one forked
for it; the one handed out leaves the list, the others stay. Over real socket pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from nsrun.helper.server import Helper, _Spare
from nsrun.process import wire
from nsrun.state.paths import StateDirs

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def helper(tmp_path: Path) -> Any:
    made = Helper(StateDirs(run=tmp_path / "run", lib=tmp_path / "lib"))
    yield made
    for spare in made.spares:
        spare.sock.close()


def _spare(pid: int, *, for_requests: bool) -> _Spare:
    ours, theirs = wire.socketpair()
    theirs.close()
    return _Spare(pid, ours, for_requests)


def test_a_spare_of_the_jobs_kind_is_taken_first(helper: Any) -> None:
    teardown, request = _spare(1, for_requests=False), _spare(2, for_requests=True)
    helper.spares = [teardown, request]
    assert helper._take_spare(for_requests=True) is request
    assert helper.spares == [teardown]


def test_without_one_of_its_kind_a_job_takes_another_spare(helper: Any) -> None:
    only = _spare(3, for_requests=True)
    helper.spares = [only]
    taken = helper._take_spare(for_requests=False)
    assert taken is only
    assert helper.spares == []
    taken.sock.close()
