"""What a newcomer trips over (issue 18): where the weights are when no validation ran, commands that
check their own input before FLARE sees it, and a best global model that is the best of them all."""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

import pytest
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_event_type import AppEventType

from clara_fl.cli import main
from clara_fl.config.model_hints import final_model_hint
from clara_fl.fl.server.model_selection import (
    FINAL_GLOBAL_MODEL_METRICS,
    FINAL_GLOBAL_MODEL_VALIDATED,
    GlobalModelSelector,
)
from clara_fl.recipes.job_folder import create_job
from tests.conftest import SPLEEN_MMAR, copy_mmar, tiny_set
from tests.test_fl_simulation import SITES, fl_data  # noqa: F401  (fixtures)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed on stderr, asserted to be one line."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -- 1. a run that leaves no model.pt --------------------------------------------------------------


@pytest.fixture(scope="module")
def unvalidated_spleen(tmp_path_factory: pytest.TempPathFactory, fl_data) -> tuple[Path, list[str]]:  # noqa: F811
    """The spleen MMAR trained 1 epoch with validation every 20 (so only final_model.pt), and train's warnings."""
    mmar = copy_mmar(SPLEEN_MMAR, tmp_path_factory.mktemp("unvalidated") / "spleen_ct_seg", fl_data.root)
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("clara_fl.train").addHandler(handler)
    try:
        assert main(["train", "-m", str(mmar), "--set", *tiny_set(num_interval_per_valid=20)]) == 0
    finally:
        logging.getLogger("clara_fl.train").removeHandler(handler)
    return mmar, messages


def test_train_says_that_no_validation_ran_and_which_file_holds_the_weights(unvalidated_spleen) -> None:
    mmar, messages = unvalidated_spleen

    assert not (mmar / "models" / "model.pt").exists() and (mmar / "models" / "final_model.pt").is_file()
    [note] = [m for m in messages if "no validation ran" in m]
    assert "num_interval_per_valid=20" in note and "models/final_model.pt" in note


def test_export_of_the_missing_model_pt_names_final_model_pt_and_the_flag(unvalidated_spleen, capsys) -> None:
    mmar, _ = unvalidated_spleen

    code = main(["export", "-m", str(mmar), "--model_path", "models/model.pt", "--input_shape", "[1, 1, 32, 32, 32]"])

    line = error_line(capsys)
    assert code == 2 and "checkpoint not found" in line
    assert "use it with --model_path models/final_model.pt" in line
    assert not (mmar / "models" / "model.ts").exists()


def test_validating_the_missing_checkpoint_names_final_model_pt_and_the_set(unvalidated_spleen, capsys) -> None:
    mmar, _ = unvalidated_spleen

    checkpoint_entry = ["dont_load_ts_model=True", "dont_load_ckpt_model=False"]

    code = main(["validate", "-m", str(mmar), "--set", *tiny_set(), *checkpoint_entry])

    line = error_line(capsys)
    assert code == 2 and "model.ckpt_path" in line.replace("[1]", "")  # the config item that names the file
    assert "use it with --set MMAR_CKPT=models/final_model.pt" in line


def test_validating_the_missing_torchscript_names_final_model_pt_and_the_set(unvalidated_spleen, capsys) -> None:
    mmar, _ = unvalidated_spleen

    code = main(["validate", "-m", str(mmar), "--set", *tiny_set()])

    line = error_line(capsys)
    assert code == 2 and "model.ts" in line
    suggested = "--set dont_load_ts_model=True dont_load_ckpt_model=False MMAR_CKPT=models/final_model.pt"
    assert f"use it with {suggested}" in line


def test_fine_tuning_without_model_pt_names_final_model_pt_and_the_set(unvalidated_spleen, capsys) -> None:
    mmar, _ = unvalidated_spleen

    finetune = ["-c", "config/config_finetune.json"]

    code = main(["train", "-m", str(mmar), *finetune, "--set", *tiny_set(), "dont_load_ckpt_model=False"])

    line = error_line(capsys)
    assert code == 2 and "checkpoint to load not found" in line
    assert "use it with --set MMAR_CKPT=models/final_model.pt" in line


