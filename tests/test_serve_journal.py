"""The answered-requests journal: what a restarted daemon remembers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgekit.serve.mqtt import journal as journal_module
from edgekit.serve.mqtt.journal import Journal


def test_a_recorded_key_is_remembered_by_the_next_process(tmp_path: Path) -> None:
    first = Journal(tmp_path / "answered.jsonl", window_s=60)
    first.record("topic\0id-1")
    first.sync()
    # No close(): a SIGKILLed daemon never closes its journal.
    again = Journal(tmp_path / "answered.jsonl", window_s=60)
    assert "topic\0id-1" in again and "topic\0id-2" not in again


def test_keys_older_than_the_window_are_forgotten_and_dropped_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "answered.jsonl"
    old = time.time() - 120
    path.write_text(json.dumps([old, "old"]) + "\n" + json.dumps([time.time(), "new"]) + "\n")
    journal = Journal(path, window_s=60)
    assert "old" not in journal and "new" in journal
    assert "old" not in path.read_text()


def test_a_torn_last_line_from_a_crash_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "answered.jsonl"
    path.write_text(json.dumps([time.time(), "whole"]) + "\n" + '[1795426109.5, "tor')
    journal = Journal(path, window_s=60)
    assert "whole" in journal and len(journal) == 1


def test_the_file_is_compacted_while_running(tmp_path: Path, monkeypatch) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(journal_module.time, "time", lambda: clock[0])
    monkeypatch.setattr(journal_module, "COMPACT_EVERY", 4)
    journal = Journal(tmp_path / "answered.jsonl", window_s=60)
    for i in range(3):
        journal.record(f"early{i}")
    clock[0] += 120  # the early keys leave the window
    journal.record("late0")  # the 4th append: compaction
    journal.record("late1")
    lines = (tmp_path / "answered.jsonl").read_text().splitlines()
    assert [json.loads(line)[1] for line in lines] == ["late0", "late1"]
    assert "early0" not in journal and "late1" in journal
