"""A site killed mid-round on a real POC deployment (issue 15, scenario 1): server + 3 sites, min_clients 2.

``kill -9`` of site-3's job process while it trains round 1: the rounds complete with site-1 and site-2,
the server log names site-3 as dropped and why, and site-3's files still load. Then site-3's client is
restarted (``kill -9`` of the client; FLARE's start script starts it again): site-3 rejoins the running
job in a later round from the current global model, and the job ends ``FINISHED:COMPLETED`` (FLARE alone
fails the whole job: "Failing job ... due to reported failure from site-3") with site-3 in the cross-site
matrix. The same when site-3's client crashes mid-round (``kill -9`` of the client only): its job process
stops by itself, and the restarted client rejoins the job. Both scenarios run on one deployment, a job each.
FLARE's dead-client grace period and check lead time are cut to seconds (``NVFLARE_DEAD_CLIENT_*``, the
operator's ``local/application.conf`` values) so that the rounds do not wait 90 s for the dead site.
Bounded: every command has a time limit; the deployment fixture's ``finally`` leaves no process behind.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clara_fl.recipes.job_folder import create_job
from tests.conftest import SPLEEN_MMAR
from tests.poc import Poc, wait_for
from tests.test_poc_deployment import alive

SITES = ["site-1", "site-2", "site-3"]
KILLED = "site-3"
# site-3 dies in round 1 and was back in round 2 or 3 (2 cores, loaded): the rounds after its rejoin are the margin
ROUNDS = 10
JOB_SETTINGS = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 1, "learning_rate": 0.001}
FAST_DEAD_CLIENT_DETECTION = {"NVFLARE_DEAD_CLIENT_GRACE_PERIOD": "10", "NVFLARE_DEAD_CLIENT_CHECK_LEAD_TIME": "5"}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POC start scripts and /proc are Linux"),
]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Poc, Path]]:
    """One started deployment for both scenarios (each submits its own job): the deployment and the job folder."""
    from clara_fl.data.synthetic import make_synthetic_dataset

    tmp = tmp_path_factory.mktemp("site_failure")
    data = make_synthetic_dataset(tmp / "data", cases=18, sites=3, shape=(32, 32, 32))
    job = create_job(SPLEEN_MMAR, tmp / "job", num_rounds=ROUNDS, local_epochs=1, min_clients=2, overrides=JOB_SETTINGS)
    poc = Poc(tmp / "deployment", SITES, extra_env=FAST_DEAD_CLIENT_DETECTION)
    try:
        poc.prepare(data.root)
        poc.start()
        yield poc, job
    finally:
        poc.stop()


def submit_and_wait_for_round_1(poc: Poc, job: Path) -> tuple[str, set[int]]:
    """Submit the job and wait for site-3 to train round 1: the job id and the pids of site-3's job process."""
    job_id = poc.submit(job)
    wait_for(lambda: "round 1: training" in poc.job_log(KILLED, job_id), 300, f"{KILLED} training round 1")
    job_process = poc.job_pids(KILLED, job_id)
    assert job_process, f"no job process of {KILLED} found"
    return job_id, job_process


def test_a_site_killed_mid_round_drops_out_and_rejoins_when_its_client_restarts(
    deployment: tuple[Poc, Path], tmp_path: Path
) -> None:
    import torch

    poc, job = deployment
    job_id, job_process = submit_and_wait_for_round_1(poc, job)
    poc.kill(job_process)

    # the rounds go on without site-3, and the server says that it dropped out and why
    server_job_log = poc.prod / "server" / job_id / "log.txt"
    dropped = wait_for(lambda: _lines(server_job_log, "site-3 dropped out of the job"), 180, "the drop-out line")
    assert "its job process is gone" in dropped[0]
    wait_for(lambda: _lines(server_job_log, "aggregated 2 sites without site-3"), 60, "a round without site-3")

    # site-3's own files survive the kill and load (weights only: no pickled code)
    models = poc.prod / KILLED / job_id / f"app_{KILLED}" / "models"
    assert (models / "fl_local_state.pt").is_file(), sorted(p.name for p in models.iterdir())
    for name in ("fl_local_state.pt", "model.pt"):
        if (models / name).is_file():
            assert isinstance(torch.load(models / name, map_location="cpu", weights_only=True), dict), name

    # site-3's client restarts (FLARE's start script starts a killed client again) and rejoins the job
    poc.kill(alive({int((poc.prod / KILLED / "pid.fl").read_text())}))
    back = wait_for(lambda: _lines(server_job_log, "site-3 is back in the job"), 180, "site-3 to rejoin")
    rejoined_in = _round_of(back[0], server_job_log)

    status = poc.wait(job_id, timeout=400)
    assert status == "FINISHED:COMPLETED", f"{status}\n{poc.logs(job_id)[-6000:]}"
    assert "due to reported failure" not in (poc.prod / "server" / "log.txt").read_text(errors="replace")
    downloaded = poc.download(job_id, tmp_path / "out") / "workspace"
    server_log = (downloaded / "log.txt").read_text(errors="replace")

    # site-3 trained again from the current global model: a later round than the one it died in, and the
    # last round aggregated all three sites
    assert rejoined_in < ROUNDS - 1, server_log[-4000:]
    assert f"round {ROUNDS - 1} aggregated 3 sites" in server_log, server_log[-4000:]
    site_log = poc.job_log(KILLED, job_id)
    assert f"round {ROUNDS - 1}: training" in site_log, site_log[-4000:]

    # the cross-site matrix has every site
    results = json.loads((downloaded / "cross_site_val" / "cross_val_results.json").read_text())
    assert set(results) == set(SITES), results


def test_a_site_whose_client_crashes_mid_round_rejoins_when_the_client_is_back(
    deployment: tuple[Poc, Path], tmp_path: Path
) -> None:
    poc, job = deployment
    job_id, job_process = submit_and_wait_for_round_1(poc, job)

    # the client dies; its job process stops by itself (FLARE watches the parent); the start script
    # starts the client again, which starts the job's process again once the old one is gone
    poc.kill(alive({int((poc.prod / KILLED / "pid.fl").read_text())}))
    client_log = poc.prod / KILLED / "log.txt"  # the client's log holds every job of the deployment: this one's line

    def rejoined() -> list[str]:
        return [line for line in _lines(client_log, "started it again to rejoin the job") if job_id in line]

    wait_for(rejoined, 180, "site-3's client to rejoin")
    assert not alive(job_process), "the job process of the crashed client is still running"

    status = poc.wait(job_id, timeout=400)
    assert status == "FINISHED:COMPLETED", f"{status}\n{poc.logs(job_id)[-6000:]}"
    downloaded = poc.download(job_id, tmp_path / "out") / "workspace"
    server_log = (downloaded / "log.txt").read_text(errors="replace")
    assert f"round {ROUNDS - 1} aggregated 3 sites" in server_log, server_log[-4000:]
    assert f"round {ROUNDS - 1}: training" in poc.job_log(KILLED, job_id)
    results = json.loads((downloaded / "cross_site_val" / "cross_val_results.json").read_text())
    assert set(results) == set(SITES), results


def _lines(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if text in line] if log.is_file() else []


def _round_of(line: str, log: Path) -> int:
    """The round the server was in when it logged ``line``: the last "Round N started." before it."""
    before = log.read_text(errors="replace").split(line, 1)[0]
    started = re.findall(r"Round (\d+) started", before)
    return int(started[-1]) if started else 0
