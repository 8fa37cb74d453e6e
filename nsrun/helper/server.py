"""The helper daemon: accepts root's connections on /run/nsrun/helper.sock, hands each request to
a worker, and watches the connections of clients that run sandboxes it set up: their "started"
(the record is updated here, it is quick), their "ended" or their death (a worker tears down).

Workers are forked ahead of need ("spares", as a pre-forking server does): a spare has already
paid for its fork and for what a process sets up on first use (its netlink sockets, its
libnftables context), and waits for one job on a socket of its own. It does that one job and
exits: nothing of one request is ever seen by the next. One spare is for command lines: it also
makes a launch's network namespace ahead; the other is for teardowns, which need none.

Its main loop only accepts, reads small messages and reaps workers: nothing it does can block
another client for long, and it keeps no state a crash would lose (the records say everything).
It exits when it has been idle for a while; one runs at a time (a lock), started on demand.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import select
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

from nsrun.helper.peers import peer_of
from nsrun.helper.protocol import LOCK_NAME, LOG_NAME, SOCKET_NAME, Channel, version
from nsrun.process import wire

if TYPE_CHECKING:
    from nsrun.state.paths import StateDirs

__all__ = ["ENV_IDLE", "IDLE_SECONDS", "SPARES", "log_failure", "serve"]

IDLE_SECONDS: Final = 120.0  # NSRUN_HELPER_IDLE changes it (the tests' helpers go sooner)
ENV_IDLE: Final = "NSRUN_HELPER_IDLE"
# a launch's set-up takes one of the first kind (it makes a network namespace ahead, for a launch),
# its teardown one of the other; two of each, so that the next launch finds one ready while the
# one taken is replaced at a quiet moment (below)
SPARES: Final = {True: 2, False: 2}
# A spare is forked from the helper: copying its page tables takes a CPU for a few milliseconds,
# and on a small machine a launch's set-up (its worker) and its command's side (the client's init,
# built meanwhile) already take both. So a spare taken is replaced once that launch has ended (its
# teardown worker exited), else this long after the last job was given out; at once only when
# none of its kind is left. Measured on 2 CPUs with the early hand-over: `nsrun -- true` in 46-49 ms
# instead of 53-56 (medians of 30 launches 0.3 s apart, in two alternating runs).
_REPLENISH_AFTER: Final = 0.05  # seconds
_RESPAWN_AFTER_FAILURE: Final = 1.0  # seconds: a fork that failed (no memory) is not retried at once
_BACKLOG: Final = 256


@dataclass
class _Client:
    channel: Channel
    pid: int  # from SO_PEERCRED: who it is, whatever it says
    worker: int | None = None  # a worker is busy with the connection: do not read it meanwhile
    sandbox: str | None = None  # the sandbox it runs, once handed over
    entry: bool = False  # its end is to be noted (`nsrun wait`)
    ending: bool = False  # a teardown worker runs for it
    status: int | None = None
    ran: bool = True  # its command ran (else its logbook entry goes)
    handed_over: bool = False  # it got a sandbox (its id is known once it said "started")
    refusal: str | None = None  # why it may not be served (not root's, confined): see peers
    requested: bool = False  # its request was read (the first message on a connection)


@dataclass
class _Spare:
    pid: int
    sock: wire.Socket  # the job goes here, with the client's connection beside it
    for_requests: bool  # it has a network namespace ready: for a command line (a launch), not a teardown


class Helper:
    def __init__(self, dirs: StateDirs) -> None:
        self.dirs = dirs
        self.clients: dict[int, _Client] = {}  # by connection fd
        self.spares: list[_Spare] = []
        self.version = version()
        self.last_activity = time.monotonic()
        self.replenish_at = 0.0  # when spares taken are replaced (see _REPLENISH_AFTER)
        self.idle = _idle_seconds()
        self.stopping = False
        self._own_fds: list[int] = []

    def serve(self) -> None:
        from nsrun.state.files import open_private

        run = self.dirs.ensure(self.dirs.run)
        lock = open_private(run / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            return  # another helper runs, or starts
        path = run / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead helper's: the lock says no other one lives
        _warm_up()  # before the socket exists: whoever connects finds the helper warm
        # what is loaded now stays: out of the collector's sight, so that a worker's collections
        # do not touch (and copy, page by page) the memory it shares with the helper
        gc.freeze()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old_umask = os.umask(0o177)  # root's alone from the start: 0600
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        listener.listen(_BACKLOG)
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._own_fds = [listener.fileno(), wake_read, wake_write, lock]
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._replenish()
        try:
            self._loop(listener, wake_read)
        except Exception:  # a bug of the helper's: said where `nsrun doctor` looks, then it goes
            log_failure(self.dirs, traceback.format_exc())
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            listener.close()
            os.close(lock)
            for spare in self.spares:
                spare.sock.close()  # a spare that reads the end of its socket exits

    def _loop(self, listener: socket.socket, wake: int) -> None:
        while True:
            watched = [fd for fd, client in self.clients.items() if client.worker is None and not client.ending]
            readers: list[int] = [listener.fileno(), wake, *watched]
            ready, _, _ = select.select(readers, [], [], self._timeout())
            if wake in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 4096)
            self._reap()
            if listener.fileno() in ready:
                self._accept(listener)
            for fd in ready:
                if fd in self.clients:
                    self._read(self.clients[fd])
            self._replenish()
            if self.stopping:
                return  # sandboxes it set up run on; their clients tear down without it
            if self.clients:
                self.last_activity = time.monotonic()
            elif time.monotonic() - self.last_activity > self.idle:
                return

    def _timeout(self) -> float:
        timeout = min(5.0, self.idle)
        if sum(SPARES.values()) > len(self.spares):
            timeout = min(timeout, max(0.0, self.replenish_at - time.monotonic()))
        return timeout

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        peer = peer_of(sock)
        refusal = peer.refusal()
        peer.close()
        client = _Client(Channel(sock), peer.pid, refusal=refusal)
        self.clients[sock.fileno()] = client
        # its request most often came with it; else the loop reads it when it comes: a client
        # that connects and says nothing holds up no other
        self._take_request(client)

    def _take_request(self, client: _Client) -> None:
        """Serve the connection's first message, if it came (else later, when it does)."""
        if not select.select([client.channel.fileno()], [], [], 0)[0]:
            return
        client.requested = True
        refusal = client.refusal
        try:
            request, fds = client.channel.receive()
        except OSError:
            request, fds = None, []
        wire.close_fds(fds)  # a request holds none: the client's stdio follows "taken", to the worker
        if request is None or refusal is not None or request.get("version") != self.version:
            if request is not None:
                why = refusal or "the helper runs another nsrun"
                with contextlib.suppress(OSError):
                    client.channel.send({"fallback": why})
            self._drop(client)
            if refusal is None and request is not None:
                self.last_activity = -self.idle  # retire: the next client starts a current one
            return
        try:
            # at once: a client that waits in vain for it runs the command line itself
            client.channel.send({"taken": True})
        except OSError:
            self._drop(client)
            return
        if "ping" in request:  # `nsrun doctor`: that answer was all it asked for
            self._drop(client)
            return
        if "cni" in request:
            # a CNI call: its worker answers the plugin directly; nothing of it to follow here
            self._dispatch({"job": "cni"}, client)
            self._drop(client)
            return
        client.worker = self._dispatch({"job": "request", "pid": client.pid, "request": request}, client)

    def _read(self, client: _Client) -> None:
        if not client.requested:
            self._take_request(client)
            return
        try:
            message, fds = client.channel.receive()
        except OSError:
            message, fds = None, []
        for fd in fds:
            os.close(fd)
        if message is None:
            # the client ended, or was killed, before saying its sandbox ended: tear down now
            self._end(client, None, pinned=False)
        elif "started" in message:
            self._started(client, message["started"])
        elif "ended" in message:
            ended = message["ended"]
            client.ran = bool(ended.get("ran", True))
            if client.sandbox is None and client.handed_over and isinstance(ended.get("id"), str):
                # interrupted before its command started: the id is the client's word, which the
                # teardown checks (only a sandbox this client holds is torn down)
                client.sandbox = ended["id"]
                client.entry = bool(ended.get("entry"))
            self._end(client, ended.get("status"), pinned=True)

    def _started(self, client: _Client, info: dict[str, object]) -> None:
        from nsrun.helper.worker import record_started

        failure = None
        try:
            record_started(self.dirs, client.pid, info)
            client.sandbox = str(info.get("id"))
            client.entry = bool(info.get("entry"))
        except Exception as err:  # noqa: BLE001  # said to the client; the helper goes on
            failure = str(err)
        with contextlib.suppress(OSError):
            client.channel.send({"ok": failure is None, "error": failure})

    def _end(self, client: _Client, status: object, *, pinned: bool) -> None:
        if client.sandbox is None and not client.handed_over:
            self._drop(client)
            return
        client.ending = True
        client.status = int(status) if isinstance(status, int) else None
        job = {
            "job": "teardown",
            "pid": client.pid,
            "sandbox": client.sandbox,
            "entry": client.entry,
            "status": client.status,
            "ran": client.ran,
            "pinned": pinned,
        }
        client.worker = self._dispatch(job, client)

    def _dispatch(self, job: dict[str, Any], client: _Client) -> int | None:
        """Give the job to a spare (forked now if none is left); its pid, None if it could not
        be given (the client is then dropped: it falls back, or its sandbox is reclaimed)."""
        for_requests = job.get("job") == "request"
        while True:
            spare = self._take_spare(for_requests)
            self.replenish_at = time.monotonic() + _REPLENISH_AFTER
            if spare is None:
                return None
            with contextlib.suppress(OSError):  # still rehearsing at idle priority: its job is due now
                os.sched_setscheduler(spare.pid, os.SCHED_OTHER, os.sched_param(0))
            try:
                wire.send(spare.sock, job, [client.channel.fileno()])
            except OSError:
                continue  # that spare died: the next one
            finally:
                spare.sock.close()
            return spare.pid

    def _take_spare(self, for_requests: bool) -> _Spare | None:
        """The spare made for this kind of job, else any, else one forked now."""
        for candidates in ([s for s in self.spares if s.for_requests == for_requests], self.spares):
            if candidates:
                spare = candidates[0]  # before the removal: the second list is `self.spares` itself
                self.spares.remove(spare)
                return spare
        return self._spawn(for_requests)

    def _replenish(self) -> None:
        due = time.monotonic() >= self.replenish_at
        for for_requests, wanted in SPARES.items():
            while not self.stopping:
                have = sum(spare.for_requests == for_requests for spare in self.spares)
                if have >= wanted or (have and not due):
                    break
                spare = self._spawn(for_requests)
                if spare is None:
                    self.replenish_at = time.monotonic() + _RESPAWN_AFTER_FAILURE
                    return
                self.spares.append(spare)

    def _spawn(self, for_requests: bool) -> _Spare | None:
        ours, theirs = wire.socketpair()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            try:
                keep = theirs.fileno()
                for fd in [*self.clients, *self._own_fds, *(s.sock.fileno() for s in self.spares), ours.fileno()]:
                    if fd != keep:
                        with contextlib.suppress(OSError):
                            os.close(fd)  # clients' connections, the listener, other spares: not this one's
                _spare(self.dirs, theirs, for_requests)  # never returns
            finally:
                os._exit(1)
        theirs.close()
        return _Spare(pid, ours, for_requests)

    def _reap(self) -> None:
        from nsrun.helper.worker import HANDED_OVER

        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.spares = [spare for spare in self.spares if spare.pid != pid]
            client = next((c for c in self.clients.values() if c.worker == pid), None)
            if client is None:
                continue
            client.worker = None
            if client.ending:
                self.replenish_at = 0.0  # its launch has ended: a quiet moment
            if client.ending or not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == HANDED_OVER):
                self._drop(client)  # answered (an exit, a teardown's "done"), or the worker died
            else:
                client.handed_over = True

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.channel.fileno(), None)
        client.channel.close()


