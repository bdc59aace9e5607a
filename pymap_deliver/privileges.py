"""Privileges: bind as root, then serve as an ordinary user.

postfix's private socket directory and port 24 need root to bind; nothing
after that does. :func:`drop_privileges` switches to the named user and
group (supplementary groups: the user's own) for good, and
:func:`refuse_root` stops a daemon that would otherwise serve mail as root.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from pymap_admin.errors import ConfigurationError

__all__ = ["Identity", "drop_privileges", "refuse_root", "resolve_identity"]


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def resolve_identity(user: str, group: str | None = None) -> Identity:
    """The user (name or uid), its primary group unless ``group`` is given,
    and its supplementary groups from the group database."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ConfigurationError(f"--user: no such user: {user!r}") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigurationError(f"--group: no such group: {group!r}") from None
    groups = tuple(sorted({gid, *os.getgrouplist(entry.pw_name, gid)}))
    return Identity(entry.pw_name, entry.pw_uid, gid, groups, entry.pw_dir)


def drop_privileges(identity: Identity) -> None:
    """Become ``identity`` for good: groups first (they need root), then the
    uid; saved ids included, so root cannot be regained."""
    if os.geteuid() != 0:
        if (os.getuid(), os.getgid()) == (identity.uid, identity.gid):
            return
        raise ConfigurationError(
            f"--user {identity.user}: only root can switch users (running as uid "
            f"{os.geteuid()})")
    os.setgroups(list(identity.groups))
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(identity.uid, identity.uid, identity.uid)
    if identity.uid != 0:
        try:
            os.setresuid(0, 0, 0)
        except PermissionError:
            pass
        else:  # pragma: no cover - a kernel that lets this happen is not one to serve on
            raise ConfigurationError("could not drop root privileges")


def refuse_root(allow_root: bool) -> None:
    """Serving LMTP as root is never needed once the sockets are bound."""
    if os.geteuid() == 0 and not allow_root:
        raise ConfigurationError(
            "refusing to serve as root: give --user (and --group) to run as an "
            "unprivileged user after binding, or --allow-root")
