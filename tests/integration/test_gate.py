"""The early hand-over's gate, with real processes: the sandbox's init builds its view and its
command child gets ready to exec (confined, in its namespaces) while the set-up goes on
elsewhere; the command runs only once the set-up writes to the gate, and never if the set-up
ends without doing so (it failed, or whoever did it died)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.world import World

pytestmark = pytest.mark.privileged

# The set-up's side is a child process holding the gate's writing end: it says when it opens the
# gate (or lets it close), then does so. The command says it ran. Both write to the same stdout,
# so the order of the lines is the order of the events.
GATED_SHIM = """
import os, sys, time
from nsrun.launch.request import SandboxRequest
from nsrun.launch.view import plan_process
from nsrun.process.shim import Shim, ShimFds

opens = sys.argv[1] == "open"
plan = plan_process(SandboxRequest.parse(["sh", "-c", "echo ran; exit 7"], net="none"), "gated", [])
gate_read, gate_write = os.pipe2(os.O_CLOEXEC)
if os.fork() == 0:  # the set-up, still under way
    os.close(gate_read)
    time.sleep(0.5)
    print("opening" if opens else "failing", flush=True)
    if opens:
        os.write(gate_write, b"g")
    os._exit(0)
os.close(gate_write)
outcome = Shim(plan, ShimFds(gate=gate_read)).run()
print(f"exit {outcome.exit_code} failure {outcome.failure}", flush=True)
# the caller goes on: its children go into its own PID namespace again, not the sandbox's
child = os.fork()
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
print("the caller forks", flush=True)
"""


def test_the_command_runs_only_once_the_gate_opens(world: World) -> None:
    result = world.run(sys.executable, "-c", GATED_SHIM, "open")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["opening", "ran", "exit 7 failure None", "the caller forks"]


def test_a_gate_closed_unopened_runs_nothing(world: World) -> None:
    result = world.run(sys.executable, "-c", GATED_SHIM, "close")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "failing"
    assert "ran" not in lines
    assert lines[1] == "exit 125 failure preparing the sandbox: its network set-up did not complete"
    assert lines[2] == "the caller forks"
