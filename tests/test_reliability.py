"""Reliability and security: crash-safe files, --resume, hostile checkpoints, the code policy, bad updates."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clara_fl.cli import main
from clara_fl.config.errors import ConfigError
from tests.conftest import REFERENCE, site_ctx, tiny_set

REPO = Path(__file__).resolve().parents[1]


def loads_everything(folder: Path) -> list[str]:
    """Every checkpoint and results file in ``folder`` loads; returns their names."""
    names = []
    for path in folder.iterdir():
        if path.suffix == ".pt":
            torch.load(path, weights_only=True)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            continue
        names.append(path.name)
    return names


# -- crash-safe writes and --resume ---------------------------------------------------------------


def test_kill_9_at_random_moments_leaves_only_loadable_files_and_resume_reaches_the_epochs(spleen_mmar: Path) -> None:
    epochs = 6
    command = [
        sys.executable,
        "-m",
        "clara_fl",
        "train",
        "-m",
        str(spleen_mmar),
        "--write_train_stats",
        "--resume_state_every",
        "0",
    ]
    command += ["--set", *tiny_set(epochs=epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    models = spleen_mmar / "models"
    rng = random.Random(0)
    for attempt in range(3):
        process = subprocess.Popen(
            [*command, *(["--resume"] if attempt else [])],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(5.0, 9.0))  # past start-up, somewhere inside training and its checkpoint writes
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        if models.is_dir():
            loads_everything(models)

    assert (
        main(["train", "-m", str(spleen_mmar), "--resume", "--write_train_stats", "--set", *tiny_set(epochs=epochs)])
        == 0
    )
    stats = json.loads((models / "train_stats.json").read_text())
    assert stats["epochs_completed"] == epochs
    assert "resumed_from_epoch" in stats
    assert {"model.pt", "final_model.pt", "train_state.pt"} <= set(loads_everything(models))
    assert not [p for p in models.iterdir() if p.name.endswith(".tmp")]


def test_resume_continues_from_the_saved_epoch_and_records_it(spleen_mmar: Path) -> None:
    assert main(["train", "-m", str(spleen_mmar), "--write_train_stats", "--set", *tiny_set(epochs=1)]) == 0
    one_epoch = json.loads((spleen_mmar / "models" / "train_stats.json").read_text())["total_iterations"]
    assert main(["train", "-m", str(spleen_mmar), "--resume", "--write_train_stats", "--set", *tiny_set(epochs=2)]) == 0

    stats = json.loads((spleen_mmar / "models" / "train_stats.json").read_text())
    assert stats["resumed_from_epoch"] == 1
    assert stats["epochs_completed"] == 2
    assert stats["total_iterations"] == one_epoch  # this process ran the second epoch only


def test_resuming_a_finished_run_says_so_and_exits_0(spleen_mmar: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-m", str(spleen_mmar), "--set", *tiny_set(epochs=1)]) == 0
    capsys.readouterr()

    assert main(["train", "-m", str(spleen_mmar), "--resume", "--set", *tiny_set(epochs=1)]) == 0
    assert "already finished" in capsys.readouterr().out


def test_resuming_a_run_killed_before_its_statistics_writes_them(spleen_mmar: Path) -> None:
    assert main(["train", "-m", str(spleen_mmar), "--write_train_stats", "--set", *tiny_set(epochs=1)]) == 0
    stats_file = spleen_mmar / "models" / "train_stats.json"
    stats_file.unlink()  # as a kill after the last epoch's state but before the statistics leaves it

    assert main(["train", "-m", str(spleen_mmar), "--resume", "--write_train_stats", "--set", *tiny_set(epochs=1)]) == 0

    stats = json.loads(stats_file.read_text())
    assert stats["epochs_completed"] == 1
    assert stats["resumed_from_epoch"] == 1
    assert stats["total_iterations"] == 0  # this process trained nothing


@pytest.mark.parametrize("every", [[], ["--resume_state_every", "3600"]], ids=["default", "old-flag-ignored"])
def test_the_resume_state_is_written_after_every_epoch(
    spleen_mmar: Path, monkeypatch: pytest.MonkeyPatch, every: list[str]
) -> None:
    from clara_fl.runtime.checkpoint import BackgroundCheckpointWriter

    written: list[int] = []
    real_write = BackgroundCheckpointWriter._write

    def write(self: BackgroundCheckpointWriter, snapshot: dict) -> None:
        written.append(snapshot["epoch"])
        real_write(self, snapshot)

    monkeypatch.setattr(BackgroundCheckpointWriter, "_write", write)
    assert main(["train", "-m", str(spleen_mmar), *every, "--set", *tiny_set(epochs=2, num_interval_per_valid=2)]) == 0

    assert written == [1, 2]
    assert torch.load(spleen_mmar / "models" / "train_state.pt", weights_only=True)["epoch"] == 2


def test_fine_tuning_loads_weights_only_while_resume_restores_the_whole_training_state(spleen_mmar: Path) -> None:
    assert main(["train", "-m", str(spleen_mmar), "--set", *tiny_set(epochs=1)]) == 0
    state = torch.load(spleen_mmar / "models" / "train_state.pt", weights_only=True)

    assert {"model", "optimizer", "epoch", "iteration", "best_metric", "best_metric_epoch"} <= set(state)
    assert state["epoch"] == 1 and state["optimizer"]["state"]  # Adam moments, not only weights


# -- hostile checkpoints --------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_checkpoint_is_refused_and_nothing_of_it_runs(
    trained_spleen: Path, tmp_path: Path, capsys
) -> None:
    marker = tmp_path / "payload_ran"
    hostile = tmp_path / "model.pt"
    with open(hostile, "wb") as f:
        pickle.dump({"model": {}, "train_conf": Payload(marker)}, f)

    code = main(
        [
            "validate",
            "-m",
            str(trained_spleen),
            "--set",
            *tiny_set(),
            "dont_load_ts_model=True",
            "dont_load_ckpt_model=False",
            f"MMAR_CKPT={hostile}",
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and "refusing to load this checkpoint" in error and str(hostile) in error

    code = main(
        [
            "export",
            "-m",
            str(trained_spleen),
            "--model_path",
            str(hostile),
            "--output_path",
            str(tmp_path / "m.ts"),
            "--input_shape",
            "[1, 1, 16, 16, 16]",
        ]
    )
    assert code == 2 and not (tmp_path / "m.ts").exists()
    assert not marker.exists()


# -- the code policy ------------------------------------------------------------------------------

HOSTILE_EXPRESSION = "#__import__('os').system('touch {marker}')"


def with_expression(mmar: Path, expression: str) -> None:
    """Put ``expression`` where config code normally lives: the optimizer's params."""
    path = mmar / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["train"]["optimizer"]["args"]["params"] = expression
    path.write_text(json.dumps(config))


