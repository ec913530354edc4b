"""The benchmark harness's pure parts (bench/harness): arm rotation, medians, records and the table, the command
line, the results file, the FL job's commands and files, and the server log and probe readers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from bench.figures import FIGURES
from bench.harness.comparison import median, rotated
from bench.harness.data import mmar_settings, scratch_folder, write_site_config
from bench.harness.federated import job_create_command, read_probe, round_starts, simulate_command
from bench.harness.figure import Context
from bench.harness.records import Record, table
from bench.harness.settings import QUICK, RESULTS, Settings
from bench.harness.suite import parser, results_document, settings_from, wanted_figures

# A FLARE server log: round 2's banner sits on the lines under its record's time stamp.
SERVER_LOG = "\n".join(
    [
        "2026-11-25 10:00:00,000 - ScatterAndGather - INFO - [identity=simulator_server] - Round 0 started.",
        "2026-11-25 10:00:02,000 - ScatterAndGather - INFO - [identity=simulator_server] - Round 1 started.",
        "2026-11-25 10:00:03,500 - FedAvg - INFO - [identity=simulator_server, wf=controller] - ",
        "-" * 80,
        f"{'Round 2 started.':^80}",
        "-" * 80,
        "2026-11-25 10:00:05,000 - ScatterAndGather - INFO - [identity=simulator_server] - Round 3 started.",
        "",
    ]
)


def record(**values: Any) -> Record:
    fields = {"figure": "x", "measure": "m", "baseline": "b", "kind": "ratio", "value": 1.01, "unit": "x"}
    return Record(**{**fields, "goal": "<= 1.05", "met": True, **values})


def args(*argv: str) -> argparse.Namespace:
    return parser("bench", FIGURES).parse_args(list(argv))


def test_each_of_three_arms_goes_first_in_turn() -> None:
    orders = [rotated(["a", "b", "c"], turn) for turn in range(4)]

    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_two_arms_alternate() -> None:
    orders = [rotated(("plain", "he"), turn) for turn in range(3)]

    assert orders == [["plain", "he"], ["he", "plain"], ["plain", "he"]]


def test_the_median_passes_over_missing_values_and_is_none_without_any() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None, None]) is None


def test_the_table_shows_a_ratio_to_three_places_and_a_skipped_figure_by_its_note() -> None:
    skipped = record(figure="7 GPU", kind="skipped", value=None, goal="(GPU only)", met=None, note="skipped: no GPU")

    lines = table([record(), skipped]).splitlines()

    assert lines[0].split() == ["figure", "clara-fl", "vs", "baseline", "value", "goal", "met"]
    assert lines[2].split() == ["x", "b", "1.010", "<=", "1.05", "yes"]
    assert "skipped: no GPU" in lines[3] and lines[3].endswith("n/a")


def test_the_table_cuts_a_long_baseline_at_60_characters() -> None:
    text = table([record(baseline="b" * 80)])

    assert "b" * 59 + "…" in text and "b" * 60 not in text


def test_a_delta_shows_its_sign_and_unit_and_a_missed_goal_says_no() -> None:
    missed = record(kind="delta", value=0.456, unit="s", met=False)

    assert missed.shown_value() == "+0.46 s"
    assert table([missed]).splitlines()[2].endswith("NO")


def test_quick_settings_with_a_changed_setting_are_custom() -> None:
    settings = settings_from(args("--quick", "--pairs", "2"))

    assert settings.pairs == 2 and settings.epochs == QUICK.epochs
    assert settings.mode == "custom"
    assert settings_from(args("--quick")).mode == "quick" and settings_from(args()).mode == "full"


def test_figure_8s_seeds_and_site_counts_are_chosen_on_the_command_line() -> None:
    settings = settings_from(args("--algorithm-seeds", "0", "--algorithm-sites", "2,3"))

    assert settings.algorithm_seeds == (0,) and settings.algorithm_sites == (2, 3)
    assert settings.mode == "custom"


def test_figure_8s_data_sets_are_chosen_on_the_command_line_and_an_unknown_one_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert settings_from(args("--algorithm-datasets", "differing")).algorithm_datasets == ("differing",)
    assert settings_from(args()).algorithm_datasets == ("identical", "differing")

    with pytest.raises(SystemExit):
        args("--algorithm-datasets", "differing,mixed")

    assert "expected comma-separated names of identical, differing, got 'differing,mixed'" in capsys.readouterr().err


def test_fewer_rounds_than_the_warm_up_and_two_measured_ones_are_refused() -> None:
    with pytest.raises(ValueError, match="7 rounds"):
        settings_from(args("--rounds", "6"))


def test_the_figures_option_selects_known_figures_in_running_order() -> None:
    chosen = wanted_figures("9, 4,1,42", FIGURES)

    assert [f.number for f in chosen] == ["1", "4", "9"]
    assert [f.number for f in wanted_figures(args().figures, FIGURES)] == [str(n) for n in range(1, 12)]


def test_the_results_file_keeps_the_keys_of_the_recorded_runs() -> None:
    recorded = json.loads((RESULTS / "latest.json").read_text())

    document = json.loads(json.dumps(results_document([record()], QUICK, ["--quick"], 61.23, [1, 2, 3], [3, 2, 1])))

    assert list(document) == list(recorded)
    assert set(document["records"][0]) == set(recorded["records"][0])
    assert document["command"].endswith("bench/run.py --quick") and document["elapsed_s"] == 61.2
    assert document["mode"] == "quick" and document["settings"]["pairs"] == QUICK.pairs


def test_every_side_sets_the_same_mmar_variables() -> None:
    values = mmar_settings(Settings(roi=16, lr=0.001), epochs=3, val_interval=1)

    assert values == [
        "epochs=3",
        "roi_size=[16,16,16]",
        "learning_rate=0.001",
        "num_workers=0",
        "num_interval_per_valid=1",
    ]


def test_the_site_config_points_each_site_at_its_own_datalist(tmp_path: Path) -> None:
    path = write_site_config(tmp_path / "site.json", Path("/data"))

    environment = json.loads(path.read_text())["environment"]
    assert environment == {"DATA_ROOT": "/data", "DATASET_JSON": "/data/dataset_{SITE_NAME}.json"}


def test_job_options_follow_the_set_values_and_the_simulation_runs_two_sites() -> None:
    create = job_create_command(Path("m"), Path("j"), 3, 2, ["epochs=1"], ["--he"])
    simulate = simulate_command(Path("j"), Path("ws"), Path("site.json"))

    assert create[2:] == [
        *("clara_fl", "job", "create", "-m", "m", "-o", "j", "--num-rounds", "3", "--local-epochs", "2"),
        *("--min-clients", "2", "--set", "epochs=1", "--he"),
    ]
    assert simulate[2:] == ["clara_fl", "simulate", "j", "-w", "ws", "-n", "2", "-t", "2", "--site-config", "site.json"]


def test_round_starts_take_a_banners_time_from_the_record_above_it(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text(SERVER_LOG)

    starts = round_starts(log)

    assert sorted(starts) == [0, 1, 2, 3]
    assert starts[2] - starts[1] == pytest.approx(1.5, abs=1e-3)


def test_the_probe_reader_also_reads_what_confined_site_processes_wrote_beside_their_jobs(tmp_path: Path) -> None:
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "probe-1.jsonl").write_text('{"site": "server"}\n\n')
    confined = tmp_path / "ws" / "site-1" / ".bench_probe"
    confined.mkdir(parents=True)
    (confined / "probe-2.jsonl").write_text('{"site": "site-1"}\n{"site": "site-1", "kind": "wrapper"}\n')

    records = read_probe(tmp_path / "probe")

    assert sorted(r["site"] for r in records) == ["server", "site-1", "site-1"]


def test_a_shared_run_is_made_once_per_suite_run(tmp_path: Path) -> None:
    ctx = Context(QUICK, tmp_path / "data", tmp_path / "work", log=lambda line: None)
    made: list[Context] = []

    def make(run: Context) -> list[int]:
        made.append(run)
        return [len(made)]

    first = ctx.shared("runs", make)
    again = ctx.shared("runs", make)

    assert first == again == [1] and made == [ctx]


def test_a_scratch_folder_of_its_own_is_removed_at_the_end() -> None:
    with scratch_folder(None, "clara_fl_test_scratch_") as work:
        (work / "ws").mkdir()
        (work / "ws" / "model.pt").write_bytes(b"weights")

    assert not work.exists()


def test_a_scratch_folder_the_user_named_is_kept(tmp_path: Path) -> None:
    given = tmp_path / "work"

    with scratch_folder(given, "clara_fl_test_scratch_") as work:
        (work / "model.pt").write_bytes(b"weights")

    assert work == given and (given / "model.pt").read_bytes() == b"weights"
