"""`ProcessPlan.view_added_to`: whether a command's plan can run in the view made ahead for a
pool's spare (and what it adds on top), or needs its view built anew. Pure: no root needed."""

from __future__ import annotations

from nsrun.process.plan import Confinement, Identity, Mount, MountKind, ProcessPlan

BASE = (Mount(MountKind.PROC, "/proc"), Mount(MountKind.DEV, "/dev"), Mount(MountKind.BIND, "/etc/hosts", "/run/x"))


def _plan(*mounts: Mount, hostname: str | None = "spare") -> ProcessPlan:
    return ProcessPlan(("true",), (), "/", Identity(0, 0), Confinement(0), hostname=hostname, mounts=(*BASE, *mounts))


def test_the_same_view_adds_nothing() -> None:
    assert _plan().view_added_to(_plan()) == ()


def test_tmpfs_on_top_are_added_to_the_view_made_ahead() -> None:
    scratch = Mount(MountKind.TMPFS, "/scratch")
    assert _plan(scratch).view_added_to(_plan()) == (scratch,)


def test_volumes_another_hostname_or_other_mounts_need_the_view_built_anew() -> None:
    volume = Mount(MountKind.BIND, "/srv", "/home/me/data", readonly=True)
    assert _plan(volume).view_added_to(_plan()) is None
    assert _plan(Mount(MountKind.TMPFS, "/t"), volume).view_added_to(_plan()) is None
    assert _plan(hostname="other").view_added_to(_plan()) is None
    readonly = ProcessPlan(("true",), (), "/", Identity(0, 0), Confinement(0), hostname="spare", mounts=BASE[:2])
    assert readonly.view_added_to(_plan()) is None  # fewer mounts than the view made ahead
