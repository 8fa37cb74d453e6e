"""Firewall backends, coexistence with other tools' DROP policies, isolation and self-repair."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.world import UPLINK_ADDRESS, World

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.privileged

FOREIGN_DROPS = {
    "iptables-nft": ["iptables-nft -P FORWARD DROP"],
    "iptables-legacy": ["iptables-legacy -P FORWARD DROP"],
    "docker-nft": [
        "iptables-nft -N DOCKER-USER",
        "iptables-nft -A FORWARD -j DOCKER-USER",
        "iptables-nft -P FORWARD DROP",
    ],
    "docker-legacy": [
        "iptables-legacy -N DOCKER-USER",
        "iptables-legacy -A FORWARD -j DOCKER-USER",
        "iptables-legacy -P FORWARD DROP",
    ],
}


@pytest.fixture
def auto_world() -> Iterator[World]:
    w = World()  # NSRUN_FIREWALL unset: the backend `auto` picks
    try:
        yield w
    finally:
        w.close()


def _reaches_wan(world: World, *args: str) -> bool:
    result = world.nsrun(*args, "--", *world.client_argv())
    return result.returncode == 0 and result.stdout.strip() == UPLINK_ADDRESS


def _nsrun_tables(ruleset: str) -> list[str]:
    return [line.removesuffix(" {") for line in ruleset.splitlines() if line.startswith("table ") and "nsrun" in line]


def _sh(world: World, command: str) -> None:
    result = world.run("sh", "-c", command)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("foreign", list(FOREIGN_DROPS))
def test_default_backend_works_under_a_foreign_forward_drop(auto_world: World, foreign: str) -> None:
    world = auto_world
    world.wan_server()
    for command in FOREIGN_DROPS[foreign]:
        _sh(world, command)
    assert _reaches_wan(world)
    assert json.loads(world.nsrun("network", "inspect", "nsrun").stdout)["firewall"] == "nftables"
    tool = "iptables-legacy" if "legacy" in foreign else "iptables-nft"
    listing = world.run(tool, "-S")
    assert listing.returncode == 0, listing.stderr
    assert "incompatible" not in listing.stdout + listing.stderr
    assert "-P FORWARD DROP" in listing.stdout  # the other tool's policy is untouched
    # the accepts sit where that tool wants users' rules, and it can read them back
    target = "DOCKER-USER" if "docker" in foreign else "FORWARD"
    assert f'-A {target} -i nsrun0 -m comment --comment "nsrun:nsrun" -j ACCEPT' in listing.stdout
    assert f'-A {target} -o nsrun0 -m comment --comment "nsrun:nsrun" -j ACCEPT' in listing.stdout


# A sandbox that connects to the wan server each time it reads a line, and prints what it saw.
PROBER = """
import socket, sys
for _ in sys.stdin:
    try:
        s = socket.create_connection(("203.0.113.10", 8080), timeout=1.5)
        print(s.recv(100).decode().strip(), flush=True)
    except OSError as err:
        print("failed", err, flush=True)
