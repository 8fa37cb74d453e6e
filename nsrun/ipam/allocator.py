"""Choosing an address: reclaim what dead holders left, then the requested address or the next free one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nsrun.errors import ConflictError

if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Callable

    from nsrun.ipam.leases import Lease, LeaseStore
    from nsrun.ipam.pool import AddressPool

__all__ = ["allocate", "reclaim_stale"]


def reclaim_stale(store: LeaseStore, is_stale: Callable[[Lease], bool], reclaim: Callable[[Lease], None]) -> int:
    """Release every lease whose holder is gone, after `reclaim` undid what it stood for. Call locked."""
    store.sweep_partial()
    count = 0
    for lease in store.leases():
        if is_stale(lease):
            reclaim(lease)
            store.release(lease)
            count += 1
    return count


def allocate(
    network: str,
    pool: AddressPool,
    store: LeaseStore,
    make_lease: Callable[[ipaddress.IPv4Address], Lease],
    requested: ipaddress.IPv4Address | None = None,
    in_use: frozenset[ipaddress.IPv4Address] = frozenset(),
) -> Lease:
    """Reserve `requested`, or the next free address in round-robin order, never one of `in_use`
    (held by a running sandbox no lease names). Call under `store.locked()`."""
    if requested is not None:
        lease = make_lease(requested)
        if requested not in in_use and store.reserve(lease):
            return lease
        holder = store.get(requested)
        who = f"sandbox {holder.name or holder.sandbox_id} (pid {holder.pid})" if holder else "another sandbox"
        raise ConflictError(
            f"address {requested} on network {network!r}", f"already used by {who}", "choose another --ip"
        )
    for address in pool.candidates(store.last_reserved()):
        if address in in_use:
            continue
        lease = make_lease(address)
        if store.reserve(lease):
            return lease
    raise ConflictError(
        f"no free address on network {network!r}",
        f"all {pool.capacity} addresses of {pool.subnet} are in use",
        "end a sandbox, or create a network with a larger --subnet",
    )
