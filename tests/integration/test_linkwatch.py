"""The teardown's wait for a veth to go, on the kernel's link notifications: real links, in a world."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.world import World

pytestmark = pytest.mark.privileged

WAIT = """
import subprocess, threading
from nsrun.net.linkwatch import wait_gone
from nsrun.net.netlink import delete_link_soon

def ip(*args):
    subprocess.run(["ip", *args], check=True)

ip("link", "add", "lwa0", "type", "veth", "peer", "name", "lwb0")
print("kept", wait_gone("lwa0", 0.2), wait_gone("lwa0", 0))
# deleted by another hand while the wait runs: it wakes on the notification, long before its deadline
threading.Timer(0.1, ip, ("link", "del", "lwb0")).start()
print("deleted", wait_gone("lwa0", 30))
print("missing", wait_gone("lwa0", 0), wait_gone("nothere0", 30))
# a pair whose namespace goes: the kernel takes the host end with it
ip("netns", "add", "lw")
ip("link", "add", "lwc0", "type", "veth", "peer", "name", "eth0", "netns", "lw")
threading.Timer(0.1, ip, ("netns", "del", "lw")).start()
print("namespace", wait_gone("lwc0", 30))
# asked to go: gone long before the kernel's request returns (an rcu_barrier), with its peer
ip("netns", "add", "lw2")
ip("link", "add", "lwd0", "type", "veth", "peer", "name", "eth0", "netns", "lw2")
delete_link_soon("lwd0")
print("removed", wait_gone("lwd0", 30), subprocess.run(["ip", "-n", "lw2", "link", "show", "eth0"]).returncode != 0)
delete_link_soon("nothere0")  # nothing to remove: nothing happens
ip("netns", "del", "lw2")
"""


def test_wait_gone_wakes_when_the_link_goes_and_times_out_while_it_stays(world: World) -> None:
    result = world.run(sys.executable, "-c", WAIT, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "kept False False",
        "deleted True",
        "missing True True",
        "namespace True",
        "removed True True",
    ]
