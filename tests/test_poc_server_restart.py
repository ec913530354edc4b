"""The server killed and restarted mid-job on a real POC deployment (issue 15, scenario 2): server + 3 sites.

``kill -9`` of the server (its parent process and the job's server process, as a machine crash leaves
them) after a round was saved. FLARE's start script restarts the server; FLARE alone then leaves the job
RUNNING with no process (no server snapshot in 2.9; ``nvflare job abort`` answers "not running"). The
server component that ``clara-fl site setup`` adds ends it at start-up, and the operator (docs/deployment.md)
writes the continuation job with ``clara-fl job resume`` from the run state the persistor saved and
submits it. It runs the rounds left, from the saved global model, and ends with the complete cross-site
matrix. Bounded: every command has a time limit; the ``finally`` leaves no process behind.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from clara_fl.fl.server.run_state import STATE_FILE, read_run_state
from clara_fl.recipes.job_folder import create_job
from tests.conftest import SPLEEN_MMAR
from tests.poc import Poc, wait_for
from tests.test_poc_deployment import CLARA_FL, alive, run

SITES = ["site-1", "site-2", "site-3"]
ROUNDS = 4
JOB_SETTINGS = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 1, "learning_rate": 0.001}
MODELS = {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POC start scripts and /proc are Linux"),
]


def test_a_killed_server_restarts_and_the_resumed_job_finishes_the_planned_rounds(tmp_path: Path) -> None:
    from clara_fl.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", cases=12, sites=3, shape=(32, 32, 32))
    job = create_job(SPLEEN_MMAR, tmp_path / "job", num_rounds=ROUNDS, min_clients=2, overrides=JOB_SETTINGS)
    poc = Poc(tmp_path / "deployment", SITES)
    poc.prepare(data.root)
    server = poc.prod / "server"
    try:
        poc.start()
        job_id = poc.submit(job)
        run_folder = server / job_id

        def saved_round() -> int:
            state_file = run_folder / "app_server" / STATE_FILE
            return read_run_state(state_file).rounds_done if state_file.is_file() else 0

        wait_for(lambda: saved_round() >= 1, 300, "the server to save round 0")
        crashed = poc.job_pids("server", job_id) | alive({int((server / "pid.fl").read_text())})
        poc.kill(crashed)
        rounds_done = saved_round()
        assert 1 <= rounds_done < ROUNDS, rounds_done

        # FLARE's start script brings the server back; clara-fl's server component (site setup) ends the job
        # FLARE would leave RUNNING with no process, and the sites stop their processes of it
        wait_for(lambda: poc.status(job_id) == "FINISHED:ABNORMAL", 180, "the restarted server to end the job")
        server_log = (server / "log.txt").read_text(errors="replace")
        assert f"job {job_id} was running when the server stopped" in server_log
        wait_for(lambda: not any(poc.job_pids(site, job_id) for site in SITES), 90, "the sites to end the job")

        # the operator continues it: writes the continuation job and submits it
        resumed = run([CLARA_FL, "job", "resume", job, run_folder, "-o", tmp_path / "continued"], poc.env, 60)
        assert resumed.returncode == 0, resumed.stderr
        assert f"rounds {rounds_done}-{ROUNDS - 1} of {ROUNDS}" in resumed.stdout
        continued_id = poc.submit(tmp_path / "continued")
        status = poc.wait(continued_id, timeout=400)
        assert status == "FINISHED:COMPLETED", f"{status}\n{poc.logs(continued_id)[-6000:]}"

        downloaded = poc.download(continued_id, tmp_path / "out") / "workspace"

        # it ran the rounds left, starting from the saved global model, not from round 0
        server_log = (downloaded / "log.txt").read_text(errors="replace")
        assert f"resuming job {job_id} after round {rounds_done - 1} of {ROUNDS}" in server_log
        started = [r for r in range(ROUNDS) if f"Round {r} started." in server_log]
        assert started == list(range(rounds_done, ROUNDS)), started

        # and ends with the complete cross-site matrix
        matrix = json.loads((downloaded / "cross_site_val" / "cross_val_results.json").read_text())
        assert set(matrix) == set(SITES), matrix
        for site in SITES:
            assert set(matrix[site]) == MODELS, matrix[site]
            for metrics in matrix[site].values():
                assert math.isfinite(metrics["val_mean_dice"]), matrix[site]
    finally:
        poc.stop()
