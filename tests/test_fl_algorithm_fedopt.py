"""FedOpt: the job's server generator entry, and the server step on a tiny BatchNorm network (FLARE issue 1718)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clara_fl.config.errors import UsageError
from clara_fl.recipes.algorithms import parse_algorithm_args
from tests.job_apps import configured


def server_config(template_generator: bool = True) -> dict:
    components = [
        {"id": "persistor", "path": "clara_fl.fl.server.persistor.ClaraModelPersistor", "args": {}},
        {
            "id": "aggregator",
            "path": "x.InTimeAccumulateWeightedAggregator",
            "args": {"expected_data_kind": "WEIGHT_DIFF"},
        },
    ]
    if template_generator:
        components.append({"id": "shareable_generator", "path": "x.FullModelShareableGenerator", "args": {}})
    workflow = {
        "id": "scatter_and_gather",
        "path": "x.ScatterAndGather",
        "args": {"num_rounds": 7, "persistor_id": "persistor"},
    }
    return {"workflows": [workflow], "components": components}


def client_config() -> dict:
    return {"components": [{"id": "clara_learner", "path": "clara_fl.fl.site.learner.ClaraLearner", "args": {}}]}


def generator_of(server: dict) -> dict:
    return next(c for c in server["components"] if c["id"] == "shareable_generator")


def test_fedopt_makes_the_server_generator_a_fedopt_step_with_the_given_optimizer() -> None:
    server = server_config()
    args = parse_algorithm_args("fedopt", ["optimizer=adam", "lr=0.01", "lr_scheduler=on"])

    server, _ = configured(server, client_config(), "fedopt", args)

    generator = generator_of(server)
    assert generator["path"] == "clara_fl.fl.server.fedopt.FedOptShareableGenerator"
    assert generator["args"] == {
        "server_optimizer": "adam",
        "lr": 0.01,
        "momentum": 0.6,
        "cosine_rounds": 7,
        "persistor_id": "persistor",
    }


def test_fedopt_refuses_an_optimizer_it_does_not_know_listing_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="optimizer must be one of sgd, adam"):
        parse_algorithm_args("fedopt", ["optimizer=rmsprop"])


def test_fedopt_refuses_a_non_positive_learning_rate() -> None:
    with pytest.raises(UsageError, match="lr must be > 0"):
        configured(server_config(), client_config(), "fedopt", {"lr": 0})


def test_fedopt_needs_a_template_with_a_shareable_generator() -> None:
    with pytest.raises(UsageError, match="clara_fedavg_cse"):
        configured(server_config(template_generator=False), client_config(), "fedopt", {})


def test_fedopt_needs_sites_that_send_weight_differences() -> None:
    client = client_config()
    client["components"][0]["args"]["send_weight_diff"] = False

    with pytest.raises(UsageError, match="WEIGHT_DIFF"):
        configured(server_config(), client, "fedopt", {})


# --- the server step ---


class TinyBN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.norm = torch.nn.BatchNorm1d(2)


def numpy_state(network: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().clone().numpy() for k, v in network.state_dict().items()}


def run_step(generator, global_weights: dict[str, np.ndarray], diff: dict[str, np.ndarray], network: torch.nn.Module):
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
    from nvflare.app_common.app_constant import AppConstants

    engine = SimpleNamespace(get_component=lambda cid: SimpleNamespace(model=network) if cid == "persistor" else None)
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(global_weights, {}), private=True, sticky=False)
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    shareable = DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff).to_shareable()
    return generator.shareable_to_learnable(shareable, fl_ctx)[ModelLearnableKey.WEIGHTS]


def averaged_diff(network: torch.nn.Module) -> dict[str, np.ndarray]:
    """A weight difference as the aggregator sends it: every entry, num_batches_tracked averaged to a float."""
    diff = {k: np.full(v.shape, 0.5, dtype=np.float32) for k, v in numpy_state(network).items()}
    diff["norm.num_batches_tracked"] = np.asarray(2.5)
    return diff


def test_batchnorm_buffers_are_averaged_and_the_step_counter_stays_an_integer() -> None:
    from clara_fl.fl.server.fedopt import FedOptShareableGenerator

    torch.manual_seed(0)
    network = TinyBN()
    global_weights = numpy_state(network)
    global_weights["norm.running_var"] = np.full(2, 3.0, dtype=np.float32)
    global_weights["norm.num_batches_tracked"] = np.asarray(4, dtype=np.int64)
    diff = averaged_diff(network)

    new = run_step(
        FedOptShareableGenerator(server_optimizer="sgd", lr=1.0, momentum=0.0), global_weights, diff, network
    )

    np.testing.assert_allclose(new["norm.running_mean"], global_weights["norm.running_mean"] + 0.5)
    np.testing.assert_allclose(new["norm.running_var"], np.full(2, 3.5))
    assert new["norm.num_batches_tracked"].dtype == np.int64 and int(new["norm.num_batches_tracked"]) == 6


def test_sgd_with_lr_one_and_no_momentum_is_fedavg_from_the_global_model_not_the_server_network() -> None:
    from clara_fl.fl.server.fedopt import FedOptShareableGenerator

    torch.manual_seed(0)
    network = TinyBN()
    global_weights = {k: v + 1.0 if v.dtype.kind == "f" else v for k, v in numpy_state(network).items()}

    new = run_step(FedOptShareableGenerator(lr=1.0, momentum=0.0), global_weights, averaged_diff(network), network)

    for key in ("linear.weight", "linear.bias", "norm.weight", "norm.bias"):
        np.testing.assert_allclose(new[key], global_weights[key] + 0.5, rtol=1e-6)


def test_a_buffer_missing_from_the_update_keeps_the_global_value() -> None:
    from clara_fl.fl.server.fedopt import FedOptShareableGenerator

    torch.manual_seed(0)
    network = TinyBN()
    global_weights = numpy_state(network)
    global_weights["norm.running_mean"] = np.asarray([7.0, -7.0], dtype=np.float32)
    diff = averaged_diff(network)
    del diff["norm.running_mean"]

    new = run_step(FedOptShareableGenerator(), global_weights, diff, network)

    np.testing.assert_allclose(new["norm.running_mean"], [7.0, -7.0])


def test_momentum_carries_over_rounds_and_a_returned_model_is_not_changed_by_the_next_step() -> None:
    from clara_fl.fl.server.fedopt import FedOptShareableGenerator

    torch.manual_seed(0)
    network = TinyBN()
    generator = FedOptShareableGenerator(lr=1.0, momentum=0.5)
    first = run_step(generator, numpy_state(network), averaged_diff(network), network)
    kept = {k: np.copy(v) for k, v in first.items()}

    second = run_step(generator, first, averaged_diff(network), network)

    for key in kept:
        np.testing.assert_array_equal(first[key], kept[key])
    # second step: velocity 0.5 * 0.5 + 0.5 = 0.75
    np.testing.assert_allclose(second["linear.bias"], first["linear.bias"] + 0.75, rtol=1e-6)


def test_the_persistors_network_is_left_alone() -> None:
    from clara_fl.fl.server.fedopt import FedOptShareableGenerator

    torch.manual_seed(0)
    network = TinyBN()
    before = numpy_state(network)

    run_step(FedOptShareableGenerator(), numpy_state(network), averaged_diff(network), network)

    for key, value in numpy_state(network).items():
        np.testing.assert_array_equal(value, before[key])


def test_adam_moves_every_parameter_against_the_averaged_update() -> None:
    from clara_fl.fl.server.fedopt import FedOptShareableGenerator

    torch.manual_seed(0)
    network = TinyBN()
    global_weights = numpy_state(network)

    new = run_step(
        FedOptShareableGenerator(server_optimizer="adam", lr=0.01), global_weights, averaged_diff(network), network
    )

    # Adam's first step is lr * sign(gradient); the gradient is minus the update
    np.testing.assert_allclose(new["linear.weight"], global_weights["linear.weight"] + 0.01, rtol=1e-4)


def test_the_cosine_schedule_lowers_the_server_lr_each_round() -> None:
    from clara_fl.fl.server.fedopt import FedOptShareableGenerator

    torch.manual_seed(0)
    network = TinyBN()
    generator = FedOptShareableGenerator(lr=1.0, momentum=0.0, cosine_rounds=2)
    first = run_step(generator, numpy_state(network), averaged_diff(network), network)

    second = run_step(generator, first, averaged_diff(network), network)

    # round 0 at lr 1.0, round 1 at lr 0.5 (half way down the cosine over 2 rounds)
    np.testing.assert_allclose(second["linear.bias"], first["linear.bias"] + 0.25, rtol=1e-6)
