"""`nsrun doctor`: one row per check of the host, ok/warn/fail with the exact fix.

Checks only look; the kernel features are tried in a throwaway namespace of a forked child. Every
check is guarded: whatever the state files hold, doctor reports a failed check, never an error of
its own (exit status 0 or 1, never 125).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from nsrun.doctor.report import Check, Status

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from nsrun.state.paths import StateDirs

__all__ = ["Check", "Status", "exit_code", "render_json", "render_table", "run_checks"]


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


def render_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status.value:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    data = {"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}
    return json.dumps(data, indent=2)


def _guarded(name: str, check: Callable[[], Iterable[Check]]) -> list[Check]:
    """The check's rows; if it cannot even run, one failed row saying why."""
    try:
        return list(check())
    except Exception as err:  # noqa: BLE001  # doctor reports, it never fails itself
        return [Check(name, Status.FAIL, f"could not be checked: {err}", "run `nsrun doctor --debug`? report it")]


def run_checks(dirs: StateDirs) -> list[Check]:
    from nsrun.doctor import host, networks, state

    checks = _guarded("privileges", lambda: [host.privileges()])
    if checks[0].status is Status.FAIL:
        return checks
    view = state.load(dirs)
    checks += view.problems
    for name, check in (
        ("chroot", lambda: [host.chroot()]),
        ("kernel", host.kernel_links),
        ("kernel: firewalls", host.kernel_firewalls),
        ("ip_forward", lambda: [host.ip_forward(view)]),
        ("firewall backend", lambda: [host.backend()]),
        ("foreign DROP policies", lambda: [host.foreign_drops()]),
        ("firewall managers", host.firewall_managers),
        ("warm helper", lambda: [host.helper(dirs.run)]),
    ):
        checks += _guarded(name, check)
    ipr = None
    with contextlib.suppress(Exception):
        from nsrun.net import netlink

        ipr = netlink.Rtnl()
    try:
        checks += _guarded("networks", lambda: networks.check_networks(view, ipr))
        checks += _guarded("sandboxes", lambda: networks.check_sandboxes(view))
        checks += _guarded("leftovers", lambda: state.leftovers(view, ipr))
    finally:
        if ipr is not None:
            ipr.close()
    return checks
