"""A shim's start time (what makes its pid name one process in records and leases) is known
without reading its /proc entry while it execs: from the boot clock around its fork, as the
kernel itself shows it."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

from nsrun.launch.sandbox import Holder
from nsrun.process import liveness

_FORKS = 200
_NO_SUCH_PID = -1  # /proc/-1 does not exist: only the clock can tell its start time


def _fork_between() -> tuple[subprocess.Popen[bytes], int, int]:
    before = liveness.boot_clock()
    # it waits for its stdin: alive (not a zombie) while it is looked at
    child = subprocess.Popen([sys.executable, "-I", "-S", "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    return child, before, liveness.boot_clock()


def _end(child: subprocess.Popen[bytes]) -> None:
    child.communicate()  # closes its stdin: it ends


def test_the_start_time_from_the_clock_is_the_kernels() -> None:
    from_the_clock = 0
    for _ in range(_FORKS):
        child, before, after = _fork_between()
        try:
            with contextlib.suppress(ProcessLookupError):  # the readings straddle a tick: /proc is read
                assert liveness.start_time_of_child(_NO_SUCH_PID, before, after) == liveness.start_time(child.pid)
                from_the_clock += 1
            holder = Holder.of_child(child.pid, before, after)
            assert liveness.holder_alive(holder.pid, holder.start_time, holder.pidns)
        finally:
            _end(child)
    assert from_the_clock > _FORKS // 2  # a fork takes well under a tick (10 ms)


def test_readings_across_a_tick_read_proc() -> None:
    child, before, _ = _fork_between()
    try:
        later = before + 10**10  # ten seconds: many ticks between the readings
        assert liveness.start_time_of_child(child.pid, before, later) == liveness.start_time(child.pid)
        with pytest.raises(ProcessLookupError):
            liveness.start_time_of_child(_NO_SUCH_PID, before, later)
    finally:
        _end(child)
