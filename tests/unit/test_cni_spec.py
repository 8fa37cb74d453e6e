"""The CNI protocol in pure code: what is accepted, refused (with which of the spec's codes), and
what results look like in each version and in a chain. No root, no kernel."""

from __future__ import annotations

import ipaddress
import json

import pytest

from nsrun.cni import spec
from nsrun.cni.spec import CniError

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x"}
CONF = {"cniVersion": "1.0.0", "name": "cnet", "type": "nsrun"}


def conf(command: str = "ADD", **fields: object) -> spec.NetConf:
    return spec.parse_config(json.dumps(CONF | fields).encode(), command)


def code_of(call: object) -> int:
    assert callable(call)
    with pytest.raises(CniError) as caught:
        call()
    return caught.value.code


def test_environment() -> None:
    invocation = spec.parse_environment(ENV | {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web-1"})
    assert invocation.command == "ADD"
    assert spec.hostname_of(invocation) == "web-1"
    assert spec.hostname_of(spec.parse_environment(ENV | {"CNI_ARGS": "K8S_POD_NAME=no_such host"})) is None
    assert spec.parse_environment({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert spec.parse_environment(ENV | {"CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""  # DEL may lack it


@pytest.mark.parametrize(
    "changes",
    [
        {"CNI_COMMAND": "add"},
        {"CNI_CONTAINERID": ""},
        {"CNI_CONTAINERID": "-abc"},
        {"CNI_CONTAINERID": "a/b"},
        {"CNI_IFNAME": "a-very-long-ifname"},
        {"CNI_IFNAME": ".."},
        {"CNI_IFNAME": "a b"},
        {"CNI_NETNS": "relative"},
    ],
)
def test_environment_refused(changes: dict[str, str]) -> None:
    assert code_of(lambda: spec.parse_environment(ENV | changes)) == spec.INVALID_ENVIRONMENT


def test_configuration() -> None:
    parsed = conf(
        subnet="10.9.0.0/24",
        runtimeConfig={
            "portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "TCP", "hostIP": ""}],
            "ips": ["2001:db8::5/64", "10.9.0.5/24"],
            "mac": "02:00:00:00:00:07",
        },
    )
    assert parsed.network == "cnet"
    assert parsed.subnet == ipaddress.IPv4Network("10.9.0.0/24")
    assert parsed.publish == ("80:8080/tcp",)
    assert parsed.ip == "10.9.0.5"
    assert parsed.mac == "02:00:00:00:00:07"
    assert conf(network="lab", args={"cni": {"ips": ["10.9.0.6"]}}).ip == "10.9.0.6"
    assert conf("GC", **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}).valid_attachments == (
        frozenset({("a", "eth0")})
    )
    assert conf(ipam={"type": "nsrun"}).network == "cnet"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"[1]", spec.DECODE_FAILURE),
        (b"\xff", spec.DECODE_FAILURE),
        (json.dumps(CONF | {"cniVersion": "0.2.0"}).encode(), spec.INCOMPATIBLE_VERSION),
        (json.dumps(CONF | {"type": "bridge"}).encode(), spec.INVALID_CONFIG),
        (json.dumps(CONF | {"ipam": {"type": "host-local"}}).encode(), spec.UNSUPPORTED_FIELD),
        (json.dumps(CONF | {"subnet": "fd00::/64"}).encode(), spec.INVALID_CONFIG),
        (json.dumps(CONF | {"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 1}]}}).encode(), 7),
        (json.dumps(CONF | {"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 70000}]}}).encode(), 7),
        (
            json.dumps(
                CONF | {"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 1, "hostIP": "::1"}]}}
            ).encode(),
            2,
        ),
        (json.dumps(CONF | {"prevResult": []}).encode(), spec.INVALID_CONFIG),
    ],
)
def test_configuration_refused(raw: bytes, code: int) -> None:
    assert code_of(lambda: spec.parse_config(raw, "ADD")) == code


def test_check_needs_0_4_0() -> None:
    assert code_of(lambda: conf("CHECK", cniVersion="0.3.1")) == spec.INCOMPATIBLE_VERSION
    assert conf("CHECK", cniVersion="0.4.0").cni_version == "0.4.0"


MADE = spec.Interfaces(
    host_veth="nsv0123456789ab",
    host_mac="02:00:00:00:00:01",
    ifname="eth0",
    mac="02:00:00:00:00:02",
    netns="/run/netns/x",
    address=ipaddress.IPv4Interface("10.9.0.2/24"),
    gateway=ipaddress.IPv4Address("10.9.0.1"),
    address6=ipaddress.IPv6Interface("fd00::2/64"),
    gateway6=ipaddress.IPv6Address("fd00::1"),
)


def test_result_first_in_a_chain() -> None:
    result = spec.add_result(conf(), MADE)
    assert result["cniVersion"] == "1.0.0"
    assert result["interfaces"][1] == {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/x"}
    assert result["ips"] == [
        {"address": "10.9.0.2/24", "gateway": "10.9.0.1", "interface": 1},
        {"address": "fd00::2/64", "gateway": "fd00::1", "interface": 1},
    ]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.9.0.1"}, {"dst": "::/0", "gw": "fd00::1"}]


def test_result_in_older_versions_names_each_family() -> None:
    result = spec.add_result(conf(cniVersion="0.4.0"), MADE)
    assert [ip["version"] for ip in result["ips"]] == ["4", "6"]


def test_result_after_another_plugin_keeps_its_interfaces() -> None:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo0"}],
        "ips": [{"address": "192.0.2.5/24", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]},
    }
    result = spec.add_result(conf(prevResult=prev), MADE)
    assert [i["name"] for i in result["interfaces"]] == ["lo0", "nsv0123456789ab", "eth0"]
    assert result["ips"][0] == {"address": "192.0.2.5/24", "interface": 0}
    assert result["ips"][1]["interface"] == 2
    assert result["dns"] == {"nameservers": ["192.0.2.53"]}


def test_internal_networks_get_no_default_route() -> None:
    internal = spec.Interfaces(**{**MADE.__dict__, "default_route": False})
    assert spec.add_result(conf(), internal)["routes"] == []


def test_attachment_ids_are_stable_and_distinct() -> None:
    first = spec.attachment_id("cnet", "abc", "eth0")
    assert first == spec.attachment_id("cnet", "abc", "eth0")
    assert len(first) == 12
    assert len({first, spec.attachment_id("cnet", "abc", "eth1"), spec.attachment_id("other", "abc", "eth0")}) == 3


def test_errors_and_versions_are_the_specs_json() -> None:
    assert CniError(7, "bad", "why").to_json("1.0.0") == {
        "cniVersion": "1.0.0",
        "code": 7,
        "msg": "bad",
        "details": "why",
    }
    assert spec.version_result()["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
