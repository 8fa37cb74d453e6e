"""The CNI protocol, decided in pure code: what an engine asks (CNI_* variables, the network
configuration on stdin) and what nsrun answers (results and errors as the spec's JSON).

Spec 1.1.0 (github.com/containernetworking/cni SPEC.md), and the versions engines still send:
Podman 4 and containerd 1.6 speak 1.0.0, older runtimes 0.3.x/0.4.0. Imports nothing that
touches the kernel; the actions are in `nsrun.cni.plugin`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import NsrunError
from nsrun.state.registry import CONTAINER_ID_RE, IFNAME_RE
from nsrun.validate import parse_mac, parse_publish, validate_hostname, validate_name

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "COMMANDS",
    "SPEC_VERSION",
    "SUPPORTED_VERSIONS",
    "CniError",
    "Interfaces",
    "Invocation",
    "NetConf",
    "add_result",
    "attachment_id",
    "hostname_of",
    "parse_config",
    "parse_environment",
    "version_result",
]

SPEC_VERSION: Final = "1.1.0"
SUPPORTED_VERSIONS: Final = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
PLUGIN_TYPE: Final = "nsrun"
COMMANDS: Final = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
_NEEDS_CONTAINER: Final = ("ADD", "DEL", "CHECK")
_CHECK_SINCE: Final = (0, 4, 0)  # CHECK does not exist before spec 0.4.0
_IPS_WITHOUT_VERSION: Final = (1, 0, 0)  # before 1.0.0 each IP names its family ("4"/"6")
_VERSION_RE: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_VALID_ATTACHMENTS: Final = "cni.dev/valid-attachments"
_POD_NAME: Final = "K8S_POD_NAME"  # CNI_ARGS key engines use for the workload's name

# the spec's well-known error codes; 100 and up are nsrun's own
INCOMPATIBLE_VERSION: Final = 1
UNSUPPORTED_FIELD: Final = 2
UNKNOWN_CONTAINER: Final = 3
INVALID_ENVIRONMENT: Final = 4
IO_FAILURE: Final = 5
DECODE_FAILURE: Final = 6
INVALID_CONFIG: Final = 7
TRY_AGAIN_LATER: Final = 11
NOT_AVAILABLE: Final = 50
ATTACHMENT_EXISTS: Final = 100
CHECK_FAILED: Final = 101
OPERATION_FAILED: Final = 102


class CniError(Exception):
    """An error result: the spec's code, a short message and the details (nsrun's whole message)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    @classmethod
    def of(cls, code: int, err: NsrunError) -> CniError:
        return cls(code, f"{err.what}: {err.why}", str(err))

    def to_json(self, cni_version: str = SPEC_VERSION) -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}


def _version(text: str) -> tuple[int, int, int]:
    match = _VERSION_RE.fullmatch(text)
    if not match:
        raise CniError(INCOMPATIBLE_VERSION, f"invalid cniVersion {text!r}", "expected e.g. 1.0.0")
    return int(match[1]), int(match[2]), int(match[3])


@dataclass(frozen=True)
class Invocation:
    """What the CNI_* variables say."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: tuple[tuple[str, str], ...] = ()

    def arg(self, key: str) -> str | None:
        return next((value for name, value in self.args if name == key), None)


def parse_environment(env: Mapping[str, str]) -> Invocation:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENVIRONMENT, f"invalid CNI_COMMAND {command!r}", f"expected one of {', '.join(COMMANDS)}"
        )
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    netns = env.get("CNI_NETNS", "")
    if command in _NEEDS_CONTAINER:
        if not container_id or not CONTAINER_ID_RE.fullmatch(container_id):
            raise CniError(
                INVALID_ENVIRONMENT,
                f"invalid CNI_CONTAINERID {container_id!r}",
                "it must be letters, digits, '_', '.' or '-', starting with a letter or digit",
            )
        if not ifname or not IFNAME_RE.fullmatch(ifname):
            raise CniError(
                INVALID_ENVIRONMENT,
                f"invalid CNI_IFNAME {ifname!r}",
                "an interface name: 1-15 characters, no '/', ':' or whitespace",
            )
        if command != "DEL" and not netns.startswith("/"):
            raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_NETNS {netns!r}", "the path of the container's netns")
    return Invocation(command, container_id, netns, ifname, _parse_args(env.get("CNI_ARGS", "")))


def _parse_args(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if sep and key:
            pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class NetConf:
    """The plugin's configuration, as the engine passes it on stdin, checked."""

    cni_version: str
    name: str  # the CNI network's name
    network: str  # the nsrun network it attaches to (default: `name`)
    subnet: ipaddress.IPv4Network | None = None  # to create that network on first use
    ip: str | None = None  # the `ips` capability (or args): the address asked for
    mac: str | None = None  # the `mac` capability
    publish: tuple[str, ...] = ()  # the `portMappings` capability, as `-p` specs
    prev_result: Mapping[str, Any] | None = None
    valid_attachments: frozenset[tuple[str, str]] | None = None  # GC's (containerID, ifname)

    @property
    def version(self) -> tuple[int, int, int]:
        return _version(self.cni_version)


