from __future__ import annotations

import ipaddress

import pytest

from nsrun.errors import UsageError
from nsrun.net.plan import bridge_name_for, host_veth_name
from nsrun.networks.spec import NetworkSpec, auto_subnet_candidates, first_overlap, make_spec
from nsrun.validate import IFNAMSIZ

N = ipaddress.IPv4Network


def test_defaults_derived_from_name_and_subnet() -> None:
    spec = make_spec("lab", N("10.123.0.0/24"), firewall="iptables")
    assert str(spec.gateway) == "10.123.0.1"
    assert spec.bridge == "nsbr-lab"
    assert make_spec("nsrun", N("10.1.0.0/24"), firewall="iptables").bridge == "nsrun0"


def test_long_network_names_get_short_distinct_bridges() -> None:
    a, b = bridge_name_for("a-very-long-network-name-1"), bridge_name_for("a-very-long-network-name-2")
    assert len(a) < IFNAMSIZ
    assert len(b) < IFNAMSIZ
    assert a != b


def test_gateway_must_be_a_host_of_the_subnet() -> None:
    with pytest.raises(UsageError):
        make_spec("lab", N("10.123.0.0/24"), firewall="iptables", gateway=ipaddress.IPv4Address("10.123.0.255"))


def test_spec_round_trips_through_json() -> None:
    spec = make_spec("lab", N("10.123.0.0/24"), firewall="iptables", bridge="br-lab")
    assert NetworkSpec.from_json(spec.to_json()) == spec


def test_overlap_and_auto_pick() -> None:
    taken = [(N("10.200.0.0/16"), "host route via vpn0")]
    assert first_overlap(N("10.200.5.0/24"), taken) == taken[0]
    assert first_overlap(N("10.201.0.0/24"), taken) is None
    free = next(c for c in auto_subnet_candidates() if first_overlap(c, taken) is None)
    assert free == N("10.201.0.0/24")


def test_host_veth_names_fit_ifnamsiz() -> None:
    assert host_veth_name("0123456789ab") == "nsv0123456789ab"
    assert len(host_veth_name("0123456789abcdef")) == IFNAMSIZ - 1