"""


def test_without_nsruns_accepts_the_foreign_drop_blocks_and_a_launch_restores_them(auto_world: World) -> None:
    world = auto_world
    world.wan_server()
    _sh(world, "iptables-nft -P FORWARD DROP")
    prober = world.nsrun_popen("--", sys.executable, "-c", PROBER, stdin=subprocess.PIPE)
    assert prober.stdin is not None
    assert prober.stdout is not None

    def probe() -> str:
        prober.stdin.write("go\n")  # type: ignore[union-attr]
        prober.stdin.flush()  # type: ignore[union-attr]
        return prober.stdout.readline().strip()  # type: ignore[union-attr]

    assert probe() == UPLINK_ADDRESS
    _sh(world, "iptables-nft -F FORWARD")  # another tool reloads its chain: nsrun's accepts are gone
    assert probe().startswith("failed")  # so the foreign DROP policy really drops sandbox traffic
    assert world.nsrun("--net", "none", "--", "true").returncode == 0  # no network: no repair
    assert probe().startswith("failed")
    assert world.nsrun("--", "true").returncode == 0  # a launch on the network checks and repairs
    assert probe() == UPLINK_ADDRESS
    prober.stdin.close()
    assert prober.wait(timeout=10) == 0


@pytest.mark.parametrize(
    "foreign",
    [
        pytest.param("iptables-nft -P FORWARD DROP", id="nft-drop"),
        pytest.param("iptables-legacy -P FORWARD DROP", id="legacy-drop"),
    ],
)
def test_each_backend_works_under_a_foreign_drop(world: World, foreign: str) -> None:
    world.wan_server()
    _sh(world, foreign)
    assert _reaches_wan(world)


def test_rules_land_in_the_backends_ruleset(world: World, backend: str) -> None:
    assert world.nsrun("--", "true").returncode == 0
    legacy = world.run("iptables-legacy-save").stdout
    nft = world.run("nft", "list", "ruleset").stdout
    if backend == "iptables":
        assert "NSRUN-FORWARD" in legacy
        assert "NSRUN-POSTROUTING" in legacy
        # nf_tables holds only the bridge-port filters' table (no other backend has a bridge family)
        assert _nsrun_tables(nft) == ["table bridge nsrun"]
    else:
        assert "table inet nsrun" in nft
        assert "masquerade" in nft
        assert "nsrun" not in legacy
    assert json.loads(world.nsrun("network", "inspect", "nsrun").stdout)["firewall"] == backend


def test_a_launch_leaves_intact_rules_alone(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    # handles (nft -a) and rule positions change if anything is deleted and re-added
    before = world.run("nft", "-a", "list", "ruleset").stdout, world.run("iptables-legacy-save").stdout
    assert world.nsrun("--", "true").returncode == 0
    after = world.run("nft", "-a", "list", "ruleset").stdout, world.run("iptables-legacy-save").stdout
    assert [_no_counters(text) for text in after] == [_no_counters(text) for text in before]


def _no_counters(text: str) -> str:
    return "\n".join(line.split(" [")[0] for line in text.splitlines() if not line.startswith("#"))


def test_network_rm_leaves_nothing_in_either_ruleset(world: World) -> None:
    _sh(world, "iptables-nft -P FORWARD DROP; iptables-legacy -P FORWARD DROP")
    assert world.nsrun("--", "true").returncode == 0  # the default network stays
    before = world.snapshot()
    # so does the bridge-port filters' table, empty: it lives as long as nsrun's networks
    assert "table bridge nsrun" in before["nft"]
    assert "sb-" not in before["nft"]
    assert world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24").returncode == 0
    assert world.nsrun("--network", "lab", "--", "true").returncode == 0
    assert "nsrun:lab" in world.run("nft", "list", "ruleset").stdout + world.run("iptables-legacy-save").stdout
    assert world.nsrun("network", "rm", "lab").returncode == 0
    after = world.snapshot()
    assert "lab" not in after["nft"]
    assert "lab" not in after["legacy"]
    assert after == before
    assert world.nsrun("network", "rm", "nsrun").returncode == 0
    assert "nsrun" not in world.run("nft", "list", "ruleset").stdout
    assert "nsrun" not in world.run("iptables-legacy-save").stdout.lower()


def test_outside_cannot_connect_to_a_sandbox(world: World) -> None:
    assert world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24").returncode == 0
    server = world.serve_in_sandbox("10.123.0.7", 9000, "--network", "lab")
    # from the host itself it answers, so the server is really there
    assert world.run(*world.client_argv("10.123.0.7", 9000)).stdout.strip() == "10.123.0.1"
    # a wan host that routes the sandbox subnet via this host gets nowhere
    _sh(world, "ip netns exec wan ip route add 10.123.0.0/24 via 203.0.113.1")
    outside = world.run("ip", "netns", "exec", "wan", *world.client_argv("10.123.0.7", 9000))
    assert outside.returncode != 0
    assert "timed out" in outside.stderr or "refused" in outside.stderr.lower()
    server.terminate()


def test_sandboxes_of_two_networks_cannot_reach_each_other(world: World) -> None:
    assert world.nsrun("network", "create", "a", "--subnet", "10.123.0.0/24").returncode == 0
    assert world.nsrun("network", "create", "b", "--subnet", "10.124.0.0/24").returncode == 0
    server = world.serve_in_sandbox("10.123.0.7", 9000, "--network", "a")
    same = world.nsrun("--network", "a", "--", *world.client_argv("10.123.0.7", 9000))
    assert same.stdout.strip().startswith("10.123.0.")
    other = world.nsrun("--network", "b", "--", *world.client_argv("10.123.0.7", 9000))
    assert other.returncode != 0
    server.terminate()


def test_launch_repairs_rules_after_a_flush(world: World, backend: str) -> None:
    world.wan_server()
    assert _reaches_wan(world)
    if backend == "nftables":
        _sh(world, "nft flush ruleset")
    else:
        _sh(world, "iptables-legacy -F; iptables-legacy -t nat -F")
    # without nsrun's masquerade the wan server would see the sandbox address, or nothing at all
    probe = world.nsrun("--net", "host", "--", *world.client_argv())
    assert probe.stdout.strip() == UPLINK_ADDRESS
    assert _reaches_wan(world)


GENERATION = "from nsrun.net.netlink import ruleset_generation; print(ruleset_generation())"


def test_the_check_is_skipped_while_the_ruleset_is_unchanged_and_one_lost_rule_is_seen(
    world: World, backend: str
) -> None:
    world.wan_server()
    assert _reaches_wan(world)
    assert _reaches_wan(world)
    memo = json.loads(world.run("cat", "/run/nsrun/firewall.checked").stdout or "{}")
    if backend == "iptables":  # no generation for the legacy tables: every launch checks
        assert "nsrun" not in memo.get("networks", [])
        return
    # the last launch's own changes (its filter, added and removed) carried the memo along
    generation = world.run(sys.executable, "-c", GENERATION).stdout.strip()
    assert (memo["generation"], memo["networks"]) == (int(generation), ["nsrun"])
    # one rule of the network goes, by another hand: the generation moves, the next launch checks
    listing = json.loads(world.run("nft", "-j", "-a", "list", "chain", "inet", "nsrun", "postrouting").stdout)
    rules = [item["rule"] for item in listing["nftables"] if "rule" in item]
    handles = [rule["handle"] for rule in rules if any("masquerade" in expr for expr in rule["expr"])]
    assert handles  # the network's masquerade
    _sh(world, f"nft delete rule inet nsrun postrouting handle {handles[0]}")
    assert _reaches_wan(world)  # masqueraded again: the wan server sees the host's uplink address


def test_forced_backend_moves_an_existing_network(auto_world: World) -> None:
    world = auto_world
    world.wan_server()
    assert _reaches_wan(world)
    assert "table inet nsrun" in world.run("nft", "list", "ruleset").stdout
    world.env["NSRUN_FIREWALL"] = "iptables"
    assert _reaches_wan(world)
    assert json.loads(world.nsrun("network", "inspect", "nsrun").stdout)["firewall"] == "iptables"
    assert _nsrun_tables(world.run("nft", "list", "ruleset").stdout) == ["table bridge nsrun"]
    assert "NSRUN-FORWARD" in world.run("iptables-legacy-save").stdout


def test_invalid_firewall_choice_is_a_usage_error(auto_world: World) -> None:
    auto_world.env["NSRUN_FIREWALL"] = "pf"
    before = auto_world.snapshot()
    result = auto_world.nsrun("--", "true")
    assert result.returncode == 2
    assert "NSRUN_FIREWALL" in result.stderr
    assert auto_world.snapshot() == before


def test_auto_picks_iptables_on_a_legacy_host(auto_world: World, tmp_path: Path) -> None:
    # this world's `iptables` is the legacy one, as after `update-alternatives --set iptables ...`
    world = auto_world
    (tmp_path / "iptables").symlink_to("/usr/sbin/xtables-legacy-multi")
    world.env["PATH"] = f"{tmp_path}:{world.env['PATH']}"
    world.wan_server()
    assert _reaches_wan(world)
    assert json.loads(world.nsrun("network", "inspect", "nsrun").stdout)["firewall"] == "iptables"
    assert "NSRUN-FORWARD" in world.run("iptables-legacy-save").stdout


READ_RULES_BESIDE_PRINTS = """
import os, sys, threading, time
from nsrun.firewall.iptables import IptablesBackend
backend = IptablesBackend()
stdout = os.readlink("/proc/self/fd/1")
done = threading.Event()
counts = []
prints = 0
def read():
    while not done.is_set():
        counts.append(len(backend.orphans(set())))  # reads every nsrun rule's comment
