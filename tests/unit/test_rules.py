from __future__ import annotations

import ipaddress

from nsrun.firewall.rules import MULTICAST, Hook, Verdict, network_rules

NET = ipaddress.IPv4Network("10.123.0.0/24")


def test_masquerade_leaves_the_bridge_and_multicast_alone() -> None:
    (masq,) = network_rules("lab", "nsbr-lab", NET).nat
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


def test_every_rule_carries_the_network_tag() -> None:
    rules = network_rules("lab", "nsbr-lab", NET)
    assert {r.comment for r in rules.inbound + rules.outbound + rules.nat} == {"nsrun:lab"}
    assert network_rules("lab", "nsbr-lab", NET) == rules  # pure: same input, same rules