def parse_config(raw: bytes, command: str) -> NetConf:
    """The configuration on stdin; CniError (the spec's codes) for what cannot be served."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise CniError(DECODE_FAILURE, "the network configuration on stdin is not JSON", str(err)) from err
    if not isinstance(data, dict):
        raise CniError(DECODE_FAILURE, "the network configuration on stdin is not a JSON object")
    version = data.get("cniVersion", "")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"unsupported cniVersion {version!r}",
            f"nsrun speaks {', '.join(SUPPORTED_VERSIONS)}",
        )
    if command == "CHECK" and _version(version) < _CHECK_SINCE:
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {version}", "use 0.4.0 or later")
    name = _text(data, "name", required=True)
    if data.get("type", PLUGIN_TYPE) != PLUGIN_TYPE:
        raise CniError(INVALID_CONFIG, f"this is the {PLUGIN_TYPE!r} plugin, not {data.get('type')!r}")
    network = _text(data, "network") or name
    try:
        validate_name(network, what="nsrun network name")
    except NsrunError as err:
        raise CniError.of(INVALID_CONFIG, err) from err
    _refuse_delegated_ipam(data.get("ipam"))
    runtime = _mapping(data, "runtimeConfig")
    cni_args = _mapping(_mapping(data, "args"), "cni")
    prev = data.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult is not a JSON object")
    return NetConf(
        cni_version=version,
        name=name,
        network=network,
        subnet=_subnet(data.get("subnet")),
        ip=_requested_ip(runtime.get("ips", cni_args.get("ips"))),
        mac=_requested_mac(runtime.get("mac", cni_args.get("mac"))),
        publish=_port_mappings(runtime.get("portMappings")),
        prev_result=prev,
        valid_attachments=_valid_attachments(data.get(_VALID_ATTACHMENTS)) if command == "GC" else None,
    )


def _text(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise CniError(INVALID_CONFIG, f"{key!r} must be a non-empty string in the network configuration")
    return value


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise CniError(INVALID_CONFIG, f"{key!r} must be a JSON object")
    return value


def _refuse_delegated_ipam(ipam: object) -> None:
    if not ipam:
        return
    kind = ipam.get("type") if isinstance(ipam, dict) else None
    if kind not in (None, PLUGIN_TYPE):
        raise CniError(
            UNSUPPORTED_FIELD,
            f'unsupported field "ipam": {json.dumps(ipam)}',
            "nsrun leases addresses from its own pool (crash-safe, shared with `nsrun` sandboxes):"
            ' leave "ipam" out, and give the network\'s "subnet" instead',
        )


def _subnet(value: object) -> ipaddress.IPv4Network | None:
    if value is None:
        return None
    try:
        subnet = ipaddress.IPv4Network(value) if isinstance(value, str) else None
    except ValueError:
        subnet = None
    if subnet is None:
        raise CniError(INVALID_CONFIG, f"invalid subnet {value!r}", "an IPv4 network, e.g. 10.88.7.0/24")
    return subnet


def _requested_ip(value: object) -> str | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str):
            raise CniError(INVALID_CONFIG, f"invalid ips {value!r}", 'a list of addresses, e.g. ["10.88.7.5/24"]')
        try:
            address = ipaddress.ip_interface(item).ip
        except ValueError as err:
            raise CniError(INVALID_CONFIG, f"invalid address {item!r} in ips") from err
        if address.version == 4:  # noqa: PLR2004  # an IPv6 address follows from the IPv4 one
            return str(address)
    return None


def _requested_mac(value: object) -> str | None:
    if value is None:
        return None
    try:
        return parse_mac(value) if isinstance(value, str) else parse_mac(repr(value))
    except NsrunError as err:
        raise CniError(INVALID_CONFIG, f"invalid mac {value!r}", err.why) from err


def _port_mappings(value: object) -> tuple[str, ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise CniError(INVALID_CONFIG, "portMappings must be a list")
    specs = []
    for item in value:
        if not isinstance(item, dict):
            raise CniError(INVALID_CONFIG, f"invalid port mapping {item!r}")
        host, port = item.get("hostPort"), item.get("containerPort")
        proto = str(item.get("protocol") or "tcp").lower()
        host_ip = item.get("hostIP") or ""
        if not isinstance(host, int) or not isinstance(port, int) or host <= 0 or not isinstance(host_ip, str):
            raise CniError(INVALID_CONFIG, f"invalid port mapping {json.dumps(item)}", "hostPort and containerPort > 0")
        if ":" in host_ip:
            raise CniError(UNSUPPORTED_FIELD, f"unsupported hostIP {host_ip!r}", "nsrun publishes IPv4 ports only")
        spec = f"{host_ip + ':' if host_ip else ''}{host}:{port}/{proto}"
        try:
            specs.append(parse_publish(spec).spec())
        except NsrunError as err:
            raise CniError(INVALID_CONFIG, f"invalid port mapping {json.dumps(item)}", err.why) from err
    return tuple(specs)


def _valid_attachments(value: object) -> frozenset[tuple[str, str]]:
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise CniError(INVALID_CONFIG, f"{_VALID_ATTACHMENTS} must be a list")
    found = set()
    for item in value:
        if not isinstance(item, dict):
            raise CniError(INVALID_CONFIG, f"invalid entry {item!r} in {_VALID_ATTACHMENTS}")
        container, ifname = item.get("containerID"), item.get("ifname")
        if not isinstance(container, str) or not isinstance(ifname, str):
            raise CniError(INVALID_CONFIG, f"invalid entry {json.dumps(item)} in {_VALID_ATTACHMENTS}")
        found.add((container, ifname))
    return frozenset(found)


def hostname_of(invocation: Invocation) -> str | None:
    """The workload's name, which the network's other members resolve (engines pass it as
    K8S_POD_NAME); None if there is none or it is no hostname."""
    name = invocation.arg(_POD_NAME)
    if not name:
        return None
    try:
        return validate_hostname(name)
    except NsrunError:
        return None


def attachment_id(network: str, container_id: str, ifname: str) -> str:
    """The sandbox id of an attachment: the same for ADD, CHECK and DEL of one (network,
    container, interface), so DEL finds what ADD made whatever happened in between."""
    digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()
    return digest[:12]


def version_result(cni_version: str | None = None) -> dict[str, Any]:
    return {"cniVersion": cni_version or SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


@dataclass(frozen=True)
class Interfaces:
    """What ADD made: the host end, the container's end, its addresses, the routes it got."""

    host_veth: str
    host_mac: str
    ifname: str
    mac: str
    netns: str
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    address6: ipaddress.IPv6Interface | None = None
    gateway6: ipaddress.IPv6Address | None = None
    default_route: bool = True