def test_the_set_that_the_hint_names_validates_final_model_pt(unvalidated_spleen, capsys) -> None:
    mmar, _ = unvalidated_spleen
    main(["validate", "-m", str(mmar), "--set", *tiny_set()])
    suggested = shlex.split(re.search(r"use it with --set (.*)\)$", error_line(capsys)).group(1))

    code = main(["validate", "-m", str(mmar), "--set", *tiny_set(), *suggested])

    assert code == 0
    assert "val_mean_dice" in capsys.readouterr().out


def test_no_hint_when_there_is_no_final_model_next_to_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()

    assert final_model_hint(str(tmp_path / "models" / "model.pt"), "--model_path", str(tmp_path)) == ""


def test_no_final_model_hint_for_a_missing_torchscript_when_model_pt_exists(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"")
    (tmp_path / "models" / "final_model.pt").write_bytes(b"")

    assert final_model_hint(str(tmp_path / "models" / "model.ts"), "ts_path", str(tmp_path)) == ""


# -- 2. commands check their own input -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "JOB", "-w", "WS", "-n", "0"],
        ["simulate", "JOB", "-w", "WS", "-t", "0"],
        ["job", "create", "-m", str(SPLEEN_MMAR), "-o", "JOB", "--num-rounds", "0"],
        ["job", "create", "-m", str(SPLEEN_MMAR), "-o", "JOB", "--local-epochs", "-1"],
        ["job", "create", "-m", str(SPLEEN_MMAR), "-o", "JOB", "--min-clients", "0"],
        ["job", "create", "-m", str(SPLEEN_MMAR), "-o", "JOB", "--nproc-per-site", "two"],
        ["synth", "DATA", "--cases", "0"],
        ["synth", "DATA", "--sites", "0"],
        ["synth", "DATA", "--shape", "32", "0", "32"],
        ["train", "-m", str(SPLEEN_MMAR), "--resume_state_every", "-1"],
    ],
    ids=lambda argv: " ".join(a for a in argv if a.startswith("-") and a not in ("-m", "-o", "-w")),
)
def test_a_count_below_one_is_a_usage_error_and_nothing_is_written(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    assert exit_info.value.code == 2
    assert "error: argument" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_simulating_a_missing_job_folder_is_one_line_before_flare_runs(tmp_path: Path, capsys) -> None:
    code = main(["simulate", str(tmp_path / "NO_SUCH_FOLDER"), "-w", str(tmp_path / "ws")])

    line = error_line(capsys)
    assert code == 2 and "NO_SUCH_FOLDER" in line and "job folder not found" in line
    assert not (tmp_path / "ws").exists()


def test_simulating_a_folder_without_meta_json_says_it_is_not_a_flare_job(tmp_path: Path, capsys) -> None:
    code = main(["simulate", str(SPLEEN_MMAR), "-w", str(tmp_path / "ws")])

    assert code == 2 and "not a FLARE job: meta.json is missing" in error_line(capsys)
    assert not (tmp_path / "ws").exists()


def test_simulating_fewer_sites_than_the_job_needs_names_min_clients(tmp_path: Path, capsys) -> None:
    job = create_job(SPLEEN_MMAR, tmp_path / "job", min_clients=3)

    code = main(["simulate", str(job), "-w", str(tmp_path / "ws"), "-n", "2"])

    line = error_line(capsys)
    assert code == 2 and "needs 3 sites" in line and "min_clients" in line and "-n 3" in line
    assert not (tmp_path / "ws").exists()


def test_simulating_with_more_threads_than_sites_is_refused(tmp_path: Path, capsys) -> None:
    job = create_job(SPLEEN_MMAR, tmp_path / "job")

    code = main(["simulate", str(job), "-w", str(tmp_path / "ws"), "-n", "2", "-t", "3"])

    assert code == 2 and "-t 3: expected at most the 2 site(s) of -n" in error_line(capsys)


def test_simulating_with_a_missing_site_file_is_refused(tmp_path: Path, capsys) -> None:
    job = create_job(SPLEEN_MMAR, tmp_path / "job")

    code = main(["simulate", str(job), "-w", str(tmp_path / "ws"), "--site-config", str(tmp_path / "sites.json")])

    assert code == 2 and f"--site-config {tmp_path / 'sites.json'}: site file not found" in error_line(capsys)
    assert not (tmp_path / "ws").exists()


def test_demo_with_a_missing_job_writes_nothing(tmp_path: Path, capsys) -> None:
    code = main(["demo", "--workspace", str(tmp_path / "demo"), "--job", str(tmp_path / "NO_SUCH_JOB")])

    assert code == 2 and "job folder not found" in error_line(capsys)
    assert not (tmp_path / "demo").exists()


def test_job_create_from_a_folder_that_is_not_an_mmar_is_refused(tmp_path: Path, capsys) -> None:
    code = main(["job", "create", "-m", str(tmp_path), "-o", str(tmp_path / "job")])

    assert code == 2 and "not an MMAR" in error_line(capsys)
    assert not (tmp_path / "job").exists()


def test_job_create_with_an_unknown_template_keeps_the_existing_job(tmp_path: Path, capsys) -> None:
    job = create_job(SPLEEN_MMAR, tmp_path / "job")

    code = main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(job), "--template", "no_such_template", "--force"])

    assert code == 2 and "job template 'no_such_template' not found" in error_line(capsys)
    assert (job / "meta.json").is_file()


