"""Test servers, first class: the CLI lifecycle (detach, wait-port, stop, kill, wait, logs, port),
names that resolve, free host ports, the Python API and the pytest fixture (run by an inner
pytest inside the private world, as a user's suite would run on a host)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.world import SYSTEM_PYTHON

if TYPE_CHECKING:
    from pathlib import Path

    from tests.world import World

pytestmark = pytest.mark.privileged

# a stand-in for redis: on 6379 it answers PING with PONG and "GET peer" with what it resolved
# for the name given on its command line; it announces itself on its output when ready
REDIS = """
import socket, sys, time
time.sleep(0.3)  # a server takes a moment to come up
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 6379)); s.listen(16)
print("Ready to accept connections", flush=True)
while True:
    c, _ = s.accept()
    line = c.recv(100).decode().strip()
    if line == "PING":
        c.sendall(b"+PONG\\n")
    elif line.startswith("RESOLVE "):
        try:
            c.sendall(socket.gethostbyname(line.split()[1]).encode() + b"\\n")
        except OSError as err:
            c.sendall(f"-ERR {err}\\n".encode())
    c.close()
"""
ASK = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
c.sendall(" ".join(sys.argv[3:]).encode() + b"\\n"); print(c.recv(100).decode().strip())
"""


def _ask(world: World, host: str, port: int, *words: str) -> str:
    return world.run(sys.executable, "-c", ASK, host, str(port), *words).stdout.strip()


def test_three_redis_on_one_port_detached_ready_and_named(world: World) -> None:
    ports = {}
    # no DNS server answers in the test world: a name not in hosts fails at once on its loopback
    dns = ("--dns", "127.0.0.1")
    for name in ("r1", "r2", "r3"):
        started = world.nsrun(
            "-d", "--name", name, *dns, "--wait-port", "6379", "-p", "0:6379", "--", SYSTEM_PYTHON, "-c", REDIS
        )
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == name
        # returned once ready: the port answers at once, on its own free host port
        (line,) = world.nsrun("port", name).stdout.splitlines()
        ports[name] = int(line.rsplit(":", 1)[1])
        assert _ask(world, "127.0.0.1", ports[name], "PING") == "+PONG"
    assert len(set(ports.values())) == 3
    listing = json.loads(world.nsrun("ls", "--json").stdout)
    assert [entry["name"] for entry in listing] == ["r1", "r2", "r3"]  # sorted by name
    addresses = {entry["name"]: entry["addresses"][0] for entry in listing}
    # they find each other by name, including one started after them
    assert _ask(world, "127.0.0.1", ports["r1"], "RESOLVE", "r3") == addresses["r3"]
    assert _ask(world, "127.0.0.1", ports["r3"], "RESOLVE", "r2") == addresses["r2"]
    late = world.nsrun("--name", "late", "--", "getent", "ahostsv4", "r1")
    assert late.stdout.split()[0] == addresses["r1"]
    assert "Ready to accept connections" in world.nsrun("logs", "r2").stdout
    assert world.nsrun("stop", "r2").stdout.strip() == "r2"
    # an ended sandbox's name stops resolving
    assert _ask(world, "127.0.0.1", ports["r1"], "RESOLVE", "r2").startswith("-ERR")
    assert world.nsrun("wait", "r2").stdout.strip() == "143"  # SIGTERM, as a shell reports it
    assert world.nsrun("stop", "r1", "r3").returncode == 0
    assert json.loads(world.nsrun("ls", "--json").stdout) == []
    assert not [n for n in world.links() if n.startswith("nsv")]


def test_stop_ends_a_server_that_ignores_sigterm_within_its_timeout(world: World) -> None:
    duration = world.unique(300)
    script = f"trap '' TERM; sleep {duration} & wait; sleep {duration}"
    started = world.nsrun("-d", "--name", "stubborn", "--", "sh", "-c", script)
    assert started.returncode == 0, started.stderr
    begin = time.monotonic()
    stopped = world.nsrun("stop", "-t", "1", "stubborn")
    assert stopped.returncode == 0, stopped.stderr
    assert time.monotonic() - begin < 5
    assert world.nsrun("wait", "stubborn").stdout.strip() == "137"
    assert not world.pids_running(f"sleep {duration}")


