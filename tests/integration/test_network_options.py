"""Network options: MTU from the uplink or --mtu, internal networks, automatic subnets."""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING

import pytest

from tests.world import UPLINK_ADDRESS

if TYPE_CHECKING:
    from tests.world import World

pytestmark = pytest.mark.privileged


def _mtu(world: World, *args: str) -> int:
    result = world.nsrun(*args, "--", "ip", "-j", "link", "show", "eth0")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)[0]["mtu"])


def test_mtu_follows_the_uplink_unless_given(world: World) -> None:
    assert world.run("ip", "link", "set", "uplink", "mtu", "1400").returncode == 0
    assert _mtu(world) == 1400
    host_end = [link for link in json.loads(world.run("ip", "-j", "link").stdout) if link["ifname"] == "nsrun0"]
    assert host_end
    assert world.nsrun("network", "create", "jumbo", "--subnet", "10.123.0.0/24", "--mtu", "1300").returncode == 0
    assert _mtu(world, "--network", "jumbo") == 1300


def test_internal_network_reaches_nothing_outside(world: World) -> None:
    world.wan_server()
    assert world.nsrun("network", "create", "inner", "--subnet", "10.123.0.0/24", "--internal").returncode == 0
    server = world.serve_in_sandbox("10.123.0.7", 9000, "--network", "inner")
    # sandboxes of the network still reach each other
    peer = world.nsrun("--network", "inner", "--", *world.client_argv("10.123.0.7", 9000))
    assert peer.stdout.strip().startswith("10.123.0.")
    routes = json.loads(world.nsrun("--network", "inner", "--", "ip", "-j", "route").stdout)
    assert not [r for r in routes if r["dst"] == "default"]
    # even with a route added by hand inside, nothing is forwarded out, and nothing masqueraded
    out = world.nsrun(
        "--network",
        "inner",
        "--",
        "sh",
        "-c",
        "ip route add default via 10.123.0.1 && " + " ".join(world.client_argv()),
    )
    assert out.returncode != 0
    assert UPLINK_ADDRESS not in out.stdout
    inspect = json.loads(world.nsrun("network", "inspect", "inner").stdout)
    assert inspect["internal"] is True
    server.terminate()


def test_subnet_is_picked_when_left_out(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    created = world.nsrun("network", "create", "auto")
    assert created.returncode == 0, created.stderr
    subnet = ipaddress.IPv4Network(json.loads(world.nsrun("network", "inspect", "auto").stdout)["subnet"])
    default = ipaddress.IPv4Network(json.loads(world.nsrun("network", "inspect", "nsrun").stdout)["subnet"])
    assert not subnet.overlaps(default)
    assert not subnet.overlaps(ipaddress.IPv4Network("203.0.113.0/24"))
    assert subnet.is_private


@pytest.mark.parametrize("mtu", ["67", "70000", "abc"])
def test_bad_mtu_is_refused(world: World, mtu: str) -> None:
    before = world.snapshot()
    result = world.nsrun("network", "create", "x", "--subnet", "10.9.0.0/24", "--mtu", mtu)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert world.snapshot() == before


def test_subnet_is_rechecked_against_host_routes_at_each_launch(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    subnet = json.loads(world.nsrun("network", "inspect", "nsrun").stdout)["subnet"]
    # a VPN comes up with a route over the network's subnet
    vpn = str(ipaddress.IPv4Network(subnet).supernet(new_prefix=16))
    assert world.run("ip", "route", "add", vpn, "via", "203.0.113.10", "dev", "uplink").returncode == 0
    result = world.nsrun("--", "true")
    assert result.returncode == 125
    assert "now overlaps" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not [n for n in world.links() if n.startswith("nsv")]
