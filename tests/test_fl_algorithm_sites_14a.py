"""FedBN and SCAFFOLD through a site's Learner and cross-site validator (in-process, the spleen MMAR's 3D UNet,
no simulator).

The site set-up is test_fl_learner.py's: a FLARE-like site workspace, data named only by the site file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants, ValidateType

from clara_fl.fl.site.context import CODE_POLICY_ENV, SITE_CONFIG_ENV
from clara_fl.fl.site.fedbn import norm_layer_keys
from clara_fl.fl.site.learner import LOCAL_STATE_FILE
from clara_fl.fl.site.validator import ClaraValidator
from clara_fl.fl.site.weights import network_weights
from tests.conftest import SPLEEN_MMAR, copy_mmar, local_training
from tests.test_fl_learner import (
    OVERRIDES,
    SITE,
    FakeEngine,
    FakeWorkspace,
    Site,
    make_context,
    train_task,
    write_site_file,
)


@pytest.fixture
def site(tmp_path: Path, synthetic_data, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.delenv(SITE_CONFIG_ENV, raising=False)
    monkeypatch.delenv(CODE_POLICY_ENV, raising=False)
    root = tmp_path / "ws"
    app = copy_mmar(SPLEEN_MMAR, root / f"app_{SITE}", tmp_path / "job_has_no_data")
    write_site_file(root / "local" / "clara_fl_site.json", synthetic_data.root)
    engine = FakeEngine(FakeWorkspace(root, app))
    return Site(root=root, app=app, data=synthetic_data, engine=engine, ctx=make_context(engine))


def with_other_norm_layers(weights: dict[str, np.ndarray], norm_keys: frozenset[str]) -> dict[str, np.ndarray]:
    """The server's weights with every float norm tensor changed: what a site must not load."""
    return {k: v + 3.0 if k in norm_keys and v.dtype == np.float32 else v for k, v in weights.items()}


def validate_task(weights: dict[str, np.ndarray]) -> Shareable:
    task = DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
    task.set_header(AppConstants.MODEL_OWNER, "SRV_FL_global_model.pt")
    return task


def test_a_fedbn_site_neither_sends_nor_loads_its_norm_layers(site: Site) -> None:
    learner = site.learner(algorithm="fedbn")
    norm_keys = norm_layer_keys(local_training(learner).workflow.network)
    sent = site.global_weights()

    reply = learner.train(train_task(sent), site.ctx, Signal())
    after_round = network_weights(local_training(learner).workflow.network)
    before_train = DXO(data_kind=DataKind.WEIGHTS, data=with_other_norm_layers(sent, norm_keys)).to_shareable()
    before_train.set_header(AppConstants.VALIDATE_TYPE, ValidateType.BEFORE_TRAIN_VALIDATE)
    learner.validate(before_train, site.ctx, Signal())  # loads the next round's global weights

    assert reply.get_return_code() == ReturnCode.OK
    assert norm_keys and set(from_shareable(reply).data) == set(sent) - norm_keys
    loaded = network_weights(local_training(learner).workflow.network)
    for key in norm_keys:
        np.testing.assert_array_equal(loaded[key], after_round[key], err_msg=key)


def test_cross_site_validation_uses_the_sites_own_norm_layers(site: Site) -> None:
    learner = site.learner(algorithm="fedbn")
    learner.train(train_task(site.global_weights()), site.ctx, Signal())
    local_training(learner).local_state.wait()
    norm_keys = norm_layer_keys(local_training(learner).workflow.network)
    own = torch.load(site.app / "models" / LOCAL_STATE_FILE, weights_only=True)["model"]
    server = site.global_weights()
    with_own_norms = {**server, **{k: own[k].numpy() for k in norm_keys}}

    received = with_other_norm_layers(server, norm_keys)

    fedbn = ClaraValidator(overrides=OVERRIDES, algorithm="fedbn").execute(
        AppConstants.TASK_VALIDATION, validate_task(received), site.ctx, Signal()
    )

    assert fedbn.get_return_code() == ReturnCode.OK
    plain = ClaraValidator(overrides=OVERRIDES)
    as_sent = plain.execute(AppConstants.TASK_VALIDATION, validate_task(received), site.ctx, Signal())
    as_site = plain.execute(AppConstants.TASK_VALIDATION, validate_task(with_own_norms), site.ctx, Signal())
    assert from_shareable(fedbn).data == pytest.approx(from_shareable(as_site).data, rel=1e-5)
    assert from_shareable(fedbn).data != pytest.approx(from_shareable(as_sent).data, rel=1e-5)


def test_fedbn_training_in_several_processes_keeps_the_sites_norm_layers(site: Site) -> None:
    learner = site.learner(algorithm="fedbn", nproc_per_site=2)
    norm_keys = norm_layer_keys(local_training(learner).workflow.network)
    norm_weights = [k for k in norm_keys if k.endswith(".weight")]
    before = network_weights(local_training(learner).workflow.network)
    sent = with_other_norm_layers(site.global_weights(), norm_keys)  # the server's norm weights are 3 higher

    reply = learner.train(train_task(sent), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    assert set(from_shareable(reply).data) == set(sent) - norm_keys
    after = network_weights(local_training(learner).workflow.network)
    assert norm_weights and all(np.abs(after[k] - before[k]).max() < 1.0 for k in norm_weights)


def test_a_scaffold_round_returns_the_control_change_and_keeps_the_local_control(site: Site) -> None:
    learner = site.learner(algorithm="scaffold")
    sent = site.global_weights()
    task = DXO(data_kind=DataKind.WEIGHTS, data=sent, meta={"scaffold_c_global": {k: v * 0 for k, v in sent.items()}})
    task = task.to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 0)

    reply = learner.train(task, site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    diff = from_shareable(reply).get_meta_prop("scaffold_c_diff")
    parameters = dict(local_training(learner).workflow.network.named_parameters())
    assert set(diff) == set(parameters)
    local_training(learner).local_state.wait()
    saved = torch.load(site.app / "models" / LOCAL_STATE_FILE, weights_only=True)["fl_algorithm"]["c_local"]
    key = next(iter(parameters))
    np.testing.assert_allclose(saved[key].numpy(), diff[key], rtol=1e-6)  # c_local started at 0


def test_a_scaffold_site_refuses_a_task_without_the_global_control(site: Site) -> None:
    learner = site.learner(algorithm="scaffold")

    reply = learner.train(train_task(site.global_weights()), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
