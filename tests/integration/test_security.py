"""The sandbox holds: one test per attack of issue 7, each of which succeeded before confinement.

Every attack runs against the default sandbox and, where it applies, `--user nobody`; the network
attacks also with NET_ADMIN and NET_RAW given back (--cap-add), to show the bridge filter holds on
its own.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import sys
import termios
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nsrun.confine.capabilities import ALL_CAPS, DEFAULT_CAPS
from tests.world import PEER_SERVER, SYSTEM_PYTHON, UPLINK_ADDRESS, WAN_ADDRESS

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    from tests.world import World

pytestmark = pytest.mark.privileged

AS_ROOT_OR_NOBODY = [pytest.param([], id="root"), pytest.param(["--user", "nobody"], id="nobody")]


def _status(world: World, *args: str) -> dict[str, str]:
    result = world.nsrun(*args, "--", "cat", "/proc/self/status")
    assert result.returncode == 0, result.stderr
    return dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)


# -- process ------------------------------------------------------------------------------------

ESCAPE = """
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
for path in ("/proc/self/ns/net", f"/proc/{sys.argv[1]}/ns/net"):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        print(f"open {path}: {err.strerror}"); continue
    failed = libc.setns(fd, 0x40000000)
    print(f"setns {path}: " + (os.strerror(ctypes.get_errno()) if failed else "ok"))
try:
    socket.create_connection(("127.0.0.1", 7777), timeout=1); print("connected")
except OSError as err:
    print(f"connect: {err.strerror or err}")
