"""Pure-ish lookups of `--user USER[:GROUP]` in the host's user database (no kernel state)."""

from __future__ import annotations

import grp
import os
import pwd

from nsrun.errors import UsageError
from nsrun.process.child import Credentials

__all__ = ["resolve_user"]


def _group_id(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(f"invalid --user group {text!r}", "no such group on this host") from None


def resolve_user(spec: str) -> tuple[Credentials, str, str]:
    """(credentials, login name, home) for USER[:GROUP]; names or numeric ids."""
    user, _, group = spec.partition(":")
    if not user:
        raise UsageError(f"invalid --user {spec!r}", "expected USER[:GROUP]", "e.g. --user nobody or --user 1000:1000")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise UsageError(f"invalid --user {user!r}", "no such user on this host") from None
        entry = None
    uid = int(user) if entry is None else entry.pw_uid
    gid = _group_id(group) if group else (entry.pw_gid if entry else uid)
    groups: tuple[int, ...] = (gid,)
    if entry is not None and not group:
        groups = tuple(dict.fromkeys([gid, *os.getgrouplist(entry.pw_name, gid)]))
    name = entry.pw_name if entry else str(uid)
    home = entry.pw_dir if entry else "/"
    return Credentials(uid, gid, groups), name, home
