"""A real engine on an nsrun network: Podman (Debian 12's 4.3, CNI backend) runs containers from a
local root filesystem (busybox; no registry is reachable) in a private world whose container
storage is on tmpfs. The conflist names the `nsrun` plugin, as the README shows."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.test_cni import NOTHING, leftovers
from tests.world import UPLINK_ADDRESS

if TYPE_CHECKING:
    from tests.world import World

pytestmark = pytest.mark.privileged

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ip", "nc", "cat", "sleep", "echo", "hostname")
PLUGIN = Path(sys.executable).with_name("nsrun-cni")  # the console script, as engines run it
# podman's state on tmpfs, in the world only; the plugin directory holds nsrun and the reference plugins
SETUP = f"""
set -e
for d in /var/lib/containers /run/containers /etc/cni/net.d /run/cni /var/lib/cni; do
  mkdir -p $d; mount -t tmpfs podman $d
done
mkdir -p /run/cnibin /run/rootfs/bin /run/rootfs/etc /run/rootfs/proc /run/rootfs/sys /run/rootfs/dev /run/rootfs/tmp
cp {BUSYBOX} /run/rootfs/bin/busybox
for a in {" ".join(APPLETS)}; do ln -s busybox /run/rootfs/bin/$a; done
for p in /usr/lib/cni/*; do ln -s $p /run/cnibin/; done
ln -s {PLUGIN} /run/cnibin/nsrun
cat > /run/containers.conf <<'C'
[network]
network_backend = "cni"
cni_plugin_dirs = ["/run/cnibin"]
network_config_dir = "/etc/cni/net.d"
C
cat > /etc/cni/net.d/50-nsnet.conflist <<'J'
{{"cniVersion": "1.0.0", "name": "nsnet", "plugins": [
  {{"type": "nsrun", "subnet": "10.89.0.0/24", "capabilities": {{"portMappings": true}}}}
]}}
J
"""


@pytest.fixture
def podman(world: World) -> World:
    if shutil.which("podman") is None or shutil.which("runc") is None or not BUSYBOX.exists():
        pytest.skip("needs podman, runc and busybox-static (scripts/setup.sh --system)")
    done = world.run("sh", "-c", SETUP)
    assert done.returncode == 0, done.stderr
    world.env["CONTAINERS_CONF"] = "/run/containers.conf"
    return world


def run_podman(world: World, *args: str, timeout: float = 60) -> str:
    proc = world.run("podman", "--runtime", "runc", *args, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")  # the machine's hard limits are lower
ROOTFS = ("--rootfs", "/run/rootfs:O")


def test_podman_containers_on_an_nsrun_network(podman: World) -> None:
    world = podman
    world.wan_server()
    # reaches the wan, masqueraded
    out = run_podman(world, "run", "--rm", *LIMITS, "--network", "nsnet", *ROOTFS, "sh", "-c", "nc 203.0.113.10 8080")
    assert out.strip() == UPLINK_ADDRESS
    assert leftovers(world) == NOTHING  # --rm: its DEL ran
    # publishes a port, and reaches an nsrun sandbox of the same network by address
    sandbox = world.serve_in_sandbox("10.89.0.50", 9000, "--network", "nsnet", "--name", "box")
    serve = "while true; do echo hi | nc -l -p 9000; done"
    run_podman(
        world,
        "run",
        "-d",
        "--name",
        "web",
        *LIMITS,
        "--network",
        "nsnet",
        "-p",
        "8090:9000",
        *ROOTFS,
        "sh",
        "-c",
        serve,
    )
    (attached,) = [s for s in json.loads(world.nsrun("ls", "--json").stdout) if s.get("container_id")]
    container = attached["addresses"][0]
    assert attached["network"] == "nsnet"
    assert attached["ports"] == ["8090:9000/tcp"]
    seen = run_podman(world, "exec", "web", "nc", "10.89.0.50", "9000").strip()
    assert seen == container  # the sandbox saw the container's own address: same bridge, no NAT
    probe = f"import socket; print(socket.create_connection(('{UPLINK_ADDRESS}', 8090), timeout=3).recv(9).decode())"
    answer = ""
    for _ in range(50):  # the container's shell loop may be between two nc
        answer = world.run("ip", "netns", "exec", "wan", sys.executable, "-c", probe).stdout.strip()
        if answer == "hi":
            break
        time.sleep(0.1)
    assert answer == "hi"
    # an nsrun sandbox of the network finds the container by its name (K8S_POD_NAME, from Podman)
    by_name = ""
    for _ in range(50):
        by_name = world.nsrun("--network", "nsnet", "--", *world.client_argv("web", 9000)).stdout.strip()
        if by_name == "hi":
            break
        time.sleep(0.1)
    assert by_name == "hi"
    assert world.nsrun("doctor").returncode == 0
    run_podman(world, "rm", "-f", "web")
    sandbox.terminate()
    sandbox.wait(10)
    world.wait_for(lambda: leftovers(world) == NOTHING, what="nothing left")
    doctor = world.nsrun("doctor")
    assert doctor.returncode == 0, doctor.stdout
    assert "8090" not in world.run("nft", "list", "ruleset").stdout
