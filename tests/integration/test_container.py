"""Container-style options: DNS, hosts and hostname, names with ls/exec, users, env, workdir, joins."""

from __future__ import annotations

import json
import signal
import sys
from typing import TYPE_CHECKING

import pytest

from tests.world import SYSTEM_PYTHON

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from tests.world import World

pytestmark = pytest.mark.privileged


def _fake_host_resolv(world: World, tmp_path: Path, content: str) -> None:
    """This world's /etc/resolv.conf (a bind mount in the world's private mount namespace)."""
    fake = tmp_path / "host-resolv.conf"
    fake.write_text(content)
    assert world.run("mount", "--bind", str(fake), "/etc/resolv.conf").returncode == 0


def _servers(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines() if line.startswith("nameserver")]


def test_resolved_stub_is_replaced_by_upstream_servers(world: World, tmp_path: Path) -> None:
    _fake_host_resolv(world, tmp_path, "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.test\n")
    world.run("mkdir", "-p", "/run/systemd/resolve")
    upstream = "nameserver 192.0.2.53\nnameserver 198.51.100.53\nnameserver 127.0.0.1\n"
    assert world.run("sh", "-c", f"printf '{upstream}' > /run/systemd/resolve/resolv.conf").returncode == 0
    host_before = world.run("cat", "/etc/resolv.conf").stdout
    result = world.nsrun("--", "cat", "/etc/resolv.conf")
    assert result.returncode == 0, result.stderr
    assert _servers(result.stdout) == ["192.0.2.53", "198.51.100.53"]
    assert "search example.test" in result.stdout
    assert world.run("cat", "/etc/resolv.conf").stdout == host_before  # the host's file is unchanged


def test_dns_option_replaces_the_list(world: World, tmp_path: Path) -> None:
    _fake_host_resolv(world, tmp_path, "nameserver 192.0.2.1\n")
    result = world.nsrun("--dns", "203.0.113.53", "--dns", "2001:db8::53", "--", "cat", "/etc/resolv.conf")
    assert _servers(result.stdout) == ["203.0.113.53", "2001:db8::53"]
    assert _servers(world.run("cat", "/etc/resolv.conf").stdout) == ["192.0.2.1"]


def test_only_loopback_servers_warn_and_leave_none(world: World, tmp_path: Path) -> None:
    _fake_host_resolv(world, tmp_path, "nameserver 127.0.0.1\n")
    result = world.nsrun("--", "cat", "/etc/resolv.conf")
    assert result.returncode == 0
    assert _servers(result.stdout) == []
    assert "--dns" in result.stderr


def test_etc_netns_files_are_honoured_like_ip_netns_exec(world: World, tmp_path: Path) -> None:
    _fake_host_resolv(world, tmp_path, "nameserver 192.0.2.1\n")
    overlay = tmp_path / "etc-netns"
    (overlay / "web").mkdir(parents=True)
    (overlay / "web" / "resolv.conf").write_text("nameserver 192.0.2.99\n")
    assert world.run("mount", "--bind", str(overlay), "/etc/netns", "-o", "X-mount.mkdir").returncode == 0
    result = world.nsrun("--name", "web", "--", "cat", "/etc/resolv.conf")
    assert _servers(result.stdout) == ["192.0.2.99"]


def test_hostname_and_hosts_file(world: World) -> None:
    result = world.nsrun("--hostname", "box1", "--", "sh", "-c", "hostname; cat /etc/hosts; ip -4 -o addr show eth0")
    assert result.returncode == 0, result.stderr
    hostname, *rest = result.stdout.splitlines()
    assert hostname == "box1"
    address = rest[-1].split()[3].split("/")[0]
    assert any(line.split()[0] == address and "box1" in line.split()[1:] for line in rest[:-1])
    assert world.run("hostname").stdout.strip() != "box1"
    named = world.nsrun("--name", "web", "--", "hostname")
    assert named.stdout.strip() == "web"  # default: the sandbox's name


def test_sys_class_net_shows_the_sandbox_links(world: World) -> None:
    result = world.nsrun("--mac", "02:00:00:00:00:08", "--", "cat", "/sys/class/net/eth0/address")
    assert result.stdout.strip() == "02:00:00:00:00:08"