def test_wait_port_timeout_stops_the_sandbox_and_shows_its_log(world: World) -> None:
    result = world.nsrun(
        "-d", "--name", "slow", "--wait-port", "7000", "--wait-timeout", "1", "--", "sh", "-c", "echo booting; sleep 60"
    )
    assert result.returncode == 125
    assert "port 7000 did not listen within 1s" in result.stderr
    assert "booting" in result.stderr  # the log's tail
    assert json.loads(world.nsrun("ls", "--json").stdout) == []
    foreground = world.nsrun("--wait-port", "7000", "--wait-timeout", "1", "--", "sleep", "60")
    assert foreground.returncode == 125
    assert "did not listen" in foreground.stderr


@pytest.mark.parametrize("moment", [0.05, 1.5])  # during the set-up; while it waits for the port
def test_ctrl_c_while_a_detached_launch_waits_stops_it_at_once(world: World, moment: float) -> None:
    """`nsrun -d --wait-port` waits for a process of its own, in a session of its own, which a
    Ctrl-C at the terminal does not reach: nsrun passes the signal on, so the sandbox is undone or
    stopped, and nsrun dies of it at once (it waited out --wait-timeout, then said the port did
    not listen)."""
    assert world.nsrun("--", "true").returncode == 0
    if world.env.get("NSRUN_HELPER") != "off":
        world.wait_for(world.helper_running, what="the helper")
    before = world.snapshot()
    proc = world.nsrun_popen("-d", "--name", "w", "--wait-port", "80", "--wait-timeout", "30", "--", "sleep", "60")
    time.sleep(moment)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)  # nsenter execs nsrun: this is nsrun itself
    assert proc.wait(timeout=10) == -signal.SIGINT
    assert time.monotonic() - start < 5
    assert proc.stderr is not None
    assert proc.stderr.read() == ""

    def left() -> dict[str, Any]:  # a command that ran keeps its log a day (`nsrun logs w`): not left over
        snapshot = world.snapshot()
        kept = ("/run/nsrun/exits/", "/var/lib/nsrun/logs/")
        files = snapshot["files"].splitlines(keepends=True)
        return snapshot | {"files": "".join(line for line in files if not line.startswith(kept))}

    world.wait_for(lambda: left() == before, what="nothing left")


def test_a_signal_ends_a_waiting_subcommand_and_reaches_execs_command_run_once(world: World, tmp_path: Path) -> None:
    """`nsrun logs -f`, `wait` and `stop` held a Ctrl-C until they were done (`logs -f`: for as
    long as the sandbox ran); through the helper, exec's command never got it, and an exec whose
    command died of a signal ran it a second time in-process (the worker died with it)."""
    assert world.nsrun("--", "true").returncode == 0
    if world.env.get("NSRUN_HELPER") != "off":
        world.wait_for(world.helper_running, what="the helper")
    ticker = ["sh", "-c", "while :; do echo tick; sleep 0.2; done"]
    assert world.nsrun("-d", "--name", "w", "--", *ticker).returncode == 0
    assert world.nsrun("-d", "--name", "deaf", "--", "sh", "-c", "trap '' TERM; sleep 300").returncode == 0
    ran = tmp_path / "ran"
    died = world.nsrun("exec", "w", "--", "sh", "-c", f"echo ran >> {ran}; kill -TERM $$")
    assert died.returncode == -signal.SIGTERM, died.stderr
    assert ran.read_text() == "ran\n"  # once
    for argv in (["logs", "-f", "w"], ["wait", "w"], ["stop", "-t", "60", "deaf"]):
        proc = world.popen(sys.executable, "-m", "nsrun", *argv)
        world.wait_for(lambda: world.holds_signals(proc.pid), timeout=20, what="nsrun's entry point")  # noqa: B023
        time.sleep(1)  # a signal before its wait ends it as well; this one comes during it
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGINT, (argv, err)
        assert time.monotonic() - start < 5, argv
        assert err == ""
    marker = tmp_path / "trapping"
    trapping = f"trap 'echo got INT; exit 3' INT; touch {marker}; sleep 60 >/dev/null 2>&1 & wait"
    proc = world.popen(sys.executable, "-m", "nsrun", "exec", "w", "--", "sh", "-c", trapping)
    world.wait_for(marker.exists, what="exec's command to run")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (3, "got INT\n", "")
    assert world.nsrun("stop", "-t", "0", "w", "deaf").returncode == 0


