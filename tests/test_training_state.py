"""The trainer's progress in a saved training state, through ignite's Engine.state_dict()/load_state_dict()."""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from clara_fl.workflows.round import RoundRunner, RoundSpec
from clara_fl.workflows.train import TrainerProgress


def trainer_with(batches: int, max_epochs: int = 1) -> SupervisedTrainer:
    data = [{"image": torch.randn(1, 3), "label": torch.randn(1, 1)} for _ in range(batches)]
    network = torch.nn.Linear(3, 1)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=None),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        loss_function=torch.nn.MSELoss(),
    )


def test_a_mid_epoch_state_resumes_the_epoch_in_progress_in_a_new_trainer() -> None:
    first = trainer_with(4)
    RoundRunner(first).run(RoundSpec(steps=6))  # epoch 1 and half of epoch 2
    saved = TrainerProgress(first).state_dict()

    second = trainer_with(4)
    rounds = RoundRunner(second)
    TrainerProgress(second).load_state_dict(saved)
    ends: list[tuple[int, int]] = []
    second.add_event_handler(Events.EPOCH_COMPLETED, lambda e: ends.append((e.state.epoch, e.state.iteration)))

    assert (second.state.epoch, second.state.iteration) == (1, 6), "finished epochs, not the one in progress"
    result = rounds.run(RoundSpec(steps=2))

    assert ends == [(2, 8)], "the rest of epoch 2, ended once"
    assert (result.epoch, result.iteration) == (2, 8)


def test_a_state_from_another_epoch_length_keeps_only_its_finished_epochs() -> None:
    four_batches = trainer_with(4)
    RoundRunner(four_batches).run(RoundSpec(steps=6))
    saved = TrainerProgress(four_batches).state_dict()

    two_batches = trainer_with(2)  # e.g. the same site's data split over 2 DDP processes
    TrainerProgress(two_batches).load_state_dict(saved)

    assert (two_batches.state.epoch, two_batches.state.iteration, two_batches.state.epoch_length) == (1, 2, 2)


def test_loading_keeps_this_runs_max_epochs_so_resume_with_more_epochs_trains_on() -> None:
    short = trainer_with(4, max_epochs=2)
    short.run()
    saved = TrainerProgress(short).state_dict()

    longer = trainer_with(4, max_epochs=5)
    TrainerProgress(longer).load_state_dict(saved)
    longer.run()

    assert (longer.state.epoch, longer.state.iteration) == (5, 20)


def test_a_numpy_key_metric_priority_is_saved_as_plain_data(tmp_path) -> None:
    from types import SimpleNamespace

    import numpy as np
    from ignite.handlers import Checkpoint, DiskSaver

    from clara_fl.workflows.train import KeyMetricSaverState

    checkpoint = Checkpoint({"model": torch.nn.Linear(1, 1)}, DiskSaver(str(tmp_path), require_empty=False))
    checkpoint.load_state_dict({"_saved": [(np.float64(0.9), "model.pt")]})  # ROCAUC's priority is numpy
    saver = SimpleNamespace(_key_metric_checkpoint=checkpoint)
    torch.save(KeyMetricSaverState(saver).state_dict(), tmp_path / "state.pt")

    assert torch.load(tmp_path / "state.pt", weights_only=True) == {"_saved": [(0.9, "model.pt")]}
