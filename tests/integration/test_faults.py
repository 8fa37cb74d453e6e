"""Faults and odd state (issue 9): each names its cause and its fix, doctor reports it, nothing
stays broken, no race loses rules."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.world import PEER_SERVER, SYSTEM_PYTHON, UPLINK_ADDRESS, WAN_ADDRESS

if TYPE_CHECKING:
    from tests.world import World

pytestmark = pytest.mark.privileged


def _doctor(world: World) -> tuple[int, list[dict[str, str]]]:
    result = world.nsrun("doctor", "--json")
    assert result.returncode in (0, 1), result.stderr  # never 125, whatever the state holds
    return result.returncode, json.loads(result.stdout)["checks"]


def _rows(checks: list[dict[str, str]], status: str) -> list[dict[str, str]]:
    return [check for check in checks if check["status"] == status]


def _one_line(result: object) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert stderr.startswith("nsrun: ")
    assert stderr.count("\n") == 1, stderr
    assert "internal error" not in stderr
    assert stderr.rstrip().endswith(")"), stderr  # <what failed>: <why> (<what to do>)
    return stderr


# -- wrong or internal errors -------------------------------------------------------------------


def test_definition_removed_behind_nsruns_back_names_the_bridge_and_the_fix(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    assert world.run("rm", "/var/lib/nsrun/networks/nsrun.json").returncode == 0
    result = world.nsrun("--", "true")
    assert result.returncode == 125
    message = _one_line(result)
    assert "nsrun0" in message
    assert "ip link del nsrun0" in message
    _, checks = _doctor(world)
    assert any(c["name"] == "orphan bridges" and c["fix"] == "ip link del nsrun0" for c in checks)
    assert world.run("ip", "link", "del", "nsrun0").returncode == 0  # the fix
    assert world.nsrun("--", "true").returncode == 0


def test_read_only_var_lib_is_said_and_keeps_the_rules(world: World, backend: str) -> None:
    assert world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24").returncode == 0
    assert world.run("mount", "-o", "remount,ro", "/var/lib/nsrun").returncode == 0
    created = world.nsrun("network", "create", "other", "--subnet", "10.124.0.0/24")
    assert created.returncode == 125
    assert "read-only" in _one_line(created)
    first = world.nsrun("--", "true")  # the default network would have to be written
    assert first.returncode == 125
    assert "read-only" in _one_line(first)
    assert world.nsrun("--network", "lab", "--", "true").returncode == 0  # reading is enough
    other = "iptables" if backend == "nftables" else "nftables"
    world.env["NSRUN_FIREWALL"] = other  # a move of the network's rules needs its definition written
    moved = world.nsrun("--network", "lab", "--", "true")
    assert moved.returncode == 125
    assert "read-only" in moved.stderr
    rules = world.run("nft", "list", "ruleset").stdout + world.run("iptables-legacy-save").stdout
    assert "nsrun:lab" in rules  # the old rules are still in place: the network keeps its NAT


def test_a_read_only_proc_sys_is_said_and_changes_nothing(world: World) -> None:
    """nsrun in a container whose /proc/sys is read-only: forwarding cannot be turned on, nor a
    sandbox's namespace prepared; one line says so (it said "run nsrun as root", and an
    internal error for --net none), and nothing is left."""
    assert world.nsrun("--", "true").returncode == 0
    before = world.snapshot()
    world.run("sysctl", "-w", "net.ipv4.ip_forward=0")
    assert world.run("mount", "--bind", "-o", "ro", "/proc/sys", "/proc/sys").returncode == 0
    in_process = world.env | {"NSRUN_HELPER": "off"}  # the helper's spare made its namespace before
    try:
        for args in (["--", "true"], ["--net", "none", "--", "true"]):
            result = world.nsrun(*args, env=in_process)
            assert result.returncode == 125
            assert "/proc/sys is read-only here" in _one_line(result)
            assert "in a container given a writable /proc/sys" in result.stderr
    finally:
        world.run("umount", "/proc/sys")
    world.run("sysctl", "-w", "net.ipv4.ip_forward=1")
    assert world.snapshot() == before


def test_full_run_directory_is_said_and_leaves_no_partial_file(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    assert world.run("mount", "-t", "tmpfs", "-o", "size=64k", "small", "/run/nsrun").returncode == 0
    world.run("sh", "-c", "dd if=/dev/zero of=/run/nsrun/filler bs=4k count=100 2>/dev/null")
    result = world.nsrun("--", "true")
    assert result.returncode == 125
    assert "full" in _one_line(result)
    assert world.run("sh", "-c", "find /run/nsrun -name '.*' | grep -q .").returncode != 0
    world.run("rm", "/run/nsrun/filler")
    assert world.nsrun("--", "true").returncode == 0


@pytest.mark.parametrize(
    ("path", "content"),
    [
        pytest.param("/var/lib/nsrun/networks/lab.json", "[]", id="definition-list"),
        pytest.param("/var/lib/nsrun/networks/lab.json", '{"name": "lab"}', id="definition-short"),
        pytest.param(
            "/run/nsrun/sandboxes/0123456789ab.json", '{"sandbox_id": "0123456789ab", "pid": "abc"}', id="record"
        ),
        pytest.param("/run/nsrun/leases/nsrun/10.200.0.99", "[]", id="lease"),
    ],
)
def test_files_of_the_wrong_shape_name_themselves_and_block_nothing(world: World, path: str, content: str) -> None:
    assert world.nsrun("--", "true").returncode == 0
    assert world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24").returncode == 0
    assert world.run("sh", "-c", f"echo '{content}' > {path}").returncode == 0
    assert world.nsrun("--", "true").returncode == 0  # other networks, and the default one, work
    listings = [world.nsrun("ls"), world.nsrun("ls", "--json"), world.nsrun("network", "ls")]
    assert [listing.returncode for listing in listings] == [0, 0, 0]
    if "sandboxes" in path or "networks" in path:  # what a listing leaves out, it names
        listing = listings[2] if "networks" in path else listings[0]
        assert listing.stderr.startswith(f"nsrun: warning: not listed: reading {path}"), listing.stderr
        assert len(listing.stderr.splitlines()) == 1
    assert world.nsrun("network", "create", "more", "--subnet", "10.125.0.0/24").returncode == 0
    if "networks" in path:
        broken = world.nsrun("--network", "lab", "--", "true")
        assert broken.returncode == 125
        message = _one_line(broken)
        assert path in message
        assert f"fix or remove {path}" in message
    status, checks = _doctor(world)
    assert status == 1
    (row,) = [c for c in checks if path in c["name"]]
    assert row["status"] == "fail"
    assert path in row["fix"]


def test_a_lock_path_that_is_a_directory_is_named(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    assert world.run("sh", "-c", "rm /run/nsrun/sandboxes.lock; mkdir /run/nsrun/sandboxes.lock").returncode == 0
    result = world.nsrun("--", "true")
    assert result.returncode == 125
    message = _one_line(result)
    assert "/run/nsrun/sandboxes.lock" in message
    assert "remove it" in message


def test_inside_a_chroot_nsrun_says_what_to_do_and_doctor_fails(world: World, tmp_path: Path) -> None:
    root = tmp_path / "chroot"
    # the system, and wherever this checkout and its venv are
    here = {Path(sys.executable).parts[1], Path(__file__).resolve().parts[1]}
    binds = ["usr", "etc", "bin", "sbin", "lib", "lib64", "proc", "dev", "sys", "run", "var", "tmp", *here]
    mount = "if [ -e /{0} ]; then mkdir -p {1}/{0}; mount --rbind /{0} {1}/{0}; fi"
    script = [f"mkdir -p {root}", *(mount.format(name, root) for name in binds)]
    assert world.run("sh", "-c", "; ".join(script)).returncode == 0
    inside = world.run("chroot", str(root), sys.executable, "-m", "nsrun", "--", "true", cwd="/")
    assert inside.returncode == 125
    assert "chroot" in _one_line(inside)
    doctor = world.run("chroot", str(root), sys.executable, "-m", "nsrun", "doctor", "--json", cwd="/")
    assert doctor.returncode == 1
    (row,) = [c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "chroot"]
    assert row["status"] == "fail"
    assert "mount --bind" in row["fix"]


@pytest.mark.parametrize("subnet", ["::ffff:0:0/96", "fd00:7::%eth0/64", "::/96", "fec0::/64", "240.0.0.0/24"])
def test_unusable_subnets_are_refused_up_front(world: World, subnet: str) -> None:
    before = world.snapshot()
    result = world.nsrun("network", "create", "x", "--subnet", "10.9.0.0/24", "--subnet", subnet)
    assert result.returncode == 2
    _one_line(result)
    assert world.snapshot() == before


# -- things that stay broken ----------------------------------------------------------------------


def _serve(world: World, *args: str) -> None:
    proc = world.nsrun_popen(*args, "--", sys.executable, "-c", PEER_SERVER, "0.0.0.0", "9000")  # noqa: S104
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"


def _answers(world: World, port: int) -> bool:
    return world.run(*world.client_argv(UPLINK_ADDRESS, port)).returncode == 0


def test_a_flush_loses_published_ports_until_the_next_launch_and_doctor_says_so(world: World, backend: str) -> None:
    _serve(world, "--name", "web", "-p", "8081:9000")
    assert _answers(world, 8081)
    flush = (
        ["nft", "flush", "ruleset"]
        if backend == "nftables"
        else ["sh", "-c", "iptables-legacy -F; iptables-legacy -t nat -F"]
    )
    assert world.run(*flush).returncode == 0
    assert not _answers(world, 8081)
    status, checks = _doctor(world)
    assert status == 1
    row = next(c for c in checks if c["name"] == "sandbox web")
    assert "published ports" in row["detail"]
    fix = row["fix"].split(" (")[0].split()
    assert fix[0] == "nsrun"
    assert world.nsrun(*fix[1:]).returncode == 0  # the fix: a launch
    assert _answers(world, 8081)
    assert _doctor(world)[0] == 0


def test_doctor_is_clean_with_published_ports_and_a_network_called_ports(world: World) -> None:
    _serve(world, "--name", "web", "-p", "8081:9000")
    assert world.nsrun("network", "create", "ports", "--subnet", "10.126.0.0/24").returncode == 0
    assert world.nsrun("--network", "ports", "-p", "8082:9000", "--", "true").returncode == 0
    status, checks = _doctor(world)
    assert status == 0, _rows(checks, "fail")
    assert not [c for c in checks if c["name"] == "rules of removed network"]
    assert _answers(world, 8081)


def test_after_a_reboot_doctor_only_warns_and_the_next_launch_fixes_it(world: World, backend: str) -> None:
    assert world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24").returncode == 0
    # what a reboot leaves: definitions kept; runtime state, rules, bridges and forwarding gone
    reboot = "nft flush ruleset; iptables-legacy -F; iptables-legacy -t nat -F; iptables-legacy -t raw -F;"
    reboot += " ip link del nsbr-lab; rm -rf /run/nsrun/*; sysctl -qw net.ipv4.ip_forward=0"
    world.run("sh", "-c", reboot)
    status, checks = _doctor(world)
    assert status == 0, _rows(checks, "fail")
    assert {c["name"] for c in _rows(checks, "warn")} >= {"ip_forward", "rules of network lab", "bridge of network lab"}
    world.wan_server()
    assert world.nsrun("--network", "lab", "--", *world.client_argv()).stdout.strip() == UPLINK_ADDRESS
    status, checks = _doctor(world)
    assert status == 0
    assert not _rows(checks, "warn"), _rows(checks, "warn")


def test_a_bridge_deleted_under_a_running_sandbox_is_rebuilt_with_its_ports(world: World, tmp_path: Path) -> None:
    world.wan_server()
    ready = tmp_path / "ready"
    (tmp_path / "client.py").write_text(world.client_argv()[2])
    client = f"{sys.executable} {tmp_path}/client.py {WAN_ADDRESS} 8080"
    report = f"{client} > {tmp_path}/last.new 2>&1; mv {tmp_path}/last.new {tmp_path}/last"
    loop = f"touch {ready}; while :; do {report}; sleep 0.2; done"
    sandbox = world.nsrun_popen("--", "sh", "-c", loop)
    world.wait_for(ready.exists, what="the sandbox")
    last = tmp_path / "last"
    world.wait_for(lambda: last.exists() and last.read_text().strip() == UPLINK_ADDRESS, what="the wan")
    assert world.run("ip", "link", "del", "nsrun0").returncode == 0
    status, checks = _doctor(world)
    assert status == 1
    row = next(c for c in checks if c["name"] == "bridge of network nsrun")
    assert "cut off" in row["detail"]
    assert world.nsrun("--", "true").returncode == 0  # the next launch
    last.write_text("")
    world.wait_for(lambda: last.read_text().strip() == UPLINK_ADDRESS, what="the wan again")
    assert _doctor(world)[0] == 0
    sandbox.terminate()
    sandbox.wait(timeout=10)


def test_wiped_runtime_state_never_hands_out_a_running_sandboxs_address(world: World, tmp_path: Path) -> None:
    assert world.nsrun("network", "create", "tiny", "--subnet", "10.127.0.0/29").returncode == 0
    ready = tmp_path / "ready"
    first = world.nsrun_popen("--network", "tiny", "--", "sh", "-c", f"ip -4 -o addr show eth0 > {ready}; sleep 60")
    world.wait_for(lambda: ready.exists() and ready.read_text(), what="the first sandbox")
    taken = ready.read_text().split()[3]
    assert world.run("sh", "-c", "rm -rf /run/nsrun/*").returncode == 0
    for _ in range(6):  # every other address of the /29, round and round
        second = world.nsrun("--network", "tiny", "--", "ip", "-4", "-o", "addr", "show", "eth0")
        assert second.returncode == 0, second.stderr
        assert second.stdout.split()[3] != taken
    _, checks = _doctor(world)
    assert any(c["name"] == "orphan veths" for c in checks)
    first.terminate()
    first.wait(timeout=10)


# -- races and code defects -----------------------------------------------------------------------


def test_a_published_port_is_really_held(world: World) -> None:
    sandbox = world.nsrun_popen("--name", "web", "-p", "8083:9000", "-p", "8084:9000/udp", "--", "sleep", "60")
    world.wait_for(lambda: "web" in world.nsrun("ls").stdout, what="web")
    grab = """
