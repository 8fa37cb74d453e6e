from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import pytest

from nsrun.errors import ConflictError
from nsrun.ipam.allocator import allocate, reclaim_stale
from nsrun.ipam.leases import Lease, LeaseStore
from nsrun.ipam.pool import AddressPool

if TYPE_CHECKING:
    from pathlib import Path

A = ipaddress.IPv4Address
NET = ipaddress.IPv4Network("10.0.0.0/29")
POOL = AddressPool(NET, A("10.0.0.1"))


def sandbox_id(name: str) -> str:
    """A valid sandbox id (12 hex digits) derived from a readable test name."""
    return name.encode().hex()[:12].ljust(12, "0")


def lease_for(sandbox: str, pid: int = 100) -> object:
    ident = sandbox_id(sandbox)

    def make(address: ipaddress.IPv4Address) -> Lease:
        return Lease(str(address), ident, pid, 1.0, f"nsv{ident}", 4026531840)

    return make


def test_reserve_is_exclusive(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    make_a, make_b = lease_for("a"), lease_for("b")
    assert store.reserve(make_a(A("10.0.0.2")))
    assert not store.reserve(make_b(A("10.0.0.2")))
    assert store.get(A("10.0.0.2")).sandbox_id == sandbox_id("a")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_release_only_removes_own_lease(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    mine = lease_for("a")(A("10.0.0.2"))
    store.reserve(mine)
    store.release(lease_for("b")(A("10.0.0.2")))
    assert store.get(A("10.0.0.2")) is not None
    store.release(mine)
    store.release(mine)  # twice is fine
    assert store.leases() == []


def test_allocate_round_robin_and_exhaustion(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    got = [allocate("n", POOL, store, lease_for(f"s{i}"), None).address for i in range(5)]
    assert got == [f"10.0.0.{i}" for i in range(2, 7)]
    with pytest.raises(ConflictError, match="no free address"):
        allocate("n", POOL, store, lease_for("s5"), None)
    store.release(store.get(A("10.0.0.3")))
    assert allocate("n", POOL, store, lease_for("s6"), None).address == "10.0.0.3"


def test_allocate_after_release_does_not_reuse_at_once(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    first = allocate("n", POOL, store, lease_for("a"), None)
    store.release(first)
    assert allocate("n", POOL, store, lease_for("b"), None).address != first.address


def test_requested_address_in_use_names_holder(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    allocate("n", POOL, store, lease_for("a", pid=4242), A("10.0.0.5"))
    with pytest.raises(ConflictError, match="pid 4242"):
        allocate("n", POOL, store, lease_for("b"), A("10.0.0.5"))


def test_reclaim_stale_releases_dead_holders_only(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    store.reserve(lease_for("dead", pid=1)(A("10.0.0.2")))
    store.reserve(lease_for("live", pid=2)(A("10.0.0.3")))
    (tmp_path / ".crashed.10.0.0.4").write_text("{")
    reclaimed: list[str] = []
    count = reclaim_stale(store, lambda lease: lease.pid == 1, lambda lease: reclaimed.append(lease.sandbox_id))
    assert count == 1
    assert reclaimed == [sandbox_id("dead")]
    assert [lease.sandbox_id for lease in store.leases()] == [sandbox_id("live")]
    assert not (tmp_path / ".crashed.10.0.0.4").exists()
