"""FedProx at a site: FLARE's proximal term added to the MMAR's loss, against the round's global weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clara_fl.config.errors import UsageError
from clara_fl.fl.site.algorithms import local_algorithm
from clara_fl.recipes.algorithms import check_algorithm_args
from tests.job_apps import LEARNER, configured


def tiny_workflow() -> SimpleNamespace:
    """The parts of a TrainWorkflow FedProx uses: the network and a trainer with a loss function."""
    torch.manual_seed(0)
    network = torch.nn.Linear(3, 2)
    return SimpleNamespace(network=network, trainer=SimpleNamespace(loss_function=torch.nn.MSELoss()))


def test_the_loss_gains_mu_half_the_squared_distance_to_the_global_weights() -> None:
    workflow = tiny_workflow()
    fedprox = local_algorithm("fedprox", {"mu": 0.5})
    fedprox.setup(workflow)
    fedprox.before_round(workflow, {}, {})  # the network holds the round's global weights
    with torch.no_grad():
        workflow.network.weight.add_(1.0)  # local training moved 6 weights by 1
    pred, label = torch.zeros(4, 2), torch.ones(4, 2)

    loss = workflow.trainer.loss_function(pred, label)

    assert loss.item() == pytest.approx(1.0 + 0.5 / 2 * 6)


def test_the_proximal_term_pulls_the_gradient_towards_the_global_weights() -> None:
    workflow = tiny_workflow()
    fedprox = local_algorithm("fedprox", {"mu": 1.0})
    fedprox.setup(workflow)
    fedprox.before_round(workflow, {}, {})
    with torch.no_grad():
        workflow.network.bias.add_(2.0)

    workflow.trainer.loss_function(torch.zeros(1, 2), torch.zeros(1, 2)).backward()

    assert torch.allclose(workflow.network.bias.grad, torch.full((2,), 2.0))


def test_each_round_measures_the_distance_to_that_rounds_global_weights() -> None:
    workflow = tiny_workflow()
    fedprox = local_algorithm("fedprox", {"mu": 1.0})
    fedprox.setup(workflow)
    fedprox.before_round(workflow, {}, {})
    with torch.no_grad():
        workflow.network.bias.add_(2.0)

    fedprox.before_round(workflow, {}, {})  # the next round's global model is where the network is now

    assert workflow.trainer.loss_function(torch.zeros(1, 2), torch.zeros(1, 2)).item() == pytest.approx(0.0)


def test_fedprox_changes_training_so_it_runs_in_the_learners_process() -> None:
    assert local_algorithm("fedprox").modifies_training


def test_the_job_takes_mu_and_refuses_a_negative_one() -> None:
    client = {"components": [LEARNER]}

    _, client = configured({}, client, "fedprox", {"mu": "0.1"})

    assert client["components"][0]["args"] == {"algorithm": "fedprox", "algorithm_args": {"mu": 0.1}}
    assert check_algorithm_args("fedprox") == {"mu": 0.01}
    with pytest.raises(UsageError, match="mu must be >= 0"):
        configured({}, client, "fedprox", {"mu": -1})
