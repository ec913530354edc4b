"""SCAFFOLD at a site (FLARE's PTScaffoldHelper on the trainer) and in the job (FLARE's Scaffold controller)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from clara_fl.config.errors import UsageError
from clara_fl.fl.site.algorithms import local_algorithm
from tests.conftest import SPLEEN_MMAR
from tests.job_apps import LEARNER, configured

C_GLOBAL = "scaffold_c_global"  # nvflare AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL
C_DIFF = "scaffold_c_diff"  # nvflare AlgorithmConstants.SCAFFOLD_CTRL_DIFF
LR = 0.1


def tiny_workflow() -> SimpleNamespace:
    """A network and an ignite trainer whose every iteration is one SGD step on a fixed gradient of 1."""
    network = torch.nn.Linear(2, 1)
    with torch.no_grad():
        network.weight.zero_()
        network.bias.zero_()
    optimizer = torch.optim.SGD(network.parameters(), lr=LR)

    def step(engine: Engine, batch: object) -> None:
        optimizer.zero_grad()
        (network.weight.sum() + network.bias.sum()).backward()
        optimizer.step()

    trainer = Engine(step)
    trainer.optimizer = optimizer
    return SimpleNamespace(network=network, trainer=trainer)


def global_controls(value: float) -> dict:
    return {"weight": np.full((1, 2), value, dtype=np.float32), "bias": np.full((1,), value, dtype=np.float32)}


def test_each_optimizer_step_is_corrected_by_the_global_minus_the_local_control() -> None:
    workflow = tiny_workflow()
    scaffold = local_algorithm("scaffold")
    scaffold.setup(workflow)
    scaffold.before_round(workflow, {}, {C_GLOBAL: global_controls(2.0)})  # c_local starts at 0

    workflow.trainer.run([0, 0, 0], max_epochs=1)

    # per step: -lr * grad (1) - lr * (c_global - c_local) (2) = -0.3; three steps
    assert torch.allclose(workflow.network.bias, torch.tensor([-0.9]))


def test_after_the_round_the_local_control_change_goes_in_the_result_meta() -> None:
    workflow = tiny_workflow()
    scaffold = local_algorithm("scaffold")
    scaffold.setup(workflow)
    scaffold.before_round(workflow, {}, {C_GLOBAL: global_controls(2.0)})
    workflow.trainer.run([0, 0, 0], max_epochs=1)

    meta = scaffold.after_round(workflow, {}, steps=3)

    # c_local' = -(c_global - c_local) + (w_global - w) / (steps * lr) = -2 + 0.9 / 0.3 = 1
    assert set(meta) == {C_DIFF}
    assert set(meta[C_DIFF]) == {"weight", "bias"}
    assert np.allclose(meta[C_DIFF]["bias"], 1.0)


def test_the_local_control_is_kept_in_the_local_state(tmp_path: Path) -> None:
    workflow = tiny_workflow()
    scaffold = local_algorithm("scaffold")
    scaffold.setup(workflow)
    scaffold.before_round(workflow, {}, {C_GLOBAL: global_controls(2.0)})
    workflow.trainer.run([0, 0, 0], max_epochs=1)
    scaffold.after_round(workflow, {}, steps=3)
    torch.save(scaffold.state_dict(), tmp_path / "state.pt")
    restarted = local_algorithm("scaffold")
    restarted.setup(tiny_workflow())

    restarted.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))

    assert torch.allclose(restarted.helper.c_local.state_dict()["bias"], torch.tensor([1.0]))


def test_a_task_without_the_global_control_is_refused_with_what_the_server_needs() -> None:
    workflow = tiny_workflow()
    scaffold = local_algorithm("scaffold")
    scaffold.setup(workflow)

    with pytest.raises(ValueError, match="Scaffold controller"):
        scaffold.before_round(workflow, {}, {})


def test_outside_a_round_the_trainer_is_not_corrected() -> None:
    workflow = tiny_workflow()
    scaffold = local_algorithm("scaffold")
    scaffold.setup(workflow)
    scaffold.before_round(workflow, {}, {C_GLOBAL: global_controls(2.0)})
    workflow.trainer.run([0], max_epochs=1)
    scaffold.after_round(workflow, {}, steps=1)

    workflow.trainer.run([0], max_epochs=2)  # e.g. training outside FL

    assert torch.allclose(workflow.network.bias, torch.tensor([-0.3 - 0.1]))


def test_the_job_runs_flares_scaffold_controller_on_the_model_controller_template() -> None:
    from clara_fl.recipes.app_configs import FedAvgSettings, build_job

    job = build_job(SPLEEN_MMAR, FedAvgSettings(algorithm="scaffold", num_rounds=4))

    workflow = job.server.workflow("scaffold")
    assert workflow is not None and workflow.path == "clara_fl.fl.server.controllers.Scaffold"
    assert workflow.args["num_rounds"] == 4
    assert job.client.learner is not None and job.client.learner.args["algorithm"] == "scaffold"


def test_a_template_without_a_model_controller_workflow_is_refused() -> None:
    server = {"workflows": [{"id": "scatter_and_gather", "path": "x.ScatterAndGather"}]}

    with pytest.raises(UsageError, match="--template clara_fedavg_cse_mc"):
        configured(server, {"components": [LEARNER]}, "scaffold", {})


def test_scaffold_refuses_several_processes_per_site() -> None:
    with pytest.raises(UsageError, match="cannot train in several processes per site"):
        configured({}, {}, "scaffold", {}, nproc_per_site=2)


def test_the_server_saves_the_global_model_without_the_control_variates(monkeypatch: pytest.MonkeyPatch) -> None:
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.workflows.base_model_controller import BaseModelController

    from clara_fl.fl.server.controllers import Scaffold

    saved: list[FLModel] = []
    monkeypatch.setattr(BaseModelController, "save_model", lambda self, model: saved.append(model))
    model = FLModel(params={"w": np.ones(2)}, meta={C_GLOBAL: {"w": np.ones(2)}, C_DIFF: {"w": np.ones(2)}, "round": 1})

    Scaffold(num_clients=2, num_rounds=1).save_model(model)

    assert saved[0].meta == {"round": 1} and saved[0].params is model.params
    assert C_GLOBAL in model.meta  # the controller's own model still carries its controls


def test_the_best_and_final_global_models_leave_the_control_variates_out_of_what_the_persistor_saves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.abstract.model import ModelLearnableKey
    from nvflare.app_common.app_constant import AppConstants
    from nvflare.app_common.workflows.base_fedavg import BaseFedAvg

    from clara_fl.fl.server.controllers import Scaffold

    controls = {C_GLOBAL: {"w": np.ones(2)}, C_DIFF: {"w": np.ones(2)}, "round": 1}
    aggregated = FLModel(params={"w": np.ones(2)}, meta=dict(controls))
    monkeypatch.setattr(BaseFedAvg, "update_model", lambda self, model, aggr_result: aggr_result)
    controller = Scaffold(num_clients=2, num_rounds=1)
    controller.fl_ctx = FLContext()
    monkeypatch.setattr(controller, "event", lambda event_type: None, raising=False)

    updated = controller.update_model(FLModel(params={}), aggregated)

    assert controller.fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)[ModelLearnableKey.META] == {"round": 1}
    assert controller.final_global_model.meta == {"round": 1}
    assert C_GLOBAL in updated.meta  # the next round still gets its controls
