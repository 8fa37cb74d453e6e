"""`nsrun.Pool`: sandboxes made ahead, handed out to `Sandbox(..., pool=pool)`, in a private
world: their commands get their own options and reach the wan through NAT, what a pool holds
goes with `close()` or with its program, and a spare that died is not handed out."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.world import PEER_CLIENT, SYSTEM_PYTHON, UPLINK_ADDRESS, WAN_ADDRESS

if TYPE_CHECKING:
    from tests.world import World

pytestmark = pytest.mark.privileged

SPARE = "(pool spare)"
SHIM = "nsrun.process.shim_main"  # in the command line of a shim, and of an init it forked ahead


def _records(world: World) -> list[dict[str, object]]:
    records: list[dict[str, object]] = json.loads(world.nsrun("ls", "--json").stdout)
    return records


def _state(pid: str) -> str:
    """A process's state letter (R, S, T, Z...), from /proc/PID/stat."""
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    return "gone"


def _without(snapshot: dict[str, Any], sandbox_ids: list[str]) -> dict[str, Any]:
    lines = snapshot["files"].splitlines(keepends=True)
    return snapshot | {"files": "".join(line for line in lines if not any(i in line for i in sandbox_ids))}


def test_pooled_sandboxes_run_with_their_own_options_reach_the_wan_and_leave_nothing(
    world: World, tmp_path: Path
) -> None:
    assert world.nsrun("--", "true").returncode == 0  # the default network exists before the snapshot
    before = world.snapshot()
    server = world.wan_server(8080)
    script = tmp_path / "pool.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, subprocess, sys, time
        from nsrun import Pool, Sandbox
        def spares():
            argv = [sys.executable, "-m", "nsrun", "ls", "--json"]
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            return sorted(r["command"][0] for r in json.loads(out))
        with Pool(size=2) as pool:
            while pool.ready < 2:
                time.sleep(0.05)
            print(spares())
            peer = Sandbox([{SYSTEM_PYTHON!r}, "-c", {PEER_CLIENT!r}, {WAN_ADDRESS!r}, "8080"], pool=pool)
            print(peer.start().wait(), peer.logs().strip())
            with Sandbox(["sleep", "60"], pool=pool, env={{"A": "1"}}, user="nobody", workdir="/tmp") as sb:
                print(sb.name == sb.id, sb.address is not None)
                print(sb.exec(["sh", "-c", "echo $A $(id -un) $(pwd) $(hostname)"]).stdout.decode().split())
                print(spares())
            print(sb.returncode)
            while pool.ready < 2:
                time.sleep(0.05)
        print(spares())
        print(peer.id, sb.id)
        """)
    )
    result = world.run(sys.executable, str(script), timeout=120)
    server.kill()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str([SPARE, SPARE])  # two made ahead, shown as such
    assert lines[1] == f"0 {UPLINK_ADDRESS}"  # its command ran, NATed to the wan
    assert lines[2] == "True True"  # named by its id, with an address of the network
    words = eval(lines[3])  # noqa: S307  # a list this test printed
    assert words[:3] == ["1", "nobody", "/tmp"]  # exec joins with the command's user, env and workdir
    assert len(words) == 4  # the hostname: its id
    commands = eval(lines[4])  # noqa: S307
    assert "sleep" in commands  # the taken one is a sandbox of its own now; the others wait
    assert set(commands) - {"sleep"} == {SPARE}
    assert lines[5] == "-15"
    assert lines[6] == "[]"  # close() took the spares down
    assert not world.own_pids(SHIM)  # no spare's shim, nor its init forked ahead, is left
    handed_out = lines[7].split()  # their logs and exit statuses are kept, as any sandbox's
    world.wait_for(lambda: _without(world.snapshot(), handed_out) == before, what="the pool to leave nothing")


def test_killed_spares_are_passed_over_and_a_killed_program_leaks_nothing(world: World, tmp_path: Path) -> None:
    assert world.nsrun("--", "true").returncode == 0
    before = world.snapshot()
    script = tmp_path / "pool.py"
    script.write_text(
        textwrap.dedent("""
        import sys, time
        from nsrun import Pool, Sandbox
        pool = Pool(size=2).open()
        while pool.ready < 2:
            time.sleep(0.05)
        print("ready", flush=True)
        sys.stdin.readline()  # the test kills one spare's shim, and stops the other's
        for code in (7, 8):
            sandbox = Sandbox(["sh", "-c", f"exit {code}"], pool=pool)
            print(sandbox.start().wait(), sandbox.id, flush=True)
        time.sleep(600)  # killed by the test, its pool still open
        """)
    )
    program = world.popen(sys.executable, str(script), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert program.stdout is not None
    assert program.stdin is not None
    assert program.stdout.readline().strip() == "ready"
    spares = _records(world)
    assert [r["command"] for r in spares] == [[SPARE], [SPARE]]
    killed, stopped = (str(record["pid"]) for record in spares)
    subprocess.run(["kill", "-9", killed], check=True)  # a spare's shim, as an OOM killer would
    subprocess.run(["kill", "-STOP", stopped], check=True)  # one that dies once it is handed its plan
    # a signal is delivered, not yet acted on, when kill(1) returns: a spare taken while its shim
    # is still dying is a launch that fails (or is killed) as it starts, not one passed over
    world.wait_for(lambda: _state(killed) in ("Z", "gone"), what="the killed shim to be dead (its parent reaps it)")
    world.wait_for(lambda: _state(stopped) == "T", what="the stopped shim to be stopped")
    program.stdin.write("go\n")
    program.stdin.flush()
    # the first spare is passed over (its command's process died with its shim); the second's
    # command was given its plan without its shim, and started: it ends when the shim is killed
    first = ["sh", "-c", "exit 7"]
    world.wait_for(lambda: first in [r["command"] for r in _records(world)], what="the stopped spare to be taken")
    subprocess.run(["kill", "-9", stopped], check=True)
    ended = [program.stdout.readline().split() for _ in range(2)]
    if not all(ended):  # the program ended early: what it said is the failure
        program.kill()
        raise AssertionError(f"the program printed {ended}; its stderr: {program.communicate()[1]}")
    assert [code for code, _ in ended] == ["-9", "8"]
    world.wait_for(lambda: len(_records(world)) == 2, what="the pool to make spares again")
    program.send_signal(signal.SIGKILL)  # the program dies with its pool open: the spares' shims go with it
    program.wait()
    # and the inits forked ahead with them
    world.wait_for(lambda: not world.own_pids(SHIM), what="the spares' shims and inits to end")
    world.wait_for(lambda: _records(world) == [], what="the spares to be reclaimed")
    assert world.nsrun("--", "true").returncode == 0
    handed_out = [sandbox_id for _, sandbox_id in ended]
    world.wait_for(lambda: _without(world.snapshot(), handed_out) == before, what="nothing left of the pool")


def test_nsrun_kill_and_stop_end_a_spare(world: World, tmp_path: Path) -> None:
    """A spare has no init yet: `nsrun kill` said "it has ended" of it; it ends it now, as stop
    does, and the pool passes over it."""
    script = tmp_path / "pool.py"
    script.write_text(
        textwrap.dedent("""
        import sys, time
        from nsrun import Pool, Sandbox
        with Pool(size=2) as pool:
            while pool.ready < 2:
                time.sleep(0.05)
            print("ready", flush=True)
            sys.stdin.readline()
            print(Sandbox(["sh", "-c", "exit 6"], pool=pool).start().wait(), flush=True)
        """)
    )
    program = world.popen(sys.executable, str(script), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert program.stdout is not None
    assert program.stdin is not None
    assert program.stdout.readline().strip() == "ready"
    spares = [str(record["sandbox_id"]) for record in _records(world)]
    for verb, spare in zip(("kill", "stop"), spares, strict=True):
        result = world.nsrun(verb, spare)
        assert result.returncode == 0, result.stderr
    world.wait_for(lambda: not set(spares) & {str(r["sandbox_id"]) for r in _records(world)}, what="both to end")
    program.stdin.write("go\n")
    program.stdin.flush()
    assert program.stdout.readline().strip() == "6"
    assert program.wait(timeout=30) == 0


def test_a_pool_that_cannot_make_sandboxes_says_why_and_leaves_nothing(world: World) -> None:
    before = world.snapshot()
    result = world.run(sys.executable, "-c", "from nsrun import Pool\nwith Pool(network='nosuch'): pass", timeout=60)
    assert result.returncode != 0
    assert "nosuch" in result.stderr.splitlines()[-1]
    assert world.snapshot() == before


BROKEN_SHIM = """
import sys
from nsrun import NsrunError, Sandbox
from nsrun.api import prepared
# a shim that cannot start (a broken installation): it says so and ends before taking its plan
prepared.shim_command = lambda control, ahead=False: [sys.executable, "-c", "raise SystemExit('broken nsrun')"]
try:
    Sandbox(["true"]).start()
