"""The warm helper: launches go through it once it runs, and every way it can be missing, broken,
stale, of another version or killed still ends in a launch that works (or fails cleanly) and
leaves nothing. Each test in its own world, where the helper is the world's own."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nsrun.helper.server import SPARES
from tests.world import SYSTEM_PYTHON

if TYPE_CHECKING:
    import subprocess

    from tests.world import World

pytestmark = pytest.mark.privileged


def start_helper(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0  # the first launch runs in-process, then starts it
    world.wait_for(world.helper_running, what="the helper")


def running(world: World, marker: str) -> dict[str, object] | None:
    """The record of the sandbox whose command (`marker`) runs, once it does."""
    sandboxes = json.loads(world.nsrun("ls", "--json").stdout)
    return next((s for s in sandboxes if marker == " ".join(s["command"]) and s["child_pid"]), None)


def client_maps(world: World, marker: str) -> str:
    """The memory map of the nsrun process (the client) whose sandbox runs `marker`."""
    world.wait_for(lambda: running(world, marker), what=marker)
    record = running(world, marker)
    assert record is not None
    return Path(f"/proc/{record['pid']}/maps").read_text()


def test_a_launch_goes_through_the_helper_once_it_runs(world: World) -> None:
    assert not world.helper_running()
    start_helper(world)
    proc = world.nsrun_popen("--", "sleep", "30.101")
    # the client is a thin one: the set-up (which loads libnftables) was the helper's
    assert "libnftables" not in client_maps(world, "sleep 30.101")
    world.env["NSRUN_HELPER"] = "off"
    in_process = world.nsrun_popen("--", "sleep", "30.102")
    assert "libnftables" in client_maps(world, "sleep 30.102")
    in_process.send_signal(signal.SIGTERM)
    in_process.wait(timeout=20)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    world.wait_for(lambda: not [n for n in world.links() if n.startswith("nsv")], what="no veth")


def test_the_helper_path_does_what_the_in_process_path_does(world: World) -> None:
    start_helper(world)
    server = world.wan_server()
    results = {}
    for helper in ("on", "off"):
        world.env["NSRUN_HELPER"] = helper
        result = world.nsrun("--", *world.client_argv())
        assert result.returncode == 0, result.stderr
        results[helper] = result.stdout.strip()
        assert world.nsrun("--", "sh", "-c", "exit 7").returncode == 7
        assert world.nsrun("--name", "n1", "--", "hostname").stdout.strip() == "n1"
    assert results["on"] == results["off"] == "203.0.113.1"  # masqueraded behind the uplink
    server.kill()


def test_with_the_helper_off_none_is_started(world: World) -> None:
    world.env["NSRUN_HELPER"] = "off"
    for _ in range(2):
        assert world.nsrun("--", "true").returncode == 0
    time.sleep(0.5)
    assert not world.helper_running()
    assert not world.helper_pids()


def test_bad_input_starts_no_helper(world: World) -> None:
    assert world.nsrun("--ip", "192.0.2.5", "--", "true").returncode == 2
    assert world.nsrun("--net", "bogus", "--", "true").returncode == 2
    assert world.nsrun("network", "ls").returncode == 0  # not a launch
    time.sleep(0.5)
    assert not world.helper_running()
    assert not world.helper_pids()


def test_a_stale_socket_is_replaced(world: World) -> None:
    # a helper that died by SIGKILL leaves its socket file behind
    world.run("mkdir", "-p", "/run/nsrun")
    stale = "import socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.bind('/run/nsrun/helper.sock')"
    assert world.run(sys.executable, "-c", stale).returncode == 0
    assert world.run("test", "-S", "/run/nsrun/helper.sock").returncode == 0
    assert world.nsrun("--", "true").returncode == 0  # nobody answers: in-process
    world.wait_for(lambda: bool(world.helper_pids()), what="a new helper")
    assert world.nsrun("--", "true").returncode == 0


def test_a_helper_of_another_version_is_not_used_and_retires(world: World, host_dir: Path) -> None:
    # the same code from another place is another nsrun as far as the helper check goes
    other = host_dir / "other"
    shutil.copytree(Path(__file__).resolve().parents[2] / "nsrun", other / "nsrun")
    boot = (
        f"import sys, runpy; sys.path.insert(0, {str(other)!r}); runpy.run_module('nsrun.helper', run_name='__main__')"
    )
    old = world.popen(sys.executable, "-c", boot, env=world.env | {"NSRUN_HELPER_IDLE": "600"})
    world.wait_for(world.helper_running, what="the other helper")
    result = world.nsrun("--", "sh", "-c", "echo ran")
    assert result.returncode == 0
    assert result.stdout == "ran\n"
    old.wait(timeout=20)  # told it is not current, it leaves at once
    world.wait_for(lambda: bool(world.helper_pids()), what="a current helper")


@pytest.mark.parametrize("moment", [0.0, 0.01, 0.02, 0.04])
def test_a_helper_killed_mid_launch_leaves_nothing(world: World, moment: float) -> None:
    start_helper(world)
    assert world.nsrun("--", "true").returncode == 0
    before = world.snapshot()
    proc = world.nsrun_popen("--", "sh", "-c", "echo ran")
    time.sleep(moment)
    for pid in world.helper_pids():  # the helper and its workers
        with contextlib.suppress(ProcessLookupError):  # a worker whose job ended meanwhile
            os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err  # the launch still succeeds: in-process if it must
    assert out == "ran\n"
    assert "Traceback" not in err
    # the fallback started a helper: through it, a launch is followed by a reclaim in the
    # background (in-process, at most one a second reclaims, and this one may come sooner)
    world.wait_for(world.helper_running, what="the new helper")
    assert world.nsrun("--", "true").returncode == 0  # reclaims whatever a killed worker left
    try:
        world.wait_for(lambda: world.snapshot() == before, what="nothing left")
    except AssertionError:
        after = world.snapshot()
        raise AssertionError({k: (before[k], after[k]) for k in before if before[k] != after[k]}) from None


def test_a_worker_killed_while_exec_runs_is_not_run_again(world: World, tmp_path: Path) -> None:
    """A subcommand the helper's worker ran may have acted (exec's command ran): if the worker
    dies before it answers, the client says so and does not run the command line again (as it
    does a launch, whose command had not run)."""
    start_helper(world)
    assert world.nsrun("-d", "--name", "w", "--", "sleep", world.unique(300)).returncode == 0
    ran = tmp_path / "ran"
    proc = world.nsrun_popen("exec", "w", "--", "sh", "-c", f"echo ran >> {ran}; exec sleep 60 >/dev/null 2>&1")
    world.wait_for(ran.exists, what="exec's command to run")
    for pid in world.helper_pids():  # the helper and its workers
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 125
    assert err.count("\n") == 1, err
    assert "ended before it answered" in err
    assert ran.read_text() == "ran\n"  # once
    assert world.nsrun("stop", "-t", "0", "w").returncode == 0


def test_a_client_killed_is_torn_down_by_the_helper(world: World) -> None:
    start_helper(world)
    assert world.nsrun("-p", "8080", "--", "true").returncode == 0  # the ports chain, made once
    before = world.snapshot()
    duration = world.unique(60)
    proc = world.nsrun_popen("-p", "8080", "--", "sleep", duration)
    world.wait_for(lambda: len(json.loads(world.nsrun("ls", "--json").stdout)) == 1, what="the sandbox")
    os.kill(proc.pid, signal.SIGKILL)  # nsenter execs nsrun: this is nsrun itself
    proc.wait()
    # no other nsrun runs: the helper saw the connection drop and tore the sandbox down
    try:
        world.wait_for(lambda: world.snapshot() == before, what="nothing left")
    except AssertionError:
        after = world.snapshot()
        raise AssertionError({k: (before[k], after[k]) for k in before if before[k] != after[k]}) from None
    assert not world.pids_running(f"sleep {duration}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_helper_that_takes_nothing_is_passed_over_and_runs_nothing_later(world: World, host_dir: Path) -> None:
    """A helper stopped (or hung) before it takes a request: the command line runs in-process
    after TAKEN_WAIT, its output ends with nsrun (the request held none of its descriptors), a
    signal meanwhile ends nsrun at once, and once the helper goes on it runs none of them."""
    import subprocess

    from nsrun.helper.client import TAKEN_WAIT

    start_helper(world)
    before = world.snapshot()
    ran, never = host_dir / "ran", host_dir / "never"
    main = world.helper_main()
    os.kill(main, signal.SIGSTOP)
    try:
        proc = world.nsrun_popen("--", "sh", "-c", f"echo x >> {ran}; echo out", stdout=subprocess.PIPE)
        out, err = proc.communicate(timeout=TAKEN_WAIT + 20)  # to the end of its output
        assert proc.returncode == 0, err
        assert out == "out\n"
        assert err == (
            f"nsrun: warning: the warm helper (pid {main}) did not take the command within {TAKEN_WAIT:g}s: running it"
            f" in-process (if it stays so, `kill {main}`: the next launch starts another)\n"
        )
        doctor = world.nsrun("doctor").stdout  # itself in-process, after that wait
        line = next(line for line in doctor.splitlines() if "warm helper" in line)
        assert line.startswith("warn"), doctor
        assert f"pid {main} did not answer" in line, doctor
        waiting = world.nsrun_popen("--", "sh", "-c", f"echo x >> {never}")
        time.sleep(1)
        waiting.send_signal(signal.SIGTERM)  # nsenter execs nsrun: this is nsrun itself
        assert waiting.wait(timeout=TAKEN_WAIT - 2) == -signal.SIGTERM
    finally:
        os.kill(main, signal.SIGCONT)
    time.sleep(1)  # it finds both connections closed: it runs neither
    assert world.nsrun("--", "true").returncode == 0  # through it again
    assert lines(ran) == ["x"]
    assert not never.exists()
    world.wait_for(lambda: world.snapshot() == before, what="nothing left")


SILENT_CLIENT = textwrap.dedent("""
    import socket, time
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect("/run/nsrun/helper.sock")
    print("connected", flush=True)
    time.sleep(60)