def _spare(dirs: StateDirs, sock: wire.Socket, for_requests: bool) -> NoReturn:
    """A spare worker's life: get ready, wait for one job, do it, exit."""
    from nsrun.helper import worker

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    gc.disable()  # one short job: a collection would only copy pages shared with the helper
    worker.prepare(lambda: bool(select.select([sock], [], [], 0)[0]), ready_netns=for_requests)
    try:
        job, fds = wire.receive(sock)
    except (OSError, wire.WireError):
        job, fds = None, []
    sock.close()
    if job is None or not fds:
        os._exit(0)  # the helper stopped, or went away
    connection = wire.Socket(fileno=fds[0])
    wire.close_fds(fds[1:])
    if job["job"] == "cni":
        worker.handle_cni(connection)
    if job["job"] == "request":
        worker.handle_request(connection, int(job["pid"]), dict(job["request"]))
    failures = worker.teardown(connection, dirs, int(job["pid"]), job)
    with contextlib.suppress(OSError):
        wire.send(connection, {"done": failures})
    os._exit(0)


# not loaded by the helper: entry points of other processes, and pytest's plugin
_NOT_PRELOADED: Final = frozenset(
    {"nsrun.__main__", "nsrun.helper.__main__", "nsrun.cni.__main__", "nsrun.pytest_plugin"}
)