def test_kill_logs_follow_and_unknown_names(world: World) -> None:
    assert (
        world.nsrun("-d", "--name", "talker", "--", "sh", "-c", "echo one; sleep 1; echo two; sleep 300").returncode
        == 0
    )
    follow = world.popen(sys.executable, "-m", "nsrun", "logs", "-f", "talker")
    time.sleep(1.5)
    assert world.nsrun("kill", "-s", "HUP", "talker").returncode == 0
    out, _ = follow.communicate(timeout=10)
    assert out.split() == ["one", "two"]
    assert world.nsrun("wait", "talker").stdout.strip() == str(128 + signal.SIGHUP)
    assert world.nsrun("logs", "--tail", "1", "talker").stdout == "two\n"
    missing = world.nsrun("stop", "nobody-here")
    assert missing.returncode == 125
    assert missing.stderr.count("\n") == 1


def test_free_host_ports_and_port_command(world: World) -> None:
    proc = world.nsrun_popen("--name", "web", "-p", "9000", "-p", "127.0.0.1::9001/udp", "--", "sleep", "300")
    world.wait_for(lambda: "web" in world.nsrun("ls").stdout, what="web")
    lines = world.nsrun("port", "web").stdout.splitlines()
    assert lines[0].startswith("9000/tcp -> 0.0.0.0:")
    assert lines[1].startswith("9001/udp -> 127.0.0.1:")
    assert int(lines[0].rsplit(":", 1)[1]) > 0
    assert world.nsrun("port", "web", "9001/udp").stdout.splitlines() == lines[1:]
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["ps"], "did you mean `nsrun ls`", id="ps"),
        pytest.param(["stp", "x"], "did you mean `nsrun stop`", id="typo"),
        pytest.param(["--net", "none", "--network", "lab", "--", "true"], "--network with --net none", id="net-none"),
        pytest.param(["-p", "80", "--net", "host", "--", "true"], "-p with --net host", id="publish-host"),
    ],
)
def test_cli_refuses_what_would_surprise(world: World, argv: list[str], fragment: str) -> None:
    before = world.snapshot()
    result = world.nsrun(*argv)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert result.stderr.count("\n") == 1
    assert world.snapshot() == before


