"""Specification of the ``clara-fl`` commands on the spleen MMAR: train, validate, export, infer, fine-tune.

The session's ``trained_spleen`` MMAR (one tiny epoch) is shared: tests that write into an MMAR
work on their own copy.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from clara_fl.cli import main
from tests.conftest import REPO, tiny_set

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def copy_of(mmar: Path, destination: Path) -> Path:
    shutil.copytree(mmar, destination)
    return destination


def datalist(mmar: Path) -> dict:
    environment = json.loads((mmar / "config" / "environment.json").read_text())
    return json.loads(Path(environment["DATASET_JSON"]).read_text())


def printed_metric(stdout: str, name: str) -> float:
    found = re.findall(rf"^{name}: ([0-9.]+)$", stdout, flags=re.MULTILINE)
    assert len(found) == 1, stdout
    return float(found[0])


def parameters_only(state: dict) -> dict:
    """A state_dict without BatchNorm running statistics (they move in every training forward pass)."""
    return {k: v for k, v in state.items() if not k.endswith(BN_BUFFERS)}


@pytest.fixture(scope="module")
def exported_spleen(trained_spleen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained MMAR with models/model.ts exported from models/model.pt (read-only for tests)."""
    mmar = copy_of(trained_spleen, tmp_path_factory.mktemp("exported") / "spleen_ct_seg")
    assert main(["export", "-m", str(mmar), "--input_shape", "[1, 1, 32, 32, 32]"]) == 0
    return mmar


# -- train --------------------------------------------------------------------------------------


def test_train_writes_best_checkpoint_with_model_and_effective_train_conf(trained_spleen):
    checkpoint = torch.load(trained_spleen / "models" / "model.pt", map_location="cpu", weights_only=True)

    assert {"model", "train_conf"} <= set(checkpoint)
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["model"].values())
    train_conf = checkpoint["train_conf"]
    assert train_conf["train"]["model"]["name"] == "UNet"
    assert train_conf["epochs"] == 1  # the --set value, not the config's 1260
    assert train_conf["roi_size"] == [16, 16, 16]


def test_train_writes_final_checkpoint_with_optimizer_and_scheduler_state(trained_spleen):
    final = torch.load(trained_spleen / "models" / "final_model.pt", map_location="cpu", weights_only=True)

    assert {"model", "optimizer", "lr_scheduler", "train_conf"} <= set(final)
    assert (
        final["model"].keys() == torch.load(trained_spleen / "models" / "model.pt", weights_only=True)["model"].keys()
    )


def test_train_writes_tensorboard_event_files_next_to_the_checkpoints(trained_spleen):
    events = list((trained_spleen / "models").glob("events.out.tfevents.*"))

    assert events
    assert all(e.stat().st_size > 0 for e in events)


def test_train_writes_train_stats(trained_spleen):
    stats = json.loads((trained_spleen / "models" / "train_stats.json").read_text())
    batches = math.ceil(len(datalist(trained_spleen)["training"]) / 2)  # batch_size 2, one epoch

    assert stats["epochs_completed"] == 1
    assert stats["total_iterations"] == batches
    assert stats["world_size"] == 1
    assert stats["key_metric_name"] == "val_mean_dice"
    assert 0.0 <= stats["best_key_metric"] <= 1.0
    assert stats["best_key_metric_epoch"] == 1
    assert stats["total_time_s"] > 0


# -- export ----------------------------------------------------------------------------------------


def test_export_writes_torchscript_that_reproduces_the_checkpoint(exported_spleen):
    from clara_fl.config.resolver import BuildContext
    from clara_fl.runtime.checkpoint import load_checkpoint_model

    scripted = torch.jit.load(str(exported_spleen / "models" / "model.ts"), map_location="cpu")
    network = load_checkpoint_model(str(exported_spleen / "models" / "model.pt"), BuildContext())
    example = torch.rand(1, 1, 32, 32, 32)

    with torch.no_grad():
        out = scripted(example)
        assert out.shape == (1, 2, 32, 32, 32)
        assert torch.allclose(out, network(example), atol=1e-5)


# -- validate --------------------------------------------------------------------------------------


