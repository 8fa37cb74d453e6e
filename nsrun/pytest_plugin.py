"""pytest fixtures for test servers in sandboxes (the `pytest11` entry point `nsrun`).

    def test_cache(nsrun_sandbox):
        redis = nsrun_sandbox(["redis-server", "--save", ""], name="cache", publish=[6379], wait_port=6379)
        client = Redis(port=redis.host_port(6379))            # or Redis(host=redis.address)

`nsrun_sandbox` starts each server, waits until it is ready, hands over its handle and stops it
after the test; if it died during the test, the test fails with the end of its log.
`nsrun_sandbox_session` does the same for the whole session. Under pytest-xdist each worker's
names get the worker's id (`cache-gw0`: read `.name`), and `publish=[port]` takes a free host
port, so workers never collide. Needs root: without it the tests using them are skipped.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from nsrun.api.sandbox import Sandbox

__all__ = ["SandboxFactory", "nsrun_sandbox", "nsrun_sandbox_session"]

_LOG_TAIL: Final = 3000


def _worker() -> str | None:
    return os.environ.get("PYTEST_XDIST_WORKER")


class SandboxFactory:
    """Starts sandboxes for a test (or a session) and stops them all afterwards."""

    def __init__(self) -> None:
        self.started: list[Sandbox] = []

    def __call__(
        self,
        command: Sequence[str],
        *,
        name: str | None = None,
        wait_port: int | None = None,
        wait_log: str | None = None,
        timeout: float = 30,
        **options: Any,
    ) -> Sandbox:
        """A started sandbox (options as `nsrun.Sandbox`), ready once `wait_port` listens inside
        it and `wait_log` appeared in its output."""
        if os.geteuid() != 0:
            pytest.skip("nsrun needs root to start sandboxes")
        from nsrun.api.sandbox import Sandbox
        from nsrun.errors import NsrunError

        if name is not None and (worker := _worker()):
            name = f"{name}-{worker}"
        try:
            sandbox = Sandbox(command, name=name, **options).start()
        except NsrunError as err:
            pytest.fail(f"starting {list(command)}: {err}", pytrace=False)
        self.started.append(sandbox)
        try:
            if wait_port is not None:
                sandbox.wait_for_port(wait_port, timeout)
            if wait_log is not None:
                sandbox.wait_for_log(wait_log, timeout)
        except NsrunError as err:
            sandbox.stop()
            pytest.fail(str(err), pytrace=False)
        return sandbox

    def close(self) -> list[str]:
        """Stop every sandbox; what to say of those that died on their own."""
        died = []
        for sandbox in reversed(self.started):
            if sandbox.returncode is not None and not sandbox.stopped:
                tail = sandbox.logs()[-_LOG_TAIL:]
                died.append(f"sandbox {sandbox.name!r} died with {sandbox.returncode}; its log ends with:\n{tail}")
            if sandbox.returncode is None:
                sandbox.stop()
        self.started.clear()
        return died


def _fixture(factory: SandboxFactory) -> Iterator[SandboxFactory]:
    try:
        yield factory
    finally:
        died = factory.close()
        if died:
            pytest.fail("\n".join(died), pytrace=False)


@pytest.fixture
def nsrun_sandbox() -> Iterator[SandboxFactory]:
    """Start test servers in sandboxes for one test; they are stopped after it."""
    yield from _fixture(SandboxFactory())


@pytest.fixture(scope="session")
def nsrun_sandbox_session() -> Iterator[SandboxFactory]:
    """Start test servers in sandboxes for the whole session."""
    yield from _fixture(SandboxFactory())
