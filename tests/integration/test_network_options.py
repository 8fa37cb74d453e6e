"""Network options: MTU from the uplink or --mtu, internal networks, automatic subnets."""

from __future__ import annotations

import ipaddress
import json
import sys
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


def test_a_renamed_bridge_is_named_with_its_fix(world: World) -> None:
    """Someone renamed the network's bridge: its gateway's route is on another interface now.
    Not "recreate the network elsewhere": the bridge is named, and its fix works."""
    assert world.nsrun("--", "true").returncode == 0
    assert world.run("ip", "link", "set", "nsrun0", "name", "renamed0").returncode == 0
    result = world.nsrun("--", "true")
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1
    assert "on renamed0, not on its bridge nsrun0" in result.stderr
    assert "`ip link set renamed0 name nsrun0`" in result.stderr
    assert not [n for n in world.links() if n.startswith("nsv")]
    doctor = world.nsrun("doctor")
    assert doctor.returncode == 1
    assert "ip link del renamed0" in doctor.stdout
    assert world.run("ip", "link", "del", "renamed0").returncode == 0  # the fix it gives
    assert world.nsrun("--", "true").returncode == 0
    assert world.nsrun("doctor").returncode == 0


PEER_SERVER6 = """
import socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("listening", flush=True)
while True:
    c, a = s.accept(); c.sendall((a[0] + "\\n").encode()); c.close()
"""
# binds the sandbox's own IPv6 address right away (a tentative address would refuse), then connects out
DUAL_CLIENT = """
import socket, subprocess, sys
mine = subprocess.run(["ip", "-6", "-o", "addr", "show", "eth0", "scope", "global"], capture_output=True, text=True)
address = mine.stdout.split()[3].split("/")[0]
probe = socket.socket(socket.AF_INET6); probe.bind((address, 0)); probe.close()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(address, s.recv(100).decode().strip())
"""


def test_dual_stack_network_reaches_an_ipv6_server_masqueraded(world: World, backend: str) -> None:
    create = world.nsrun("network", "create", "dual", "--subnet", "10.130.0.0/24", "--subnet", "fd00:130::/64")
    if backend == "iptables":
        # python-iptables drives one address family per process: IPv6 needs the nftables backend
        assert create.returncode == 125
        assert "nftables" in create.stderr
        return
    assert create.returncode == 0, create.stderr
    server = world.popen("ip", "netns", "exec", "wan", sys.executable, "-c", PEER_SERVER6, "2001:db8:ff::10", "8086")
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    result = world.nsrun("--network", "dual", "--", sys.executable, "-c", DUAL_CLIENT, "2001:db8:ff::10", "8086")
    assert result.returncode == 0, result.stderr
    address, seen = result.stdout.split()
    assert ipaddress.IPv6Address(address) in ipaddress.IPv6Network("fd00:130::/64")
    assert seen == "2001:db8:ff::1"  # masqueraded as the host's uplink
    world.wan_server()
    v4 = world.nsrun("--network", "dual", "--", *world.client_argv())
    assert v4.stdout.strip() == UPLINK_ADDRESS  # IPv4 still works beside it
    spec = json.loads(world.nsrun("network", "inspect", "dual").stdout)
    assert spec["subnet6"] == "fd00:130::/64"
    assert spec["gateway6"] == "fd00:130::1"


def test_a_launch_whose_firewall_fails_gives_back_the_address_it_leased(world: World, backend: str) -> None:
    """Set-up leases the address (and names it in the hosts file) before it sees to the network's
    rules: when that fails (a dual-stack network cannot move to iptables), the address goes back,
    and the launch leaves nothing."""
    if backend == "iptables":
        pytest.skip("a dual-stack network is made on the nftables backend only")
    create = world.nsrun("network", "create", "dual", "--subnet", "10.131.0.0/29", "--subnet", "fd00:131::/64")
    assert create.returncode == 0, create.stderr
    assert world.nsrun("--network", "dual", "--", "true").returncode == 0
    before = world.snapshot()
    chosen = world.env.get("NSRUN_FIREWALL")
    world.env["NSRUN_FIREWALL"] = "iptables"
    for _ in range(6):  # more than the /29 has addresses: none may stay taken
        refused = world.nsrun("--network", "dual", "--", "true")
        assert refused.returncode == 125
        assert "IPv6 needs the nftables backend" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert world.snapshot() == before
    world.env.pop("NSRUN_FIREWALL")
    world.env.update({"NSRUN_FIREWALL": chosen} if chosen else {})
    assert world.nsrun("--network", "dual", "--", "true").returncode == 0


@pytest.mark.parametrize(
    "subnets",
    [
        pytest.param(["fd00:1::/64", "fd00:2::/64"], id="two-ipv6"),
        pytest.param(["10.9.0.0/24", "10.10.0.0/24"], id="two-ipv4"),
        pytest.param(["10.9.0.0/24", "fe80::/64"], id="link-local"),
        pytest.param(["10.9.0.0/16", "fd00:1::/120"], id="ipv6-smaller-than-ipv4"),
    ],
)
def test_bad_dual_stack_subnets(world: World, subnets: list[str]) -> None:
    before = world.snapshot()
    args = [arg for subnet in subnets for arg in ("--subnet", subnet)]
    result = world.nsrun("network", "create", "x", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert world.snapshot() == before
