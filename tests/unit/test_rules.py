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


def test_outbound_drops_invalid_and_forged_sources_before_accepting() -> None:
    rules = network_rules("lab", "nsbr-lab", NET)
    invalid, forged4, forged6, accept = rules.outbound
    assert (invalid.verdict, invalid.ctstates) == (Verdict.DROP, ("INVALID",))
    assert (forged4.verdict, forged4.source, forged4.source_negated) == (Verdict.DROP, NET, True)
    assert (forged6.verdict, forged6.nfproto) == (Verdict.DROP, "ipv6")  # no IPv6 on a v4-only network
    assert (accept.verdict, accept.ctstates) == (Verdict.ACCEPT, ())
    assert all(r.in_iface == "nsbr-lab" for r in rules.outbound)


def test_dual_stack_outbound_checks_both_sources() -> None:
    net6 = ipaddress.IPv6Network("fd00:1::/64")
    rules = network_rules("lab", "nsbr-lab", NET, subnet6=net6)
    sources = [(r.source, r.source_negated) for r in rules.outbound if r.verdict is Verdict.DROP and r.source]
    assert sources == [(NET, True), (net6, True)]


def test_published_ports_reached_from_loopback_or_the_subnet_are_masqueraded() -> None:
    _, loopback, hairpin = network_rules("lab", "nsbr-lab", NET).nat
    assert (loopback.source, loopback.ctstates, loopback.out_iface) == (LOOPBACK, ("DNAT",), "nsbr-lab")
    assert (hairpin.source, hairpin.ctstates, hairpin.out_iface) == (NET, ("DNAT",), "nsbr-lab")


def test_guard_drops_loopback_destinations_not_arriving_on_lo() -> None:
    guard4, guard6 = network_rules("lab", "nsbr-lab", NET).guard
    for guard, destination in ((guard4, LOOPBACK), (guard6, ipaddress.IPv6Network("::1/128"))):
        assert (guard.hook, guard.verdict, guard.in_iface, guard.in_iface_negated, guard.destination) == (
            Hook.PREROUTING,
            Verdict.DROP,
            "lo",
            True,
            destination,
        )


def test_no_host_access_drops_new_connections_to_the_host() -> None:
    assert network_rules("lab", "nsbr-lab", NET).host == ()
    replies, new = network_rules("lab", "nsbr-lab", NET, no_host_access=True).host
    assert (replies.hook, replies.verdict, replies.ctstates) == (Hook.INPUT, Verdict.ACCEPT, ("RELATED", "ESTABLISHED"))
    assert (new.hook, new.verdict, new.in_iface, new.ctstates) == (Hook.INPUT, Verdict.DROP, "nsbr-lab", ("NEW",))


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


def test_a_port_guard_accepts_early_only_its_own_mac_and_addresses() -> None:
    from nsrun.firewall.portguard import PortGuard, link_local_for

    mac = "02:11:22:33:44:55"
    guard = PortGuard("0123456789ab", "nsv0123456789ab", mac, ipaddress.IPv4Address("10.123.0.7"))
    rules = guard.rules()
    accepts = [rule for rule in rules if rule.endswith(" accept")]
    assert accepts == rules[: len(accepts)]  # the shortcut comes before the drops it skips
    assert len(accepts) == 2  # IPv4 and IPv6 TCP
    assert all(f"ether saddr {mac} " in rule and "tcp accept" in rule for rule in accepts)
    assert "ip saddr 10.123.0.7 " in accepts[0]
    assert f"ip6 saddr {{ {link_local_for(mac)} }} " in accepts[1]  # not "::": no TCP comes from it
    assert all(rule.endswith(" drop") for rule in rules[len(accepts) :])


def test_a_filters_removal_names_what_its_set_up_made() -> None:
    import pytest

    from nsrun.firewall.portguard import BRIDGE_TABLE, NFPROTO_BRIDGE, PORTS_MAP, PortGuard, removal, removal_script

    guard = PortGuard("0123456789ab", "nsv0123456789ab", "02:00:00:00:00:01", ipaddress.IPv4Address("10.88.0.2"))
    made = guard.script()
    gone = removal("0123456789ab")
    assert (gone.family, gone.table) == (NFPROTO_BRIDGE, BRIDGE_TABLE)
    assert gone.chains == gone.flushed == (guard.chain,)
    ((name, key),) = gone.elements
    assert name == PORTS_MAP
    assert key == b"nsv0123456789ab\0"  # an ifname key: the name, zero-padded to IFNAMSIZ
    assert f'"{guard.veth}" : jump {guard.chain}' in made  # the element the set-up added
    assert f"delete chain bridge nsrun {guard.chain}" in removal_script("0123456789ab")
    for bad in ("0123456789AB", "0123456789a", "../x", ""):
        with pytest.raises(ValueError, match="not a sandbox id"):
            removal(bad)
