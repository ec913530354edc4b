"""Standalone ``clara-fl train`` runs with the bench's settings, and the neutral evaluator that scores saved weights."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bench.harness.data import copy_mmar, mmar_settings
from bench.harness.processes import Run, base_env, check, run_process
from bench.harness.settings import BENCH, PY, Settings


def clara_train_command(
    mmar: Path,
    settings: Settings,
    epochs: int,
    valid_interval: int,
    data: Path,
    datalist: Path,
    extra_set: Sequence[str] = (),
) -> list[str]:
    """``clara-fl train`` of ``mmar`` on ``datalist`` under ``data`` with the bench's settings."""
    return [
        PY,
        "-m",
        "clara_fl",
        "train",
        "-m",
        str(mmar),
        "--set",
        *mmar_settings(settings, epochs, valid_interval),
        *extra_set,
        f"DATA_ROOT={data}",
        f"DATASET_JSON={datalist}",
    ]


def train_clara(
    settings: Settings,
    data: Path,
    datalist: Path,
    out: Path,
    epochs: int,
    extra_set: Sequence[str] = (),
    valid_interval: int = 1000,
) -> tuple[Run, Path]:
    """``clara-fl train`` on ``datalist`` for ``epochs``, returning the run and its final model; with
    ``valid_interval`` below ``epochs`` the MMAR validates every that many epochs and keeps its best model beside
    the final one (:func:`best_model`); by default it never validates.

    Raises:
        RuntimeError: the training failed.
    """
    mmar = copy_mmar(out / "mmar")
    command = clara_train_command(mmar, settings, epochs, valid_interval, data, datalist, extra_set)
    run = check(
        run_process(
            f"clara-fl train on {datalist.name}",
            command,
            base_env(settings.standalone_threads),
            out / "output.log",
            timeout_s=settings.timeout_s,
        )
    )
    return run, mmar / "models" / "final_model.pt"


def best_model(final_model: Path) -> Path:
    """The best-by-validation model the MMAR's CheckpointSaver keeps beside ``final_model`` (``models/model.pt``)."""
    return final_model.with_name("model.pt")


def evaluate_weights(settings: Settings, data: Path, weights: Path, out: Path, datalist: Path | None = None) -> float:
    """val_mean_dice of saved weights on a datalist's validation set (default the union, ``dataset.json``), by one
    neutral evaluator (the hand-written one).

    Raises:
        RuntimeError: the evaluator printed no ``EVAL`` line.
    """
    roi = [str(settings.roi)] * 3
    command = [
        PY,
        str(BENCH / "handwritten_train.py"),
        "--data-root",
        str(data),
        "--datalist",
        str(datalist or data / "dataset.json"),
        "--out",
        str(out),
        "--roi",
        *roi,
        "--num-workers",
        "0",
        "--eval-weights",
        str(weights),
    ]
    proc = subprocess.run(command, env=base_env(settings.standalone_threads), capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("EVAL "):
            return float(json.loads(line[5:])["val_mean_dice"])
    raise RuntimeError(f"evaluating {weights} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
