"""What `nsrun.Sandbox` is given is checked as subprocess would: lists of strings (paths for a
command's words), a mapping of strings for env; never a string iterated by character or a None
that becomes the word "None"."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from nsrun import Pool, Sandbox
from nsrun.api.arguments import port, seconds, signal_number
from nsrun.errors import UsageError


@pytest.mark.parametrize(
    ("command", "options", "said"),
    [
        pytest.param("true", {}, "a list is expected, not str", id="command-string"),
        pytest.param(b"true", {}, "a list is expected, not bytes", id="command-bytes"),
        pytest.param(None, {}, "a list is expected, not NoneType", id="command-none"),
        pytest.param(["echo", None], {}, "None is not a string", id="command-word-none"),
        pytest.param(["echo", 1], {}, "1 is not a string", id="command-word-int"),
        pytest.param(["echo", b"x"], {}, "b'x' is not a string", id="command-word-bytes"),
        pytest.param(["true"], {"env": {"A": 1}}, "'A': 1: names and values are strings", id="env-value"),
        pytest.param(["true"], {"env": {"A": None}}, "'A': None", id="env-none"),
        pytest.param(["true"], {"env": ["A=1"]}, "a mapping is expected, not list", id="env-list"),
        pytest.param(["true"], {"dns": "192.0.2.53"}, "a list is expected, not str", id="dns-string"),
        pytest.param(["true"], {"volumes": "/srv:/srv"}, "a list is expected, not str", id="volumes-string"),
        pytest.param(["true"], {"tmpfs": "/tmp"}, "a list is expected, not str", id="tmpfs-string"),
        pytest.param(["true"], {"cap_add": "NET_RAW"}, "a list is expected, not str", id="cap-add-string"),
        pytest.param(["true"], {"publish": "8080"}, "a list is expected, not str", id="publish-string"),
        pytest.param(["true"], {"publish": 8080}, "a list is expected, not int", id="publish-int"),
    ],
)
def test_wrong_types_are_usage_errors(command: Any, options: dict[str, Any], said: str) -> None:
    with pytest.raises(UsageError, match="invalid") as raised:
        Sandbox(command, **options)
    assert said in str(raised.value)


def test_a_commands_words_may_be_paths_and_any_iterable() -> None:
    assert Sandbox([Path("/bin/echo"), "hi"])._request.argv == ("/bin/echo", "hi")
    assert Sandbox(iter(("echo", "hi")))._request.argv == ("echo", "hi")
    assert ("A", "1") in Sandbox(["true"], env={"A": "1"})._request.env


def test_a_pools_dns_is_a_list_too() -> None:
    with pytest.raises(UsageError, match="a list is expected, not str"):
        Pool(dns="192.0.2.53")


@pytest.mark.parametrize(
    ("options", "said"),
    [
        pytest.param({"privileged": "no"}, "'no' is not True or False", id="privileged-string"),
        pytest.param({"read_only": 1}, "1 is not True or False", id="read-only-int"),
        pytest.param({"name": 5}, "5 is not a string", id="name-int"),
        pytest.param({"hostname": 5}, "5 is not a string", id="hostname-int"),
        pytest.param({"network": 5}, "5 is not a string", id="network-int"),
        pytest.param({"ip": 5}, "5 is not a string", id="ip-int"),
        pytest.param({"mac": b"x"}, "b'x' is not a string", id="mac-bytes"),
        pytest.param({"workdir": 5}, "5 is not a string", id="workdir-int"),
        pytest.param({"user": 1.5}, "1.5 is not a string", id="user-float"),
        pytest.param({"publish": [(1, 2, 3)]}, "a tuple is (HOST_PORT, PORT)", id="publish-triple"),
    ],
)
def test_a_flag_is_a_bool_and_a_scalar_a_string(options: dict[str, Any], said: str) -> None:
    """privileged="no" would have been true (a non-empty string): confinement off by accident."""
    with pytest.raises(UsageError, match="invalid") as raised:
        Sandbox(["true"], **options)
    assert said in str(raised.value)


def test_a_uid_and_a_path_are_taken_as_subprocess_takes_them() -> None:
    assert Sandbox(["true"], user=65534)._request.user.identity.uid == 65534
    assert Sandbox(["true"], workdir=Path("/tmp"))._request.cwd == "/tmp"


@pytest.mark.parametrize(("given", "number"), [(15, 15), ("TERM", 15), ("sigterm", 15), ("SIGKILL", 9), ("USR1", 10)])
def test_a_signal_is_a_number_or_a_name(given: Any, number: int) -> None:
    assert signal_number(given) == number


@pytest.mark.parametrize("given", [0, 999, -1, True, 1.5, "BOGUS", "SIG_IGN", "", None])
def test_anything_else_is_not_a_signal(given: Any) -> None:
    with pytest.raises(UsageError, match="not a signal name or number"):
        signal_number(given)


@pytest.mark.parametrize("given", ["80", 0, 65536, True, 80.0, None])
def test_a_port_to_wait_for_is_an_int(given: Any) -> None:
    with pytest.raises(UsageError, match="a port is an int from 1 to 65535"):
        port(given)
    with pytest.raises(UsageError, match="a port is an int"):
        Sandbox(["true"]).wait_for_port(given)  # before it looks at the sandbox


@pytest.mark.parametrize(("given", "taken"), [(0, 0.0), (1.5, 1.5), (10, 10.0), (math.inf, math.inf)])
def test_a_timeout_is_seconds_from_zero(given: Any, taken: float) -> None:
    assert seconds("timeout", given) == taken


@pytest.mark.parametrize("given", ["1", -1, math.nan, True, None, [1]])
def test_anything_else_is_not_a_timeout(given: Any) -> None:
    """A string failed deep inside (TypeError), NaN waited forever."""
    with pytest.raises(UsageError, match="a number of seconds, 0 or more"):
        seconds("timeout", given)
    sandbox = Sandbox(["true"])
    calls = [sandbox.stop]
    if given is not None:  # no bound, for these two
        calls += [sandbox.wait, lambda t: sandbox.exec(["true"], timeout=t)]
    for call in calls:
        with pytest.raises(UsageError, match="a number of seconds"):
            call(given)  # before it looks at the sandbox
    with pytest.raises(UsageError, match="a number of seconds"):
        sandbox.wait_for_log("x", timeout=given)


@pytest.mark.parametrize("given", [b"Ready", re.compile(b"Ready"), 5, None])
def test_a_log_pattern_is_text(given: Any) -> None:
    with pytest.raises(UsageError, match="the log is text"):
        Sandbox(["true"]).wait_for_log(given)
