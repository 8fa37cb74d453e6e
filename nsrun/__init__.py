"""nsrun: run one command, or one test server, in its own network namespace, confined, on a bridge
with NAT to the outside.

    from nsrun import Sandbox, Network, Pool

Importing `nsrun` loads nothing else: the API is imported on first use, so the sandbox's own
processes (`nsrun.process`) start without the libraries the host side needs.
"""

from __future__ import annotations

__version__ = "0.2.0"
__all__ = [
    "ConflictError",
    "Network",
    "NotFoundError",
    "NsrunError",
    "Pool",
    "Sandbox",
    "SandboxExitedError",
    "SandboxTimeoutError",
    "UsageError",
    "__version__",
]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the launch path)
if TYPE_CHECKING:
    from typing import Any

    from nsrun.api.network import Network
    from nsrun.api.pool import Pool
    from nsrun.api.sandbox import Sandbox, SandboxExitedError, SandboxTimeoutError
    from nsrun.errors import ConflictError, NotFoundError, NsrunError, UsageError

_HOMES = {
    "Sandbox": "nsrun.api.sandbox",
    "SandboxExitedError": "nsrun.api.sandbox",
    "SandboxTimeoutError": "nsrun.api.sandbox",
    "Network": "nsrun.api.network",
    "Pool": "nsrun.api.pool",
    "NsrunError": "nsrun.errors",
    "ConflictError": "nsrun.errors",
    "NotFoundError": "nsrun.errors",
    "UsageError": "nsrun.errors",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'nsrun' has no attribute {name!r}")
