"""nsrun as a CNI plugin, driven as an engine drives it (the network configuration on stdin, CNI_*
variables), in private worlds: ADD/CHECK/DEL/GC/STATUS/VERSION, chaining with the reference
portmap plugin, DEL twice and after the namespace is gone, bad configurations, concurrent ADDs,
attachments side by side with `nsrun` sandboxes. Real namespaces, links and rules throughout."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.world import PEER_SERVER, UPLINK_ADDRESS, WAN_ADDRESS

if TYPE_CHECKING:
    from tests.world import World

pytestmark = pytest.mark.privileged

REFERENCE_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
SUBNET = "10.77.0.0/24"
CONF: dict[str, Any] = {"cniVersion": "1.0.0", "name": "cnet", "type": "nsrun", "subnet": SUBNET}


def cni(
    world: World,
    command: str,
    conf: dict[str, Any] | str,
    container: str = "c1",
    ifname: str = "eth0",
    netns: str | None = None,
    plugin: str | None = None,
    **extra: str,
) -> tuple[int, Any]:
    """One plugin call: (exit status, its JSON output or None)."""
    env = world.env | {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_IFNAME": ifname,
        "CNI_NETNS": netns if netns is not None else f"/run/netns/{container}",
        "CNI_PATH": str(REFERENCE_PLUGINS),
    }
    env |= extra
    stdin = conf if isinstance(conf, str) else json.dumps(conf)
    argv = [plugin] if plugin else [sys.executable, "-m", "nsrun.cni"]
    proc = world.run(*argv, input=stdin, env=env)
    out = proc.stdout.strip()
    try:
        return proc.returncode, json.loads(out) if out else None
    except ValueError:
        raise AssertionError(f"{command}: exit {proc.returncode}, not JSON: {out!r} {proc.stderr!r}") from None


def add_container(world: World, name: str = "c1") -> None:
    assert world.run("ip", "netns", "add", name).returncode == 0
    world.run("ip", "-n", name, "link", "set", "lo", "up")


def in_container(world: World, name: str, *argv: str, timeout: float = 10) -> Any:
    return world.run("ip", "netns", "exec", name, *argv, timeout=timeout)


def attachments(world: World) -> list[dict[str, Any]]:
    return [s for s in json.loads(world.nsrun("ls", "--json").stdout) if s.get("container_id")]


def leftovers(world: World) -> dict[str, Any]:
    """What an attachment could leave: veths, its rules, its lease and record."""
    snap = world.snapshot()
    return {
        "veths": [link for link in snap["links"] if link.startswith("nsv")],
        "rules": [line for line in (snap["nft"] + snap["legacy"]).splitlines() if "nsv" in line or "sb-" in line],
        "state": [line for line in snap["files"].splitlines() if "/leases/cnet/10." in line or "/sandboxes/" in line],
    }


NOTHING: dict[str, list[str]] = {"veths": [], "rules": [], "state": []}


def test_add_check_del_attach_a_container_that_reaches_the_wan_masqueraded(world: World) -> None:
    add_container(world)
    status, result = cni(world, "ADD", CONF)
    assert status == 0, result
    assert result["cniVersion"] == "1.0.0"
    host, inside = result["interfaces"]
    assert host["name"].startswith("nsv")
    assert inside == {
        "name": "eth0",
        "mac": inside["mac"],
        "sandbox": "/run/netns/c1",
    }
    (ip,) = result["ips"]
    assert ip["address"].startswith("10.77.0.")
    assert ip["address"].endswith("/24")
    assert ip["gateway"] == "10.77.0.1"
    assert ip["interface"] == 1
    assert "version" not in ip
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}]
    address = ip["address"].split("/")[0]
    shown = in_container(world, "c1", "ip", "-j", "addr", "show", "eth0").stdout
    assert address in shown
    assert inside["mac"] in shown
    world.wan_server()
    assert in_container(world, "c1", *world.client_argv()).stdout.strip() == UPLINK_ADDRESS
    # the attachment is a member of the network like any sandbox: listed, checked, its rules in place
    (listed,) = attachments(world)
    assert listed["addresses"] == [address]
    assert listed["network"] == "cnet"
    assert listed["ifname"] == "eth0"
    assert cni(world, "CHECK", CONF | {"prevResult": result}) == (0, None)
    assert world.nsrun("doctor").returncode == 0
    status, error = cni(world, "ADD", CONF)  # again, without a DEL: the engine's mistake, refused
    assert (status, error["code"]) == (1, 100), error
    assert world.nsrun("stop", listed["name"]).returncode != 0  # the engine ends it, not nsrun
    assert cni(world, "DEL", CONF) == (0, None)
    assert leftovers(world) == NOTHING
    assert cni(world, "DEL", CONF) == (0, None)  # again: already gone is done
    status, error = cni(world, "CHECK", CONF | {"prevResult": result})
    assert status == 1
    assert error["code"] == 101
    assert "not attached" in error["msg"]
    assert world.run("ip", "-n", "c1", "link", "show", "eth0").returncode != 0
    assert world.nsrun("doctor").returncode == 0


def test_del_after_the_namespace_is_gone_and_an_add_that_finds_it_gone(world: World) -> None:
    add_container(world)
    assert cni(world, "ADD", CONF)[0] == 0
    world.run("ip", "netns", "del", "c1")
    # the kernel took the veth pair with the namespace: the attachment is stale, DEL still succeeds
    assert cni(world, "DEL", CONF, netns="") == (0, None)
    assert leftovers(world) == NOTHING
    # a namespace deleted without any DEL: the next ADD of that container reclaims it
    add_container(world, "c2")
    assert cni(world, "ADD", CONF, container="c2")[0] == 0
    world.run("ip", "netns", "del", "c2")
    add_container(world, "c2")
    status, result = cni(world, "ADD", CONF, container="c2")
    assert status == 0, result
    assert len(attachments(world)) == 1
    assert cni(world, "DEL", CONF, container="c2") == (0, None)
    assert leftovers(world) == NOTHING


@pytest.mark.parametrize(
    ("stdin", "code", "words"),
    [
        ("{not json", 6, "not JSON"),
        (json.dumps(CONF | {"cniVersion": "9.9.9"}), 1, "unsupported cniVersion"),
        (json.dumps(CONF | {"subnet": "10.77.0.0/33"}), 7, "invalid subnet"),
        (json.dumps(CONF | {"network": "bad name!"}), 7, "invalid nsrun network name"),
        (json.dumps(CONF | {"ipam": {"type": "host-local", "subnet": SUBNET}}), 2, 'unsupported field "ipam"'),
        (json.dumps(CONF | {"runtimeConfig": {"portMappings": [{"hostPort": "x"}]}}), 7, "invalid port mapping"),
        (json.dumps(CONF | {"runtimeConfig": {"mac": "01:00:00:00:00:01"}}), 7, "invalid mac"),
        (json.dumps(CONF | {"runtimeConfig": {"ips": ["10.99.0.5/24"]}}), 7, "invalid address 10.99.0.5"),
        (json.dumps(CONF | {"name": ""}), 7, "'name'"),
    ],
)
def test_a_bad_configuration_gets_the_specs_error_and_changes_nothing(
    world: World, stdin: str, code: int, words: str
) -> None:
    add_container(world)
    before = world.snapshot()
    status, error = cni(world, "ADD", stdin)
    assert status == 1
    assert error["code"] == code, error
    assert words in error["msg"] + error["details"]
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    assert world.snapshot() == before


def test_bad_environment_and_a_missing_namespace(world: World) -> None:
    status, error = cni(world, "ADD", CONF, container="../etc")
    assert status == 1
    assert error["code"] == 4
    assert "CNI_CONTAINERID" in error["msg"]
    status, error = cni(world, "ADD", CONF, ifname="a/b")
    assert status == 1
    assert error["code"] == 4
    status, error = cni(world, "BOGUS", CONF)
    assert status == 1
    assert error["code"] == 4
    before = world.snapshot()
    status, error = cni(world, "ADD", CONF | {"network": "other"}, netns="/run/netns/absent")
    assert (status, error["code"]) == (1, 3), error
    assert "/run/netns/absent" in error["msg"]
    assert leftovers(world) == NOTHING
    assert world.snapshot()["links"] == before["links"]
    # the plugin's own namespace (the host's) is no container's: nothing is made in it
    routes = world.run("ip", "route").stdout
    status, error = cni(world, "ADD", CONF | {"network": "other"}, netns="/proc/self/ns/net", ifname="eth9")
    assert (status, error["code"]) == (1, 4), error
    assert "the host's own network namespace" in error["msg"]
    assert leftovers(world) == NOTHING
    assert world.snapshot()["links"] == before["links"]
    assert world.run("ip", "route").stdout == routes


def test_version_and_status(world: World) -> None:
    status, version = cni(world, "VERSION", {"cniVersion": "1.0.0"})
    assert status == 0
    assert version["cniVersion"] == "1.0.0"
    assert "1.1.0" in version["supportedVersions"]
    small = CONF | {"cniVersion": "1.1.0", "subnet": "10.77.0.0/30"}  # one address besides the gateway
    assert cni(world, "STATUS", small) == (0, None)
    add_container(world)
    assert cni(world, "ADD", small)[0] == 0
    status, error = cni(world, "STATUS", small)
    assert (status, error["code"]) == (1, 50), error
    assert "in use" in error["msg"]
    assert cni(world, "DEL", small) == (0, None)
    assert cni(world, "STATUS", small) == (0, None)


def test_gc_removes_attachments_the_engine_does_not_list(world: World) -> None:
    for name in ("c1", "c2", "c3"):
        add_container(world, name)
        assert cni(world, "ADD", CONF, container=name)[0] == 0
    valid = [{"containerID": "c2", "ifname": "eth0"}]
    assert cni(world, "GC", CONF | {"cniVersion": "1.1.0", "cni.dev/valid-attachments": valid}) == (0, None)
    assert [a["container_id"] for a in attachments(world)] == ["c2"]
    assert world.run("ip", "-n", "c1", "link", "show", "eth0").returncode != 0
    assert in_container(world, "c2", "ip", "link", "show", "eth0").returncode == 0
    assert cni(world, "GC", CONF | {"cniVersion": "1.1.0", "cni.dev/valid-attachments": []}) == (0, None)
    assert leftovers(world) == NOTHING


def test_published_ports_and_a_chain_with_the_reference_portmap_plugin(world: World) -> None:
    portmap = REFERENCE_PLUGINS / "portmap"
    if not portmap.exists():
        pytest.skip("needs Debian's containernetworking-plugins (scripts/setup.sh --system)")
    add_container(world, "web")
    add_container(world, "api")
    # nsrun's own portMappings capability
    own = CONF | {"runtimeConfig": {"portMappings": [{"hostPort": 8088, "containerPort": 9000, "protocol": "tcp"}]}}
    status, result = cni(world, "ADD", own, container="web")
    assert status == 0, result
    web = result["ips"][0]["address"].split("/")[0]
    world.popen("ip", "netns", "exec", "web", sys.executable, "-c", PEER_SERVER, web, "9000")
    # nsrun first in a chain, the reference portmap second (prevResult carried through)
    status, first = cni(world, "ADD", CONF, container="api")
    assert status == 0, first
    api = first["ips"][0]["address"].split("/")[0]
    world.popen("ip", "netns", "exec", "api", sys.executable, "-c", PEER_SERVER, api, "9001")
    mapping = {"portMappings": [{"hostPort": 8089, "containerPort": 9001, "protocol": "tcp"}]}
    chained = {
        "cniVersion": "1.0.0",
        "name": "cnet",
        "type": "portmap",
        "capabilities": {"portMappings": True},
        "runtimeConfig": mapping,
        "prevResult": first,
    }
    status, second = cni(world, "ADD", chained, container="api", plugin=str(portmap))
    assert status == 0, second
    assert second["ips"] == first["ips"]
    wan = ["ip", "netns", "exec", "wan", sys.executable, "-c"]
    probe = "import socket,sys; s=socket.create_connection(('{}', {}), timeout=3); print(s.recv(99).decode())"
    for port in (8088, 8089):
        answer = world.run(*wan, probe.format(UPLINK_ADDRESS, port), timeout=10)
        assert answer.stdout.strip() == WAN_ADDRESS, answer.stderr  # reached the container, unmasqueraded
    assert cni(world, "DEL", chained | {"prevResult": second}, container="api", plugin=str(portmap))[0] == 0
    assert cni(world, "DEL", CONF, container="api") == (0, None)
    assert cni(world, "DEL", own, container="web") == (0, None)
    assert world.run(*wan, probe.format(UPLINK_ADDRESS, 8088), timeout=10).returncode != 0
    assert leftovers(world) == NOTHING


def test_a_sandbox_and_a_container_share_the_network(world: World) -> None:
    add_container(world)
    status, result = cni(world, "ADD", CONF, CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=box")
    assert status == 0, result
    address = result["ips"][0]["address"].split("/")[0]
    world.popen("ip", "netns", "exec", "c1", sys.executable, "-c", PEER_SERVER, address, "9000")
    seen = world.nsrun("--network", "cnet", "--", *world.client_argv(address, 9000))
    assert seen.returncode == 0, seen.stderr  # by address
    assert seen.stdout.strip().startswith("10.77.0.")
    by_name = world.nsrun("--network", "cnet", "--", *world.client_argv("box", 9000))
    assert by_name.returncode == 0, by_name.stderr  # and by the workload's name
    inspect = json.loads(world.nsrun("network", "inspect", "cnet").stdout)
    assert address in json.dumps(inspect)
    assert cni(world, "DEL", CONF) == (0, None)
    assert leftovers(world) == NOTHING


def test_concurrent_adds_of_24_containers(world: World, tmp_path: Path) -> None:
    names = [f"k{index}" for index in range(24)]
    for name in names:
        add_container(world, name)
    (tmp_path / "conf").write_text(json.dumps(CONF))
    script = "\n".join(
        f"(CNI_COMMAND=ADD CNI_CONTAINERID={name} CNI_IFNAME=eth0 CNI_NETNS=/run/netns/{name} "
        f"{sys.executable} -m nsrun.cni < {tmp_path}/conf > {tmp_path}/out-{name} 2> {tmp_path}/err-{name}; "
        f"echo exit $? >> {tmp_path}/err-{name}) &"
        for name in names
    )
    assert world.run("sh", "-c", script + "\nwait", timeout=120).returncode == 0
    addresses = set()
    for name in names:
        text = (tmp_path / f"out-{name}").read_text()
        assert text.strip(), f"ADD of {name} printed nothing: {(tmp_path / f'err-{name}').read_text()}"
        result = json.loads(text)
        assert "ips" in result, result
        addresses.add(result["ips"][0]["address"])
    assert len(addresses) == 24
    assert len(attachments(world)) == 24
    assert world.nsrun("doctor").returncode == 0
    for name in names:
        assert cni(world, "DEL", CONF, container=name) == (0, None)
    assert leftovers(world) == NOTHING


def test_helper_serves_plugin_calls_and_its_death_leaves_nothing(world: World) -> None:
    if world.env.get("NSRUN_HELPER") == "off":
        pytest.skip("the helper is off in this pass")
    add_container(world)
    assert cni(world, "ADD", CONF)[0] == 0  # in-process; it starts the helper for the next calls
    world.wait_for(world.helper_running, what="the helper")
    add_container(world, "c2")
    status, result = cni(world, "ADD", CONF, container="c2")
    assert status == 0, result
    assert in_container(world, "c2", "ip", "link", "show", "eth0").returncode == 0
    for name in ("c1", "c2"):
        assert cni(world, "DEL", CONF, container=name) == (0, None)
    assert leftovers(world) == NOTHING


def test_a_helper_that_takes_no_call_is_passed_over_and_makes_nothing_later(world: World) -> None:
    """A helper stopped (or hung) before it takes a plugin call: the call runs in the plugin's
    own process after TAKEN_WAIT, and once the helper goes on it acts on nothing (the engine's
    container has one attachment, the one the ADD reported)."""
    import signal
    import time

    from nsrun.helper.client import TAKEN_WAIT

    if world.env.get("NSRUN_HELPER") == "off":
        pytest.skip("the helper is off in this pass")
    add_container(world)
    assert cni(world, "ADD", CONF)[0] == 0  # in-process; it starts the helper for the next calls
    world.wait_for(world.helper_running, what="the helper")
    main = world.helper_main()
    add_container(world, "c2")
    os.kill(main, signal.SIGSTOP)
    try:
        began = time.monotonic()
        status, result = cni(world, "ADD", CONF, container="c2")
        took = time.monotonic() - began
    finally:
        os.kill(main, signal.SIGCONT)
    assert status == 0, result
    assert took >= TAKEN_WAIT  # it waited for the helper, then did the call itself
    time.sleep(1)  # the helper finds the call's connection closed: its worker does nothing
    (address,) = [ip["address"].split("/")[0] for ip in result["ips"]]
    c2 = [a for a in attachments(world) if a["container_id"] == "c2"]
    assert [a["addresses"] for a in c2] == [[address]]
    assert in_container(world, "c2", "ip", "-4", "-br", "addr", "show", "eth0").stdout.split()[2] == f"{address}/24"
    for name in ("c1", "c2"):
        assert cni(world, "DEL", CONF, container=name) == (0, None)  # through the helper again
    assert leftovers(world) == NOTHING


def test_installed_plugin_executable(world: World) -> None:
    """The console script engines find in their plugin directory (`nsrun-cni`)."""
    executable = shutil.which("nsrun-cni", path=str(Path(sys.executable).parent))
    assert executable is not None
    add_container(world)
    status, result = cni(world, "ADD", CONF, plugin=executable)
    assert status == 0, result
    assert cni(world, "DEL", CONF, plugin=executable) == (0, None)
    assert leftovers(world) == NOTHING