"""


@pytest.mark.parametrize("user", AS_ROOT_OR_NOBODY)
def test_command_cannot_return_to_the_host_network_namespace(world: World, user: list[str]) -> None:
    server = world.popen(sys.executable, "-c", PEER_SERVER, "127.0.0.1", "7777")  # a service on host loopback
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    result = world.nsrun(*user, "--", SYSTEM_PYTHON, "-c", ESCAPE, str(world.pid))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "setns /proc/self/ns/net: Operation not permitted" in lines  # seccomp, whatever the capabilities
    assert f"open /proc/{world.pid}/ns/net: No such file or directory" in lines  # the host's pids are not visible
    assert "connected" not in lines
    assert world.nsrun(*user, "--", "nsenter", f"--net=/proc/{world.pid}/ns/net", "true").returncode != 0
    status = _status(world, *user)
    assert int(status["CapEff"], 16) == (DEFAULT_CAPS if not user else 0)
    assert int(status["CapBnd"], 16) == (DEFAULT_CAPS if not user else 0)
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


def _own_caps() -> int:
    with open("/proc/self/status") as source:
        line = next(line for line in source if line.startswith("CapEff"))
    return int(line.split()[1], 16)


def test_privileged_restores_the_unconfined_command(world: World) -> None:
    status = _status(world, "--privileged")
    assert int(status["CapEff"], 16) == ALL_CAPS & _own_caps()  # all that root has here
    assert (status["NoNewPrivs"], status["Seccomp"]) == ("0", "0")
    assert world.nsrun("--privileged", "--", "unshare", "--net", "true").returncode == 0
    assert world.nsrun("--", "unshare", "--net", "true").returncode != 0


def test_cap_add_and_cap_drop(world: World) -> None:
    added = int(_status(world, "--cap-add", "NET_ADMIN")["CapEff"], 16)
    assert added == DEFAULT_CAPS | 1 << 12
    assert int(_status(world, "--cap-drop", "ALL")["CapEff"], 16) == 0
    assert int(_status(world, "--cap-drop", "ALL", "--cap-add", "chown")["CapEff"], 16) == 1
    bad = world.nsrun("--cap-add", "FLY", "--", "true")
    assert bad.returncode == 2
    assert "unknown capability 'FLY'" in bad.stderr


def test_command_sees_and_signals_no_host_process(world: World) -> None:
    host = world.popen("sleep", "333.25")
    nobody_host = world.popen("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "334.25")
    time.sleep(0.2)
    result = world.nsrun("--", "sh", "-c", f"ps ax; kill -9 {host.pid}; echo kill=$?")
    assert "333.25" not in result.stdout
    assert "kill=0" not in result.stdout
    mem = f"open('/proc/{nobody_host.pid}/mem', 'r+b')"
    as_nobody = world.nsrun("--user", "nobody", "--", SYSTEM_PYTHON, "-c", mem)
    assert as_nobody.returncode != 0
    assert "No such file or directory" in as_nobody.stderr
    assert host.poll() is None
    assert nobody_host.poll() is None
    ps = world.nsrun("--", "ps", "-o", "pid,comm", "ax").stdout.split()
    assert ps[2:4] == ["1", "nsrun-init"]  # its own PID namespace, nsrun's init as PID 1


def test_setuid_binary_gains_nothing_for_nobody(world: World, shared_dir: Path) -> None:
    program = shared_dir / "id"
    shutil.copy("/usr/bin/id", program)
    program.chmod(0o4755)  # setuid root
    control = world.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(program), "-u")
    assert control.stdout.strip() == "0"  # outside nsrun the bit works: the test means something
    result = world.nsrun("--user", "nobody", "--", str(program), "-u")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "65534"


def test_exec_never_enters_namespaces_the_command_made(world: World, shared_dir: Path) -> None:
    evil = shared_dir / "evil"
    evil.write_text("#!/bin/sh\necho EVIL\n")
    evil.chmod(0o755)
    ready = shared_dir / "ready"
    # with seccomp off the nobody command can make a user, mount and network namespace of its own
    # and put its program over /usr/bin/id there
    attack = f"mount --bind {evil} /usr/bin/id && touch {ready} && exec sleep 300"
    victim = world.nsrun_popen(
        "--name", "victim", "--user", "nobody", "--security-opt", "seccomp=unconfined",
        "--", "unshare", "-Urmn", "sh", "-c", attack,
    )  # fmt: skip
    world.wait_for(ready.exists, what="the attack to be in place")
    result = world.nsrun("exec", "victim", "--", "id")
    assert result.returncode == 0, result.stderr
    assert "EVIL" not in result.stdout
    assert result.stdout.startswith("uid=65534(nobody)")  # the sandbox's user by default
    as_root = world.nsrun("exec", "victim", "-u", "root", "--", "sh", "-c", "id -u; cat /proc/self/status")
    assert as_root.stdout.splitlines()[0] == "0"
    caps = next(line for line in as_root.stdout.splitlines() if line.startswith("CapEff"))
    assert int(caps.split()[1], 16) == DEFAULT_CAPS  # the sandbox's confinement, not root's
    joined = world.nsrun("--net", "sandbox:victim", "--", "ip", "-o", "link")
    assert "eth0" in joined.stdout  # the network namespace nsrun made, not the command's own
    victim.terminate()
    victim.wait(timeout=10)


TIOCSTI = """
import fcntl, termios
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"X")
    print("injected")
except OSError as err:
    print("refused:", err.strerror)
"""


@pytest.mark.parametrize("tty", [pytest.param([], id="own-terminal"), pytest.param(["--no-tty"], id="no-tty")])
def test_command_cannot_type_into_the_callers_terminal(world: World, tty: list[str]) -> None:
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # the caller's terminal, as a shell's is
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = world.popen(
        sys.executable, "-m", "nsrun", *tty, "--user", "nobody", "--", SYSTEM_PYTHON, "-c", TIOCSTI,
        stdin=slave, stdout=slave, start_new_session=True, preexec_fn=controlling_terminal,
    )  # fmt: skip
    assert proc.wait(timeout=20) == 0
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 1024)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert b"refused: Operation not permitted" in output
    assert b"injected" not in output
    assert b"X" not in output.replace(b"Operation", b"")  # nothing typed into the caller's input


def _interactive(world: World, *argv: str) -> tuple[subprocess.Popen[str], int, Callable[[bytes], None]]:
    """nsrun ARGV in a terminal of 30x100 (a pty it controls); the pty's master, and `expect`."""
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, bytes([30, 0, 100, 0, 0, 0, 0, 0]))

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = world.popen(
        sys.executable, "-m", "nsrun", *argv,
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=controlling_terminal,
    )  # fmt: skip
    os.close(slave)
    seen = b""

    def expect(text: bytes, timeout: float = 10) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen:
            assert time.monotonic() < deadline, seen
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
        seen = seen[seen.index(text) + len(text) :]

    return proc, master, expect


