from __future__ import annotations

import ipaddress

import pytest

from nsrun.ipam.pool import AddressPool

A = ipaddress.IPv4Address


def pool(cidr: str, gateway: str | None = None) -> AddressPool:
    net = ipaddress.IPv4Network(cidr)
    return AddressPool(net, A(gateway) if gateway else net.network_address + 1)


def test_candidates_skip_network_gateway_and_broadcast() -> None:
    assert [str(a) for a in pool("10.0.0.0/29").candidates()] == [f"10.0.0.{i}" for i in range(2, 7)]


def test_candidates_skip_a_gateway_in_the_middle() -> None:
    got = [str(a) for a in pool("10.0.0.0/29", "10.0.0.4").candidates()]
    assert got == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"]


@pytest.mark.parametrize(
    ("last", "first"),
    [
        pytest.param("10.0.0.3", "10.0.0.4", id="after-last"),
        pytest.param("10.0.0.6", "10.0.0.2", id="wraps-around"),
        pytest.param("192.0.2.1", "10.0.0.2", id="foreign-last-ignored"),
    ],
)
def test_round_robin_starts_after_last(last: str, first: str) -> None:
    candidates = list(pool("10.0.0.0/29").candidates(A(last)))
    assert str(candidates[0]) == first
    assert len(candidates) == len(set(candidates)) == 5


def test_a_30_has_exactly_one_address() -> None:
    assert [str(a) for a in pool("10.0.0.0/30").candidates()] == ["10.0.0.2"]
    assert pool("10.0.0.0/30").capacity == 1


@pytest.mark.parametrize(
    ("address", "ok"),
    [("10.0.0.0", False), ("10.0.0.1", False), ("10.0.0.7", False), ("10.0.0.5", True), ("10.0.1.5", False)],
)
def test_is_assignable(address: str, ok: bool) -> None:
    assert pool("10.0.0.0/29").is_assignable(A(address)) is ok
