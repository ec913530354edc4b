"""The evaluation job of ``clara-fl evaluate -o JOB`` on a real POC deployment (server and two sites as separate
processes, set up with ``clara-fl site setup``): submitted, awaited and downloaded with the admin kit, it gives
the same 2x2 table as in the simulator, the trained model winning at both sites.

The models and the sites' data are the shared FedAvg simulation's (``fedavg_simulation``). Bounded: every
command has a time limit, and the ``finally`` stops the deployment and leaves no process behind.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import SPLEEN_MMAR
from tests.poc import Poc
from tests.test_fed_evaluate_e2e import EVAL_SETTINGS, SITES, assert_trained_wins_everywhere, evaluation_models

DEPLOY_TIMEOUT_S = 60.0

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POC start scripts and /proc are Linux"),
]


def test_the_evaluation_job_gives_the_same_table_on_a_poc_deployment(
    fedavg_simulation: SimpleNamespace, tmp_path: Path
) -> None:
    from clara_fl.cli import main

    started = time.monotonic()
    models = evaluation_models(fedavg_simulation, tmp_path / "models")
    job = tmp_path / "jobs" / "spleen_eval"
    code = main(
        ["evaluate", "-m", str(SPLEEN_MMAR), "--model", models[0], "--model", models[1], "-o", str(job)]
        + ["--set", *EVAL_SETTINGS]
    )
    assert code == 0
    data_root = Path(json.loads(fedavg_simulation.site_file.read_text())["environment"]["DATA_ROOT"])
    poc = Poc(tmp_path / "deployment", SITES)
    try:
        poc.prepare(data_root)
        # the job carries both models (about 40 MB) to every site; FLARE's 10 s deployment reply timeout was too
        # short for that on 2 loaded cores (the operator's admin_timeout in the server's fed_server.json)
        fed_server = poc.prod / "server" / "startup" / "fed_server.json"
        config = json.loads(fed_server.read_text())
        config["servers"][0]["admin_timeout"] = DEPLOY_TIMEOUT_S
        fed_server.write_text(json.dumps(config, indent=2))
        poc.start()
        job_id = poc.submit(job)
        status = poc.wait(job_id, 300)
        assert status == "FINISHED:COMPLETED", f"{status}\n{poc.logs(job_id)}"
        downloaded = poc.download(job_id, tmp_path / "out")
    finally:
        poc.stop()
        print(f"POC evaluation: {time.monotonic() - started:.1f} s")
    results_file = downloaded / "workspace" / "cross_site_val" / "cross_val_results.json"
    assert_trained_wins_everywhere(json.loads(results_file.read_text()))