def _resize(proc: subprocess.Popen[str], master: int, expect: Callable[[bytes], None]) -> None:
    fcntl.ioctl(master, termios.TIOCSWINSZ, bytes([40, 0, 120, 0, 0, 0, 0, 0]))
    proc.send_signal(signal.SIGWINCH)  # what the terminal does on a resize
    time.sleep(0.3)
    os.write(master, b"stty size\n")
    expect(b"40 120")


def test_interactive_shell_keeps_job_control_resize_and_status(world: World) -> None:
    proc, master, expect = _interactive(world, "--", "sh", "-i")
    os.write(master, b"tty; stty size\n")
    expect(b"/dev/pts/0")
    expect(b"30 100")
    os.write(master, b"sleep 100\n")
    time.sleep(0.5)
    os.write(master, b"\x03")  # Ctrl-C: the sandbox's terminal signals its foreground job
    os.write(master, b"echo after:$?\n")
    expect(b"after:130")
    _resize(proc, master, expect)
    os.write(master, b"exit 7\n")
    assert proc.wait(timeout=10) == 7
    os.close(master)


def test_interactive_exec_keeps_resize_and_status(world: World) -> None:
    """Through the warm helper, exec's terminal relay runs in the helper's worker: the resize
    nsrun is told of must reach it (it did not: the shell kept 30x100)."""
    assert world.nsrun("--", "true").returncode == 0
    if world.env.get("NSRUN_HELPER") != "off":
        world.wait_for(world.helper_running, what="the helper")
    assert world.nsrun("-d", "--name", "w", "--", "sleep", world.unique(300)).returncode == 0
    proc, master, expect = _interactive(world, "exec", "w", "--", "sh", "-i")
    os.write(master, b"tty; stty size\n")
    expect(b"/dev/pts/")
    expect(b"30 100")
    _resize(proc, master, expect)
    os.write(master, b"exit 7\n")
    assert proc.wait(timeout=10) == 7
    os.close(master)
    assert world.nsrun("stop", "-t", "0", "w").returncode == 0


# -- network ------------------------------------------------------------------------------------


def test_default_root_cannot_reconfigure_or_forge(world: World) -> None:
    result = world.nsrun("--", "ip", "addr", "add", "10.200.0.200/24", "dev", "eth0")
    assert result.returncode != 0
    assert "Operation not permitted" in result.stderr
    raw = "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)"
    refused = world.nsrun("--", SYSTEM_PYTHON, "-c", raw)
    assert "PermissionError" in refused.stderr


def test_ping_works_without_net_raw(world: World) -> None:
    ping = (
        "import socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP);"
        "s.settimeout(2); s.sendto(struct.pack('!BBHHH', 8, 0, 0, 0, 1) + b'x', ('203.0.113.10', 0));"
        "print(s.recv(100)[0])"
    )
    for user in ([], ["--user", "nobody"]):
        result = world.nsrun(*user, "--", SYSTEM_PYTHON, "-c", ping)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "0"  # an echo reply


NAMED_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[3].encode() + b"\\n"); c.close()
"""

# a sandbox given NET_ADMIN and NET_RAW tries every trick on its bridge
TAKEOVER = """
import os, socket, struct, subprocess, sys, time
victim, gateway, ready = sys.argv[1], sys.argv[2], sys.argv[3]
subprocess.run(["ip", "addr", "add", victim + "/24", "dev", "eth0"], check=True)
server = subprocess.Popen([sys.executable, "-c", sys.argv[4], victim, "9000", "attacker"], stdout=subprocess.PIPE)
server.stdout.readline()
mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); raw.bind(("eth0", 0))
def announce(ip):  # gratuitous ARP: "ip is at my MAC"
    addr = socket.inet_aton(ip)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, addr, b"\\xff" * 6, addr)
    raw.send(b"\\xff" * 6 + mac + b"\\x08\\x06" + arp)
