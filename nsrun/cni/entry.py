"""The `nsrun-cni` executable that container engines run once per CNI call. Stdlib only and light,
like the `nsrun` client: the call goes to the warm helper, whose worker has every module loaded;
without one (absent, stale, another version) it runs in this process, and starts a helper for the
calls that follow. What it prints is the spec's JSON; the exit status is 0 or 1.
"""

from __future__ import annotations

import os
import sys

from nsrun.helper import client

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (on the hot path)
if TYPE_CHECKING:
    from typing import Final, NoReturn

__all__ = ["main"]

_PREFIX: Final = "CNI_"


def main() -> NoReturn:
    stdin = sys.stdin.buffer.read() if sys.stdin is not None else b""
    env = {key: value for key, value in os.environ.items() if key.startswith(_PREFIX)}
    status, out = run(env, stdin)
    if out:
        os.write(1, out.encode() + b"\n")
    sys.exit(status)


def run(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
    """One CNI call: (exit status, stdout)."""
    if os.geteuid() == 0 and client.helper_wanted():
        try:
            return client.run_cni(env, stdin)
        except client.Unavailable as err:
            if err.args[-1:] == (client.SENT,) and env.get("CNI_COMMAND") == "ADD":
                # the helper went away half-way: what its worker made goes before the ADD here
                _in_process(env | {"CNI_COMMAND": "DEL"}, stdin)
    status, out = _in_process(env, stdin)
    if status == 0:
        client.start_helper()
    return status, out


def _in_process(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
    from nsrun.cni.plugin import handle

    return handle(env, stdin)
