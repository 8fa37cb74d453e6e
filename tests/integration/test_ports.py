"""Published ports: reachable from outside, from the host's 127.0.0.1 and from other sandboxes."""

from __future__ import annotations

import json
import signal
import sys
from typing import TYPE_CHECKING

import pytest

from tests.world import PEER_SERVER, UPLINK_ADDRESS

if TYPE_CHECKING:
    import subprocess

    from tests.world import World

pytestmark = pytest.mark.privileged

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(100); s.sendto(b"echo:" + data, peer)
"""
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b"hi", (sys.argv[1], int(sys.argv[2]))); print(s.recvfrom(100)[0].decode())
"""


def _publish(world: World, *args: str) -> subprocess.Popen[str]:
    """A server on 0.0.0.0:9000 in a sandbox, with nsrun options `args` (the -p ones)."""
    proc = world.nsrun_popen(*args, "--", sys.executable, "-c", PEER_SERVER, "0.0.0.0", "9000")  # noqa: S104
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "listening", proc.stderr.read() if proc.stderr else line
    return proc


def _answers(world: World, where: list[str], address: str, port: int) -> bool:
    result = world.run(*where, *world.client_argv(address, port))
    return result.returncode == 0 and bool(result.stdout.strip())


def test_published_port_is_reachable_from_everywhere(world: World) -> None:
    web = _publish(world, "--name", "web", "-p", "8081:9000")
    wan = ["ip", "netns", "exec", "wan"]
    assert _answers(world, wan, UPLINK_ADDRESS, 8081)  # from another machine
    outside = world.run(*wan, *world.client_argv(UPLINK_ADDRESS, 8081)).stdout.strip()
    assert outside == "203.0.113.10"  # the server sees the real client
    assert _answers(world, [], "127.0.0.1", 8081)  # from the host's loopback
    assert _answers(world, [], UPLINK_ADDRESS, 8081)  # from the host by its own address
    other = world.nsrun("--", *world.client_argv(UPLINK_ADDRESS, 8081))  # hairpin from another sandbox
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip()
    world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24")
    other_net = world.nsrun("--network", "lab", "--", *world.client_argv(UPLINK_ADDRESS, 8081))
    assert other_net.returncode == 0, other_net.stderr
    listing = json.loads(world.nsrun("ls", "--json").stdout)
    assert listing[0]["ports"] == ["8081:9000/tcp"]
    assert "0.0.0.0:8081->9000/tcp" in world.nsrun("ls").stdout
    web.terminate()
    assert web.wait(timeout=10) == -signal.SIGTERM
    assert not _answers(world, wan, UPLINK_ADDRESS, 8081)
    assert not _answers(world, [], "127.0.0.1", 8081)
    again = _publish(world, "-p", "8081:9000")  # at once, no leftover in the way
    assert _answers(world, wan, UPLINK_ADDRESS, 8081)
    again.terminate()
    again.wait(timeout=10)


def test_port_bound_to_one_host_address(world: World) -> None:
    web = _publish(world, "-p", f"{UPLINK_ADDRESS}:8082:9000")
    assert _answers(world, ["ip", "netns", "exec", "wan"], UPLINK_ADDRESS, 8082)
    assert not _answers(world, [], "127.0.0.1", 8082)
    web.terminate()
    web.wait(timeout=10)


def test_clashes_are_refused_naming_the_holder(world: World) -> None:
    web = _publish(world, "--name", "web", "-p", "8081:9000")
    before = world.snapshot()
    clash = world.nsrun("-p", "8081:80", "--", "true")
    assert clash.returncode == 125
    assert "'web'" in clash.stderr
    assert clash.stderr.count("\n") == 1
    host_server = world.popen(sys.executable, "-c", PEER_SERVER, "0.0.0.0", "8090")  # noqa: S104
    assert host_server.stdout is not None
    assert host_server.stdout.readline().strip() == "listening"
    taken = world.nsrun("-p", "8090:80", "--", "true")
    assert taken.returncode == 125
    assert f"pid {host_server.pid}" in taken.stderr or "python" in taken.stderr
    assert world.snapshot() == before
    web.terminate()
    web.wait(timeout=10)


def test_sigkilled_sandbox_ports_are_reclaimed(world: World) -> None:
    web = _publish(world, "-p", "8081:9000")
    web.send_signal(signal.SIGKILL)
    web.wait()
    again = _publish(world, "-p", "8081:9000")
    assert _answers(world, ["ip", "netns", "exec", "wan"], UPLINK_ADDRESS, 8081)
    rules = world.run("nft", "list", "ruleset").stdout + world.run("iptables-legacy-save").stdout
    dnat_lines = [line for line in rules.splitlines() if "8081" in line and "dnat" in line.lower()]
    assert len(dnat_lines) == 1, dnat_lines  # the dead sandbox's rule is gone
    again.terminate()
    again.wait(timeout=10)


def test_udp_port(world: World) -> None:
    echo = world.nsrun_popen("-p", "5353:53/udp", "--", sys.executable, "-c", UDP_ECHO, "53")
    assert echo.stdout is not None
    assert echo.stdout.readline().strip() == "listening"
    reply = world.run("ip", "netns", "exec", "wan", sys.executable, "-c", UDP_CLIENT, UPLINK_ADDRESS, "5353")
    assert reply.stdout.strip() == "echo:hi", reply.stderr
    echo.terminate()
    echo.wait(timeout=10)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["-p", "70000:80"], id="port-range"),
        pytest.param(["-p", "80:0"], id="no-container-port"),
        pytest.param(["-p", "8081:80/sctp"], id="protocol"),
        pytest.param(["-p", "8081:80", "-p", "8081:90"], id="twice"),
        pytest.param(["--net", "none", "-p", "8081:80"], id="no-bridge"),
        pytest.param(["-p", "192.0.2.77:8081:80"], id="not-a-host-address"),
    ],
)
def test_bad_publish(world: World, args: list[str]) -> None:
    assert world.nsrun("--", "true").returncode == 0
    before = world.snapshot()
    result = world.nsrun(*args, "--", "true")
    assert result.returncode in (2, 125), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert world.snapshot() == before
