"""What the server keeps per round stays bounded: after each round's global model is saved, the memory the round's
site results and model copies held goes back to the system (glibc's ``malloc_trim``), as a site's FLARE process does
before each task."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants

from clara_fl.fl.server.persistor import ClaraModelPersistor


def round_context(folder: Path, current_round: int) -> FLContext:
    fl_ctx = FLContext()
    workspace = SimpleNamespace(get_run_dir=lambda job: os.path.join(folder, job))
    engine = SimpleNamespace(get_workspace=lambda: workspace, fire_event=lambda *args: None)
    fl_ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.put(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.APP_ROOT, str(folder), private=True, sticky=False)
    rounds = {AppConstants.CURRENT_ROUND: current_round, AppConstants.START_ROUND: 0, AppConstants.NUM_ROUNDS: 3}
    for key, value in rounds.items():
        fl_ctx.set_prop(key, value, private=True, sticky=False)
    return fl_ctx


def persistor_in(folder: Path) -> ClaraModelPersistor:
    """The persistor as _initialize leaves it: a network, and its model files in ``folder``."""
    persistor = ClaraModelPersistor()
    persistor.model = torch.nn.Linear(3, 1)
    persistor._ckpt_save_path = str(folder / "FL_global_model.pt")
    persistor._best_ckpt_save_path = str(folder / "best_FL_global_model.pt")
    return persistor


def test_the_server_gives_freed_memory_back_to_the_system_once_each_rounds_global_model_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nvflare.fuel.utils.memory_utils as memory_utils

    saved_when_trimmed: list[bool] = []

    def trim_noting_the_saved_model() -> int:
        saved_when_trimmed.append((tmp_path / "FL_global_model.pt").is_file())
        return 1

    monkeypatch.setattr(memory_utils, "try_malloc_trim", trim_noting_the_saved_model)
    persistor = persistor_in(tmp_path)
    learnable = persistor.load(round_context(tmp_path, 0))

    for current_round in range(3):
        persistor.save(learnable, round_context(tmp_path, current_round))

    assert saved_when_trimmed == [True, True, True]
