"""nsrun acts as root on the host: refused for anyone else, before anything is touched."""

from __future__ import annotations

import os
from typing import Final

from nsrun.errors import NsrunError

__all__ = ["require_root"]

_CAP_SYS_ADMIN: Final = 21


def require_root() -> None:
    """Root with CAP_SYS_ADMIN: not another user, and not a root command inside a sandbox."""
    from nsrun.process import libc

    if os.geteuid() != 0:
        raise NsrunError(
            "nsrun needs root",
            "it creates namespaces, links and firewall rules, and keeps its state in /run/nsrun",
            "run it with sudo",
        )
    if not libc.capget()[0] >> _CAP_SYS_ADMIN & 1:
        raise NsrunError(
            "nsrun needs root with CAP_SYS_ADMIN",
            "this root has been confined (inside a sandbox?)",
            "run nsrun on the host",
        )
