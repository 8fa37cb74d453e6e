"""`nsrun.Network`: named networks from Python, as `nsrun network ...` manages them."""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import ConflictError, UsageError

if TYPE_CHECKING:
    from nsrun.networks.spec import NetworkSpec
    from nsrun.state.paths import StateDirs

__all__ = ["Network"]


# the options given as strings, each with an example for the error that says one is not
_TEXT_OPTIONS: Final = {
    "subnet": "10.123.0.0/24",
    "subnet6": "fd00:123::/64",
    "gateway": "10.123.0.1",
    "bridge": "br-lab",
}
_FLAG_OPTIONS: Final = ("internal", "no_host_access")


def _check_types(name: object, options: dict[str, Any]) -> None:
    """Strings where strings belong, an int MTU, bools for flags: else a UsageError (rather than
    a TypeError from deep inside)."""
    if not isinstance(name, str):
        raise UsageError("invalid network name", f"{name!r} is not a string", "e.g. Network.create('lab')")
    for key, example in _TEXT_OPTIONS.items():
        if options.get(key) is not None and not isinstance(options[key], str):
            raise UsageError(f"invalid {key}", f"{options[key]!r} is not a string", f"e.g. {key}={example!r}")
    mtu = options.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)):
        raise UsageError("invalid mtu", f"{mtu!r} is not an integer", "e.g. mtu=1500")
    for key in _FLAG_OPTIONS:
        if not isinstance(options.get(key, False), bool):
            raise UsageError(f"invalid {key}", f"{options[key]!r} is not True or False", f"e.g. {key}=True")


def _normal(key: str, value: Any) -> Any:
    """An option as a NetworkSpec holds it (ValueError if it is not an address or prefix)."""
    if key in ("subnet", "subnet6"):
        return ipaddress.ip_network(value)
    if key == "gateway":
        return ipaddress.ip_address(value)
    return value


def _differences(spec: NetworkSpec, options: dict[str, Any]) -> list[str]:
    """What of `options` the existing network `spec` is not: 'subnet 10.1.0.0/24, not 10.2.0.0/24'."""
    found: list[str] = []
    for key in (*_TEXT_OPTIONS, "mtu", *_FLAG_OPTIONS):
        if options.get(key) is None:
            continue  # left to the network
        have = getattr(spec, key)
        if _normal(key, options[key]) != have:
            found.append(f"{key} {have if have is not None else 'unset'}, not {options[key]}")
    return found


def _dirs(dirs: StateDirs | None) -> StateDirs:
    from nsrun.state.paths import StateDirs

    return dirs or StateDirs()


