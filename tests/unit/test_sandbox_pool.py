"""`nsrun.Pool` without root: what it refuses, and when its thread makes the next spare."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from nsrun import Pool, Sandbox
from nsrun.api import pool as pool_module
from nsrun.errors import NsrunError, UsageError


@pytest.mark.parametrize("size", [0, -1, 33, True, 2.0, "2"])
def test_pool_size_is_checked(size: Any) -> None:
    with pytest.raises(UsageError, match="pool size"):
        Pool(size=size)


@pytest.mark.parametrize("net", ["host", "sandbox:web", "bridged"])
def test_pool_makes_only_namespaces_of_its_own(net: str) -> None:
    with pytest.raises(UsageError, match="for a pool"):
        Pool(net=net)


def test_pool_network_name_is_checked() -> None:
    with pytest.raises(UsageError):
        Pool(network="no/slash")


@pytest.mark.parametrize(
    "options",
    [
        {"name": "web"},
        {"hostname": "web"},
        {"ip": "10.200.0.9"},
        {"mac": "02:00:00:00:00:01"},
        {"publish": [8080]},
        {"dns": ["192.0.2.53"]},
        {"net": "none"},
        {"network": "lab"},
    ],
)
def test_a_pooled_sandbox_takes_its_network_from_the_pool(options: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="made ahead by the pool"):
        Sandbox(["true"], pool=Pool(), **options)


def test_a_pooled_sandbox_gets_the_pools_network_and_its_own_process_options() -> None:
    pool = Pool(net="none")
    sandbox = Sandbox(["sleep", "1"], pool=pool, env={"A": "1"}, workdir="/tmp", read_only=True)
    request = sandbox._request  # what start() will give the spare
    assert (request.net.value, request.argv, request.cwd, request.read_only) == ("none", ("sleep", "1"), "/tmp", True)
    assert ("A", "1") in request.env


def test_a_pool_not_opened_hands_nothing_out() -> None:
    with pytest.raises(NsrunError, match="not open"):
        Pool().take()


class _Spare:
    alive = True

    def discard(self) -> list[str]:
        return []


def _filled(pool: Pool, count: int) -> None:
    pool._spares = [_Spare() for _ in range(count)]  # type: ignore[misc]


def _refill_wanted(pool: Pool, within: float) -> bool:
    """Whether the pool's thread would start a spare within `within` seconds."""
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(pool._await_refill()))
    waiter.start()
    waiter.join(within)
    if waiter.is_alive():
        pool.close()  # wakes it: False
        waiter.join()
        return False
    return result[0]


def test_a_full_pool_makes_nothing() -> None:
    pool = Pool(size=2)
    _filled(pool, 2)
    assert not _refill_wanted(pool, 0.2)


def test_an_empty_pool_makes_one_at_once() -> None:
    pool = Pool(size=2)
    pool._last_take = time.monotonic()  # taken just now: still no waiting
    assert _refill_wanted(pool, 0.01)


def test_a_pool_with_spares_left_waits_for_a_quiet_moment() -> None:
    pool = Pool(size=2)
    _filled(pool, 1)
    pool._last_take = time.monotonic()
    assert not _refill_wanted(pool, pool_module._REFILL_AFTER / 5)
    pool = Pool(size=2)
    _filled(pool, 1)
    pool._last_take = time.monotonic()
    assert _refill_wanted(pool, pool_module._REFILL_AFTER * 20)


def test_a_failed_spare_is_retried_later() -> None:
    pool = Pool(size=2)
    pool._retry_at = time.monotonic() + 0.5
    assert not _refill_wanted(pool, 0.1)
