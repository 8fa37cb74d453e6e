from __future__ import annotations

import ipaddress

import pytest

from nsrun.errors import UsageError
from nsrun.validate import parse_address, parse_mac, parse_publish, parse_subnet, validate_ifname, validate_name


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("10.0.0.256", id="octet-too-big"),
        pytest.param("10.0.0", id="three-octets"),
        pytest.param("", id="empty"),
        pytest.param("fd00::1", id="ipv6"),
        pytest.param("10.0.0.1/24", id="with-prefix"),
    ],
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_address(text)
    assert info.value.exit_code == 2
    assert "--ip" in str(info.value)


def test_parse_address_accepts() -> None:
    assert parse_address("10.123.0.7") == ipaddress.IPv4Address("10.123.0.7")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("10.0.0.0/33", id="prefix-too-long"),
        pytest.param("10.0.0.1/24", id="host-bits-set"),
        pytest.param("10.0.0.0/31", id="no-room"),
        pytest.param("127.0.0.0/8", id="loopback"),
        pytest.param("fe80::/64", id="ipv6-link-local"),
        pytest.param("fd00::/124", id="ipv6-too-small"),
        pytest.param("garbage", id="garbage"),
    ],
)
def test_parse_subnet_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_subnet(text)


def test_parse_subnet_accepts_an_ipv6_prefix_for_dual_stack() -> None:
    assert parse_subnet("fd00:130::/64").version == 6


def test_parse_subnet_accepts_a_30() -> None:
    assert parse_subnet("10.1.2.0/30").num_addresses == 4


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("02:00:00:00:00", "six hex bytes", id="short"),
        pytest.param("02-00-00-00-00-07", "six hex bytes", id="dashes"),
        pytest.param("01:00:5e:00:00:01", "multicast", id="multicast"),
        pytest.param("00:00:00:00:00:00", "all-zero", id="zero"),
    ],
)
def test_parse_mac_rejects(text: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        parse_mac(text)


def test_parse_mac_normalises_case() -> None:
    assert parse_mac("02:AB:00:00:00:07") == "02:ab:00:00:00:07"


@pytest.mark.parametrize("name", ["a" * 16, "", "a/b", "a b", "a:b", "..", "é" * 8])
def test_ifname_limits(name: str) -> None:
    with pytest.raises(UsageError):
        validate_ifname(name)


def test_ifname_of_15_bytes_is_accepted() -> None:
    assert validate_ifname("a" * 15) == "a" * 15


@pytest.mark.parametrize("name", ["", "-lab", "a/b", "a b", "x" * 64, "../etc"])
def test_network_name_rejects(name: str) -> None:
    with pytest.raises(UsageError):
        validate_name(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("8081:9000", "0.0.0.0:8081->9000/tcp", id="plain"),
        pytest.param("8081:9000/udp", "0.0.0.0:8081->9000/udp", id="udp"),
        pytest.param("192.0.2.1:80:8080/tcp", "192.0.2.1:80->8080/tcp", id="host-ip"),
        pytest.param("0.0.0.0:80:8080", "0.0.0.0:80->8080/tcp", id="all-addresses"),
        pytest.param("6379", "0.0.0.0:0->6379/tcp", id="free-host-port"),
        pytest.param("0:6379", "0.0.0.0:0->6379/tcp", id="free-host-port-0"),
        pytest.param("127.0.0.1::6379/udp", "127.0.0.1:0->6379/udp", id="free-host-port-on-ip"),
    ],
)
def test_parse_publish(text: str, expected: str) -> None:
    mapping = parse_publish(text)
    assert str(mapping) == expected
    assert parse_publish(mapping.spec()) == mapping


@pytest.mark.parametrize("text", ["80:0", "80:70000", "70000", "a:80", "80:80/sctp", "1.2.3:80:80", "224.0.0.1:80:80"])
def test_parse_publish_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_publish(text)


def test_free_host_ports_never_collide() -> None:
    assert not parse_publish("6379").collides(parse_publish("6379"))
    assert parse_publish("80:6379").collides(parse_publish("80:9000"))