reader = threading.Thread(target=read)
reader.start()
seen = set()
deadline = time.monotonic() + 2
while time.monotonic() < deadline or len(counts) < 50:
    seen.add(os.readlink("/proc/self/fd/1"))
    print("x", end="", flush=True)
    prints += 1
    time.sleep(0.0002)  # the reader runs meanwhile
done.set()
reader.join()
print()
print(seen == {stdout}, prints)
"""


def test_reading_iptables_rules_leaves_the_callers_stdout_alone() -> None:
    # python-iptables reads a rule's comment by pointing descriptor 1 at a pipe meanwhile: a
    # library caller's thread printing then lost its output or failed with EPIPE
    w = World(firewall="iptables")
    try:
        assert w.nsrun("--", "true").returncode == 0  # the network's rules, with their comments
        result = w.run(sys.executable, "-c", READ_RULES_BESIDE_PRINTS, timeout=30)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[1] == f"True {len(lines[0])}"  # descriptor 1 stayed, and no print was lost
    finally:
        w.close()


REMOVE_AGAIN = """
import errno, sys
from nsrun.firewall.portguard import removal
from nsrun.net.netlink import delete_nft_objects, ruleset_generation
gone = removal(sys.argv[1])
before = ruleset_generation()
refused = delete_nft_objects(gone.family, gone.table, gone.elements, gone.flushed, gone.chains)
print(errno.errorcode.get(refused, refused), ruleset_generation() - before)
"""


def _port_filters(world: World) -> tuple[set[str], set[str]]:
    """(the bridge table's per-sandbox chains, the ports map's keys)."""
    listing = json.loads(world.run("nft", "-j", "list", "table", "bridge", "nsrun").stdout)["nftables"]
    chains = {item["chain"]["name"] for item in listing if "chain" in item and item["chain"]["name"].startswith("sb-")}
    elements = [item["map"].get("elem", []) for item in listing if "map" in item]
    return chains, {pair[0] for found in elements for pair in found}


def test_a_sandboxs_end_removes_its_port_filter_alone(world: World, tmp_path: Path) -> None:
    # its chain and its entry in the ports map go in one nf_tables transaction, sent through
    # netlink; a neighbour's stay, and a second removal changes nothing
    ready = [tmp_path / "one", tmp_path / "two"]
    sandboxes = [world.nsrun_popen("--", "sh", "-c", f"touch {mark}; exec sleep 300") for mark in ready]
    world.wait_for(lambda: all(mark.exists() for mark in ready), what="both sandboxes")
    ids = [record["sandbox_id"] for record in json.loads(world.nsrun("ls", "--json").stdout)]
    assert len(ids) == 2
    assert _port_filters(world) == ({f"sb-{i}" for i in ids}, {f"nsv{i}" for i in ids})
    sandboxes[0].terminate()
    sandboxes[0].wait(timeout=10)
    left = next(i for i in ids if f"nsv{i}" in world.links())
    ended = next(i for i in ids if i != left)
    assert _port_filters(world) == ({f"sb-{left}"}, {f"nsv{left}"})
    again = world.run(sys.executable, "-c", REMOVE_AGAIN, ended)
    assert again.stdout.split() == ["ENOENT", "0"], again.stderr  # refused whole: the ruleset is unchanged
    assert _port_filters(world) == ({f"sb-{left}"}, {f"nsv{left}"})
    sandboxes[1].terminate()
    sandboxes[1].wait(timeout=10)
    assert _port_filters(world) == (set(), set())


def test_a_half_made_port_filter_is_removed_from_the_listing(world: World, tmp_path: Path) -> None:
    # a filter whose map entry is already gone (a half-made one): the transaction by name is
    # refused whole, and what the listing shows of the filter (its chain) goes all the same
    ready = tmp_path / "ready"
    sandbox = world.nsrun_popen("--", "sh", "-c", f"touch {ready}; exec sleep 300")
    world.wait_for(ready.exists, what="the sandbox")
    (record,) = json.loads(world.nsrun("ls", "--json").stdout)
    sandbox_id = record["sandbox_id"]
    _sh(world, f'nft delete element bridge nsrun ports {{ "nsv{sandbox_id}" }}')
    assert _port_filters(world) == ({f"sb-{sandbox_id}"}, set())
    sandbox.terminate()
    sandbox.wait(timeout=10)
    assert _port_filters(world) == (set(), set())
