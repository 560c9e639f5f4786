"""The answered-requests journal: what a restarted daemon remembers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgekit.serve.mqtt import journal as journal_module
from edgekit.serve.mqtt.journal import Flow, Journal


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
    assert [json.loads(line)["k"] for line in lines] == ["late0", "late1"]
    assert "early0" not in journal and "late1" in journal


def test_an_answers_flow_is_resumed_by_the_next_process_in_the_state_it_reached(tmp_path: Path) -> None:
    path = tmp_path / "answered.jsonl"
    first = Journal(path, window_s=60)
    first.sent(Flow("k1", 7, "edgekit/reply/a", b'{"id":"1"}', b"\x00corr"))
    first.sent(Flow("k2", 8, "edgekit/reply/b", b'{"id":"2"}', None))
    assert first.released(8) and not first.released(99)  # 99: never journaled, never released
    # No close(): a SIGKILLed daemon never closes its journal.
    again = Journal(path, window_s=60)
    flows = {flow.key: flow for flow in again.open_flows()}
    assert flows["k1"] == Flow("k1", 7, "edgekit/reply/a", b'{"id":"1"}', b"\x00corr", "sent")
    assert flows["k2"].state == "released" and flows["k2"].mid == 8
    assert "k1" not in again  # unfinished is not answered: its redelivery waits for the flow
    again.record("k2")
    third = Journal(path, window_s=60)
    assert [flow.key for flow in third.open_flows()] == ["k1"] and "k2" in third


def test_a_flow_sent_again_under_a_new_packet_id_replaces_the_old(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "answered.jsonl", window_s=60)
    journal.sent(Flow("k", 3, "t", b"x", None))
    journal.sent(Flow("k", 4, "t", b"x", None))  # the broker refused packet 3 for quota
    assert not journal.released(3)
    assert [(f.mid, f.state) for f in Journal(tmp_path / "answered.jsonl", window_s=60).open_flows()] == [(4, "sent")]


def test_compaction_keeps_unfinished_flows_however_old(tmp_path: Path, monkeypatch) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(journal_module.time, "time", lambda: clock[0])
    monkeypatch.setattr(journal_module, "COMPACT_EVERY", 3)
    path = tmp_path / "answered.jsonl"
    journal = Journal(path, window_s=60)
    journal.sent(Flow("old", 1, "t", b"x", None))
    journal.released(1)
    clock[0] += 120
    journal.record("new")  # the 3rd append: compaction
    again = Journal(path, window_s=60)
    assert [(f.key, f.state) for f in again.open_flows()] == [("old", "released")] and "new" in again
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_answered_keys_of_an_older_version_are_read(tmp_path: Path) -> None:
    path = tmp_path / "answered.jsonl"
    path.write_text(json.dumps([time.time(), "topic\0id-1"]) + "\n")
    assert "topic\0id-1" in Journal(path, window_s=60)