def test_safe_standalone_refuses_imports_with_the_config_path_and_runs_nothing(
    spleen_mmar: Path, tmp_path: Path, capfd
) -> None:
    marker = tmp_path / "code_ran"
    with_expression(spleen_mmar, HOSTILE_EXPRESSION.format(marker=marker))

    assert main(["train", "-m", str(spleen_mmar), "--safe", "--set", *tiny_set()]) == 2
    error = capfd.readouterr().err  # from the confined process --safe runs the command in
    assert (
        "config/config_train.json: train.optimizer.args.params: code refused by the site's restricted policy" in error
    )
    assert not marker.exists() and not (spleen_mmar / "models").exists()


def test_standalone_without_safe_runs_full_python(spleen_mmar: Path) -> None:
    with_expression(spleen_mmar, "#list(__import__('itertools').chain(@model.parameters()))")

    assert main(["train", "-m", str(spleen_mmar), "--set", *tiny_set()]) == 0


def test_an_fl_site_refuses_job_code_by_default_and_every_task_fails_cleanly(fl_site, tmp_path: Path) -> None:
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.shareable import Shareable
    from nvflare.apis.signal import Signal

    from clara_fl.fl.site.learner import ClaraLearner

    app, workspace = fl_site
    marker = tmp_path / "code_ran"
    with_expression(app, HOSTILE_EXPRESSION.format(marker=marker))
    learner = ClaraLearner(overrides=dict(roi_size=[16, 16, 16], num_workers=0))
    learner.initialize({}, site_ctx(app, workspace))

    assert (
        "train.optimizer.args.params: code refused by the site's restricted policy" in learner.init_failure.local_text()
    )
    assert (
        learner.train(Shareable(), site_ctx(app, workspace), Signal()).get_return_code()
        == ReturnCode.EXECUTION_EXCEPTION
    )
    assert not marker.exists() and not (app / "models").exists()