for _ in range(5):
    announce(victim); announce(gateway); time.sleep(0.1)
open(ready, "w").close()
time.sleep(300)
"""


def test_sandbox_cannot_take_over_a_neighbours_address_or_the_gateway(world: World, tmp_path: Path) -> None:
    assert world.nsrun("network", "create", "lab", "--subnet", "10.123.0.0/24").returncode == 0
    world.serve_in_sandbox("10.123.0.7", 9000, "--network", "lab")
    assert world.run(*world.client_argv("10.123.0.7", 9000)).returncode == 0  # the host knows the victim
    ready = tmp_path / "ready"
    attacker = world.nsrun_popen(
        "--network", "lab", "--ip", "10.123.0.9", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
        "--", sys.executable, "-c", TAKEOVER, "10.123.0.7", "10.123.0.1", str(ready), NAMED_SERVER,
    )  # fmt: skip
    world.wait_for(ready.exists, timeout=20, what="the attack")
    for _ in range(3):
        answer = world.run(*world.client_argv("10.123.0.7", 9000)).stdout.strip()
        assert answer == "10.123.0.1"  # the victim's peer server answered (it reports who called), not "attacker"
    # a third sandbox still finds the victim, and the gateway where it is
    neighbour = world.nsrun("--network", "lab", "--", *world.client_argv("10.123.0.7", 9000))
    assert neighbour.stdout.strip().startswith("10.123.0.")  # the victim reports its caller; the attacker would not
    attacker.terminate()
    attacker.wait(timeout=10)


FORGE = """
import socket, struct, sys
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF); total += total >> 16
    return ~total & 0xFFFF
src, dst = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2])
payload = b"forged"
udp = struct.pack("!HHHH", 4000, 5353, 8 + len(payload), 0) + payload
header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(5):
    s.sendto(header + udp, (sys.argv[2], 0))
print("sent")
"""
UDP_LOG = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 5353)); s.settimeout(3)
print("listening", flush=True)
try:
    while True:
        print(s.recvfrom(100)[1][0], flush=True)
except OSError:
    print("done", flush=True)
"""


UDP_CLIENT = """
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hi", (sys.argv[1], 5353))
"""


def test_forged_sources_never_leave_the_bridge(world: World) -> None:
    log = world.popen("ip", "netns", "exec", "wan", sys.executable, "-c", UDP_LOG, WAN_ADDRESS)
    assert log.stdout is not None
    assert log.stdout.readline().strip() == "listening"
    forged = world.nsrun("--cap-add", "NET_RAW", "--", sys.executable, "-c", FORGE, "198.51.100.77", WAN_ADDRESS)
    assert forged.stdout.strip() == "sent", forged.stderr
    honest = world.nsrun("--", sys.executable, "-c", UDP_CLIENT, WAN_ADDRESS)
    assert honest.returncode == 0, honest.stderr
    out, _ = log.communicate(timeout=10)
    seen = out.split()
    assert "198.51.100.77" not in seen
    assert UPLINK_ADDRESS in seen  # the honest packet came through, masqueraded


FORGE_FRAMES = """
import socket, struct, sys
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF); total += total >> 16
    return ~total & 0xFFFF
gateway_mac, gateway, neighbour = bytes.fromhex(sys.argv[1].replace(":", "")), sys.argv[2], sys.argv[3]
own_mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); probe.connect((gateway, 9))
own = probe.getsockname()[0]
def frame(mac, source, sport):
    tcp = struct.pack("!HHIIBBHHH", sport, 7777, 1, 0, 5 << 4, 0x02, 1024, 0, 0)  # a SYN
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, socket.inet_aton(source), socket.inet_aton(gateway))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return gateway_mac + mac + b"\\x08\\x00" + ip + tcp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("eth0", 0))
for _ in range(3):
    s.send(frame(own_mac, neighbour, 4001))  # a neighbour's address
    s.send(frame(b"\\x02\\xaa\\xbb\\xcc\\xdd\\xee", own, 4002))  # another MAC
    s.send(frame(own_mac, own, 4003))  # its own: let through
print(own)
"""
TCP_LOG = """
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP); s.settimeout(3)
print("listening", flush=True)
try:
    while True:
        data, (source, _) = s.recvfrom(100)
        sport, dport = struct.unpack("!HH", data[20:24])
        if dport == 7777:
            print(source, sport, flush=True)
except OSError:
    print("done", flush=True)
"""


