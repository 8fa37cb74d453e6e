"""The CLI without root: parsing, routing of CMD vs subcommands, one-line errors and exit codes."""

from __future__ import annotations

import os

import pytest

from nsrun.cli import app as cli
from nsrun.cli import run
from nsrun.launch.request import NetMode, SandboxRequest
from nsrun.process.shim import exit_status


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.run_cli(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param(["--net", "bogus", "--", "true"], "invalid --net 'bogus'", id="net"),
        pytest.param(["--ip", "1.2.3", "true"], "invalid --ip '1.2.3'", id="ip"),
        pytest.param(["--mac", "nope", "true"], "invalid --mac", id="mac"),
        pytest.param(["--bogus"], "No such option", id="option"),
        pytest.param([], "no command given", id="no-command"),
        pytest.param(["network", "create", "x", "--subnet", "1.2.3.4/40"], "invalid --subnet", id="subnet"),
        pytest.param(["network", "create", "x", "--bridge", "b" * 16], "16 bytes", id="bridge"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.startswith("nsrun: ")
    assert err.count("\n") == 1
    assert fragment in err


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0
    for text in ("--net", "--network", "--ip", "--mac", "125", "127", "126", "[--] CMD"):
        assert text in out


def test_request_keeps_command_options_and_separators() -> None:
    request = SandboxRequest.parse(["curl", "--", "-x"], net="none")
    assert request.argv == ("curl", "--", "-x")
    assert request.net is NetMode.NONE


def test_launcher_group_routes_command_words(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[SandboxRequest] = []
    monkeypatch.setattr(run, "_foreground", lambda request, *_: seen.append(request) or 0)
    monkeypatch.setattr(run, "require_root", lambda: None)
    for argv, expected in [
        (["--net", "none", "--", "network", "ls"], ("network", "ls")),  # after --: a command named network
        (["cat", "-n", "--net", "x"], ("cat", "-n", "--net", "x")),  # a first word that is no subcommand
        (["--", "ls", "-l"], ("ls", "-l")),  # after --, even a subcommand's name is the command
        (["--", "--help"], ("--help",)),
    ]:
        assert cli.run_cli(argv) == 0
        assert seen.pop().argv == expected


@pytest.mark.parametrize(
    ("status", "code"),
    [(0, 0), (42 << 8, 42), (15, 143), (9, 137)],
    ids=["success", "exit-42", "sigterm", "sigkill"],
)
def test_exit_status_of_signals(status: int, code: int) -> None:
    assert exit_status(status) == code


def test_non_root_is_refused_before_anything(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    status, out, err = run_cli(capsys, "--", "true")
    assert status == 125
    assert out == ""
    assert err.startswith("nsrun: nsrun needs root: ")
    assert err.endswith(" (run it with sudo)\n")
    assert err.count("\n") == 1
