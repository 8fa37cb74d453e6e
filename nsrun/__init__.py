"""nsrun: run one command, or one test server, in its own network namespace, confined, on a bridge
with NAT to the outside.

    from nsrun import Sandbox, Network

Importing `nsrun` loads nothing else: the API is imported on first use, so the sandbox's own
processes (`nsrun.process`) start without the libraries the host side needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = [
    "ConflictError",
    "Network",
    "NotFoundError",
    "NsrunError",
    "Sandbox",
    "SandboxExitedError",
    "SandboxTimeoutError",
    "UsageError",
    "__version__",
]

if TYPE_CHECKING:
    from nsrun.api.network import Network
    from nsrun.api.sandbox import Sandbox, SandboxExitedError, SandboxTimeoutError
    from nsrun.errors import ConflictError, NotFoundError, NsrunError, UsageError

_HOMES = {
    "Sandbox": "nsrun.api.sandbox",
    "SandboxExitedError": "nsrun.api.sandbox",
    "SandboxTimeoutError": "nsrun.api.sandbox",
    "Network": "nsrun.api.network",
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