def test_a_site_opts_in_to_full_python_in_its_local_policy(fl_site, monkeypatch) -> None:
    from clara_fl.fl.site.learner import ClaraLearner

    app, workspace = fl_site
    with_expression(app, "#list(__import__('itertools').chain(@model.parameters()))")
    site_file = workspace / "local" / "clara_fl_site.json"
    site_file.write_text(json.dumps({**json.loads(site_file.read_text()), "code_policy": "full"}))

    learner = ClaraLearner(overrides=dict(roi_size=[16, 16, 16], num_workers=0))
    learner.initialize({}, site_ctx(app, workspace))
    assert learner.init_failure is None

    monkeypatch.setenv("CLARA_FL_CODE_POLICY", "restricted")  # the simulator's switch wins over the file
    strict = ClaraLearner(overrides=dict(roi_size=[16, 16, 16], num_workers=0))
    strict.initialize({}, site_ctx(app, workspace))
    assert strict.init_failure is not None and "restricted policy" in strict.init_failure.local_text()


def all_configs() -> list[Path]:
    configs = sorted((REPO / "mmars").glob("*/config/config_*.json"))
    configs += sorted((REPO / "simulator_configs").glob("*/app/config/config_[!f]*.json"))
    if REFERENCE.is_dir():
        configs += [p for p in sorted(REFERENCE.rglob("config*.json")) if "fed" not in p.name] + sorted(
            REFERENCE.rglob("trn_*.json")
        )
    return configs


@pytest.mark.parametrize("config_file", all_configs(), ids=lambda p: str(p.relative_to(p.parents[3])))
def test_shipped_and_reference_configs_pass_the_restricted_policy(config_file: Path) -> None:
    from clara_fl.config.expressions import RestrictedEvaluator
    from clara_fl.config.variables import is_code

    def code_strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from code_strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from code_strings(v)
        elif isinstance(value, str) and is_code(value):
            yield value

    found = list(code_strings(json.loads(config_file.read_text())))
    for code in found:
        RestrictedEvaluator().check(code)


@pytest.mark.parametrize(
    "code",
    [
        "#__import__('os').system('id')",
        "#@model.__class__.__init__.__globals__",
        "#open('/etc/passwd').read()",
        "#torch.load('x.pt')",
        "lambda x: x.tofile('/tmp/leak')",
        "#getattr(@model, 'forward')",
        "#[c for c in ().__class__.__base__.__subclasses__()]",
        "#eval('1+1')",
        "#f'{1}'",
    ],
)
def test_the_restricted_policy_refuses_escapes(code: str) -> None:
    from clara_fl.config.expressions import RestrictedEvaluator

    with pytest.raises(ConfigError, match="restricted policy"):
        RestrictedEvaluator().check(code)


# -- updates that must never be aggregated --------------------------------------------------------


def test_the_server_rejects_an_update_holding_nan() -> None:
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.fl_context import FLContext

    from clara_fl.fl.server.filters import RejectNonFiniteUpdates

    good = DXO(DataKind.WEIGHT_DIFF, {"w": np.ones(3, dtype=np.float32), "n": np.array([3])}).to_shareable()
    bad = DXO(DataKind.WEIGHT_DIFF, {"w": np.array([1.0, np.nan], dtype=np.float32)}).to_shareable()
    inf = DXO(DataKind.WEIGHTS, {"w": np.array([np.inf], dtype=np.float32)}).to_shareable()

    assert RejectNonFiniteUpdates().process(good, FLContext()) is good
    assert RejectNonFiniteUpdates().process(bad, FLContext()).get_return_code() == ReturnCode.BAD_TASK_DATA
    assert RejectNonFiniteUpdates().process(inf, FLContext()).get_return_code() == ReturnCode.BAD_TASK_DATA
