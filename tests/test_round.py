"""The FL round on a tiny MONAI trainer: how epochs rounds, steps rounds and aborts end, and which handlers run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from clara_fl.workflows.round import RoundRunner, RoundSpec

EPOCH_LENGTH = 4


def tiny_trainer() -> SupervisedTrainer:
    torch.manual_seed(0)
    data = [{"image": torch.randn(1, 3), "label": torch.randn(1, 1)} for _ in range(EPOCH_LENGTH)]
    network = torch.nn.Linear(3, 1)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=None),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        loss_function=torch.nn.MSELoss(),
    )


class EventLog:
    """Records (event, epoch, iteration) for the events an epoch-level handler would use."""

    def __init__(self, trainer: Any) -> None:
        self.events: list[tuple[str, int, int]] = []
        for event in (Events.EPOCH_COMPLETED, Events.COMPLETED, Events.TERMINATE):
            trainer.add_event_handler(event, self.record, event.name)

    def record(self, engine: Any, name: str) -> None:
        self.events.append((name, engine.state.epoch, engine.state.iteration))

    def named(self, name: str) -> list[tuple[str, int, int]]:
        return [e for e in self.events if e[0] == name]


def test_an_epochs_round_trains_whole_epochs_and_runs_every_epoch_handler() -> None:
    trainer = tiny_trainer()
    rounds = RoundRunner(trainer)
    log = EventLog(trainer)

    result = rounds.run(RoundSpec(local_epochs=2))

    assert (result.steps, result.epoch, result.iteration, result.aborted) == (
        2 * EPOCH_LENGTH,
        2,
        2 * EPOCH_LENGTH,
        False,
    )
    assert log.named("EPOCH_COMPLETED") == [("EPOCH_COMPLETED", 1, 4), ("EPOCH_COMPLETED", 2, 8)]
    assert log.named("COMPLETED") == [("COMPLETED", 2, 8)]  # the run reached its max_epochs


def test_a_steps_round_ending_on_an_epoch_boundary_runs_that_epochs_handlers_but_not_completed() -> None:
    trainer = tiny_trainer()
    rounds = RoundRunner(trainer)
    log = EventLog(trainer)

    result = rounds.run(RoundSpec(steps=EPOCH_LENGTH))

    assert (result.steps, result.epoch, result.iteration) == (EPOCH_LENGTH, 1, EPOCH_LENGTH)
    assert log.events == [("EPOCH_COMPLETED", 1, EPOCH_LENGTH)], "no COMPLETED (final checkpoint), no TERMINATE"


def test_a_steps_round_ending_mid_epoch_defers_the_epoch_handlers_to_the_round_that_finishes_the_epoch() -> None:
    trainer = tiny_trainer()
    rounds = RoundRunner(trainer)
    log = EventLog(trainer)

    first = rounds.run(RoundSpec(steps=EPOCH_LENGTH + 1))  # one epoch and one batch of the next

    assert (first.steps, first.iteration) == (EPOCH_LENGTH + 1, EPOCH_LENGTH + 1)
    assert log.events == [("EPOCH_COMPLETED", 1, EPOCH_LENGTH)], (
        "the second epoch has not ended: none of its handlers ran"
    )

    second = rounds.run(RoundSpec(steps=EPOCH_LENGTH - 1))  # the rest of epoch 2

    assert (second.steps, second.epoch, second.iteration) == (EPOCH_LENGTH - 1, 2, 2 * EPOCH_LENGTH)
    assert log.events == [("EPOCH_COMPLETED", 1, EPOCH_LENGTH), ("EPOCH_COMPLETED", 2, 2 * EPOCH_LENGTH)]


def test_steps_rounds_smaller_than_an_epoch_add_up_to_whole_epochs() -> None:
    trainer = tiny_trainer()
    rounds = RoundRunner(trainer)
    log = EventLog(trainer)

    steps = [rounds.run(RoundSpec(steps=1)).steps for _ in range(2 * EPOCH_LENGTH)]

    assert steps == [1] * (2 * EPOCH_LENGTH)
    assert (trainer.state.epoch, trainer.state.iteration) == (2, 2 * EPOCH_LENGTH)
    assert [e[1:] for e in log.named("EPOCH_COMPLETED")] == [(1, EPOCH_LENGTH), (2, 2 * EPOCH_LENGTH)]
    assert not log.named("COMPLETED")


def test_an_abort_stops_after_the_iteration_in_progress_and_drops_the_unfinished_epoch() -> None:
    trainer = tiny_trainer()
    rounds = RoundRunner(trainer)
    iterations: list[int] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: iterations.append(e.state.iteration))

    result = rounds.run(RoundSpec(local_epochs=5), should_abort=lambda: len(iterations) >= EPOCH_LENGTH + 2)

    assert result.aborted
    assert result.steps == EPOCH_LENGTH + 3, "polled before the probe: after iteration 7 it saw 6 recorded"
    assert (result.epoch, result.iteration) == (1, EPOCH_LENGTH), "back at the end of the last finished epoch"

    again = rounds.run(RoundSpec(local_epochs=1))

    assert not again.aborted and (again.steps, again.epoch, again.iteration) == (EPOCH_LENGTH, 2, 2 * EPOCH_LENGTH)


def test_a_round_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="local_epochs or steps_aggregation"):
        RoundSpec(local_epochs=0, steps=0)
