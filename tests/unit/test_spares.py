"""The helper hands a job to a spare made for its kind, else to any other, else to one forked
for it; the one handed out leaves the list, the others stay. Over real socket pairs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from nsrun.helper.server import SPARES, Helper, _Spare
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


@pytest.fixture
def spawned(helper: Any, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """`_spawn` recorded instead of forking: the kinds asked for."""
    kinds: list[bool] = []

    def spawn(for_requests: bool) -> _Spare:
        kinds.append(for_requests)
        return _spare(100 + len(kinds), for_requests=for_requests)

    monkeypatch.setattr(helper, "_spawn", spawn)
    return kinds


def test_spares_are_replaced_when_due_and_at_once_only_when_none_is_left(helper: Any, spawned: list[bool]) -> None:
    helper._replenish()  # a fresh helper: every spare at once
    assert sorted(spawned) == sorted(kind for kind, count in SPARES.items() for _ in range(count))
    spawned.clear()
    for kind in SPARES:
        helper._take_spare(kind).sock.close()  # a launch took one of each kind
    helper.replenish_at = time.monotonic() + 60  # not due: its launch goes on
    helper._replenish()
    assert spawned == []  # one of each kind is still ready
    for kind in SPARES:
        helper._take_spare(kind).sock.close()
    helper._replenish()
    assert sorted(spawned) == sorted(SPARES)  # none left: one of each at once, not more
    spawned.clear()
    helper.replenish_at = 0.0  # its launch ended
    helper._replenish()
    assert sorted(spawned) == sorted(kind for kind, count in SPARES.items() for _ in range(count - 1))
    assert helper._timeout() > 0  # all there: no reason to wake early