""")


def test_a_client_that_says_nothing_holds_up_no_other(world: World) -> None:
    start_helper(world)
    silent = world.popen(sys.executable, "-c", SILENT_CLIENT)
    assert silent.stdout is not None
    assert silent.stdout.readline() == "connected\n"
    for _ in range(2):
        result = world.nsrun("--", "echo", "ran")
        assert (result.returncode, result.stdout, result.stderr) == (0, "ran\n", "")  # through the helper, at once
    silent.kill()
    silent.wait()
    assert world.nsrun("--", "true").returncode == 0
    assert len(world.helper_pids()) > 1  # the helper and its spares: it read the end of that connection


HOLD_REGISTRY_LOCK = textwrap.dedent("""
    import fcntl, os, time
    fd = os.open("/run/nsrun/sandboxes.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(60)
""")


def hold_registry_lock(world: World) -> subprocess.Popen[str]:
    """A process that holds the sandbox registry lock (for 60 s, or until killed)."""
    holder = world.popen(sys.executable, "-c", HOLD_REGISTRY_LOCK)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_worker_that_does_not_answer_an_abort_is_left_and_nothing_runs(world: World, host_dir: Path) -> None:
    """The helper took the request, but its worker is stuck (here on the registry lock, which
    another process holds): a signal to nsrun asks it to undo the set-up; unanswered for
    ABORT_WAIT, nsrun dies of the signal, and the worker, once it goes on, finds its client gone
    and starts nothing; nothing is left."""
    from nsrun.helper.client import ABORT_WAIT

    start_helper(world)
    before = world.snapshot()
    never = host_dir / "never"
    holder = hold_registry_lock(world)
    try:
        proc = world.nsrun_popen("--", "sh", "-c", f"echo x >> {never}")
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)  # nsenter execs nsrun: this is nsrun itself
        start = time.monotonic()
        assert proc.wait(timeout=ABORT_WAIT + 10) == -signal.SIGTERM
        assert time.monotonic() - start > ABORT_WAIT - 1  # it asked, and waited for the answer
    finally:
        holder.kill()
    assert world.nsrun("--", "true").returncode == 0  # reclaims whatever the worker left
    world.wait_for(lambda: world.snapshot() == before, what="nothing left")
    assert not never.exists()


def test_a_helper_gone_after_an_abort_ends_nsrun_by_its_signal_at_once(world: World, host_dir: Path) -> None:
    """A signal came during the set-up, and the helper goes away (killed) while nsrun waits for
    its worker to undo it: nsrun undoes what was made in its name itself and dies of the signal,
    without waiting ABORT_WAIT and without running the command line (as it would after a plain
    loss of the helper); nothing is left."""
    from nsrun.helper.client import ABORT_WAIT

    start_helper(world)
    before = world.snapshot()
    never = host_dir / "never"
    holder = hold_registry_lock(world)  # the worker waits for this lock
    try:
        proc = world.nsrun_popen("--", "sh", "-c", f"echo x >> {never}")
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)  # nsenter execs nsrun: this is nsrun itself
        time.sleep(0.5)  # it asked for the undo and waits for the answer
        for pid in world.helper_pids():
            os.kill(pid, signal.SIGKILL)
    finally:
        holder.kill()  # the undo nsrun now does itself needs the lock
    start = time.monotonic()
    assert proc.wait(timeout=ABORT_WAIT + 10) == -signal.SIGTERM
    assert time.monotonic() - start < ABORT_WAIT - 1  # at the helper's end, not after the wait
    world.wait_for(lambda: world.snapshot() == before, what="nothing left")
    assert not never.exists()


def test_the_helper_exits_when_idle(world: World) -> None:
    world.env["NSRUN_HELPER_IDLE"] = "1"
    start_helper(world)
    world.wait_for(lambda: not world.helper_running() and not world.helper_pids(), timeout=15, what="it to exit")
    assert world.nsrun("--", "true").returncode == 0  # in-process again, and a new one starts


def test_doctor_says_whether_the_helper_runs(world: World) -> None:
    assert "warm helper" in world.nsrun("doctor").stdout
    start_helper(world)
    line = next(line for line in world.nsrun("doctor").stdout.splitlines() if "warm helper" in line)
    assert line.startswith("ok")
    assert "pid" in line


CONFINED_CLIENT = textwrap.dedent("""
    import marshal, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect("/run/nsrun/helper.sock")
    request = {"version": sys.argv[1], "argv": ["--privileged", "--", "touch", sys.argv[2]],
               "env": {"PATH": "/usr/bin:/bin"}, "cwd": "/", "umask": 18, "detached": False}
    s.send(marshal.dumps(request))
    answer = marshal.loads(s.recv(65536))
    if "taken" in answer:  # the go-ahead, as nsrun's client gives it
        socket.send_fds(s, [marshal.dumps({"stdio": True})], [0, 1, 2])
        answer = marshal.loads(s.recv(65536))
    print(answer)
""")


def test_a_confined_root_in_a_sandbox_cannot_use_the_helper(world: World, host_dir: Path) -> None:
    start_helper(world)
    version = world.run(
        sys.executable, "-c", "from nsrun.helper.protocol import version; print(version())"
    ).stdout.strip()
    target = host_dir / "escaped"
    # root in a sandbox keeps CAP_DAC_OVERRIDE (Docker's set): the socket's mode alone would let it in
    result = world.nsrun("--", SYSTEM_PYTHON, "-c", CONFINED_CLIENT, version, str(target))
    assert result.returncode == 0, result.stderr
    assert "fallback" in result.stdout
    assert "namespace" in result.stdout  # its own mount and PID namespaces
    time.sleep(0.5)
    assert not target.exists()
    # and nsrun itself, run there, says it needs the host's root
    inner = world.nsrun("--", sys.executable, "-m", "nsrun", "--", "true")
    assert inner.returncode == 125
    assert "CAP_SYS_ADMIN" in inner.stderr


def test_the_output_pipe_ends_with_nsrun(world: World) -> None:
    """What nsrun leaves working after it exits (a reclaim queued after each hand-over) holds none
    of its stdio: a caller reading the command's output to its end is not kept waiting."""
    import select
    import subprocess

    start_helper(world)
    for _ in range(3):
        proc = world.popen(sys.executable, "-m", "nsrun", "--", "echo", "out", stdout=subprocess.PIPE)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None
        assert proc.stdout.readline() == "out\n"
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        assert ready, "something still holds nsrun's stdout"
        assert proc.stdout.read() == ""  # the end of the pipe: no writer is left


def test_a_spare_rehearses_both_jobs_and_changes_nothing(world: World) -> None:
    """A spare worker runs over a launch's and a teardown's code before its job comes (the pages
    it touches are copied then, not during the launch): it must change nothing, beside a running
    sandbox and its filters too, and must not fail silently (its `prepare` hides failures)."""

    def rehearse_changes_nothing() -> None:
        before = world.snapshot()
        result = world.run(sys.executable, "-c", "from nsrun.helper.worker import rehearse; rehearse(); print('ok')")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "ok\n"
        assert world.snapshot() == before

    rehearse_changes_nothing()  # on a fresh host
    assert world.nsrun("-d", "--name", "beside", "--", "sleep", world.unique(300)).returncode == 0
    rehearse_changes_nothing()  # beside a running sandbox, its bridge-port filter and the table
    assert [s["name"] for s in json.loads(world.nsrun("ls", "--json").stdout)] == ["beside"]


def _netns_held(pids: list[int]) -> set[int]:
    """Network namespaces (inodes) that these processes hold open as descriptors."""
    held = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # it ended meanwhile
        for name in names:
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{name}")
                if link.startswith("net:["):
                    held.add(int(link[len("net:[") : -1]))
    return held


def _netns_in_use(inode: int) -> bool:
    """Whether any process on the machine is in, or holds, that network namespace."""
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                return True
    return inode in _netns_held(pids)


def test_a_launch_takes_the_network_namespace_a_spare_made_ahead(world: World) -> None:
    """The spare for command lines makes a launch's namespace while it waits (once its rehearsal
    got through): the launch takes that one, and nothing holds it once the sandbox ended."""
    start_helper(world)
    world_netns = os.stat(f"/proc/{world.pid}/ns/net").st_ino

    def made_ahead() -> set[int]:
        return _netns_held(world.helper_pids()) - {world_netns}

    world.wait_for(made_ahead, what="a namespace made ahead")
    time.sleep(1)  # every spare has long finished its rehearsal
    ahead = made_ahead()
    assert len(ahead) == SPARES[True]  # each spare for command lines made one; those for teardowns none
    result = world.nsrun("--", "readlink", "/proc/self/ns/net")
    assert result.returncode == 0, result.stderr
    taken = int(result.stdout.strip()[len("net:[") : -1])
    assert taken in ahead
    world.wait_for(lambda: not _netns_in_use(taken), what="the namespace gone")
    # one not taken goes with its spare: `--net host` leaves the namespace made ahead unused
    world.wait_for(made_ahead, what="another namespace made ahead")
    unused = made_ahead()
    assert world.nsrun("--net", "host", "--", "true").returncode == 0

    def one_gone() -> bool:  # the other spares keep theirs
        return sum(_netns_in_use(inode) for inode in unused) == len(unused) - 1

    world.wait_for(one_gone, what="the unused namespace gone")


def test_a_detached_sandbox_is_recorded_as_running_once_its_name_is_printed(world: World) -> None:
    """ "started" is not waited for while the command runs, but the nsrun that detached a sandbox
    prints its name only once the record says it runs: what comes next may join it."""
    start_helper(world)
    for attempt in range(5):
        name = f"joinable{attempt}"
        assert world.nsrun("-d", "--name", name, "--", "sleep", world.unique(300)).returncode == 0
        # read at once, from outside (an `nsrun ls` would take long enough to hide a race)
        records = Path(f"/proc/{world.pid}/root/run/nsrun/sandboxes")
        texts = [path.read_text() for path in records.glob("*.json")]
        record = next(data for text in texts if (data := json.loads(text))["name"] == name)
        assert record["child_pid"]
        joined = world.nsrun("exec", name, "--", "true")
        assert joined.returncode == 0, joined.stderr


def test_a_set_up_failing_after_the_hand_over_runs_nothing_and_leaves_nothing(world: World) -> None:
    """The client gets the sandbox's plan before its network is set up (an early hand-over): a
    failure after that point (here the host routes the network's subnet elsewhere, which only the
    host side's check finds) is said once, and the command, ready to exec, never runs."""
    start_helper(world)
    subnet = json.loads(world.nsrun("network", "inspect", "nsrun").stdout)["subnet"]
    vpn = str(ipaddress.IPv4Network(subnet).supernet(new_prefix=16))  # a VPN's route over it
    assert world.run("ip", "route", "add", vpn, "via", "203.0.113.10", "dev", "uplink").returncode == 0
    before = world.snapshot()
    result = world.nsrun("--", "sh", "-c", "echo ran")
    assert result.returncode == 125
    assert result.stdout == ""  # it never ran
    assert "now overlaps" in result.stderr
    assert result.stderr.count("\n") == 1
    assert world.snapshot() == before


def test_the_command_starts_with_its_network_complete(world: World) -> None:
    """Through the helper the command's side is ready first and waits: its first look at the
    network finds its address and its default route, every time."""
    start_helper(world)
    for _ in range(5):
        result = world.nsrun("--", "sh", "-c", "ip -4 -o addr show dev eth0; ip -4 route show default")
        assert result.returncode == 0, result.stderr
        assert " inet " in result.stdout
        assert "default via" in result.stdout
