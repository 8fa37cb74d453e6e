"""The registry of live sandboxes as the launch code uses it: staleness is the holder's death,
and reclaiming a stale record undoes what it stood for on the host."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nsrun.state.paths import StateDirs
from nsrun.state.registry import Registry, SandboxRecord

if TYPE_CHECKING:
    from nsrun.errors import NsrunError

__all__ = ["is_stale", "live_sandboxes", "registry"]


def registry(dirs: StateDirs) -> Registry:
    return Registry(dirs.sandboxes, on_stale=_reclaim, root=dirs.run)


def _reclaim(record: SandboxRecord) -> None:
    """A sandbox whose shim died: its own rules (published ports, bridge-port filter) go before
    a new sandbox could collide with them."""
    if record.network not in ("none", "host") and not record.network.startswith("sandbox:"):
        from nsrun.firewall import host as firewall

        firewall.remove_sandbox_rules(record.sandbox_id)


def is_stale(record: SandboxRecord) -> bool:
    from nsrun.process import liveness

    return not liveness.holder_alive(record.pid, record.start_time, record.pidns)


def live_sandboxes(dirs: StateDirs | None = None) -> list[SandboxRecord]:
    """Running sandboxes, sorted by name; stale records are reclaimed on the way."""
    records = registry(dirs or StateDirs()).live(is_stale)
    return sorted(records, key=lambda record: (record.name, record.sandbox_id))


def corrupt_records(dirs: StateDirs | None = None) -> list[NsrunError]:
    return list(registry(dirs or StateDirs()).corrupt())
