from __future__ import annotations

import ipaddress

from nsrun.firewall.rules import LOOPBACK, MULTICAST, Hook, PortMapping, Verdict, network_rules

NET = ipaddress.IPv4Network("10.123.0.0/24")


def test_masquerade_leaves_the_bridge_and_multicast_alone() -> None:
    masq, *_ = network_rules("lab", "nsbr-lab", NET).nat
    assert masq.hook is Hook.POSTROUTING
    assert masq.verdict is Verdict.MASQUERADE
    assert masq.source == NET
    assert (masq.out_iface, masq.out_iface_negated) == ("nsbr-lab", True)
    assert masq.dest_negated == MULTICAST


def test_inbound_accepts_replies_and_published_ports_then_drops() -> None:
    rules = network_rules("lab", "nsbr-lab", NET)
    assert all(r.out_iface == "nsbr-lab" for r in rules.inbound)
    assert rules.inbound[0].ctstates == ("RELATED", "ESTABLISHED")
    assert rules.inbound[-1].verdict is Verdict.DROP
    assert rules.inbound[-1].ctstates == ()


def test_outbound_drops_invalid_before_accepting() -> None:
    rules = network_rules("lab", "nsbr-lab", NET)
    assert [(r.verdict, r.ctstates) for r in rules.outbound] == [(Verdict.DROP, ("INVALID",)), (Verdict.ACCEPT, ())]
    assert all(r.in_iface == "nsbr-lab" for r in rules.outbound)


def test_published_ports_reached_from_loopback_or_the_subnet_are_masqueraded() -> None:
    _, loopback, hairpin = network_rules("lab", "nsbr-lab", NET).nat
    assert (loopback.source, loopback.ctstates, loopback.out_iface) == (LOOPBACK, ("DNAT",), "nsbr-lab")
    assert (hairpin.source, hairpin.ctstates, hairpin.out_iface) == (NET, ("DNAT",), "nsbr-lab")


def test_guard_drops_loopback_destinations_from_the_bridge() -> None:
    (guard,) = network_rules("lab", "nsbr-lab", NET).guard
    assert (guard.hook, guard.verdict, guard.in_iface, guard.destination) == (
        Hook.PREROUTING,
        Verdict.DROP,
        "nsbr-lab",
        LOOPBACK,
    )


def test_internal_network_drops_what_leaves_and_masquerades_nothing() -> None:
    rules = network_rules("lab", "nsbr-lab", NET, internal=True)
    assert rules.nat == ()
    assert rules.accepts == ()
    leaving = rules.outbound[0]
    assert (leaving.verdict, leaving.in_iface, leaving.out_iface, leaving.out_iface_negated) == (
        Verdict.DROP,
        "nsbr-lab",
        "nsbr-lab",
        True,
    )


def test_port_mappings_collide_on_port_protocol_and_address() -> None:
    any_address = PortMapping(8081, 80)
    assert any_address.collides(PortMapping(8081, 90))
    assert not any_address.collides(PortMapping(8081, 80, "udp"))
    one = PortMapping(8081, 80, host_ip=ipaddress.IPv4Address("192.0.2.1"))
    assert one.collides(any_address)
    assert not one.collides(PortMapping(8081, 80, host_ip=ipaddress.IPv4Address("192.0.2.2")))
    assert str(one) == "192.0.2.1:8081->80/tcp"


def test_every_rule_carries_the_network_tag() -> None:
    rules = network_rules("lab", "nsbr-lab", NET)
    assert {r.comment for r in rules.inbound + rules.outbound + rules.nat} == {"nsrun:lab"}
    assert network_rules("lab", "nsbr-lab", NET) == rules  # pure: same input, same rules
