"""End-to-end launches in a private world: real namespaces, veths, rules and processes."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.world import PEER_SERVER, UPLINK_ADDRESS, WAN_ADDRESS

if TYPE_CHECKING:
    from pathlib import Path

    from tests.world import World

pytestmark = pytest.mark.privileged


def _ip_json(world: World, *args: str) -> list[dict]:
    result = world.nsrun("--", "ip", "-j", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_sandbox_reaches_wan_masqueraded_as_uplink(world: World) -> None:
    world.wan_server()
    result = world.nsrun("--net", "bridge", "--", *world.client_argv())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == UPLINK_ADDRESS


def test_default_net_is_bridge_and_command_options_are_its_own(world: World) -> None:
    world.wan_server()
    # `-c` and `--` after CMD belong to the command, not to nsrun
    result = world.nsrun(sys.executable, "-c", "import sys; print(sys.argv[1:])", "--", "--net", "x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['--', '--net', 'x']"


def test_inside_has_lo_up_eth0_address_and_default_route(world: World) -> None:
    links = {link["ifname"]: link for link in _ip_json(world, "link")}
    assert set(links) == {"lo", "eth0"}
    assert "UP" in links["lo"]["flags"]
    assert "UP" in links["eth0"]["flags"]
    spec = json.loads(world.nsrun("network", "inspect", "nsrun").stdout)
    routes = _ip_json(world, "route")
    default = [r for r in routes if r["dst"] == "default"]
    assert default
    assert default[0]["gateway"] == spec["gateway"]
    addrs = [a for link in _ip_json(world, "-4", "addr", "show", "eth0") for a in link["addr_info"]]
    address = ipaddress.IPv4Address(addrs[0]["local"])
    assert address in ipaddress.IPv4Network(spec["subnet"])
    assert str(address) != spec["gateway"]


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        pytest.param(["sh", "-c", "exit 42"], 42, id="own-status"),
        pytest.param(["true"], 0, id="success"),
        pytest.param(["no-such-command-here"], 127, id="not-found"),
        pytest.param(["/etc/hostname"], 126, id="not-executable"),
        # nsrun dies of the signal its command died of, as a shell expects (its status: -N)
        pytest.param(["sh", "-c", "kill -TERM $$"], -signal.SIGTERM, id="killed-by-sigterm"),
        pytest.param(["sh", "-c", "kill -KILL $$"], -signal.SIGKILL, id="killed-by-sigkill"),
    ],
)
def test_exit_status(world: World, argv: list[str], status: int) -> None:
    result = world.nsrun("--", *argv)
    assert result.returncode == status, result.stderr
    if status in (126, 127):
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith("nsrun: ")


# what the command's descriptors 0, 1 and 2 are, written to the file argv[1]
FDS_REPORT = (
    "import os, sys; open(sys.argv[1], 'w').write(' '.join(os.readlink(f'/proc/self/fd/{n}') for n in (0, 1, 2)))"
)


@pytest.mark.parametrize(("closed", "fd"), [("<&-", 0), (">&-", 1), ("2>&-", 2)])
def test_a_closed_standard_descriptor_is_dev_null_for_the_command(
    world: World, tmp_path: Path, closed: str, fd: int
) -> None:
    """nsrun started with stdin, stdout or stderr closed: the command has /dev/null there (the
    first file nsrun opened used to take that number: the helper's connection, a library)."""
    assert world.nsrun("--", "true").returncode == 0
    if world.env.get("NSRUN_HELPER") != "off":
        world.wait_for(world.helper_running, what="the helper")  # and through it from here on
    report = tmp_path / "fds"
    nsrun = [sys.executable, "-m", "nsrun", "--", sys.executable, "-c", FDS_REPORT, str(report)]
    result = world.run("sh", "-c", f'exec "$@" {closed}', "sh", *nsrun)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert report.read_text().split()[fd] == "/dev/null"


NOT_UTF8 = os.fsdecode(b"x\xff")  # a byte that is no UTF-8: Python holds it as a surrogate


def test_words_and_paths_that_are_not_utf8_pass_as_they_are(world: World, tmp_path: Path) -> None:
    """Arguments are bytes to the kernel: one that is not UTF-8 reaches the command as it was
    given, in the foreground and detached (whose lock and record once failed on it: "the sandbox
    ended before its command started"), and so does a volume's path."""
    hexed = ["--", "sh", "-c", 'printf %s "$1" | od -An -tx1', "sh", NOT_UTF8]
    assert world.nsrun(*hexed).stdout.split() == ["78", "ff"]
    started = world.nsrun("-d", "--name", "u", "--", "sh", "-c", f"sleep {world.unique(30)}", NOT_UTF8)
    assert started.returncode == 0, started.stderr
    (listed,) = json.loads(world.nsrun("ls", "--json").stdout)
    assert listed["command"][-1] == NOT_UTF8
    assert world.nsrun("stop", "u").returncode == 0
    source = tmp_path / NOT_UTF8
    source.mkdir()
    (source / "f").write_text("in a volume\n")
    mounted = world.nsrun("-v", f"{source}:/mnt:ro", "--", "cat", "/mnt/f")
    assert (mounted.returncode, mounted.stdout) == (0, "in a volume\n"), mounted.stderr


def test_two_sandboxes_on_one_network_reach_each_other(world: World) -> None:
    assert world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24").returncode == 0
    server = world.nsrun_popen(
        "--network",
        "lab",
        "--ip",
        "10.123.0.7",
        "--mac",
        "02:00:00:00:00:07",
        "--",
        sys.executable,
        "-c",
        PEER_SERVER,
        "10.123.0.7",
        "9000",
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    result = world.nsrun("--network", "lab", "--ip", "10.123.0.9", "--", *world.client_argv("10.123.0.7", 9000))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "10.123.0.9"  # same bridge: no NAT between them
    mac = world.nsrun("--network", "lab", "--mac", "02:00:00:00:00:08", "--", "ip", "-j", "link", "show", "eth0")
    assert json.loads(mac.stdout)[0]["address"] == "02:00:00:00:00:08"


def test_net_none_has_only_loopback_up(world: World) -> None:
    result = world.nsrun("--net", "none", "--", "ip", "-j", "addr")
    assert result.returncode == 0, result.stderr
    links = json.loads(result.stdout)
    assert [link["ifname"] for link in links] == ["lo"]
    assert "UP" in links[0]["flags"]
    assert not [n for n in world.links() if n.startswith("nsv")]


def test_net_host_shares_the_host_namespace(world: World) -> None:
    result = world.nsrun("--net", "host", "--", "ip", "-j", "link")
    assert "uplink" in [link["ifname"] for link in json.loads(result.stdout)]


def test_parallel_launches_get_distinct_addresses(world: World, tmp_path: Path) -> None:
    count = 24
    # each sandbox records its address, then waits until all are up: so all 24 held a lease at once
    script = (
        f"import os, time, socket, fcntl, struct\n"
        f"addr = os.popen('ip -4 -o addr show eth0').read().split()[3]\n"
        # a random name: every sandbox is PID 2 of its own PID namespace
        f"open(os.path.join({str(tmp_path)!r}, os.urandom(8).hex()), 'w').write(addr)\n"
        f"deadline = time.time() + 120\n"
        f"while len(os.listdir({str(tmp_path)!r})) < {count} and time.time() < deadline: time.sleep(0.1)\n"
    )
    procs = [world.nsrun_popen("--", sys.executable, "-c", script) for _ in range(count)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    addresses = [p.read_text() for p in tmp_path.iterdir()]
    assert len(addresses) == count
    assert len(set(addresses)) == count
    assert not [n for n in world.links() if n.startswith("nsv")]


def test_small_network_serves_many_launches_one_after_another(world: World) -> None:
    assert world.nsrun("network", "create", "tiny", "--subnet", "10.124.0.0/29").returncode == 0
    seen = set()
    for _ in range(12):
        result = world.nsrun("--network", "tiny", "--", "ip", "-4", "-o", "addr", "show", "eth0")
        assert result.returncode == 0, result.stderr
        seen.add(result.stdout.split()[3])
    assert len(seen) == 5  # .2-.6: every usable address, none twice at once
    assert json.loads(world.nsrun("network", "inspect", "tiny").stdout)["sandboxes"] == []


def test_sigkill_of_nsrun_kills_command_and_frees_address(world: World, tmp_path: Path) -> None:
    # a /30 has a single address for sandboxes: the next launch only works if it is reclaimed
    assert world.nsrun("network", "create", "one", "--subnet", "10.125.0.0/30").returncode == 0
    ready = tmp_path / "ready"
    duration = world.unique(301)
    # the grandchild ignores SIGTERM: only the end of the PID namespace takes it along
    launcher = world.nsrun_popen(
        "--network", "one", "--", "sh", "-c", f"(trap '' TERM; exec sleep {duration}) & touch {ready}; wait"
    )
    world.wait_for(ready.exists, what="sandbox start")
    world.wait_for(lambda: world.pids_running(f"sleep {duration}"), what="the grandchild")
    busy = world.nsrun("--network", "one", "--", "true")
    assert busy.returncode == 125
    assert "no free address" in busy.stderr
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    world.wait_for(lambda: not world.pids_running(duration), what="everything in the sandbox to die with nsrun")
    result = world.nsrun("--network", "one", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert result.returncode == 0, result.stderr
    assert "10.125.0.2/30" in result.stdout
    assert not [n for n in world.links() if n.startswith("nsv")]


def test_leftover_processes_are_ended_with_the_command(world: World) -> None:
    duration = world.unique(302)
    result = world.nsrun("--", "sh", "-c", f"setsid sleep {duration} > /dev/null 2>&1 &")
    assert result.returncode == 0, result.stderr
    assert not world.pids_running(f"sleep {duration}")
    assert not [n for n in world.links() if n.startswith("nsv")]


def test_sigterm_is_forwarded_to_the_command(world: World, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    launcher = world.nsrun_popen(
        "--",
        "sh",
        "-c",
        f"trap 'exit 7' TERM; touch {ready}; while :; do sleep 0.1; done",
    )
    world.wait_for(ready.exists, what="trap installed")
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=10) == 7


def test_network_lifecycle_and_rm_refused_while_in_use(world: World, tmp_path: Path) -> None:
    assert world.nsrun("--", "true").returncode == 0  # the default network stays; lab must vanish whole
    before = world.snapshot()
    created = world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24", "--bridge", "labbr")
    assert created.returncode == 0, created.stderr
    assert "labbr" in world.links()
    ls = world.nsrun("network", "ls").stdout
    assert "lab" in ls
    assert "10.123.0.0/24" in ls
    ready = tmp_path / "ready"
    user = world.nsrun_popen("--network", "lab", "--", "sh", "-c", f"touch {ready}; sleep 300")
    world.wait_for(ready.exists, what="sandbox start")
    refused = world.nsrun("network", "rm", "lab")
    assert refused.returncode == 125
    assert "still use it" in refused.stderr
    user.terminate()
    user.wait(timeout=10)
    removed = world.nsrun("network", "rm", "lab")
    assert removed.returncode == 0, removed.stderr
    after = world.snapshot()
    assert after == before


def test_no_leftovers_after_sandboxes_end(world: World) -> None:
    world.nsrun("--", "true")
    before = world.snapshot()
    for _ in range(3):
        assert world.nsrun("--", "sh", "-c", "sleep 0.1 &").returncode == 0
    assert world.snapshot() == before
    assert json.loads(world.nsrun("network", "inspect", "nsrun").stdout)["sandboxes"] == []


HOLD_NETNS = """
import os, sys
fd = os.open(f"/proc/{sys.argv[1]}/ns/net", os.O_RDONLY)
print(os.fstat(fd).st_ino, flush=True)
sys.stdin.read()
"""


PART_WAY = """
from dataclasses import replace
from nsrun.launch.request import SandboxRequest
from nsrun.launch.sandbox import Sandbox
from nsrun.launch.teardown import teardown_sandbox
sandbox = Sandbox(SandboxRequest.parse(["true"], environ={}, cwd="/"))
sandbox.setup()
assert sandbox.record is not None and sandbox.record.addresses
record = replace(sandbox.record, addresses=())  # as it reads until set-up notes the address, last
sandbox.close()
print(teardown_sandbox(sandbox.dirs, record, pinned=False))
"""


def test_a_sandbox_torn_down_before_its_address_was_noted_keeps_no_lease(world: World) -> None:
    """A helper's worker killed mid-launch leaves a record whose address is not noted yet; the
    client tears it down at once (it is still alive: no reclaim would): its lease goes too."""
    assert world.nsrun("--", "true").returncode == 0  # the network, made once
    before = world.snapshot()
    result = world.run(sys.executable, "-c", PART_WAY)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
    assert world.snapshot() == before


def test_a_namespace_kept_alive_from_outside_loses_its_veth_with_the_sandbox(world: World) -> None:
    """A descriptor of the sandbox's network namespace held outside keeps the namespace, and so
    its veth pair, past the sandbox: the teardown's wait for the kernel runs out, and it deletes
    the veth itself; nothing is left on the host side."""
    world.nsrun("--", "true")
    before = world.snapshot()
    duration = world.unique(301)

    def command() -> list[int]:  # the sleep itself, not nsrun (its command line holds it too)
        return [pid for pid in world.pids_running(f"sleep {duration}") if world.comm(pid) == "sleep"]

    sandbox = world.nsrun_popen("--", "sleep", duration)
    world.wait_for(command, what="the sandbox's command")
    holder = world.popen(sys.executable, "-c", HOLD_NETNS, str(command()[0]), stdin=subprocess.PIPE)
    assert holder.stdout is not None
    held = int(holder.stdout.readline())
    sandbox.terminate()
    assert sandbox.wait(timeout=10) == -signal.SIGTERM
    assert world.snapshot() == before  # its veth is gone, though its namespace is not
    assert os.stat(f"/proc/{holder.pid}/fd/3").st_ino == held  # still held: it was deleted, not taken
    holder.communicate("")


def test_masquerade_is_seen_by_the_wan_server_log(world: World) -> None:
    # the server itself, not only the client, must have seen the uplink address
    server = world.wan_server(8081)
    result = world.nsrun("--", *world.client_argv(WAN_ADDRESS, 8081))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == UPLINK_ADDRESS
    time.sleep(0.1)
    assert server.poll() is None
