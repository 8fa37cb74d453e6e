from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.world import World


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    reason = "needs root" if os.geteuid() != 0 else f"needs {', '.join(missing)}" if missing else None
    if reason is None:
        return
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


# Every integration test that uses `world` runs against both firewall backends.
BACKENDS = [pytest.param("nftables", id="nft"), pytest.param("iptables", id="ipt")]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may write (tmp_path is root's alone): for sandboxes run as nobody."""
    path = Path(tempfile.mkdtemp(prefix="nsrun-test-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory of the host's tree outside /tmp (which --read-only replaces with a tmpfs)."""
    path = Path(tempfile.mkdtemp(prefix="nsrun-test-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def world(backend: str) -> Iterator[World]:
    from tests.world import World

    w = World(firewall=backend)
    try:
        yield w
    finally:
        w.close()