def _warm_up() -> None:
    """Load what a request needs, once, so that every worker forked later has it: every module of
    nsrun (typer, pyroute2 and both firewall backends with them), the command line built and a
    launch parsed once, the sandbox's seccomp program compiled."""
    import importlib
    import pkgutil

    import nsrun
    from nsrun.cli.app import warm_up
    from nsrun.confine.seccomp_bpf import sandbox_filter
    from nsrun.firewall import select as firewall_select

    for module in pkgutil.walk_packages(nsrun.__path__, "nsrun."):
        if module.name not in _NOT_PRELOADED:
            with contextlib.suppress(Exception):  # one that cannot load says why when it is used
                importlib.import_module(module.name)
    warm_up()
    firewall_select.preload()
    with contextlib.suppress(Exception):  # without libseccomp, a launch says why
        sandbox_filter()


def _idle_seconds() -> float:
    try:
        return max(0.1, float(os.environ.get(ENV_IDLE, IDLE_SECONDS)))
    except ValueError:
        return IDLE_SECONDS


def log_failure(dirs: StateDirs, text: str) -> None:
    """A failure of the helper itself goes to /run/nsrun/helper.log (created only then): while it
    is recent, nsrun does not start another helper (see `client.start_helper`)."""
    from nsrun.state.files import open_private

    with contextlib.suppress(OSError):
        fd = open_private(dirs.run / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(fd, "w") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} helper {os.getpid()}: {text}\n")


def serve(dirs: StateDirs) -> None:
    try:
        Helper(dirs).serve()
    except Exception:
        log_failure(dirs, traceback.format_exc())
        raise
