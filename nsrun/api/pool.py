"""`nsrun.Pool`: sandboxes made ahead, for a program that starts many (a test suite).

    from nsrun import Pool, Sandbox

    with Pool(size=2, network="lab") as pool:
        for case in cases:
            code = Sandbox(["./client", case], pool=pool).start().wait()

A pool keeps `size` sandboxes set up up to their command: namespace, address, veth on the
bridge, rules, /etc files, and a shim waiting for its process plan. `Sandbox(..., pool=pool)`
takes one, gives it its command and process options (user, env, workdir, mounts, capabilities)
and starts it: the set-up is off the launch's path. A thread of the pool's own makes the next one
once the pool has been idle for a moment (at once when none is left), so it does not compete
with a launch for the CPU. When none is ready, the sandbox is set up as without a pool.

What a pooled sandbox cannot ask for, its network being made ahead: another network, a name, a
hostname, an address, a MAC, DNS servers or published ports of its own (UsageError); its name is
its id. The sandboxes a pool holds show in `nsrun ps` as "(pool spare)" and hold addresses of
their network. `close()` (the with block's end) tears down those not handed out; the sandboxes
handed out live on, each its own handle's. If the program dies, its spares' shims go with it,
and the next nsrun reclaims what they held.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Final, Self

from nsrun.errors import NsrunError, TeardownError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from nsrun.api.prepared import Prepared
    from nsrun.launch.request import SandboxRequest
    from nsrun.state.paths import StateDirs

__all__ = ["MAX_POOL_SIZE", "SPARE_COMMAND", "Pool"]

MAX_POOL_SIZE: Final = 32
SPARE_COMMAND: Final = "(pool spare)"  # what `nsrun ps` shows for a sandbox not handed out yet
_REFILL_AFTER: Final = 0.05  # seconds without a hand-out before the next spare is made
_RETRY_AFTER: Final = 1.0  # seconds after a failed set-up (the error is the next launch's to raise)
_POOL_NETS: Final = ("bridge", "none")


class Pool:
    """Sandboxes made ahead: `open()` it (or use it as a context manager), then `close()` it."""

    def __init__(
        self,
        size: int = 2,
        *,
        net: str = "bridge",
        network: str | None = None,
        dns: Sequence[str] = (),
        dirs: StateDirs | None = None,
    ) -> None:
        """Checks every option now (UsageError); nothing is made before `open()`."""
        from nsrun.api import arguments
        from nsrun.launch.request import SandboxRequest
        from nsrun.state.paths import StateDirs

        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_POOL_SIZE:
            raise UsageError(f"invalid pool size {size!r}", f"expected 1 to {MAX_POOL_SIZE}", "e.g. Pool(size=2)")
        if net not in _POOL_NETS:
            raise UsageError(f"invalid net {net!r} for a pool", "it makes bridge or none sandboxes", "e.g. net='none'")
        self.size = size
        network = arguments.text("network", network)
        self.net, self.network, self.dns = net, network, tuple(arguments.words("dns", dns))
        self.dirs = dirs or StateDirs()
        # what the spares are set up for; each gets its command (and process options) when taken
        self._template: SandboxRequest = SandboxRequest.parse(
            [SPARE_COMMAND], net=net, network=network, dns=self.dns, environ={}, cwd="/"
        )
        self._spares: list[Prepared] = []
        self._cond = threading.Condition()
        self._filler: threading.Thread | None = None
        self._closed = False
        self._last_take = 0.0
        self._retry_at = 0.0
        self.failure: str | None = None  # the last set-up of a spare that failed, if the last one did

    def open(self) -> Self:
        """Make the first spare now (raising what would stop every launch: not root, no such
        network, no free address), then keep `size` ready in the background."""
        from nsrun.api.prepared import Prepared
        from nsrun.launch.privileges import require_root

        require_root()
        with self._cond:
            if self._filler is not None or self._closed:
                raise NsrunError("opening a pool", "it was opened already", "use a new Pool")
            first = Prepared.make(self._template, self.dirs, spare=True)
            self._spares.append(first)
            self._filler = threading.Thread(target=self._fill, name="nsrun-pool", daemon=True)
            self._filler.start()
        return self

    def close(self) -> None:
        """Stop making spares and tear down those not handed out; raises TeardownError listing
        what could not be undone (every step still ran). Handed-out sandboxes are not touched."""
        with self._cond:
            self._closed = True
            filler, self._filler = self._filler, None
            self._cond.notify_all()
        if filler is not None:
            filler.join()  # a spare being made is finished, then discarded below
        with self._cond:
            spares, self._spares = self._spares, []
        failures = [failure for spare in spares for failure in spare.discard()]
        if failures:
            raise TeardownError(failures)

    def take(self) -> Prepared | None:
        """A spare, or None if none is ready (the caller sets one up itself)."""
        while True:
            with self._cond:
                if self._closed or self._filler is None:
                    raise NsrunError(
                        "starting a sandbox of a pool",
                        "the pool is not open (not yet, or closed already)",
                        "start its sandboxes between its open() and its close(), e.g. inside `with Pool() as pool:`",
                    )
                if not self._spares:
                    return None
                spare = self._spares.pop(0)
                self._last_take = time.monotonic()
                self._cond.notify_all()
            if spare.alive:
                return spare
            spare.discard()  # its shim was killed: no use; the record and lease go with it

    @property
    def ready(self) -> int:
        """How many spares are ready now."""
        with self._cond:
            return len(self._spares)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._filler is not None else "new"
        return f"<nsrun.Pool {self.net} {self.network or ''} {state}, {self.ready}/{self.size} ready>"

    # -- the filler thread ------------------------------------------------------------------------

    def _fill(self) -> None:
        from nsrun.api.prepared import Prepared

        while self._await_refill():
            try:
                spare = Prepared.make(self._template, self.dirs, spare=True)
            except Exception as err:  # noqa: BLE001  # the next launch sets up its own, and raises it
                with self._cond:
                    self.failure = str(err)
                    self._retry_at = time.monotonic() + _RETRY_AFTER
                continue
            with self._cond:
                self.failure = None
                keep = not self._closed
                if keep:
                    self._spares.append(spare)
            if not keep:
                spare.discard()

    def _await_refill(self) -> bool:
        """Until a spare is wanted and it is a quiet moment; False once the pool is closed."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if len(self._spares) >= self.size:
                    self._cond.wait()
                    continue
                quiet_at = self._last_take + _REFILL_AFTER if self._spares else now
                start_at = max(quiet_at, self._retry_at)
                if now >= start_at:
                    return True
                self._cond.wait(start_at - now)
            return False
