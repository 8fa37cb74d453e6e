"""The thin client says "started" without waiting: the helper's acknowledgement is read while the
command runs, or before the end is said; a helper gone meanwhile leaves the record to the client.
Over a real socket pair, the helper's side played by the test."""

from __future__ import annotations

from typing import Any

import pytest

from nsrun.helper import client
from nsrun.helper.protocol import Channel
from nsrun.process import wire
from nsrun.process.shim import Started


class Recording(client._HelperController):
    """The controller, its fallbacks (which would touch /run/nsrun) recorded instead."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel, "0123456789ab", entry=False)
        self.noted: list[Started] = []
        self.torn_down: list[int] = []

    def _fallback_started(self, info: Started) -> None:
        self.noted.append(info)

    def _fallback_teardown(self, status: int, release: Any) -> list[str]:
        release()
        self.torn_down.append(status)
        return []


@pytest.fixture
def pair() -> Any:
    ours, theirs = wire.socketpair()
    yield Channel(ours), Channel(theirs)
    ours.close()
    theirs.close()


INFO = Started(10, 11, {})


def test_started_is_said_without_waiting_and_its_answer_read_when_it_comes(pair: Any) -> None:
    ours, helper = pair
    controller = Recording(ours)
    watch = controller.started(INFO)
    assert watch is not None
    fd, read = watch
    assert fd == ours.fileno()
    said, _ = helper.receive()
    assert said is not None
    assert said["started"]["command_pid"] == 11
    helper.send({"ok": True, "error": None})
    assert read() is False  # read once: no longer watched
    helper.send({"done": ["a failure"]})
    assert controller.ended(0, lambda: None) == ["a failure"]
    ended, _ = helper.receive()
    assert ended is not None
    assert ended["ended"]["status"] == 0
    assert not controller.noted
    assert not controller.torn_down


def test_an_answer_not_read_yet_is_read_before_the_end(pair: Any) -> None:
    ours, helper = pair
    controller = Recording(ours)
    assert controller.started(INFO) is not None
    helper.send({"ok": True, "error": None})  # came after the command ended: never watched
    helper.send({"release": True})
    helper.send({"done": []})
    released: list[bool] = []
    assert controller.ended(0, lambda: released.append(True)) == []
    assert released == [True]  # "release" was not taken for the answer to "started"
    assert not controller.torn_down


def test_a_helper_gone_before_its_answer_leaves_the_record_and_the_teardown_to_the_client(pair: Any) -> None:
    ours, helper = pair
    controller = Recording(ours)
    watch = controller.started(INFO)
    assert watch is not None
    helper.close()
    assert watch[1]() is False
    assert controller.noted == [INFO]
    assert controller.ended(3, lambda: None) == []
    assert controller.torn_down == [3]


def test_a_helper_gone_with_started_unanswered_at_the_end_leaves_only_the_teardown(pair: Any) -> None:
    """The command ended before the answer was read, and the helper is gone: its start is not
    noted then (its descriptors may be closed already); the client tears down."""
    ours, helper = pair
    controller = Recording(ours)
    assert controller.started(INFO) is not None
    helper.close()
    assert controller.ended(3, lambda: None) == []
    assert controller.noted == []
    assert controller.torn_down == [3]


def test_a_helper_gone_before_started_is_said_leaves_it_to_the_client(pair: Any) -> None:
    ours, helper = pair
    controller = Recording(ours)
    helper.close()
    assert controller.started(INFO) is None  # nothing to wait for
    assert controller.noted == [INFO]
