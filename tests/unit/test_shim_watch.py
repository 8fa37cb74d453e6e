"""Handlers the shim watches on one descriptor take its answers in the order they were asked
for (an early hand-over's outcome, then the acknowledgement of "started", on one connection)."""

from __future__ import annotations

from typing import Any

from nsrun.process.shim import Shim


def test_a_second_handler_of_one_fd_waits_for_the_first_to_be_done() -> None:
    shim = Shim(plan=None)  # type: ignore[arg-type]  # nothing is started: only its watch is used
    calls: list[str] = []
    answers = {"first": [True, False], "second": [False]}

    def handler(name: str) -> Any:
        def handle() -> bool:
            calls.append(name)
            return answers[name].pop(0)

        return handle

    shim.watch(7, handler("first"))
    shim.watch(7, handler("second"))
    for _ in range(3):
        shim._on_watched([7])
    assert calls == ["first", "first", "second"]
    shim._on_watched([7])
    assert calls == ["first", "first", "second"]  # all done: no longer watched
