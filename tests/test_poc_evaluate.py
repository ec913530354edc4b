"""The evaluation job of ``clara-fl evaluate -o JOB --sites ...`` on a real POC deployment (server and two sites as
separate processes, set up with ``clara-fl site setup``): submitted, awaited and downloaded with the admin kit, it
gives the same 2x2 table as in the simulator, the trained model winning at both sites.

The models (2 x 19 MB) stay in the server's app: FLARE deploys each site only its app, in one message, and its
``http`` driver's sites take at most 4 MiB. With ``--site-models`` each site is asked for its own model too; these
fresh sites ran no training, so each answers with a failure that names no path, recorded for its column.

The models and the sites' data are the shared FedAvg simulation's (``fedavg_simulation``). Bounded: every command
has a time limit, and the ``finally`` stops the deployment and leaves no process behind.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from clara_fl.fl.jobs.results import load_cross_site_failures, load_cross_site_results
from tests.conftest import SPLEEN_MMAR
from tests.poc import Poc
from tests.test_fed_evaluate_e2e import EVAL_SETTINGS, SITES, assert_trained_wins_everywhere, evaluation_models

JOB_TIMEOUT_S = 300

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POC start scripts and /proc are Linux"),
]


def test_the_evaluation_job_gives_the_same_table_on_a_poc_deployment_with_the_models_on_the_server_only(
    fedavg_simulation: SimpleNamespace, tmp_path: Path
) -> None:
    from clara_fl.cli import main

    started = time.monotonic()
    models = evaluation_models(fedavg_simulation, tmp_path / "models")
    job = tmp_path / "jobs" / "spleen_eval"
    code = main(
        ["evaluate", "-m", str(SPLEEN_MMAR), "--model", models[0], "--model", models[1], "-o", str(job)]
        + ["--sites", ",".join(SITES), "--site-models", "--set", *EVAL_SETTINGS]
    )
    assert code == 0
    data_root = Path(json.loads(fedavg_simulation.site_file.read_text())["environment"]["DATA_ROOT"])
    poc = Poc(tmp_path / "deployment", SITES)
    try:
        poc.prepare(data_root)
        poc.start()
        job_id = poc.submit(job)
        status = poc.wait(job_id, JOB_TIMEOUT_S)
        assert status == "FINISHED:COMPLETED", f"{status}\n{poc.logs(job_id)}"
        downloaded = poc.download(job_id, tmp_path / "out")
    finally:
        poc.stop()
        print(f"POC evaluation: {time.monotonic() - started:.1f} s")
    results_file = downloaded / "workspace" / "cross_site_val" / "cross_val_results.json"
    assert_trained_wins_everywhere(load_cross_site_results(results_file))
    failures = load_cross_site_failures(results_file)
    no_model = "EXECUTION_EXCEPTION: submitting the local model failed: no_own_model"
    assert failures.models == {site: no_model for site in SITES}, failures
    for site in SITES:
        app = poc.prod / site / job_id / f"app_{site}"
        assert (app / "config" / "config_fed_client.json").is_file()
        assert not list(app.rglob("*.pt")), f"{site} received model files"
