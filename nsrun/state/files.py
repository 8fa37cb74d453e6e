"""Safe file operations under nsrun's state directories.

Modes are fixed whatever the caller's umask (directories 0700, private files 0600, files a
sandbox reads through a bind mount 0644); nothing follows a symlink; a file is never seen half
written (written aside with O_EXCL, then renamed or linked into place); and every failure names
the path and says what to do, instead of surfacing as a bare OSError.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import time
from typing import TYPE_CHECKING, Final

from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "MAX_STATE_FILE",
    "PUBLIC_FILE_MODE",
    "StateError",
    "create_exclusive",
    "ensure_dir",
    "is_partial",
    "open_private",
    "read_file",
    "remove_file",
    "remove_tree",
    "rewrite_in_place",
    "write_file",
]

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
PUBLIC_FILE_MODE: Final = 0o644  # bind-mounted into sandboxes, whose commands may not be root
MAX_STATE_FILE: Final = 1 << 20  # no state file nsrun writes comes near this
PARTIAL_PREFIX: Final = "."  # files being written; a crash can leave them, sweeps remove them
_NOFOLLOW_FLAGS: Final = os.O_NOFOLLOW | os.O_CLOEXEC


class StateError(NsrunError):
    """A state file or directory nsrun cannot use as it is."""


def _why(err: OSError) -> tuple[str, str]:
    """(why, what to do) for the usual ways a state path fails."""
    reasons = {
        errno.ENOSPC: ("the filesystem is full", "free space on it"),
        errno.EDQUOT: ("the disk quota is exhausted", "free space on it"),
        errno.EROFS: ("the filesystem is read-only", "remount it read-write"),
        errno.EACCES: ("permission denied", "run nsrun as root"),
        errno.EPERM: ("operation not permitted", "run nsrun as root"),
        errno.ELOOP: ("it is a symbolic link", "remove it; nsrun never follows links in its state"),
        errno.EISDIR: ("it is a directory", "remove it"),
        errno.ENOTDIR: ("a part of the path is not a directory", "remove the file in the way"),
    }
    code = err.errno if err.errno is not None else 0
    return reasons.get(code, (os.strerror(code).lower() if code else str(err), "run `nsrun doctor`"))


def fail(action: str, path: Path, err: OSError) -> StateError:
    why, fix = _why(err)
    return StateError(f"{action} {path}", why, fix)


def ensure_dir(path: Path, mode: int = DIR_MODE, *, root: Path | None = None) -> None:
    """The directory exists, is ours (not a link, not another user's) and has exactly `mode`;
    so does every directory between `root` (one of nsrun's state roots) and it. Nothing above
    `root` is created or changed."""
    top = root or path
    if path != top and top not in path.parents:
        raise ValueError(f"{path} is not under {top}")
    chain = [path, *(parent for parent in path.parents if parent == top or top in parent.parents)]
    for directory in reversed(chain):
        _ensure_one_dir(directory, mode)


def _ensure_one_dir(path: Path, mode: int) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as err:
        raise fail("creating directory", path, err) from err
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW_FLAGS)
    except OSError as err:
        raise fail("opening directory", path, err) from err
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise StateError(
                f"state directory {path}",
                f"it is owned by uid {info.st_uid}, so that user could forge nsrun's state",
                f"chown -R root:root {path} && chmod {mode:o} {path}, or remove it",
            )
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)  # an earlier run under a loose umask, or someone's chmod
    except OSError as err:
        raise fail("securing directory", path, err) from err
    finally:
        os.close(fd)


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_aside(path: Path, data: bytes, mode: int, *, durable: bool) -> Path:
    """A new file next to `path`, complete and with `mode`; the caller moves it into place."""
    partial = path.with_name(f"{PARTIAL_PREFIX}{path.name}.{secrets.token_hex(4)}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW_FLAGS, mode)
    except OSError as err:
        raise fail("writing", path, err) from err
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away
        _write_fd(fd, data)
        if durable:
            os.fsync(fd)
    except OSError as err:
        os.close(fd)
        _unlink_quietly(partial)
        raise fail("writing", path, err) from err
    os.close(fd)
    return partial


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        return


def write_file(path: Path, data: str | bytes, mode: int = FILE_MODE, *, durable: bool = False) -> None:
    """Replace `path` atomically: readers see the old content or the new, never a mix.
    `durable`: fsync first (definitions under /var/lib that must survive a power cut)."""
    raw = data.encode() if isinstance(data, str) else data
    partial = _write_aside(path, raw, mode, durable=durable)
    try:
        os.rename(partial, path)  # replaces a link at `path` itself, never what it points to
    except OSError as err:
        _unlink_quietly(partial)
        raise fail("writing", path, err) from err


def create_exclusive(path: Path, data: str | bytes, mode: int = FILE_MODE, *, durable: bool = False) -> bool:
    """Create `path` with this content unless something (even a dangling link) is there; False then."""
    raw = data.encode() if isinstance(data, str) else data
    partial = _write_aside(path, raw, mode, durable=durable)
    try:
        os.link(partial, path)
    except FileExistsError:
        return False
    except OSError as err:
        raise fail("creating", path, err) from err
    finally:
        _unlink_quietly(partial)
    return True


def read_file(path: Path, limit: int = MAX_STATE_FILE) -> str | None:
    """The text of a regular file, None if it does not exist. Links, devices, FIFOs and oversized
    files are refused: nothing there was written by nsrun."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise fail("reading", path, err) from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"reading {path}", "it is not a regular file", f"remove {path}")
        if info.st_size > limit:
            raise StateError(
                f"reading {path}", f"it has {info.st_size} bytes, more than nsrun writes", f"remove {path}"
            )
        chunks = []
        while chunk := os.read(fd, limit + 1):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    except OSError as err:
        raise fail("reading", path, err) from err
    finally:
        os.close(fd)


def open_private(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """An fd on a regular file nsrun owns (lock files, logs), created with `mode` if missing."""
    try:
        fd = os.open(path, flags | os.O_CREAT | _NOFOLLOW_FLAGS, mode)
    except OSError as err:
        raise fail("opening", path, err) from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise StateError(f"opening {path}", "it is not a regular file", f"remove {path}")
    if stat.S_IMODE(info.st_mode) != mode:
        os.fchmod(fd, mode)
    return fd


def stamp_if_older(path: Path, seconds: float) -> bool:
    """True, and `path` (a file nsrun owns, made if missing) stamped now, when its last stamp is
    `seconds` old or more: how work that reads every file of a kind is done at most that often.
    The file is touched, never replaced: it may be a lock file another process holds."""
    try:
        if time.time() - os.stat(path, follow_symlinks=False).st_mtime < seconds:
            return False
    except FileNotFoundError:
        pass
    fd = open_private(path, os.O_RDWR)
    try:
        os.utime(fd)
    finally:
        os.close(fd)
    return True


def rewrite_in_place(path: Path, text: str, mode: int = PUBLIC_FILE_MODE) -> None:
    """New content for a file other mount namespaces see through bind mounts, which pin its inode
    (a rename would leave them on the old file): one write of the whole content from offset 0.
    Shorter content is padded with a comment to the old length, so no reader ever sees the tail
    of the old content as if it were part of the new."""
    fd = open_private(path, os.O_RDWR, mode)
    try:
        data = text.encode()
        padding = os.fstat(fd).st_size - len(data)
        if padding == 1:
            data += b"\n"
        elif padding > 1:
            data += b"#" + b" " * (padding - 2) + b"\n"
        os.pwrite(fd, data, 0)
    except OSError as err:
        raise fail("writing", path, err) from err
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    """Remove a file (or link); one that is already gone counts as removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise fail("removing", path, err) from err


def remove_tree(path: Path) -> None:
    """Remove a directory nsrun made, without following links inside it; gone counts as removed."""
    try:
        shutil.rmtree(path)  # fd-based on Linux: a link planted inside is removed, not followed
    except FileNotFoundError:
        return
    except OSError as err:
        raise fail("removing", path, err) from err


def is_partial(name: str) -> bool:
    """A file a writer had not finished (or crashed while writing)."""
    return name.startswith(PARTIAL_PREFIX)
