"""Every bad input: one clear line, exit 2 or 125, and nothing changed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.world import World

pytestmark = pytest.mark.privileged

BAD_INPUTS = [
    pytest.param(["--ip", "10.200.0.300", "--", "true"], 2, id="malformed-ip"),
    pytest.param(["--ip", "192.0.2.5", "--", "true"], 2, id="ip-outside-subnet"),
    pytest.param(["--network", "lab", "--ip", "10.123.0.1", "--", "true"], 2, id="ip-is-gateway"),
    pytest.param(["--network", "lab", "--ip", "10.123.0.255", "--", "true"], 2, id="ip-is-broadcast"),
    pytest.param(["--mac", "zz:00:00:00:00:01", "--", "true"], 2, id="malformed-mac"),
    pytest.param(["--mac", "01:00:00:00:00:01", "--", "true"], 2, id="multicast-mac"),
    pytest.param(["--network", "nope", "--", "true"], 125, id="unknown-network"),
    pytest.param(["--net", "bogus", "--", "true"], 2, id="unknown-net-mode"),
    pytest.param(["--net", "none", "--ip", "10.200.0.5", "--", "true"], 2, id="ip-without-bridge"),
    pytest.param(["--bogus-option", "true"], 2, id="unknown-option"),
    pytest.param([], 2, id="no-command"),
    pytest.param(["--"], 2, id="empty-command"),
    pytest.param(["--", ""], 2, id="empty-command-name"),
    pytest.param(["network", "create", "x", "--subnet", "10.0.0.0/33"], 2, id="invalid-cidr"),
    pytest.param(["network", "create", "x", "--subnet", "10.0.0.1/24"], 2, id="cidr-host-bits"),
    pytest.param(["network", "create", "x", "--subnet", "nonsense"], 2, id="cidr-garbage"),
    pytest.param(["network", "create", "x", "--subnet", "10.9.0.0/24", "--bridge", "a" * 16], 2, id="bridge-16-bytes"),
    pytest.param(
        ["network", "create", "x", "--subnet", "10.9.0.0/24", "--gateway", "10.8.0.1"], 2, id="gateway-outside"
    ),
    pytest.param(["network", "create", "bad/name", "--subnet", "10.9.0.0/24"], 2, id="bad-network-name"),
    pytest.param(["network", "create", "lab", "--subnet", "10.9.0.0/24"], 125, id="duplicate-name"),
    pytest.param(["network", "create", "y", "--subnet", "10.123.0.0/16"], 125, id="overlaps-network"),
    pytest.param(["network", "create", "y", "--subnet", "203.0.113.0/28"], 125, id="overlaps-host-route"),
    pytest.param(
        ["network", "create", "y", "--subnet", "10.9.0.0/24", "--bridge", "uplink"], 125, id="bridge-name-taken"
    ),
    pytest.param(["network", "rm", "missing"], 125, id="rm-missing-network"),
    pytest.param(["network", "inspect", "missing"], 125, id="inspect-missing-network"),
    pytest.param(["stop", "-t", "-1", "x"], 2, id="stop-negative-time"),
    pytest.param(["stop", "-t", "nan", "x"], 2, id="stop-nan-time"),
    pytest.param(["logs", "--tail", "-1", "x"], 2, id="logs-negative-tail"),
]


@pytest.mark.parametrize(("args", "status"), BAD_INPUTS)
def test_bad_input_is_one_line_and_changes_nothing(world: World, args: list[str], status: int) -> None:
    assert world.nsrun("--", "true").returncode == 0  # the default network exists
    assert world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24").returncode == 0
    before = world.snapshot()
    result = world.nsrun(*args)
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith("nsrun: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert world.snapshot() == before


def test_first_launch_with_bad_ip_creates_no_default_network(world: World) -> None:
    before = world.snapshot()
    result = world.nsrun("--ip", "192.0.2.5", "--", "true")
    assert result.returncode == 2
    assert world.snapshot() == before
    assert "nsrun0" not in world.links()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NSRUN_LOCK_TIMEOUT", "abc"),
        ("NSRUN_LOCK_TIMEOUT", "-1"),
        ("NSRUN_LOCK_TIMEOUT", "nan"),
        ("NSRUN_FIREWALL", "bogus"),
    ],
)
def test_a_bad_setting_in_the_environment_is_one_line_and_changes_nothing(
    world: World, variable: str, value: str
) -> None:
    assert world.nsrun("--", "true").returncode == 0  # the default network exists (and the helper starts)
    before = world.snapshot()
    result = world.nsrun("--", "true", env=world.env | {variable: value})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"nsrun: invalid {variable}={value!r}: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert world.snapshot() == before


@pytest.mark.parametrize(
    ("args", "status"),
    [
        pytest.param(["--ip", "10.200.0.300"], 2, id="malformed-ip"),
        pytest.param(["--network", "nope"], 125, id="unknown-network"),
        pytest.param(["--wait-port", "9", "--wait-timeout", "nan"], 2, id="wait-timeout-nan"),
        pytest.param(["--name", "web"], 125, id="name-in-use"),
    ],
)
def test_bad_input_to_a_detached_launch_is_one_line_with_its_status(world: World, args: list[str], status: int) -> None:
    """nsrun -d hands its command line to a process of its own (through the helper): what went
    wrong is said once, with the status of what went wrong."""
    assert world.nsrun("-d", "--name", "web", "--", "sleep", world.unique(60)).returncode == 0
    if world.env.get("NSRUN_HELPER") != "off":
        world.wait_for(world.helper_running, what="the helper")  # the command line goes through it
    before = world.snapshot()
    result = world.nsrun("-d", *args, "--", "true")
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith("nsrun: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    assert world.snapshot() == before
    assert world.nsrun("stop", "web").returncode == 0
