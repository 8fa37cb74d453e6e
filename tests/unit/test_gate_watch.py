"""The client's side of an early hand-over (`nsrun.cli.drive._GateWatch`): the set-up's outcome
opens the gate's watch or ends the sandbox's init unrun; a signal meanwhile aborts the set-up
once, and reaches the command only if the set-up had ended anyway. The shim and the worker are
played by the test."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from nsrun.cli.drive import SetupFailed, _GateWatch


class FakeShim:
    def __init__(self) -> None:
        self.watched: dict[int, Any] = {}
        self.on_gated_signal: Any = None
        self.opened: list[list[int]] = []
        self.killed = False
        self.gated = True

    def watch(self, fd: int, handler: Any) -> None:
        self.watched[fd] = handler

    def gate_opened(self, passed_on: list[int] | None = None) -> None:
        self.gated = False
        self.opened.append(list(passed_on or []))

    def kill(self) -> None:
        self.killed = True


class FakeGate:
    def __init__(self, outcome: dict[str, Any] | None) -> None:
        self._outcome = outcome
        self.aborts: list[int] = []

    def fileno(self) -> int:
        return 42

    def outcome(self) -> dict[str, Any] | None:
        return self._outcome

    def abort(self, signum: int) -> None:
        self.aborts.append(signum)


def _watch(outcome: dict[str, Any] | None) -> tuple[_GateWatch, FakeShim, FakeGate]:
    shim, gate = FakeShim(), FakeGate(outcome)
    return _GateWatch(gate, shim), shim, gate  # type: ignore[arg-type]


def test_go_opens_the_watch_and_nothing_is_concluded() -> None:
    watch, shim, _ = _watch({"go": {}})
    assert shim.watched[42]() is False  # read once
    assert shim.opened == [[]]
    assert not shim.killed
    watch.conclude()  # nothing failed: no exception


def test_a_failed_set_up_ends_the_init_and_says_its_status() -> None:
    watch, shim, _ = _watch({"exit": 125})
    shim.watched[42]()
    assert shim.killed
    assert shim.opened == []
    with pytest.raises(SetupFailed) as failed:
        watch.conclude()
    assert failed.value.status == 125


def test_a_worker_gone_is_a_failure_without_status() -> None:
    watch, shim, _ = _watch(None)
    shim.watched[42]()
    assert shim.killed
    with pytest.raises(SetupFailed) as failed:
        watch.conclude()
    assert failed.value.status is None


def test_a_signal_aborts_the_set_up_once_and_reaches_the_command_if_it_ended_anyway() -> None:
    _, shim, gate = _watch({"go": {}})
    assert shim.on_gated_signal(signal.SIGINT) is True
    assert shim.on_gated_signal(signal.SIGTERM) is True
    assert gate.aborts == [signal.SIGINT]  # asked once
    shim.watched[42]()  # the set-up had ended: the command gets both
    assert shim.opened == [[signal.SIGINT, signal.SIGTERM]]


def test_signals_that_abort_nothing_are_left_to_the_shim() -> None:
    _, shim, gate = _watch({"go": {}})
    assert shim.on_gated_signal(signal.SIGWINCH) is False
    assert gate.aborts == []


def test_an_outcome_not_read_while_the_shim_ran_is_read_at_its_end() -> None:
    """The init ended first (the gate closed unopened, or the command ran and ended at once)."""
    watch, shim, _ = _watch(None)
    with pytest.raises(SetupFailed):
        watch.conclude()
    assert shim.killed
    watch, shim, _ = _watch({"go": {}})
    watch.conclude()
    assert shim.opened == [[]]
