"""Start-up and exit: a process that builds one workflow keeps the garbage collector out of the way."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clara_fl.cli import main
from clara_fl.runtime.startup import build_once, release_frozen
from tests.conftest import tiny_set


@pytest.fixture
def collector() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_build_once_pauses_the_collector_and_freezes_what_was_built(collector: None) -> None:
    gc.enable()
    with build_once():
        assert not gc.isenabled()
        built = [{"layer": i} for i in range(1000)]

    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(built)
    release_frozen()
    assert gc.get_freeze_count() == 0


def test_build_once_leaves_a_disabled_collector_disabled(collector: None) -> None:
    gc.disable()
    with build_once():
        pass
    assert not gc.isenabled()


def test_build_once_restores_the_collector_when_the_build_fails(collector: None) -> None:
    gc.enable()
    with pytest.raises(ValueError), build_once():
        raise ValueError("bad config")
    assert gc.isenabled()


def test_a_command_run_in_process_leaves_nothing_frozen(spleen_mmar: Path, collector: None) -> None:
    gc.enable()
    assert main(["train", "-m", str(spleen_mmar), "--set", *tiny_set(epochs=1)]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_the_program_exits_quickly_with_every_tensorboard_scalar_and_checkpoint_on_disk(spleen_mmar: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    command = [sys.executable, "-m", "clara_fl", "train", "-m", str(spleen_mmar), "--set", *tiny_set(epochs=2)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]

    models = spleen_mmar / "models"
    scalars: dict[str, int] = {}
    for events in models.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        scalars.update({tag: len(accumulator.Scalars(tag)) for tag in accumulator.Tags()["scalars"]})
    assert scalars["val_mean_dice"] == 2, "the last epoch's validation reached the event file"
    assert {"model.pt", "final_model.pt", "train_state.pt"} <= {p.name for p in models.iterdir()}