def test_name_ls_exec_and_ip_netns_exec(world: World, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    web = world.nsrun_popen("--name", "web", "--", "sh", "-c", f"touch {ready}; exec sleep 300")
    world.wait_for(ready.exists, what="sandbox start")
    world.wait_for(lambda: "web" in world.nsrun("ls").stdout, what="ls to list web")
    listing = json.loads(world.nsrun("ls", "--json").stdout)
    (entry,) = [e for e in listing if e["name"] == "web"]
    address = entry["addresses"][0]
    assert entry["network"] == "nsrun"
    assert entry["command"] == ["sh", "-c", f"touch {ready}; exec sleep 300"]
    table = world.nsrun("ls").stdout
    assert "web" in table
    assert address in table
    inside = world.nsrun("exec", "web", "--", "sh", "-c", "hostname; ip -4 -o addr show eth0")
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.splitlines()[0] == "web"
    assert address in inside.stdout
    assert world.nsrun("exec", "web", "sh", "-c", "exit 3").returncode == 3
    via_ip = world.run("ip", "netns", "exec", "web", "ip", "-4", "-o", "addr", "show", "eth0")
    assert address in via_ip.stdout
    clash = world.nsrun("--name", "web", "--", "true")
    assert clash.returncode == 125
    assert "already used" in clash.stderr
    lingering = world.popen("ip", "netns", "exec", "web", "sleep", "300")
    # nsenter and ip exec in place: once the pid runs sleep, it is in the sandbox's namespace
    world.wait_for(lambda: world.comm(lingering.pid) == "sleep", what="ip netns exec to join web")
    web.terminate()
    assert web.wait(timeout=10) == -signal.SIGTERM  # nsrun dies of the signal its command died of
    assert lingering.wait(timeout=10) != 0  # what joined the namespace ended with the sandbox
    assert "web" not in world.run("ip", "netns", "list").stdout
    assert world.nsrun("exec", "web", "true").returncode == 125
    assert json.loads(world.nsrun("ls", "--json").stdout) == []


def test_user_runs_without_root_and_can_serve_low_ports(world: World) -> None:
    script = (
        "import os, socket; s = socket.socket(); s.bind(('0.0.0.0', 80));"
        "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1];"
        "print(os.getuid(), os.getgid(), int(caps, 16), os.environ['HOME'])"
    )
    result = world.nsrun("--user", "nobody", "--", SYSTEM_PYTHON, "-c", script)
    assert result.returncode == 0, result.stderr
    uid, gid, caps, home = result.stdout.split()
    assert uid == "65534"
    assert gid == "65534"
    assert caps == "0"
    assert home == "/nonexistent"
    groups = world.nsrun("--user", "nobody:daemon", "--", "id", "-G").stdout.split()
    assert groups == ["1"]


def test_env_and_workdir(world: World, tmp_path: Path) -> None:
    result = world.nsrun("-e", "GREETING=hi there", "-w", str(tmp_path), "--", "sh", "-c", 'echo "$GREETING"; pwd')
    assert result.stdout.splitlines() == ["hi there", str(tmp_path)]


def test_an_exec_workdir_is_relative_to_the_sandboxs(world: World, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    started = world.nsrun("-d", "--name", "box", "-w", str(tmp_path), "--", "sleep", world.unique(60))
    assert started.returncode == 0, started.stderr
    assert world.nsrun("exec", "box", "pwd").stdout == f"{tmp_path}\n"
    assert world.nsrun("exec", "-w", "sub", "box", "pwd").stdout == f"{tmp_path}/sub\n"
    assert world.nsrun("exec", "-w", "/usr", "box", "pwd").stdout == "/usr\n"
    assert world.nsrun("stop", "box").returncode == 0


def test_net_sandbox_joins_a_running_sandbox(world: World, tmp_path: Path) -> None:
    ready, ready2 = tmp_path / "ready", tmp_path / "ready2"
    first = world.nsrun_popen("--name", "first", "--", "sh", "-c", f"touch {ready}; exec sleep 300")
    world.wait_for(ready.exists, what="sandbox start")
    world.wait_for(lambda: "first" in world.nsrun("ls").stdout, what="ls")
    own = world.nsrun("exec", "first", "ip", "-4", "-o", "addr", "show", "eth0").stdout.split()[3]
    joined = world.nsrun("--net", "sandbox:first", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout.split()[3] == own
    second = world.nsrun_popen(
        "--net", "sandbox:first", "--name", "second", "--", "sh", "-c", f"touch {ready2}; exec sleep 300"
    )
    world.wait_for(ready2.exists, what="second sandbox start")
    listed = json.loads(world.nsrun("ls", "--json").stdout)
    networks = {entry["name"]: entry["network"] for entry in listed}
    assert networks == {"first": "nsrun", "second": "sandbox:first"}
    first.terminate()
    second.terminate()
    first.wait(timeout=10)
    second.wait(timeout=10)


def test_nsrun_inside_a_sandbox_refuses_and_reclaims_nothing(world: World, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    web = world.nsrun_popen("--name", "web", "--", "sh", "-c", f"touch {ready}; exec sleep 300")
    world.wait_for(ready.exists, what="sandbox start")
    world.wait_for(lambda: "web" in world.nsrun("ls").stdout, what="ls")
    before = world.snapshot()
    # root inside a sandbox cannot see the shims' pids: it must not take their state for stale
    inner = world.nsrun("--", sys.executable, "-m", "nsrun", "ls")
    assert inner.returncode == 125, inner.stderr
    assert "needs root with CAP_SYS_ADMIN" in inner.stderr
    assert world.snapshot() == before
    assert "web" in world.nsrun("ls").stdout
    web.terminate()
    web.wait(timeout=10)


def test_a_deleted_working_directory(world: World, tmp_path: Path) -> None:
    """nsrun started in a directory deleted since: the command would start there, so one clear
    line and nothing done (through the helper too); an absolute --workdir needs none."""
    assert world.nsrun("--", "true").returncode == 0  # the helper, where it is on, runs from here on
    before = world.snapshot()
    gone = tmp_path / "gone"

    def from_gone(*args: str) -> subprocess.CompletedProcess[str]:
        script = f'mkdir {gone} && cd {gone} && rmdir {gone} && exec "$@"'
        return world.run("sh", "-c", script, "sh", sys.executable, "-m", "nsrun", *args)

    for args in (["--", "pwd"], ["-w", "sub", "--", "pwd"], ["-v", "data:/mnt", "-w", "/", "--", "true"]):
        result = from_gone(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "no longer exists (it was deleted)" in result.stderr
        assert world.snapshot() == before
    result = from_gone("-w", "/usr", "--", "pwd")
    assert (result.returncode, result.stdout) == (0, "/usr\n"), result.stderr


def test_an_exec_of_an_empty_command_name_is_refused(world: World) -> None:
    assert world.nsrun("-d", "--name", "box", "--", "sleep", world.unique(60)).returncode == 0
    before = world.snapshot()
    result = world.nsrun("exec", "box", "")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("nsrun: invalid command '': its name is empty"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert world.snapshot() == before
    assert world.nsrun("stop", "box").returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--name", "bad/name", "--", "true"], id="name"),
        pytest.param(["--hostname", "-bad", "--", "true"], id="hostname"),
        pytest.param(["--dns", "not-an-ip", "--", "true"], id="dns"),
        pytest.param(["--user", "no-such-user-here", "--", "true"], id="user"),
        pytest.param(["--user", "nobody:no-such-group", "--", "true"], id="group"),
        pytest.param(["--env", "=x", "--", "true"], id="env"),
        pytest.param(["--workdir", "/no/such/dir", "--", "true"], id="workdir"),
        pytest.param(["--net", "sandbox:", "--", "true"], id="join-empty"),
        pytest.param(["--net", "sandbox:missing", "--", "true"], id="join-missing"),
        pytest.param(["exec", "missing", "true"], id="exec-missing"),
    ],
)
def test_bad_container_options(world: World, args: list[str]) -> None:
    assert world.nsrun("--", "true").returncode == 0
    before = world.snapshot()
    result = world.nsrun(*args)
    assert result.returncode in (2, 125), result.stderr
    assert result.stderr.startswith("nsrun: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert world.snapshot() == before
