"""The memo of the last firewall check: a check is skipped only at the very generation it found
the rules complete, carried forward only over commits the writer made itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from nsrun.firewall.checked import Memo, is_current, note_checked, scope

if TYPE_CHECKING:
    from pathlib import Path


def test_a_check_is_remembered_at_its_generation_only(tmp_path: Path) -> None:
    memo = tmp_path / "firewall.checked"
    assert not is_current(memo, "nsrun", 7)  # nothing checked yet
    note_checked(memo, "nsrun", 7, 0)  # found complete, nothing committed
    assert is_current(memo, "nsrun", 7)
    assert not is_current(memo, "nsrun", 8)  # anyone's change since: check again
    assert not is_current(memo, "lab", 7)
    assert not is_current(memo, "nsrun", None)  # no nf_tables generation: always check


def test_a_repair_counts_its_own_commits_and_keeps_the_other_networks(tmp_path: Path) -> None:
    memo = tmp_path / "firewall.checked"
    note_checked(memo, "nsrun", 7, 0)
    note_checked(memo, "lab", 7, 1)  # lab repaired by one commit: nsrun's rules were not touched
    assert is_current(memo, "nsrun", 8)
    assert is_current(memo, "lab", 8)


def test_a_change_by_another_hand_is_never_taken_for_complete(tmp_path: Path) -> None:
    memo = tmp_path / "firewall.checked"
    note_checked(memo, "nsrun", 7, 0)
    note_checked(memo, "lab", 7, 1)  # one commit of its own, and one of someone else's meanwhile:
    assert not is_current(memo, "lab", 9)  # the generation is past the memo's
    assert not is_current(memo, "nsrun", 9)
    note_checked(memo, "lab", 9, 0)  # checked at 9: nsrun's check was at 7, and 7 is past
    assert is_current(memo, "lab", 9)
    assert not is_current(memo, "nsrun", 9)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"generation": 7, "networks": ["nsrun"]}',  # of no scope
        '{"scope": 1, "generation": 7, "networks": []}',
        '{"scope": "s", "generation": "7", "networks": []}',
        '{"scope": "s", "generation": true, "networks": []}',
        '{"scope": "s", "generation": -1, "networks": []}',
        '{"scope": "s", "generation": 7, "networks": "nsrun"}',
        '{"scope": "s", "generation": 7, "networks": [7]}',
        '{"scope": "s", "generation": 7, "networks": ["../etc"]}',
    ],
)
def test_anything_but_a_memo_counts_as_none(tmp_path: Path, text: str) -> None:
    assert Memo.from_json(text) is None
    memo = tmp_path / "firewall.checked"
    memo.write_text(text)
    assert not is_current(memo, "nsrun", 7)


def test_a_memo_of_another_boot_or_namespace_counts_as_none(tmp_path: Path) -> None:
    memo = tmp_path / "firewall.checked"
    note_checked(memo, "nsrun", 7, 0)
    assert is_current(memo, "nsrun", 7)
    memo.write_text(memo.read_text().replace(scope(), "another-boot:4026531840"))
    assert not is_current(memo, "nsrun", 7)


def test_a_link_in_place_of_the_memo_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(Memo(7, frozenset({"nsrun"}), scope()).to_json())
    memo = tmp_path / "firewall.checked"
    memo.symlink_to(target)
    assert not is_current(memo, "nsrun", 7)