def add_result(conf: NetConf, made: Interfaces) -> dict[str, Any]:
    """ADD's result in the conf's version; in a chain, the previous plugin's result with this
    one's interfaces, addresses and routes added."""
    prev = dict(conf.prev_result or {})
    interfaces = list(prev.get("interfaces") or [])
    offset = len(interfaces)
    interfaces += [
        {"name": made.host_veth, "mac": made.host_mac},
        {"name": made.ifname, "mac": made.mac, "sandbox": made.netns},
    ]
    legacy = conf.version < _IPS_WITHOUT_VERSION
    ips = [dict(ip) for ip in prev.get("ips") or []]
    routes = list(prev.get("routes") or [])
    pairs: list[tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, Any]] = [(made.address, made.gateway)]
    if made.address6 is not None:
        pairs.append((made.address6, made.gateway6))
    for address, gateway in pairs:
        entry: dict[str, Any] = {"address": str(address), "interface": offset + 1}
        if gateway is not None:
            entry["gateway"] = str(gateway)
        if legacy:
            entry["version"] = str(address.version)
        ips.append(entry)
        if made.default_route and gateway is not None:
            default = "0.0.0.0/0" if address.version == 4 else "::/0"  # noqa: PLR2004
            routes.append({"dst": default, "gw": str(gateway)})
    if legacy:
        for ip in ips:
            ip.setdefault("version", "6" if ":" in str(ip.get("address", "")) else "4")
    else:
        for ip in ips:
            ip.pop("version", None)
    return {
        "cniVersion": conf.cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": prev.get("dns") or {},
    }
