"""A site's training state between rounds (``LocalState``): what is written is the state at ``save()``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from clara_fl.fl.site.local_state import LocalState


class TensorWorkflow:
    """The part of a TrainWorkflow that LocalState uses, holding one live weight tensor."""

    def __init__(self) -> None:
        self.weight = torch.zeros(4)

    def training_state(self) -> dict[str, Any]:
        return {"model": {"weight": self.weight}}

    def load_training_state(self, path: str) -> dict[str, Any] | None:
        return torch.load(path, weights_only=True) if Path(path).is_file() else None


def test_the_written_state_is_the_state_at_save_even_when_the_network_changes_during_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clara_fl.runtime.files as files

    network_changed = threading.Event()
    atomic_write = files.atomic_write

    def write_after_the_change(path: str, write: Any) -> None:
        network_changed.wait(timeout=30)
        atomic_write(path, write)

    monkeypatch.setattr(files, "atomic_write", write_after_the_change)
    workflow = TensorWorkflow()
    state = LocalState(workflow, str(tmp_path / "fl_local_state.pt"))

    state.save()
    workflow.weight.add_(1.0)  # the next round starts training while the file is written
    network_changed.set()
    state.wait()

    written = workflow.load_training_state(state.path)
    assert written is not None
    assert torch.equal(written["model"]["weight"], torch.zeros(4))


def test_a_failed_write_leaves_the_in_memory_state_and_is_reported_on_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import clara_fl.runtime.files as files

    def disk_full(path: str, write: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "atomic_write", disk_full)
    state = LocalState(TensorWorkflow(), str(tmp_path / "fl_local_state.pt"))

    state.save()
    state.wait()

    assert "could not write" in caplog.text and "No space left" in caplog.text
    assert not Path(state.path).exists()
