"""The helper's code stamp: what retires a running helper when nsrun's code changes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from nsrun.helper.protocol import code_stamp

if TYPE_CHECKING:
    from pathlib import Path


def _package(root: Path) -> Path:
    package = root / "nsrun"
    (package / "net").mkdir(parents=True)
    (package / "__pycache__").mkdir()
    for path in (package / "__init__.py", package / "net" / "netlink.py"):
        path.write_text("x = 1\n")
    for path in (package, package / "net", package / "__init__.py", package / "net" / "netlink.py"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    return package


def test_a_checkout_edited_in_place_gets_a_new_stamp(tmp_path: Path) -> None:
    package = _package(tmp_path / "checkout")
    before = code_stamp(str(package))
    source = package / "net" / "netlink.py"
    with source.open("w") as out:  # in place: the folder's own time does not move
        out.write("x = 2\n")
    os.utime(source, ns=(2_000_000_000, 2_000_000_000))
    assert code_stamp(str(package)) == 2_000_000_000 != before


def test_an_installed_copy_reads_folders_and_sees_pip_replace_files(tmp_path: Path) -> None:
    package = _package(tmp_path / "lib" / "site-packages")
    before = code_stamp(str(package))
    assert before == 1_000_000_000
    (package / "__pycache__" / "netlink.cpython-311.pyc").write_bytes(b"")  # Python's own cache
    assert code_stamp(str(package)) == before
    (package / "net" / "netlink.py").unlink()  # pip removes the old file and writes the new one
    (package / "net" / "netlink.py").write_text("x = 2\n")
    assert code_stamp(str(package)) > before