except NsrunError as err:
    print(err)
"""


def test_a_shim_that_ends_before_its_plan_says_why_and_leaves_nothing(world: World) -> None:
    assert world.nsrun("--", "true").returncode == 0
    before = world.snapshot()
    result = world.run(sys.executable, "-c", BROKEN_SHIM, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ended before the command started" in result.stdout
    assert "broken nsrun" in result.stdout  # what it said, though its log is gone with the failed start
    assert world.snapshot() == before


def _volume_and_scratch(tmp_path: Path) -> tuple[Path, Path]:
    """A directory to mount as a volume (holding `note`), and an empty one for a tmpfs."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note").write_text("from the host\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return shared, scratch


def test_a_spares_view_made_ahead_takes_the_commands_own_mounts(world: World, tmp_path: Path) -> None:
    # a spare's init builds its view (/proc, /sys, /dev, /etc files) while it waits: a command's
    # tmpfs go on top of it; with volumes (their sources opened as the host sees them) or
    # --read-only, it is built anew
    shared, scratch = _volume_and_scratch(tmp_path)
    script = tmp_path / "views.py"
    script.write_text(
        textwrap.dedent(f"""
        import time
        from nsrun import Pool, Sandbox
        from nsrun.errors import CommandError
        def run(*argv, **options):
            sandbox = Sandbox(list(argv), pool=pool, **options)
            code = sandbox.start().wait()
            return code, sandbox.logs()
        with Pool(size=2) as pool:
            while pool.ready < 2:
                time.sleep(0.05)
            print(run("sh", "-c", "cat /srv/note; ls /dev | wc -l", volumes=["{shared}:/srv:ro"]))
            print(run("sh", "-c", "touch /x 2>/dev/null || echo read-only; touch /tmp/y && echo tmp; cat /etc/hostname",
                      read_only=True))
            print(run("sh", "-c", "ls /dev | wc -l; touch /srv/x 2>/dev/null || echo ro", volumes=["{shared}:/srv:ro"],
                      tmpfs=["{scratch}"]))
            print(run("sh", "-c", "touch {scratch}/z && echo scratch; ls /dev | wc -l; hostname", tmpfs=["{scratch}"]))
            try:
                Sandbox(["no-such-command"], pool=pool).start()
            except CommandError as err:
                print((err.exit_code, str(err)))
        """)
    )
    result = world.run(sys.executable, str(script), timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [eval(line) for line in result.stdout.splitlines()]  # noqa: S307  # tuples this test printed
    code, out = lines[0]
    assert code == 0
    assert out.splitlines()[0] == "from the host"
    assert int(out.split()[-1]) < 20  # the private /dev, not the host's
    code, out = lines[1]
    assert code == 0
    assert out.split()[:2] == ["read-only", "tmp"]
    assert len(out.split()) == 3  # its hostname, from its /etc files
    code, out = lines[2]
    assert code == 0
    assert int(out.split()[0]) < 20  # the private /dev, not the host's
    assert out.split()[1] == "ro"
    code, out = lines[3]
    assert code == 0
    words = out.split()
    assert words[0] == "scratch"
    assert int(words[1]) < 20  # the view made ahead, under the tmpfs added
    assert len(words) == 3  # its hostname
    assert not (scratch / "z").exists()  # written to the sandbox's own tmpfs
    code, message = lines[4]  # from the command's process forked ahead
    assert code == 127
    assert message.endswith("command not found (check its name and PATH)")


VICTIM = """
from nsrun import Sandbox
print(Sandbox(["sleep", "600"]).start().id, flush=True)
import time; time.sleep(600)
"""
LAUNCH = "from nsrun import Sandbox; raise SystemExit(Sandbox(['true']).start().wait())"


def test_a_launch_reclaims_what_dead_sandboxes_left_at_most_once_a_second(world: World) -> None:
    # reclaiming reads every record and lease: a launch does it only if the last reclaim is a
    # second old, so that it costs the same however many sandboxes are alive
    victim = world.popen(sys.executable, "-c", VICTIM)
    assert victim.stdout is not None
    record = f"/run/nsrun/sandboxes/{victim.stdout.readline().strip()}.json"
    victim.kill()  # its shim ends with it, and leaves its record and lease stale
    victim.wait()
    world.wait_for(lambda: not world.own_pids(SHIM), what="the dead program's shim to end")
    stamp = "/run/nsrun/reclaim.lock"
    assert world.run("touch", stamp).returncode == 0  # a reclaim just began
    assert world.run(sys.executable, "-c", LAUNCH).returncode == 0
    assert world.run("test", "-e", record).returncode == 0  # left for the next reclaim
    assert world.run("touch", "-d", "-2 seconds", stamp).returncode == 0
    assert world.run(sys.executable, "-c", LAUNCH).returncode == 0
    assert world.run("test", "-e", record).returncode != 0  # reclaimed on the way


EXEC_INTO = """
import sys, time
from nsrun import Pool, Sandbox
with Pool(size=2) as pool:
    while pool.ready < 2:
        time.sleep(0.05)
    kept = Sandbox(["sh", "-c", "touch {scratch}/mark; exec sleep 600"], pool=pool, tmpfs=["{scratch}"]).start()
    anew = Sandbox(["sleep", "600"], pool=pool, volumes=["{shared}:/srv:ro"]).start()
    print(kept.id, anew.id, flush=True)
    sys.stdin.read()
    kept.stop(timeout=1)
    anew.stop(timeout=1)
"""


def test_exec_enters_the_view_a_pooled_command_runs_in(world: World, tmp_path: Path) -> None:
    # a spare's init reports its namespaces once its view made ahead stands; a command whose view
    # is built anew (volumes) has those reported again: `nsrun exec` must enter the command's
    shared, scratch = _volume_and_scratch(tmp_path)
    program = world.popen(sys.executable, "-c", EXEC_INTO.format(scratch=scratch, shared=shared), stdin=subprocess.PIPE)
    assert program.stdout is not None
    kept, anew = program.stdout.readline().split()
    try:
        world.wait_for(
            lambda: world.nsrun("exec", kept, "--", "test", "-e", f"{scratch}/mark").returncode == 0,
            what="the command's mark in its own tmpfs",
        )
        seen = world.nsrun("exec", anew, "--", "cat", "/srv/note")
        assert (seen.returncode, seen.stdout) == (0, "from the host\n"), seen.stderr
        assert world.nsrun("exec", kept, "--", "test", "-e", "/srv/note").returncode == 1  # no volume there
        assert not (scratch / "mark").exists()  # the host's directory: the sandbox wrote to its tmpfs
    finally:
        program.communicate("", timeout=30)
    assert program.returncode == 0


ENDS_WHOLE = """
import os, time
from nsrun import Pool, Sandbox
with Pool(size=1) as pool:
    for argv in (["true"], ["sh", "-c", "trap '' TERM; sleep {duration} & exit 3"]):
        sandbox = Sandbox(argv, pool=pool).start()
        init, shim = sandbox._started["init_pid"], sandbox._shim.pid  # as the shim said
        code = sandbox.wait()
        init_gone = not os.path.exists(f"/proc/{{init}}")
        deadline = time.monotonic() + 5  # the shim, told it is done, exits and is reaped meanwhile
        while os.path.exists(f"/proc/{{shim}}") and time.monotonic() < deadline:
            time.sleep(0.01)
        print(code, [init_gone, not os.path.exists(f"/proc/{{shim}}")], flush=True)
"""


def test_a_pooled_sandbox_is_whole_gone_when_wait_returns(world: World) -> None:
    # the shim reports the end as soon as nothing but the init is left, and the teardown goes on
    # while the init exits: wait() still returns only once the init is gone too (the shim, told
    # it is done, is reaped as it exits)
    duration = world.unique(307)
    result = world.run(sys.executable, "-c", ENDS_WHOLE.format(duration=duration), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0 [True, True]", "3 [True, True]"]
    assert not world.pids_running(f"sleep {duration}")  # the leftover that ignored SIGTERM too


CONFINED_ALIKE = """
import time
from nsrun import Pool, Sandbox
STATUS = "grep -E '^(Uid|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status"
# the shell counts the processes it sees with a glob, its own builtin: a pipeline would race its
# own forks (ls may list /proc before grep exists)
PROBE = ["sh", "-c", STATUS + "; cat /proc/1/comm; set -- /proc/[0-9]*; echo $#"]
def run(**options):
    sandbox = Sandbox(PROBE, **options)
    assert sandbox.start().wait() == 0
    return sandbox.logs()
with Pool(size=2) as pool:
    while pool.ready < 2:
        time.sleep(0.05)
    for options in ({}, {"user": "nobody"}, {"cap_add": ["NET_ADMIN"]}):
        print(repr((run(**options), run(pool=pool, **options))))
"""


def test_a_pooled_command_is_confined_as_one_set_up_at_once(world: World) -> None:
    # a pooled command whose view was made ahead gets its plan from the shim itself, in the
    # process forked ahead: its user, capabilities, no_new_privs, seccomp filter, init and PID
    # namespace are those a sandbox set up at once gives
    result = world.run(sys.executable, "-c", CONFINED_ALIKE, timeout=120)
    assert result.returncode == 0, result.stderr
    pairs = [eval(line) for line in result.stdout.splitlines()]  # noqa: S307  # tuples this test printed
    assert len(pairs) == 3
    for own, pooled in pairs:
        assert pooled == own
        assert "Seccomp:\t2" in pooled
        assert "NoNewPrivs:\t1" in pooled
        assert pooled.split()[-2:] == ["nsrun-init", "2"]  # PID 1 and sh: its own PID namespace
    assert "CapEff:\t0000000000000000" in pairs[1][1]  # nobody holds none
    assert pairs[2][1] != pairs[0][1]  # NET_ADMIN added


GIVEN_DIRECTLY = """
import os, sys, time
from nsrun import Pool, Sandbox
from nsrun.errors import CommandError
def open_fds():
    return len(os.listdir("/proc/self/fd"))
with Pool(size=2) as pool:
    def settled():
        while pool.ready < 2:
            time.sleep(0.05)
        time.sleep(0.2)
        return open_fds()
    before = settled()
    for _ in range(10):
        Sandbox(["true"], pool=pool).start().wait()
    print(settled() - before, flush=True)  # what ten launches left open in this process
    listing = Sandbox(["ls", "/proc/self/fd"], pool=pool)
    print(listing.start().wait(), listing.logs().split(), flush=True)
    for argv in (["/etc/hostname"], ["no-such-command"]):
        try:
            Sandbox(argv, pool=pool).start()
        except CommandError as err:
            print(err.exit_code, flush=True)
    trapped = Sandbox(["sh", "-c", "trap 'exit 7' TERM; echo up; while :; do sleep 0.05; done"], pool=pool).start()
    trapped.wait_for_log("up")
    print(trapped.id, flush=True)
    sys.stdin.readline()
    print(trapped.stop(timeout=5), flush=True)
"""


def test_a_command_given_its_plan_directly_is_as_one_the_init_starts(world: World) -> None:
    # a plan of the view made ahead goes from the caller to the command's process forked there;
    # nothing of nsrun's reaches the command, the caller keeps nothing open, exec failures say
    # why, and the command is joined and signalled through its init as any other
    program = world.popen(sys.executable, "-c", GIVEN_DIRECTLY, stdin=subprocess.PIPE)
    assert program.stdout is not None
    lines = [program.stdout.readline().strip() for _ in range(5)]
    assert lines[0] == "0"  # no descriptor left behind by ten launches
    assert lines[1] == "0 ['0', '1', '2', '3']"  # its stdio, and ls's own listing of the directory
    assert lines[2:4] == ["126", "127"]  # not executable; not found
    sandbox_id = lines[4]
    joined = world.nsrun("exec", sandbox_id, "--", "cat", "/proc/1/comm")
    assert (joined.returncode, joined.stdout) == (0, "nsrun-init\n"), joined.stderr
    out, _ = program.communicate("\n", timeout=30)
    assert out.strip() == "7"  # SIGTERM reached its trap through the shim and the init
    assert program.returncode == 0
