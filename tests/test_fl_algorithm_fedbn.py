"""FedBN at a site: normalization layers, found by module type, are neither loaded from nor sent to the server."""

from __future__ import annotations

import numpy as np
import torch

from clara_fl.fl.site.algorithms import local_algorithm
from clara_fl.fl.site.fedbn import norm_layer_keys
from clara_fl.fl.site.weights import network_weights
from tests.job_apps import LEARNER, configured


class NormedNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.gn = torch.nn.GroupNorm(2, 4)
        self.inorm = torch.nn.InstanceNorm2d(4, affine=True)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
        self.batch_norm_not = torch.nn.Linear(2, 2)  # named like a norm layer, but is not one


def test_norm_layers_are_found_by_module_type_with_their_buffers() -> None:
    keys = norm_layer_keys(NormedNet())

    assert keys == {
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
        "gn.weight",
        "gn.bias",
        "inorm.weight",
        "inorm.bias",
        "head.1.weight",
        "head.1.bias",
    }


def test_the_site_keeps_its_norm_layers_when_loading_and_sending() -> None:
    network = NormedNet()
    fedbn = local_algorithm("fedbn")
    fedbn.setup_network(network)
    weights = network_weights(network)

    loaded = fedbn.weights_to_load(weights)
    sent = fedbn.weights_to_send(weights)

    expected = {k for k in weights if not k.startswith(("bn.", "gn.", "inorm.", "head.1."))}
    assert set(loaded) == set(sent) == expected
    assert "batch_norm_not.weight" in sent and "conv.weight" in sent


def test_fedbn_leaves_training_alone_so_it_runs_in_several_processes() -> None:
    assert not local_algorithm("fedbn").modifies_training
    configured({}, {"components": [LEARNER]}, "fedbn", {}, nproc_per_site=2)


def test_the_job_tells_the_learner_and_the_cross_site_validator() -> None:
    client = {
        "components": [LEARNER],
        "executors": [{"tasks": ["validate"], "executor": {"id": "clara_validator", "path": "v.V", "args": {}}}],
    }

    _, client = configured({}, client, "fedbn", {})

    assert client["components"][0]["args"] == {"algorithm": "fedbn", "algorithm_args": {}}
    assert client["executors"][0]["executor"]["args"] == {"algorithm": "fedbn", "algorithm_args": {}}


def test_flares_aggregator_averages_each_key_over_the_sites_that_sent_it() -> None:
    from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

    helper = WeightedAggregationHelper()
    helper.add({"conv": np.array([1.0]), "bn": np.array([4.0])}, 1.0, "site-1", 0)
    helper.add({"conv": np.array([3.0])}, 1.0, "site-2", 0)  # a FedBN site sends no norm layers

    result = helper.get_result()

    assert result["conv"][0] == 2.0 and result["bn"][0] == 4.0