import socket, sys
for kind, port in ((socket.SOCK_STREAM, 8083), (socket.SOCK_DGRAM, 8084)):
    s = socket.socket(socket.AF_INET, kind); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", port)); s.listen() if kind == socket.SOCK_STREAM else None; print("took", port)
    except OSError as err:
        print("refused", port, err.errno)
"""
    result = world.run(SYSTEM_PYTHON, "-c", grab)
    assert "took" not in result.stdout, result.stdout
    sandbox.terminate()
    sandbox.wait(timeout=10)


def test_a_stuck_lock_holder_is_named_within_the_bound(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    holder = world.popen(
        "flock", "/run/nsrun/sandboxes.lock", "sh", "-c", "echo 4242 stuck-tool > /run/nsrun/sandboxes.lock; sleep 60"
    )
    lock = "/run/nsrun/sandboxes.lock"
    world.wait_for(lambda: "stuck-tool" in world.run("cat", lock).stdout, what="the holder to hold the lock")
    world.env["NSRUN_LOCK_TIMEOUT"] = "1"
    begin = time.monotonic()
    result = world.nsrun("--", "true")
    assert time.monotonic() - begin < 10
    assert result.returncode == 125
    message = _one_line(result)
    assert "/run/nsrun/sandboxes.lock" in message
    assert "more than 1s" in message
    holder.kill()


def test_permission_denied_names_the_directory(world: World, tmp_path: Path) -> None:
    program = tmp_path / "tool"
    program.write_text("#!/bin/sh\necho hi\n")
    program.chmod(0o755)
    tmp_path.chmod(0o700)  # as a home directory is
    result = world.nsrun("--user", "nobody", "--", str(program))
    assert result.returncode == 126
    message = _one_line(result)
    blocked = message.split("the directory ")[1].split(" is not searchable by uid 65534")[0]
    assert str(tmp_path).startswith(blocked)  # the first directory on the way nobody may not enter


def test_many_networks_change_rules_at_once_without_losing_any(world: World) -> None:
    assert world.nsrun("network", "create", "keep", "--subnet", "10.130.0.0/24").returncode == 0
    creates = [world.nsrun_popen("network", "create", f"n{i}", "--subnet", f"10.{131 + i}.0.0/24") for i in range(4)]
    for proc in creates:
        proc.communicate(timeout=60)
    removes = [world.nsrun_popen("network", "rm", f"n{i}") for i in range(4)]
    launches = [world.nsrun_popen("--network", "keep", "--", "true") for _ in range(4)]
    for proc in removes + launches:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    status, checks = _doctor(world)
    assert status == 0, _rows(checks, "fail")
    world.wan_server()
    assert world.nsrun("--network", "keep", "--", *world.client_argv()).stdout.strip() == UPLINK_ADDRESS


def test_host_port_of_a_dead_holder_is_reclaimed(world: World) -> None:
    # a port published by a sandbox whose nsrun was SIGKILLed is free again for the next one
    sandbox = world.nsrun_popen("--name", "old", "-p", "8085:9000", "--", "sleep", "60")
    world.wait_for(lambda: "old" in world.nsrun("ls").stdout, what="old")
    sandbox.kill()
    sandbox.wait()
    _serve(world, "--name", "new", "-p", "8085:9000")
    assert _answers(world, 8085)