def test_validate_writes_metrics_csv_raw_and_summary(exported_spleen, tmp_path, capsys):
    mmar = copy_of(exported_spleen, tmp_path / "spleen_ct_seg")

    assert main(["validate", "-m", str(mmar), "--set", *tiny_set()]) == 0

    printed = printed_metric(capsys.readouterr().out, "val_mean_dice")
    eval_dir = mmar / "eval"
    metrics = dict(csv.reader((eval_dir / "metrics.csv").read_text().splitlines()))
    assert set(metrics) == {"val_mean_dice", "val_acc"}
    assert float(metrics["val_mean_dice"]) == pytest.approx(printed, abs=5e-5)
    raw = list(csv.DictReader((eval_dir / "val_mean_dice_raw.csv").read_text().splitlines()))
    validation_images = {Path(item["image"]).name for item in datalist(mmar)["validation"]}
    assert {Path(row["filename"]).name for row in raw} == validation_images
    assert np.mean([float(row["mean"]) for row in raw]) == pytest.approx(float(metrics["val_mean_dice"]), abs=1e-5)
    summary = (eval_dir / "val_mean_dice_summary.csv").read_text()
    assert summary.splitlines()[0].split(",")[:3] == ["class", "mean", "median"]


def test_validation_from_torchscript_and_from_checkpoint_give_the_same_dice(exported_spleen, tmp_path, capsys):
    mmar = copy_of(exported_spleen, tmp_path / "spleen_ct_seg")

    assert main(["validate", "-m", str(mmar), "--set", *tiny_set()]) == 0
    from_torchscript = printed_metric(capsys.readouterr().out, "val_mean_dice")
    assert (
        main(
            ["validate", "-m", str(mmar), "--set", *tiny_set(), "dont_load_ts_model=True", "dont_load_ckpt_model=False"]
        )
        == 0
    )
    from_checkpoint = printed_metric(capsys.readouterr().out, "val_mean_dice")

    assert from_checkpoint == from_torchscript


# -- infer -------------------------------------------------------------------------------------------


def test_infer_writes_one_segmentation_nifti_per_test_image(exported_spleen, tmp_path):
    mmar = copy_of(exported_spleen, tmp_path / "spleen_ct_seg")
    data_root = Path(json.loads((mmar / "config" / "environment.json").read_text())["DATA_ROOT"])
    test_images = [data_root / p for p in datalist(mmar)["test"]]

    assert main(["infer", "-m", str(mmar), "-c", "config/config_inference.json", "--set", *tiny_set()]) == 0

    for image in test_images:
        stem = image.name.removesuffix(".nii.gz")
        written = list((mmar / "eval").rglob(f"{stem}_seg.nii.gz"))
        assert len(written) == 1, f"no segmentation for {image.name}"
        segmentation = np.asanyarray(nib.load(str(written[0])).dataobj)
        assert segmentation.shape == nib.load(str(image)).shape
        assert set(np.unique(segmentation).tolist()) <= {0.0, 1.0}


# -- fine-tune -------------------------------------------------------------------------------------


def test_finetune_starts_from_the_trained_checkpoint(trained_spleen, tmp_path, caplog):
    mmar = copy_of(trained_spleen, tmp_path / "spleen_ct_seg")
    checkpoint = mmar / "models" / "model.pt"
    trained = parameters_only(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    (mmar / "models" / "final_model.pt").unlink()
    caplog.set_level(logging.INFO)

    code = main(
        [
            "train",
            "-m",
            str(mmar),
            "-c",
            "config/config_finetune.json",
            "--set",
            *tiny_set(learning_rate=0),
            "dont_load_ckpt_model=False",
        ]
    )

    assert code == 0
    assert any(f"Restored all variables from {checkpoint}" in r.getMessage() for r in caplog.records)
    final = parameters_only(
        torch.load(mmar / "models" / "final_model.pt", map_location="cpu", weights_only=True)["model"]
    )
    assert final.keys() == trained.keys()
    # learning_rate 0: the weights after fine-tuning are exactly the loaded ones, not a fresh initialisation.
    assert all(torch.equal(final[k], trained[k]) for k in trained)


# -- the command itself -----------------------------------------------------------------------------


def test_python_m_clara_fl_help_lists_the_commands():
    result = subprocess.run(
        [sys.executable, "-m", "clara_fl", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    for command in ("train", "validate", "infer", "export"):
        assert command in result.stdout


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from clara_fl.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "print(sorted(m for m in ('torch', 'monai', 'ignite', 'nvflare') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