def test_cli_words_after_separator_and_polish(world: World) -> None:
    assert world.nsrun("--", "stop").returncode == 127  # a program called stop
    assert world.nsrun("--version").stdout.startswith("nsrun ")
    help_text = world.nsrun("help", "exec").stdout
    assert "Usage: nsrun exec [OPTIONS] NAME [--] CMD [ARGS]..." in help_text
    assert "<str>" not in help_text
    assert "{" not in help_text
    assert "list[str]" not in world.nsrun("--help").stdout


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_shell_loop_at_the_first_press(world: World, tmp_path: Path) -> None:
    log = tmp_path / "log"
    duration = world.unique(5)
    loop = (
        f"for i in 1 2 3; do echo $i >> {tmp_path / 'seen'}; {sys.executable} -m nsrun -- sleep {duration}"
        f" 2>> {log}; echo status $? >> {log}; done; echo done"
    )
    # as from a terminal: Ctrl-C's signal not ignored, whatever the test runner inherited (a job
    # started with `&` by a script ignores SIGINT, and so would this shell)
    shell = world.popen("bash", "-c", loop, start_new_session=True, preexec_fn=_default_sigint)
    world.wait_for((tmp_path / "seen").exists, what="the first run")
    time.sleep(1)
    os.killpg(shell.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole foreground group
    try:
        out, _ = shell.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the loop went on: {log.read_text() if log.exists() else ''}") from None
    assert "done" not in out
    assert (tmp_path / "seen").read_text().split() == ["1"]
    assert not world.pids_running(f"sleep {duration}")


def _without_logbook(snapshot: dict[str, Any]) -> dict[str, Any]:
    # a named sandbox whose command got to run before the Ctrl-C is kept in the logbook (for
    # `nsrun wait` and `nsrun logs`): that is not a leftover
    files = "\n".join(line for line in snapshot["files"].splitlines() if not line.startswith("/run/nsrun/exits/"))
    return snapshot | {"files": files}


@pytest.mark.parametrize("helper", ["on", "off"])
@pytest.mark.parametrize("moment", [0.06, 0.1, 0.15, 0.25])
def test_ctrl_c_during_setup_aborts_cleanly(world: World, moment: float, helper: str) -> None:
    world.env["NSRUN_HELPER"] = helper
    assert world.nsrun("--", "true").returncode == 0
    world.wait_for(lambda: helper == "off" or world.helper_running(), what="the helper")
    before = _without_logbook(world.snapshot())
    proc = world.popen(sys.executable, "-m", "nsrun", "--name", "x", "--", "sleep", "30")
    started = time.monotonic()
    # the moments count from nsrun's own start (a loaded machine may take them for Python's)
    world.wait_for(lambda: world.holds_signals(proc.pid), timeout=20, what="nsrun's entry point")
    time.sleep(max(0.0, moment - (time.monotonic() - started)))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGINT
    assert "Traceback" not in err
    world.wait_for(lambda: _without_logbook(world.snapshot()) == before, what="nothing left")
    assert json.loads(world.nsrun("ls", "--json").stdout) == []


def test_sigterm_right_after_the_command_ended_keeps_its_status(world: World) -> None:
    for _ in range(5):
        proc = world.popen(sys.executable, "-m", "nsrun", "--", "true")
        time.sleep(0.35)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode in (0, -signal.SIGTERM)  # 0 once the command ended; never 143


def test_python_api_and_its_callers_children(world: World, tmp_path: Path) -> None:
    script = tmp_path / "api.py"
    script.write_text(
        textwrap.dedent(f"""
        import socket, subprocess, sys, threading
        from nsrun import Sandbox
        REDIS = {REDIS!r}
        keep = subprocess.Popen(["sleep", "60"])  # the caller's own child
        with Sandbox([{SYSTEM_PYTHON!r}, "-c", REDIS], name="cache", publish=[6379], env={{"A": "1"}}) as redis:
            redis.wait_for_port(6379)
            redis.wait_for_log("Ready")
            c = socket.create_connection(("127.0.0.1", redis.host_port(6379))); c.sendall(b"PING\\n")
            print(c.recv(10).decode().strip())
            print(redis.exec(["sh", "-c", "echo $A; hostname"]).stdout.decode().split())
            print(redis.address is not None, redis.pid > 0)
        print(redis.returncode, keep.poll() is None)
        results = []
        def serve(i):
            with Sandbox(["sh", "-c", "echo up; sleep 0.5"], name=f"t{{i}}") as sb:
                sb.wait_for_log("up"); results.append(sb.address)
        threads = [threading.Thread(target=serve, args=(i,)) for i in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print(len(set(results)), keep.poll() is None)
        keep.kill()
        """)
    )
    result = world.run(sys.executable, str(script), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["+PONG", "['1', 'cache']", "True True", "-15 True", "4 True"]
    assert not [n for n in world.links() if n.startswith("nsv")]


def test_exec_of_the_api_says_what_subprocess_would(world: World, tmp_path: Path) -> None:
    """Sandbox.exec: a command that is not found says so on its stderr (127), a timeout names the
    command that timed out (not nsrun's shim), and a bad pattern to wait for is a UsageError."""
    script = tmp_path / "api.py"
    script.write_text(
        textwrap.dedent("""
        import subprocess
        from nsrun import Sandbox, UsageError
        with Sandbox(["sleep", "60"]) as box:
            missing = box.exec(["no-such-command"])
            print(missing.returncode, missing.stderr.decode().strip())
            try:
                box.exec(["sleep", "5"], timeout=0.5)
            except subprocess.TimeoutExpired as expired:
                print(expired.cmd)
            try:
                box.wait_for_log("(", timeout=1)
            except UsageError as err:
                print(str(err).split(":")[0])
            try:
                box.send_signal(999)
            except UsageError as err:
                print(str(err).split(":")[0])
            from nsrun.process import wire
            wire.send(box._control, {"op": "signal", "signal": 999})  # its shim takes no harm either
            print(box.exec(["true"]).returncode, box.returncode)
            box.send_signal("TERM")
            print(box.wait(timeout=10))
        from nsrun import SandboxExitedError
        try:
            box.exec(["true"])
        except SandboxExitedError as err:
            print(str(err).split(": ", 1)[1].split(" (")[0])
        """)
    )
    result = world.run(sys.executable, str(script), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "127 nsrun: running 'no-such-command': command not found (check its name and PATH)",
        "['sleep', '5']",
        "invalid pattern '('",
        "invalid signal 999",
        "0 None",
        "-15",
        "it has ended",  # exec once it ended
    ]
    assert not [n for n in world.links() if n.startswith("nsv")]


def test_networks_from_python(world: World, tmp_path: Path) -> None:
    """nsrun.Network: create, ensure (which refuses an existing network that is not what it asks
    for), get, list, remove; wrong types are UsageErrors; a sandbox on it gets its subnet."""
    script = tmp_path / "networks.py"
    script.write_text(
        textwrap.dedent("""
        from nsrun import ConflictError, Network, NotFoundError, Sandbox, UsageError
        KINDS = (ConflictError, NotFoundError, UsageError)
        def said(call):
            try:
                call()
            except KINDS as err:
                return next(kind.__name__ for kind in KINDS if isinstance(err, kind))
            return "nothing"
        lab = Network.create("lab", subnet="10.123.0.0/24")
        print(lab.subnet, lab.gateway)
        print(said(lambda: Network.create("lab", subnet="10.124.0.0/24")))
        print(Network.ensure("lab", subnet="10.123.0.0/24") == lab, Network.ensure("lab") == lab)
        print(said(lambda: Network.ensure("lab", subnet="10.125.0.0/24")))
        print(said(lambda: Network.ensure("lab", internal=True)))
        print(said(lambda: Network.create("x", subnet=123)), said(lambda: Network.create(None)))
        print(Network.ensure("other", subnet="10.126.0.0/24").subnet)
        print(sorted(n.name for n in Network.list()), Network.get("missing"))
        with Sandbox(["sleep", "30"], network="lab") as box:
            print(box.address.startswith("10.123.0."))
            print(said(lambda: Network.remove("lab")))
        Network.remove("lab")
        Network.remove("other")
        print(said(lambda: Network.remove("lab")), Network.list())
        """)
    )
    result = world.run(sys.executable, str(script), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "10.123.0.0/24 10.123.0.1",
        "ConflictError",
        "True True",
        "ConflictError",
        "ConflictError",
        "UsageError UsageError",
        "10.126.0.0/24",
        "['lab', 'other'] None",
        "True",
        "ConflictError",
        "NotFoundError []",
    ]
    after = world.snapshot()  # the networks went with their bridges and rules
    assert not [link for link in after["links"] if link.startswith(("nsbr-", "nsv"))]
    assert "nsrun:lab" not in after["nft"] + after["legacy"]
    assert "nsrun:other" not in after["nft"] + after["legacy"]
    assert "/networks/" not in after["files"]


FIXTURE_TESTS = """
import socket, subprocess
import pytest
KEEP = subprocess.Popen(["sleep", "120"])  # started by the suite beforehand

@pytest.mark.parametrize("i", [1, 2])
def test_server(nsrun_sandbox, i):
    redis = nsrun_sandbox(["{python}", "-c", {redis!r}], name="cache", publish=[6379], wait_port=6379)
    c = socket.create_connection(("127.0.0.1", redis.host_port(6379))); c.sendall(b"PING\\n")
    assert c.recv(10) == b"+PONG\\n"
    assert redis.name.startswith("cache-gw")

def test_suite_child_alive():
    assert KEEP.poll() is None
"""


def test_pytest_fixture_under_xdist(world: World, tmp_path: Path) -> None:
    (tmp_path / "test_servers.py").write_text(FIXTURE_TESTS.format(python=SYSTEM_PYTHON, redis=REDIS))
    result = world.run(
        sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
        str(tmp_path / "test_servers.py"), timeout=180, cwd=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert not [n for n in world.links() if n.startswith("nsv")]


def test_pytest_fixture_reports_a_server_that_died(world: World, tmp_path: Path) -> None:
    (tmp_path / "test_dies.py").write_text(
        "def test_dies(nsrun_sandbox):\n"
        "    sb = nsrun_sandbox(['sh', '-c', 'echo last words; exit 3'])\n"
        "    sb.wait()\n"
    )
    result = world.run(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_dies.py"),
        timeout=120, cwd=str(tmp_path),
    )  # fmt: skip
    assert result.returncode != 0
    assert "died with 3" in result.stdout
    assert "last words" in result.stdout


def test_detached_sandbox_survives_its_caller_and_kill_9_of_its_shim_leaks_nothing(world: World) -> None:
    duration = world.unique(303)
    assert world.nsrun("-d", "--name", "bg", "--", "sh", "-c", f"sleep {duration} & wait").returncode == 0
    record = json.loads(world.nsrun("ls", "--json").stdout)[0]
    assert world.pids_running(f"sleep {duration}")
    subprocess.run(["kill", "-9", str(record["pid"])], check=True)  # the shim, as an OOM killer would
    world.wait_for(lambda: not world.pids_running(f"sleep {duration}"), what="the sandbox to die with its shim")
    assert json.loads(world.nsrun("ls", "--json").stdout) == []  # reclaimed
    assert world.nsrun("--", "true").returncode == 0
    world.wait_for(lambda: not [n for n in world.links() if n.startswith("nsv")], what="no veth left")
