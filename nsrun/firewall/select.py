"""Which firewall backend a host gets: probed facts in, a pure decision with its reason out."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from typing import Final

from nsrun.errors import NsrunError, UsageError

__all__ = ["ENV_FIREWALL", "HostFirewall", "choose", "preload", "probe", "requested_backend", "resolve_auto"]

ENV_FIREWALL: Final = "NSRUN_FIREWALL"
CHOICES: Final = ("auto", "iptables", "nftables", "none")


@dataclass(frozen=True)
class HostFirewall:
    iptables_variant: str | None  # "nft", "legacy" or None when there is no iptables command
    foreign_nft_tables: tuple[str, ...]  # nftables tables of other tools
    nft_available: bool
    legacy_in_use: bool  # a legacy filter table exists in this namespace


def requested_backend() -> str:
    """NSRUN_FIREWALL, checked; `auto` when unset."""
    value = os.environ.get(ENV_FIREWALL, "auto").strip() or "auto"
    if value not in CHOICES:
        raise UsageError(f"invalid {ENV_FIREWALL}={value!r}", "no such backend", f"choose one of: {', '.join(CHOICES)}")
    return value


def choose(host: HostFirewall) -> tuple[str, str]:
    """(backend, why). python-iptables writes only the legacy tables, so it is right only where
    the host's firewall is legacy too; anywhere nf_tables is in charge, rules must live there."""
    if host.iptables_variant == "nft" and host.nft_available:
        return "nftables", "this host's iptables is iptables-nft (nf_tables)"
    if host.foreign_nft_tables and host.nft_available:
        return "nftables", f"an nftables ruleset is in use ({', '.join(host.foreign_nft_tables)})"
    if host.iptables_variant == "legacy" or host.legacy_in_use:
        return "iptables", "this host's iptables is iptables-legacy"
    if host.nft_available:
        return "nftables", "libnftables is available and no legacy ruleset is in use"
    return "iptables", "libnftables is not available"


def _iptables_variant() -> str | None:
    path = shutil.which("iptables") or next(
        (p for p in ("/usr/sbin/iptables", "/sbin/iptables") if os.path.exists(p)), None
    )
    if path is None:
        return None
    target = os.path.basename(os.path.realpath(path))
    if "legacy" in target:
        return "legacy"
    if "nft" in target:
        return "nft"
    return None


def probe() -> HostFirewall:
    from nsrun.firewall.iptables import legacy_filter_in_use  # reads /proc only

    nft_tables: tuple[str, ...] = ()
    nft_available = False
    with contextlib.suppress(NsrunError):
        from nsrun.firewall.nftables import FAMILY, TABLE, NftablesBackend

        tables = NftablesBackend().tables()
        nft_available = True
        nft_tables = tuple(f"{family} {name}" for family, name in tables if (family, name) != (FAMILY, TABLE))
    return HostFirewall(_iptables_variant(), nft_tables, nft_available, legacy_filter_in_use())


def resolve_auto() -> tuple[str, str]:
    return choose(probe())


def preload() -> None:
    """Import both backends' libraries now (a long-lived process that serves many launches);
    one that cannot load is skipped: using it later reports why."""
    import importlib

    for module in ("nsrun.firewall.nftables", "nsrun.firewall.iptables"):
        with contextlib.suppress(Exception):
            importlib.import_module(module)