def test_forged_tcp_frames_never_reach_the_host(world: World) -> None:
    # TCP is let through early (its own MAC and address): a neighbour's address or another MAC is not
    assert world.nsrun("--", "true").returncode == 0
    bridge = json.loads(world.nsrun("network", "inspect", "nsrun").stdout)["bridge"]
    gateway = world.run("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout.split()[3].split("/")[0]
    neighbour = gateway.rsplit(".", 1)[0] + ".250"
    link = world.run("ip", "-o", "link", "show", "dev", bridge).stdout.split()
    mac = link[link.index("link/ether") + 1]
    log = world.popen(sys.executable, "-c", TCP_LOG)
    assert log.stdout is not None
    assert log.stdout.readline().strip() == "listening"
    sent = world.nsrun("--cap-add", "NET_RAW", "--", sys.executable, "-c", FORGE_FRAMES, mac, gateway, neighbour)
    assert sent.returncode == 0, sent.stderr
    own = sent.stdout.strip()
    out, _ = log.communicate(timeout=10)
    seen = {tuple(line.split()) for line in out.splitlines() if line != "done"}
    assert seen == {(own, "4003")}


ROUTER_ADVERTISEMENT = """
import socket, struct
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
bad = socket.inet_pton(socket.AF_INET6, "2001:db8:bad::")
prefix = struct.pack("!BBBBIII16s", 3, 4, 64, 0xC0, 86400, 14400, 0, bad)
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + prefix
import time
deadline = time.time() + 5
while True:  # the link-local address is tentative for a moment after the link comes up
    try:
        s.sendto(ra, ("ff02::1", 0, 0, socket.if_nametoindex("eth0")))
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
for _ in range(2):
    s.sendto(ra, ("ff02::1", 0, 0, socket.if_nametoindex("eth0")))
print("sent")
"""


def test_router_advertisements_from_a_sandbox_reach_nobody(world: World, backend: str) -> None:
    dual_stack = ["--subnet", "fd00:126::/64"] if backend == "nftables" else []  # IPv6 needs nftables
    assert world.nsrun("network", "create", "lab6", "--subnet", "10.126.0.0/24", *dual_stack).returncode == 0
    neighbour = world.nsrun_popen("--network", "lab6", "--name", "n", "--", "sleep", "300")
    world.wait_for(lambda: "n" in world.nsrun("ls").stdout, what="the neighbour")
    sent = world.nsrun("--network", "lab6", "--cap-add", "NET_RAW", "--", sys.executable, "-c", ROUTER_ADVERTISEMENT)
    assert sent.stdout.strip() == "sent", sent.stderr
    time.sleep(1)
    bridge = json.loads(world.nsrun("network", "inspect", "lab6").stdout)["bridge"]
    assert world.run("cat", f"/proc/sys/net/ipv6/conf/{bridge}/accept_ra").stdout.strip() == "0"
    assert "2001:db8:bad" not in world.run("ip", "-6", "addr").stdout + world.run("ip", "-6", "route").stdout
    inside = world.nsrun("exec", "n", "--", "sh", "-c", "ip -6 addr; ip -6 route")
    assert "2001:db8:bad" not in inside.stdout
    neighbour.terminate()
    neighbour.wait(timeout=10)


def test_wan_neighbour_cannot_reach_a_port_published_on_loopback(world: World) -> None:
    proc = world.nsrun_popen("-p", "127.0.0.1:8082:9000", "--", sys.executable, "-c", PEER_SERVER, "0.0.0.0", "9000")  # noqa: S104
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    assert world.run(*world.client_argv("127.0.0.1", 8082)).returncode == 0  # published on loopback: it works
    # the wan neighbour routes 127.0.0.1 to the host
    route = (
        "sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.wan0.route_localnet=1;"
        "ip route del local 127.0.0.1 table local; ip route add 127.0.0.1/32 via 203.0.113.1 dev wan0"
    )
    assert world.run("ip", "netns", "exec", "wan", "sh", "-c", route).returncode == 0
    attempt = world.run("ip", "netns", "exec", "wan", *world.client_argv("127.0.0.1", 8082))
    assert attempt.returncode != 0  # dropped in raw prerouting, before the DNAT
    proc.terminate()
    proc.wait(timeout=10)


def test_route_localnet_only_with_its_guard(world: World, backend: str) -> None:
    assert world.nsrun("--", "true").returncode == 0
    assert world.run("cat", "/proc/sys/net/ipv4/conf/nsrun0/route_localnet").stdout.strip() == "1"
    if backend == "nftables":
        assert "127.0.0.0/8 drop" in world.run("nft", "list", "chain", "inet", "nsrun", "guard").stdout
        assert world.run("nft", "flush", "ruleset").returncode == 0
        doctor = json.loads(world.nsrun("doctor", "--json").stdout)
        guard = [c for c in doctor["checks"] if c["name"] == "loopback guard (nsrun)"]
        assert guard
        assert guard[0]["status"] == "fail"
        assert world.nsrun("--", "true").returncode == 0  # the next launch restores it
        assert "127.0.0.0/8 drop" in world.run("nft", "list", "chain", "inet", "nsrun", "guard").stdout
    world.env["NSRUN_FIREWALL"] = "none"
    assert world.nsrun("network", "create", "bare", "--subnet", "10.127.0.0/24").returncode == 0
    assert world.nsrun("--network", "bare", "--", "true").returncode == 0
    assert world.run("cat", "/proc/sys/net/ipv4/conf/nsbr-bare/route_localnet").stdout.strip() == "0"


def test_no_host_access(world: World) -> None:
    created = world.nsrun("network", "create", "closed", "--subnet", "10.128.0.0/24", "--no-host-access")
    assert created.returncode == 0, created.stderr
    server = world.popen(sys.executable, "-c", PEER_SERVER, "0.0.0.0", "7070")  # noqa: S104  # a host service
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    assert world.nsrun("--network", "closed", "--", *world.client_argv(UPLINK_ADDRESS, 7070)).returncode != 0
    assert world.nsrun("--", *world.client_argv(UPLINK_ADDRESS, 7070)).returncode == 0  # the default: reachable
    world.wan_server()
    assert world.nsrun("--network", "closed", "--", *world.client_argv()).returncode == 0  # the wan still is


# -- state ----------------------------------------------------------------------------------------


def test_state_is_root_only_whatever_the_umask(world: World) -> None:
    assert world.run("sh", "-c", f"umask 000; {sys.executable} -m nsrun -- true").returncode == 0
    assert world.run("sh", "-c", f"umask 000; {sys.executable} -m nsrun network create lab").returncode == 0
    listing = world.run("find", "/run/nsrun", "/var/lib/nsrun", "-printf", "%y %m %p\n").stdout.splitlines()
    assert listing
    for line in listing:
        kind, mode, path = line.split(" ", 2)
        if path == "/var/lib/nsrun":
            continue  # the test world's own mount point
        allowed = {"d": {"700"}, "f": {"600", "644"}, "s": {"600"}}[kind]  # s: the warm helper's socket
        assert mode in allowed, line


def test_forged_state_is_never_acted_on(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    # a lease that would make nsrun kill and delete: a dead holder, someone else's interface
    forged_lease = {
        "address": "10.200.0.77", "sandbox_id": "0123456789ab", "pid": 999999, "start_time": 1.0,
        "veth": "uplink", "netns_inode": os.stat("/proc/self/ns/net").st_ino,
    }  # fmt: skip
    world.run("sh", "-c", f"echo '{json.dumps(forged_lease)}' > /run/nsrun/leases/nsrun/10.200.0.77")
    # a record whose id would lead a sweep out of nsrun's directory
    forged_record = {
        "sandbox_id": "../../../var/lib", "name": "x", "pid": 999999, "start_time": 1.0, "pidns": 0,
        "network": "nsrun", "command": ["x"], "created": 1.0,
    }  # fmt: skip
    world.run("sh", "-c", f"echo '{json.dumps(forged_record)}' > /run/nsrun/sandboxes/0123456789ab.json")
    # a link where nsrun writes
    world.run("sh", "-c", "echo keep > /run/target; ln -sf /run/target /run/nsrun/leases/nsrun/last_reserved")
    assert world.nsrun("ls").returncode == 0
    assert world.nsrun("--", "true").returncode == 0
    assert "uplink" in world.links()
    assert world.run("cat", "/run/target").stdout == "keep\n"
    assert world.run("test", "-d", "/var/lib/nsrun").returncode == 0
    assert not stat.S_ISLNK(os.lstat("/run").st_mode)


def test_under_sudo_the_command_is_the_invoking_users(world: World) -> None:
    world.env |= {"SUDO_UID": "65534", "SUDO_GID": "65534", "SUDO_USER": "nobody", "SECRET": "root-only"}
    result = world.nsrun("-e", "MINE=1", "--", "sh", "-c", 'id -u; echo "$HOME ${SECRET:-none} $MINE"')
    assert result.stdout.splitlines() == ["65534", "/nonexistent none 1"]
    assert world.nsrun("--user", "root", "--", "id", "-u").stdout.strip() == "0"


def test_read_only_keeps_root_from_writing_host_files(world: World, host_dir: Path) -> None:
    tmp_path = host_dir
    target = tmp_path / "written"
    writable, readonly = tmp_path / "rw", tmp_path / "ro"
    writable.mkdir()
    readonly.mkdir()
    script = (
        f"echo x > {target} || echo refused;"
        f"echo x > /tmp/private && echo tmp-ok;"
        f"echo x > {writable}/file && echo rw-ok;"
        f"echo x > {readonly}/file || echo ro-refused;"
        f"echo x > {tmp_path}/scratch/file && echo tmpfs-ok"
    )
    (tmp_path / "scratch").mkdir()
    result = world.nsrun(
        "--read-only", "-v", f"{writable}:{writable}", "-v", f"{readonly}:{readonly}:ro",
        "--tmpfs", str(tmp_path / "scratch"), "--", "sh", "-c", script,
    )  # fmt: skip
    assert result.stdout.split() == ["refused", "tmp-ok", "rw-ok", "ro-refused", "tmpfs-ok"], result.stderr
    assert "Read-only file system" in result.stderr
    assert not target.exists()
    assert (writable / "file").exists()
    assert not (tmp_path / "scratch" / "file").exists()  # the tmpfs was the sandbox's own
    # a volume whose source sits in /tmp, which --read-only replaces: still the host's directory
    source = tmp_path / "in-tmp"
    source.mkdir()
    via_tmp = world.nsrun("--read-only", "-v", f"{source}:{writable}", "--", "touch", f"{writable}/via")
    assert via_tmp.returncode == 0, via_tmp.stderr
    assert (source / "via").exists()
    bad = world.nsrun("-v", "/no/such:/mnt", "--", "true")
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr


def test_a_volume_shows_the_host_s_file_not_the_sandbox_s_own(world: World, host_dir: Path) -> None:
    # a volume's source is the host's, as it was before the sandbox mounted its own /etc/hosts,
    # /proc and /tmp: neither hidden by them nor showing them (-v /etc:/x is the host's /etc)
    host_hosts = Path("/etc/hosts").read_text()
    file_target, dir_target = host_dir / "hosts", host_dir / "etc"
    file_target.touch()
    dir_target.mkdir()
    script = f"cat {file_target}; echo ---; cat {dir_target}/hosts; echo ---; cat /etc/hosts"
    result = world.nsrun(
        "-v", f"/etc/hosts:{file_target}:ro", "-v", f"/etc:{dir_target}:ro", "--", "sh", "-c", script,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    as_file, in_dir, own = result.stdout.split("---\n")
    assert as_file == host_hosts
    assert in_dir == host_hosts
    assert own != host_hosts
    assert own.startswith("# generated by nsrun")
    assert file_target.read_text() == ""  # the host's mount point is untouched
