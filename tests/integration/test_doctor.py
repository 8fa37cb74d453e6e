"""`nsrun doctor` on a healthy world and on broken ones."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from tests.world import World

pytestmark = pytest.mark.privileged


def _checks(world: World) -> tuple[int, dict[str, dict[str, str]]]:
    result = world.nsrun("doctor", "--json")
    data = json.loads(result.stdout)
    assert data["ok"] is (result.returncode == 0)
    return result.returncode, {check["name"]: check for check in data["checks"]}


def test_doctor_passes_on_a_healthy_host(world: World, backend: str) -> None:
    assert world.nsrun("--", "true").returncode == 0
    status, checks = _checks(world)
    assert status == 0
    assert {c["status"] for c in checks.values()} == {"ok"}
    assert checks["rules of network nsrun"]["detail"].startswith(backend)
    table = world.nsrun("doctor")
    assert table.returncode == 0
    assert "kernel: veth and bridge" in table.stdout


def test_doctor_on_ip_forward_off_warns_when_idle_and_fails_under_a_sandbox(world: World, tmp_path: Path) -> None:
    assert world.nsrun("--", "true").returncode == 0
    assert world.run("sysctl", "-qw", "net.ipv4.ip_forward=0").returncode == 0
    status, checks = _checks(world)
    assert status == 0  # as after a reboot: the next launch turns it on
    assert checks["ip_forward"]["status"] == "warn"
    ready = tmp_path / "ready"
    sandbox = world.nsrun_popen(
        "--", "sh", "-c", f"sysctl -qw net.ipv4.ip_forward=0 2>/dev/null; touch {ready}; sleep 60"
    )
    world.wait_for(ready.exists, what="the sandbox")
    assert world.run("sysctl", "-qw", "net.ipv4.ip_forward=0").returncode == 0
    status, checks = _checks(world)
    assert status == 1
    assert checks["ip_forward"]["status"] == "fail"
    assert "sysctl -w net.ipv4.ip_forward=1" in checks["ip_forward"]["fix"]
    sandbox.terminate()
    sandbox.wait(timeout=10)


@pytest.mark.parametrize("tool", ["iptables-nft", "iptables-legacy"])
def test_doctor_fails_on_a_foreign_drop_without_nsruns_accepts(world: World, tool: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    sandbox = world.nsrun_popen("--", "sh", "-c", f"touch {ready}; sleep 60")  # the drop cuts it off
    world.wait_for(ready.exists, what="the sandbox")
    assert world.run(tool, "-P", "FORWARD", "DROP").returncode == 0  # after nsrun's last launch
    status, checks = _checks(world)
    row = checks.get("foreign DROP (nsrun)")
    if tool == "iptables-legacy" and row is None:
        # with the iptables backend nsrun's own chain, jumped to first, already accepts
        assert status == 0
        return
    assert status == 1
    assert row is not None
    assert row["status"] == "fail"
    assert "FORWARD" in row["detail"]
    assert row["fix"].startswith("nsrun --network nsrun")
    assert world.nsrun("--", "true").returncode == 0  # the fix works
    assert _checks(world)[0] == 0
    sandbox.terminate()
    sandbox.wait(timeout=10)


def test_doctor_warns_of_an_orphan_veth_and_stale_lease(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    assert world.run("ip", "link", "add", "nsv0123456789ab", "type", "veth", "peer", "name", "tmp0").returncode == 0
    status, checks = _checks(world)
    assert status == 0  # warnings only
    assert checks["orphan veths"]["status"] == "warn"
    assert checks["orphan veths"]["fix"] == "ip link del nsv0123456789ab"


def test_doctor_warns_of_rules_of_removed_networks(world: World) -> None:
    assert world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24").returncode == 0
    # a definition lost behind nsrun's back (say, /var/lib wiped): its rules are orphans
    assert world.run("rm", "/var/lib/nsrun/networks/lab.json").returncode == 0
    _, checks = _checks(world)
    row = checks["rules of removed network"]
    assert row["status"] == "warn"
    assert "nsrun:lab" in row["detail"]
    assert world.run("sh", "-c", row["fix"]).returncode == 0
    assert "rules of removed network" not in _checks(world)[1]
    assert "nsrun:lab" not in world.run("nft", "list", "ruleset").stdout + world.run("iptables-legacy-save").stdout
