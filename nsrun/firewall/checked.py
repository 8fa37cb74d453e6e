"""A network's firewall check, skipped while nf_tables' ruleset is unchanged.

A launch checks its network's rules (a listing of nsrun's table and of the other tools' forward
chains: 1-3 ms, most of a launch's firewall time) only when nf_tables' generation (the count of
committed ruleset changes) moved since a check found them complete. The memo says at which
generation which networks were found complete. nsrun's own changes of a sandbox's rules (its
bridge-port filter, its published ports) move the generation too, without touching a network's
rules: the process that made them carries the memo forward by the transactions it committed
(each moves the generation by one). Any other change, anyone's (a flush, a firewall reload, another
tool's rule), puts the generation past the memo's: the next launch checks. Whatever order writers
race in, a memo that names the current generation names networks complete at it.

The legacy iptables tables have no generation: while they are in use, and for a network on the
iptables backend, every launch checks. A memo holds for the boot and the network namespace it was
written in.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nsrun.errors import NsrunError, UsageError
from nsrun.state import files
from nsrun.validate import validate_name

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["MEMO_NAME", "Memo", "is_current", "note_checked", "own_changes"]

MEMO_NAME: Final = "firewall.checked"  # under /run/nsrun
_MAX_NETWORKS: Final = 4096


_BOOT_ID: Final = "/proc/sys/kernel/random/boot_id"
_OWN_NETNS: Final = "/proc/self/ns/net"


def scope() -> str:
    """Which generation counter: this boot's, in this network namespace (a memo kept across a
    reboot, where /run is not a tmpfs, must not meet a counter that happens to read the same)."""
    try:
        with open(_BOOT_ID) as source:
            boot = source.read().strip()
        return f"{boot}:{os.stat(_OWN_NETNS).st_ino}"
    except OSError:
        return ""


@dataclass(frozen=True)
class Memo:
    generation: int
    networks: frozenset[str]
    scope: str

    def to_json(self) -> str:
        return json.dumps({"scope": self.scope, "generation": self.generation, "networks": sorted(self.networks)})

    @classmethod
    def from_json(cls, text: str) -> Memo | None:
        """The memo, None for anything that is not one (it is then as good as absent)."""
        try:
            data = json.loads(text)
            generation, networks, where = data["generation"], data["networks"], data["scope"]
            valid = (
                isinstance(where, str)
                and isinstance(generation, int)
                and not isinstance(generation, bool)
                and generation >= 0
                and isinstance(networks, list)
                and len(networks) <= _MAX_NETWORKS
                and all(isinstance(name, str) for name in networks)
            )
            return cls(generation, frozenset(validate_name(name) for name in networks), where) if valid else None
        except (ValueError, TypeError, KeyError, UsageError):
            return None


def _load(path: Path) -> Memo | None:
    """The memo, if it is one of this boot and network namespace."""
    try:
        text = files.read_file(path)
    except NsrunError:
        return None  # not a file of nsrun's: as if there were none (a check is made)
    memo = Memo.from_json(text) if text is not None else None
    return memo if memo is not None and memo.scope and memo.scope == scope() else None


def _save(path: Path, memo: Memo) -> None:
    with contextlib.suppress(NsrunError):  # unwritten, the memo is just older: the next launch checks
        files.write_file(path, memo.to_json())


def is_current(path: Path, network: str, generation: int | None) -> bool:
    """Whether the network's rules were found complete at this very generation."""
    memo = _load(path)
    return generation is not None and memo is not None and memo.generation == generation and network in memo.networks


def note_checked(path: Path, network: str, before: int | None, commits: int) -> None:
    """A check found the network complete, or made it so by `commits` transactions of its own,
    starting at generation `before`: call under the firewall lock. The memo claims generation
    `before + commits`: were there other changes meanwhile, the generation is past that already."""
    if before is None:
        return
    memo = _load(path)
    still = memo.networks if memo is not None and memo.generation == before else frozenset()
    _save(path, Memo(before + commits, still | {network}, scope()))


@contextlib.contextmanager
def own_changes(path: Path) -> Iterator[None]:
    """Changes of a sandbox's own rules, which leave every network's rules as they were: the memo
    moves along by the transactions made here. Each of them changes something, so moves the
    generation by exactly one; any other change leaves the generation past the memo's. (No
    generation is read afterwards: right after a chain's deletion that waits out an RCU grace
    period, 5-15 ms.)"""
    from nsrun.firewall.nftables import commits
    from nsrun.net.netlink import ruleset_generation

    before, made = ruleset_generation(), commits()
    yield
    made = commits() - made
    if before is None or made == 0:
        return
    memo = _load(path)
    if memo is not None and memo.generation == before:
        _save(path, Memo(before + made, memo.networks, memo.scope))
