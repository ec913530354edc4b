"""The server workflows the job templates use: FLARE's, polling at the period the job gives them."""

from __future__ import annotations

from pathlib import Path

import pytest
from nvflare.apis.impl.wf_comm_server import WFCommServer

from clara_fl.fl.server.controllers import CrossSiteEval, CrossSiteModelEval, FedAvg, ScatterAndGather
from clara_fl.recipes.job_folder import _read_conf

TEMPLATES = Path(__file__).resolve().parents[1] / "job_templates"


@pytest.mark.parametrize("workflow", [ScatterAndGather, CrossSiteModelEval, FedAvg, CrossSiteEval])
def test_the_server_polls_its_tasks_at_the_configured_task_check_period(workflow: type) -> None:
    communicator = WFCommServer()

    workflow(task_check_period=0.05).set_communicator(communicator)

    assert communicator._task_check_period == 0.05  # FLARE 2.9 alone leaves it at 0.2 s


@pytest.mark.parametrize("template", ["clara_fedavg_cse", "clara_fedavg_cse_mc"])
def test_every_template_workflow_polls_at_a_short_period(template: str) -> None:
    server = _read_conf(TEMPLATES / template / "config_fed_server.conf")

    for workflow in server["workflows"]:
        assert workflow["path"].startswith("clara_fl.fl.server.controllers."), workflow["id"]
        assert workflow["args"]["task_check_period"] <= 0.1, workflow["id"]