def test_site_setup_of_a_missing_kit_folder_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(["site", "setup", str(tmp_path / "no_kit"), "--set", "DATA_ROOT=/data"])

    assert code == 2 and "no such folder" in error_line(capsys)
    assert not (tmp_path / "no_kit").exists()


def test_export_from_a_missing_mmar_folder_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(["export", "-m", str(tmp_path / "no_mmar"), "--input_shape", "[1, 1, 32, 32, 32]"])

    assert code == 2 and "MMAR folder not found" in error_line(capsys)


# -- 3. the best global model ----------------------------------------------------------------------


class _RecordingSelector(GlobalModelSelector):
    """GlobalModelSelector whose fired events are recorded instead of sent to an engine."""

    def __init__(self, best_so_far: float) -> None:
        super().__init__(key_metric="val_mean_dice")
        self.best_val_metric = self.best_raw_val_metric = best_so_far
        self.fired: list[str] = []

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        self.fired.append(event_type)


def final_model_validated(selector: GlobalModelSelector, metrics_by_site: dict) -> None:
    fl_ctx = FLContext()
    fl_ctx.set_prop(FINAL_GLOBAL_MODEL_METRICS, metrics_by_site, private=True, sticky=False)
    selector.handle_event(FINAL_GLOBAL_MODEL_VALIDATED, fl_ctx)


def test_a_final_global_model_better_than_the_best_becomes_the_best() -> None:
    selector = _RecordingSelector(best_so_far=0.5)

    final_model_validated(selector, {"site-1": {"val_mean_dice": 0.7}, "site-2": {"val_mean_dice": 0.4}})

    assert selector.fired == [AppEventType.GLOBAL_BEST_MODEL_AVAILABLE]
    assert selector.best_raw_val_metric == pytest.approx(0.55)


def test_a_final_global_model_worse_than_the_best_leaves_the_best_as_it_is() -> None:
    selector = _RecordingSelector(best_so_far=0.5)

    final_model_validated(selector, {"site-1": {"val_mean_dice": 0.6}, "site-2": {"val_mean_dice": 0.3}})

    assert selector.fired == []
    assert selector.best_raw_val_metric == 0.5


@pytest.mark.e2e
def test_the_best_global_model_scores_at_least_the_last_global_model(fedavg_simulation) -> None:
    from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results

    results_file = find_cross_site_results(fedavg_simulation.workspace)  # 3 rounds (the session's, conftest.py)
    assert results_file is not None
    results = load_cross_site_results(results_file)

    mean = lambda owner: sum(results[site][owner]["val_mean_dice"] for site in SITES) / len(SITES)  # noqa: E731
    assert mean("SRV_best_FL_global_model.pt") >= mean("SRV_FL_global_model.pt"), json.dumps(results)
