"""`nsrun.Network`: named networks from Python, as `nsrun network ...` manages them."""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nsrun.errors import UsageError

if TYPE_CHECKING:
    from nsrun.networks.spec import NetworkSpec
    from nsrun.state.paths import StateDirs

__all__ = ["Network"]


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
    def ensure(cls, name: str, **options: Any) -> Network:
        """The network of that name, created with `options` if it does not exist yet."""
        from nsrun.networks.manager import NetworkExistsError

        existing = cls.get(name, dirs=options.get("dirs"))
        if existing is not None:
            return existing
        try:
            return cls.create(name, **options)
        except NetworkExistsError:
            found = cls.get(name, dirs=options.get("dirs"))
            if found is None:
                raise
            return found

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