@dataclass(frozen=True)
class Network:
    """A network's definition: `Network.create("lab", subnet="10.123.0.0/24")`, `Network.get("lab")`."""

    name: str
    subnet: str
    gateway: str
    bridge: str
    subnet6: str | None = None
    internal: bool = False
    no_host_access: bool = False

    @classmethod
    def _of(cls, spec: NetworkSpec) -> Network:
        return cls(
            spec.name,
            str(spec.subnet),
            str(spec.gateway),
            spec.bridge,
            str(spec.subnet6) if spec.subnet6 else None,
            spec.internal,
            spec.no_host_access,
        )

    @classmethod
    def create(  # noqa: PLR0913  # the keywords mirror `nsrun network create`
        cls,
        name: str,
        *,
        subnet: str | None = None,
        subnet6: str | None = None,
        gateway: str | None = None,
        bridge: str | None = None,
        mtu: int | None = None,
        internal: bool = False,
        no_host_access: bool = False,
        dirs: StateDirs | None = None,
    ) -> Network:
        """Create it (a free private /24 without `subnet`); ConflictError if it exists or overlaps."""
        from nsrun.net import netlink
        from nsrun.networks import manager
        from nsrun.networks.spec import NetworkRequest
        from nsrun.validate import parse_address, parse_subnet, validate_ifname, validate_mtu, validate_name

        given = {"subnet": subnet, "subnet6": subnet6, "gateway": gateway, "bridge": bridge, "mtu": mtu}
        _check_types(name, given | {"internal": internal, "no_host_access": no_host_access})
        validate_name(name)
        v4 = parse_subnet(subnet) if subnet else None
        v6 = parse_subnet(subnet6) if subnet6 else None
        if v4 is not None and not isinstance(v4, ipaddress.IPv4Network):
            raise UsageError(f"invalid subnet {subnet!r}", "expected IPv4", "give the IPv6 prefix as subnet6")
        if v6 is not None and not isinstance(v6, ipaddress.IPv6Network):
            raise UsageError(f"invalid subnet6 {subnet6!r}", "expected an IPv6 prefix", "e.g. fd00:123::/64")
        if bridge is not None:
            validate_ifname(bridge)
        if mtu is not None:
            validate_mtu(mtu)
        request = NetworkRequest(
            name,
            subnet=v4,
            subnet6=v6,
            gateway=parse_address(gateway, option="gateway") if gateway else None,
            bridge=bridge,
            mtu=mtu,
            internal=internal,
            no_host_access=no_host_access,
        )
        with contextlib.closing(netlink.Rtnl()) as ipr:
            return cls._of(manager.create_network(_dirs(dirs), ipr, request))

    @classmethod
    def get(cls, name: str, *, dirs: StateDirs | None = None) -> Network | None:
        from nsrun.networks import manager

        spec = manager.network_store(_dirs(dirs)).get(name)
        return cls._of(spec) if spec is not None else None

    @classmethod
    def ensure(  # noqa: PLR0913  # the keywords are create's
        cls,
        name: str,
        *,
        subnet: str | None = None,
        subnet6: str | None = None,
        gateway: str | None = None,
        bridge: str | None = None,
        mtu: int | None = None,
        internal: bool | None = None,
        no_host_access: bool | None = None,
        dirs: StateDirs | None = None,
    ) -> Network:
        """The network of that name, created with these options if it does not exist yet; one
        that exists must be what the options given say (ConflictError otherwise: a test suite
        would run on another subnet than it asked for)."""
        from nsrun.networks import manager
        from nsrun.networks.manager import NetworkExistsError

        options = {"subnet": subnet, "subnet6": subnet6, "gateway": gateway, "bridge": bridge, "mtu": mtu}
        options |= {"internal": internal, "no_host_access": no_host_access}
        _check_types(name, {key: value for key, value in options.items() if value is not None})
        store = manager.network_store(_dirs(dirs))
        if (spec := store.get(name)) is None:
            try:
                return cls.create(
                    name,
                    subnet=subnet,
                    subnet6=subnet6,
                    gateway=gateway,
                    bridge=bridge,
                    mtu=mtu,
                    internal=bool(internal),
                    no_host_access=bool(no_host_access),
                    dirs=dirs,
                )
            except NetworkExistsError:  # another process created it meanwhile
                if (spec := store.get(name)) is None:
                    raise
        try:
            differences = _differences(spec, options)
        except ValueError as err:  # not an address or prefix: as create would say
            raise UsageError(f"network {name!r}", str(err), "e.g. subnet='10.123.0.0/24'") from err
        if differences:
            raise ConflictError(
                f"network {name!r}",
                f"it exists with {'; '.join(differences)}",
                "ask for it as it is, or remove it first (Network.remove)",
            )
        return cls._of(spec)

    @classmethod
    def list(cls, *, dirs: StateDirs | None = None) -> list[Network]:
        from nsrun.networks import manager

        return [cls._of(spec) for spec in manager.network_store(_dirs(dirs)).all()]

    @classmethod
    def remove(cls, name: str, *, dirs: StateDirs | None = None) -> None:
        """Remove it; ConflictError while a sandbox uses it, NotFoundError if there is none."""
        from nsrun.net import netlink
        from nsrun.networks import manager

        with contextlib.closing(netlink.Rtnl()) as ipr:
            manager.remove_network(_dirs(dirs), ipr, name)
