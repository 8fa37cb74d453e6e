"""Whose command it is: `--user`, or the user who ran `sudo nsrun` (as firejail and vopono do),
or root; and the environment a command of that user starts with. Lookups only, no kernel state."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nsrun.errors import UsageError
from nsrun.process.plan import Identity

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["LOGIN_VARIABLES", "User", "command_environment", "invoking_user", "resolve_user"]

# what a login would have, and all a non-root command keeps of the caller's environment
LOGIN_VARIABLES: Final = ("PATH", "TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ")
_DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class User:
    identity: Identity
    login: str
    home: str
    shell: str


def _group_id(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(
            f"invalid --user group {text!r}", "no such group on this host", "give a group name or gid"
        ) from None


def resolve_user(spec: str) -> User:
    """USER[:GROUP], names or numeric ids; a numeric uid without a passwd entry is allowed."""
    name, _, group = spec.partition(":")
    if not name:
        raise UsageError(f"invalid --user {spec!r}", "expected USER[:GROUP]", "e.g. --user nobody or --user 1000:1000")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        if not name.isdigit():
            raise UsageError(
                f"invalid --user {name!r}", "no such user on this host", "give a user name or uid"
            ) from None
        entry = None
    uid = int(name) if entry is None else entry.pw_uid
    gid = _group_id(group) if group else (entry.pw_gid if entry else uid)
    groups: tuple[int, ...] = (gid,)
    if entry is not None and not group:
        groups = tuple(dict.fromkeys([gid, *os.getgrouplist(entry.pw_name, gid)]))
    login = entry.pw_name if entry else str(uid)
    home = entry.pw_dir if entry else "/"
    shell = entry.pw_shell if entry else "/bin/sh"
    return User(Identity(uid, gid, groups), login, home, shell or "/bin/sh")


def invoking_user(environ: Mapping[str, str]) -> User:
    """Who asked: the user behind `sudo` (SUDO_UID), else whoever runs nsrun (root)."""
    sudo_uid = environ.get("SUDO_UID", "")
    if os.geteuid() == 0 and sudo_uid.isdigit() and sudo_uid != "0":
        user = resolve_user(sudo_uid)
        sudo_gid = environ.get("SUDO_GID", "")
        if sudo_gid.isdigit() and int(sudo_gid) != user.identity.gid:
            identity = Identity(user.identity.uid, int(sudo_gid), user.identity.groups)
            return User(identity, user.login, user.home, user.shell)
        return user
    return resolve_user(str(os.geteuid()))


def command_environment(environ: Mapping[str, str], user: User, extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Root keeps the caller's environment; anyone else gets what a login would have (as with
    `docker run`), never root's. Then HOME, USER, LOGNAME and SHELL of the user, then every -e."""
    if user.identity.is_root:
        base = dict(environ)
    else:
        base = {key: environ[key] for key in LOGIN_VARIABLES if key in environ}
        base |= {key: value for key, value in environ.items() if key.startswith("LC_")}
        base.setdefault("PATH", _DEFAULT_PATH)
    base |= {"HOME": user.home, "USER": user.login, "LOGNAME": user.login, "SHELL": user.shell}
    return base | dict(extra)
