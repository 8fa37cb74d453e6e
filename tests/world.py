"""A private "host" per test: real namespaces, links and rules, none of them the real machine's."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORLD_SCRIPT = Path(__file__).with_name("world.sh")
# for commands run as another user than root: Debian's python3 lives where every user may run it
# (the venv's may sit in a home only root can enter)
SYSTEM_PYTHON = "/usr/bin/python3"
HELPER_MARK = "nsrun.helper"  # in the command line of the warm helper and its workers
WAN_ADDRESS = "203.0.113.10"
UPLINK_ADDRESS = "203.0.113.1"

# A server in the wan that answers every connection with the address it saw as the peer:
# that is what proves masquerading.
PEER_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print("listening", flush=True)
while True:
    c, a = s.accept(); c.sendall((a[0] + "\\n").encode()); c.close()
"""

# What a sandbox runs to ask a server which address it sees.
PEER_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.recv(100).decode().strip())
"""


class World:
    def __init__(self, firewall: str | None = None) -> None:
        # nsrun run by root itself (not through sudo): the commands run as root unless told otherwise
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("SUDO_")}
        if firewall is not None:
            self.env["NSRUN_FIREWALL"] = firewall
        self._proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", str(WORLD_SCRIPT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != "ready":
            self._proc.kill()
            raise RuntimeError(f"test world did not start: {line!r}")
        self.pid = self._proc.pid
        self._background: list[subprocess.Popen[str]] = []

    def _enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", "-m", "--"]

    def run(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("env", self.env)
        # a command is run from the caller's directory: from /, any --user may enter it (a checkout
        # may sit in a home only root can)
        kw.setdefault("cwd", "/")
        return subprocess.run(
            [*self._enter(), *args], capture_output=True, text=True, timeout=timeout, check=False, **kw
        )

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("env", self.env)
        kw.setdefault("cwd", "/")
        proc = subprocess.Popen([*self._enter(), *args], text=True, **kw)
        self._background.append(proc)
        return proc

    def nsrun(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "nsrun", *args, **kw)

    def nsrun_popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return self.popen(sys.executable, "-m", "nsrun", *args, **kw)

    def wan_server(self, port: int = 8080, address: str = WAN_ADDRESS) -> subprocess.Popen[str]:
        proc = self.popen("ip", "netns", "exec", "wan", sys.executable, "-c", PEER_SERVER, address, str(port))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        return proc

    def client_argv(self, address: str = WAN_ADDRESS, port: int = 8080) -> list[str]:
        return [sys.executable, "-c", PEER_CLIENT, address, str(port)]

    def serve_in_sandbox(self, address: str, port: int, *nsrun_args: str) -> subprocess.Popen[str]:
        """A peer server in a sandbox at a static address; returns once it listens."""
        proc = self.nsrun_popen(
            *nsrun_args, "--ip", address, "--", sys.executable, "-c", PEER_SERVER, address, str(port)
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "listening", proc.stderr.read() if proc.stderr else line
        return proc

    # -- observations ---------------------------------------------------------------------------

    def links(self) -> list[str]:
        out = self.run("ip", "-j", "link", "show").stdout
        return [link["ifname"] for link in json.loads(out)]

    def snapshot(self) -> dict[str, Any]:
        """Everything nsrun could leave behind: links, addresses, both rulesets, state files."""
        return {
            "links": sorted(self.links()),
            "addrs": self.run("ip", "-4", "-o", "addr").stdout,
            "legacy": _strip_comments(self.run("iptables-legacy-save").stdout),
            "nft": self.run("nft", "list", "ruleset").stdout,
            # files, not directories: empty state directories are scaffolding, not leftovers; so
            # are the locks and the logbook's stamp of its last sweep
            "files": "".join(
                sorted(
                    self.run(
                        "find",
                        "/run/nsrun",
                        "/var/lib/nsrun",
                        "-type",
                        "f",
                        "-not",
                        "-name",
                        "*.lock",
                        "-not",
                        "-name",
                        ".swept",
                    ).stdout.splitlines(keepends=True)
                )
            ),
            "netns": self.run("ls", "/run/netns").stdout,
        }

    @staticmethod
    def comm(pid: int) -> str:
        """A process's name (what it exec'd last), "" once it is gone."""
        try:
            with open(f"/proc/{pid}/comm") as comm:
                return comm.read().strip()
        except OSError:
            return ""

    @staticmethod
    def pids_running(marker: str) -> list[int]:
        """Host pids of live processes whose command line contains `marker` (sandboxes see
        themselves in PID namespaces of their own: their pids mean nothing out here)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as source:
                    cmdline = source.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{entry}/stat") as source:
                    state = source.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in cmdline and state != "Z" and "pytest" not in cmdline:
                found.append(int(entry))
        return found

    def own_pids(self, marker: str) -> list[int]:
        """Like pids_running, but only processes in this world's own network namespace (its
        helper, its nsrun clients), not other tests' worlds'."""
        world_ns = os.stat(f"/proc/{self.pid}/ns/net").st_ino
        found = []
        for pid in self.pids_running(marker):
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino == world_ns:
                    found.append(pid)
        return found

    def unique(self, seconds: int) -> str:
        """A `sleep` duration of about `seconds` that only this world's processes use: process
        lookups (`pids_running`) see the whole machine, where the other backend's copy of the
        same test runs beside this one."""
        return f"{seconds}.{self.pid}"

    def helper_running(self) -> bool:
        """Whether the world's warm helper listens (it starts after the first launch)."""
        return self.run("test", "-S", "/run/nsrun/helper.sock").returncode == 0

    def helper_pids(self) -> list[int]:
        """The world's warm helper and its workers."""
        return self.own_pids(HELPER_MARK)

    def helper_main(self) -> int:
        """The helper itself: the one of the world's helper processes whose parent is none of them."""
        pids = self.helper_pids()
        parents = {pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in pids}
        (main,) = [pid for pid in pids if parents[pid] not in pids]
        return main

    @staticmethod
    def holds_signals(pid: int) -> bool:
        """Whether the nsrun process `pid` runs its own code: its entry point holds SIGUSR1 among
        other signals (Python alone catches only SIGINT). A Ctrl-C before that hits the
        interpreter's start-up, which no program can handle, not nsrun's."""
        try:
            with open(f"/proc/{pid}/status") as source:
                caught = next(line for line in source if line.startswith("SigCgt:")).split()[1]
        except (OSError, StopIteration):
            return False
        return bool(int(caught, 16) >> (signal.SIGUSR1 - 1) & 1)

    def wait_for(self, predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        for proc in self._background:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        # every process still inside the world (a sandbox that escaped its test) goes with it
        world_ns = os.stat(f"/proc/{self.pid}/ns/net").st_ino
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != self.pid:
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{pid}/ns/net").st_ino == world_ns:
                        os.kill(int(pid), signal.SIGKILL)
        self._proc.kill()
        self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()


def _strip_comments(save: str) -> str:
    """iptables-save without its timestamps and packet counters, which change on their own."""
    lines = (re.sub(r"\[\d+:\d+\]", "", line) for line in save.splitlines() if not line.startswith("#"))
    return "\n".join(lines)
