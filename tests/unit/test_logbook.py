"""The logbook: a start costs the same however many ended sandboxes it keeps."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

import pytest

from nsrun.state.logbook import KEEP_SECONDS, SWEEP_INTERVAL, LogBook, LogEntry
from nsrun.state.paths import StateDirs

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def book(tmp_path: Path) -> LogBook:
    return LogBook(StateDirs(run=tmp_path / "run", lib=tmp_path / "lib"))


def _entry(sandbox_id: str, name: str | None = None) -> LogEntry:
    return LogEntry(sandbox_id, name or sandbox_id, ("true",), time.time(), logged=True)


def _ended(book: LogBook, entry: LogEntry, ago: float = 0.0) -> None:
    book.record(entry)
    os.close(book.open_log(entry.sandbox_id))
    book.ended(entry.sandbox_id, 0)
    if ago:
        path = book.exits / f"{entry.sandbox_id}.json"
        data = json.loads(path.read_text())
        path.write_text(json.dumps(data | {"ended": data["ended"] - ago}))


def test_a_new_sandbox_of_a_name_replaces_the_last_one_that_ended(book: LogBook) -> None:
    _ended(book, _entry("a" * 12, "web"))
    book.record(_entry("b" * 12, "web"))
    assert book.get("a" * 12) is None
    assert not book.log_path("a" * 12).exists()
    found = book.find("web")
    assert found is not None
    assert found.sandbox_id == "b" * 12


def test_the_last_one_of_a_name_still_running_is_kept(book: LogBook) -> None:
    book.record(_entry("a" * 12, "web"))
    book.record(_entry("b" * 12, "web"))
    assert book.get("a" * 12) is not None


def test_a_start_reads_no_other_entry_between_sweeps(book: LogBook, monkeypatch: pytest.MonkeyPatch) -> None:
    book.record(_entry("a" * 12))  # the first start sweeps
    for n in range(20):
        _ended(book, _entry(f"{n:012x}"))

    def read_all() -> list[LogEntry]:
        raise AssertionError("a start read every entry")

    monkeypatch.setattr(book, "entries", read_all)
    monkeypatch.setattr(book, "get", lambda _id: pytest.fail("a start read an entry"))
    book.record(_entry("c" * 12))


def test_entries_older_than_a_day_go_at_the_next_sweep(book: LogBook) -> None:
    _ended(book, _entry("a" * 12, "old"), ago=KEEP_SECONDS + 60)
    _ended(book, _entry("b" * 12))
    book.record(_entry("c" * 12))  # within the interval: no sweep yet
    assert book.get("a" * 12) is not None
    stamp = book.exits / ".swept"
    past = time.time() - SWEEP_INTERVAL - 1
    os.utime(stamp, (past, past))
    book.record(_entry("d" * 12))
    assert book.get("a" * 12) is None
    assert not book.log_path("a" * 12).exists()
    assert not (book.exits / "names" / "old").exists()
    assert book.get("b" * 12) is not None


def test_a_name_that_is_not_one_is_refused(book: LogBook) -> None:
    with pytest.raises(ValueError, match="not a sandbox name"):
        book.record(_entry("a" * 12, "../escape"))
