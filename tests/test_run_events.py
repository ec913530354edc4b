"""The run's event files (clara_fl.runtime.events): what the workflows and sites write, and what readers get back."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from clara_fl.runtime import events as ev


def test_an_event_reads_back_as_it_was_written(tmp_path: Path) -> None:
    log = ev.EventLog(tmp_path / "server_events.jsonl")

    written = log.write(ev.TASK_RESULT, 2, "site-1", {"task": "train", "return_code": "OK"})

    assert ev.read_events(tmp_path / "server_events.jsonl") == [written]
    assert (written.kind, written.round, written.site, written.text("task")) == (ev.TASK_RESULT, 2, "site-1", "train")


def test_each_record_is_on_disk_as_soon_as_it_is_written(tmp_path: Path) -> None:
    log = ev.EventLog(tmp_path / "events.jsonl")

    log.write(ev.ROUND_STARTED, 0)

    assert [e.kind for e in ev.read_events(tmp_path / "events.jsonl")] == [ev.ROUND_STARTED]


def test_a_torn_last_line_is_skipped_and_the_whole_records_before_it_are_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = ev.EventLog(path)
    log.write(ev.ROUND_STARTED, 0)
    log.write(ev.GLOBAL_MODEL_VALIDATED, 0, "site-1", {"val_mean_dice": 0.25})
    with open(path, "a") as f:
        f.write('{"kind": "round_finished", "time": 17646')  # the writer was killed mid-line

    found = ev.read_events(path)

    assert [e.kind for e in found] == [ev.ROUND_STARTED, ev.GLOBAL_MODEL_VALIDATED]
    assert found[1].numbers() == {"val_mean_dice": 0.25}


def test_records_written_from_many_threads_are_each_one_whole_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = ev.event_log(tmp_path, "events.jsonl")

    def write_many(site: str) -> None:
        for number in range(50):
            log.write(ev.TASK_SENT, number, site, {"task": "train" * 200})

    threads = [threading.Thread(target=write_many, args=(f"site-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    lines = path.read_text().splitlines()
    assert len(lines) == 8 * 50 and all(json.loads(line)["kind"] == ev.TASK_SENT for line in lines)
    assert len(ev.read_events(path)) == 8 * 50


def test_components_writing_one_file_share_one_writer(tmp_path: Path) -> None:
    assert ev.event_log(tmp_path, "site_events.jsonl") is ev.event_log(str(tmp_path), "site_events.jsonl")
    assert ev.event_log(tmp_path, "site_events.jsonl") is not ev.event_log(tmp_path, "server_events.jsonl")


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown event kind 'round_begun'"):
        ev.EventLog(tmp_path / "events.jsonl").write("round_begun", 0)


def test_a_field_that_is_not_a_number_or_a_string_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="event field 'cases' must be a number or a string, not list"):
        ev.EventLog(tmp_path / "events.jsonl").write(ev.MODEL_VALIDATED, None, "site-1", {"cases": ["case_003"]})


def test_a_metric_that_is_not_finite_is_written_as_text_and_read_as_no_number(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    ev.EventLog(path).write(ev.GLOBAL_MODEL_VALIDATED, 1, "site-1", {"val_mean_dice": float("nan"), "val_acc": 0.5})

    (event,) = ev.read_events(path)

    assert json.loads(path.read_text())["fields"]["val_mean_dice"] == "nan"  # strict JSON, no bare NaN
    assert event.numbers() == {"val_acc": 0.5}


def test_lines_that_are_not_events_are_skipped() -> None:
    lines = ["not json", "[1, 2]", '{"kind": "round_started"}', '{"kind": "round_started", "time": 5.0, "round": 1}']

    assert [(e.kind, e.round) for e in ev.iter_events(lines)] == [(ev.ROUND_STARTED, 1)]
