"""--resume after a kill -9: the state written after every epoch, and what --resume says with nothing to resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clara_fl.cli import main
from clara_fl.runtime.checkpoint import BackgroundCheckpointWriter
from tests.conftest import tiny_set


def saved_epoch(path: Path) -> int | None:
    """The epoch recorded in the resume state, None while there is none (files appear whole: atomic writes)."""
    return int(torch.load(path, weights_only=True)["epoch"]) if path.is_file() else None


def test_kill_9_after_an_epoch_then_resume_continues_from_the_last_finished_epoch_to_the_end(spleen_mmar: Path) -> None:
    epochs = 4
    models = spleen_mmar / "models"
    state_file = models / "train_state.pt"
    command = [
        sys.executable,
        "-m",
        "clara_fl",
        "train",
        "-m",
        str(spleen_mmar),
        "--write_train_stats",
        "--set",
        *tiny_set(epochs=epochs),
    ]
    process = subprocess.Popen(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while (saved_epoch(state_file) or 0) < 1:  # wait for the event: epoch 1's state on disk
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no resume state after 240 s"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    killed_at = saved_epoch(state_file)
    assert killed_at is not None and 1 <= killed_at < epochs, f"killed after epoch {killed_at} of {epochs}"

    assert (
        main(["train", "-m", str(spleen_mmar), "--resume", "--write_train_stats", "--set", *tiny_set(epochs=epochs)])
        == 0
    )

    stats = json.loads((models / "train_stats.json").read_text())
    state = torch.load(state_file, weights_only=True)
    epoch_length = state["trainer"]["epoch_length"]
    assert stats["resumed_from_epoch"] == killed_at
    assert stats["epochs_completed"] == epochs
    assert stats["total_iterations"] == (epochs - killed_at) * epoch_length, "this run trained only the missing epochs"
    assert (state["epoch"], state["iteration"]) == (epochs, epochs * epoch_length)


def test_resume_with_nothing_to_resume_says_so_in_one_line_and_trains_from_epoch_0(
    spleen_mmar: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["train", "-m", str(spleen_mmar), "--resume", "--write_train_stats", "--set", *tiny_set(epochs=1)]) == 0

    said = [r.getMessage() for r in caplog.records if "nothing to resume" in r.getMessage()]
    assert said == [
        f"--resume: nothing to resume in {spleen_mmar / 'models'} (no train_state.pt); starting from epoch 0"
    ]
    stats = json.loads((spleen_mmar / "models" / "train_stats.json").read_text())
    assert stats["resumed_from_epoch"] is None and stats["epochs_completed"] == 1


def test_the_background_writer_writes_the_state_as_it_was_when_submitted(tmp_path: Path) -> None:
    weights = torch.zeros(3)
    writer = BackgroundCheckpointWriter(tmp_path / "state.pt")

    writer.submit({"model": {"w": weights}, "epoch": 1})
    weights.add_(1.0)  # training goes on while the file is written
    writer.flush()

    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert saved["epoch"] == 1 and torch.equal(saved["model"]["w"], torch.zeros(3))
