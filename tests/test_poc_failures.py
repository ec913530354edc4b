"""What real hospitals do to a federated job, on a real FLARE deployment on this machine (POC, server + 3 sites on
loopback): an operator aborts it mid-training, and a site's data or config is broken.

Set up as tests/test_poc_deployment.py does (``clara-fl site setup`` on every kit, HOME/TMPDIR/workspace in
tmp_path). ``poc start`` runs in its own session, so whatever a test leaves, the ``finally`` kills that whole
process group and every process that carries this deployment's NVFLARE_POC_WORKSPACE (torchrun workers too).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from clara_fl.recipes.app_configs import FedAvgSettings
from clara_fl.recipes.job_folder import create_job
from tests.conftest import SPLEEN_MMAR
from tests.poc import PROJECT_YML
from tests.test_poc_deployment import (
    ADMIN,
    CLARA_FL,
    NVFLARE,
    alive,
    deployment_pids,
    flare,
    free_port,
    kill_all,
    pid_file_pids,
    poc_environment,
    run,
    site_logs,
    start_poc,
    wait_gone,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="processes are found through /proc"),
]

PROJECT = "clara_poc3"
SITES = ["site-1", "site-2", "site-3"]
SMALL = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 1}
# issue 15: every training process of every site is gone this long after the abort reached the site (the
# admin command itself takes seconds to start and log in on a loaded machine; that is not counted)
ABORT_LIMIT_S = 5.0


@dataclass
class Deployment:
    """A started POC deployment: its kits, the admin's environment and the process group of ``poc start``."""

    env: dict[str, str]
    workspace: Path
    prod: Path
    admin_kit: Path

    def submit(self, job: Path) -> str:
        return flare(self.env, "job", "submit", "-j", job, "--startup-kit", self.admin_kit, timeout=120)["job_id"]

    def wait(self, job_id: str, timeout: int) -> str:
        """The job's final status ('' when it did not end within ``timeout`` s)."""
        waited = run(
            [NVFLARE, "--format", "json", "job", "wait", job_id, "--timeout", str(timeout), "--interval", "2"]
            + ["--startup-kit", self.admin_kit],
            self.env,
            timeout + 60,
        )
        text = waited.stdout
        return json.loads(text[text.index("{") :]).get("data", {}).get("status", "") if "{" in text else ""

    def download(self, job_id: str, out: Path) -> Path:
        data = flare(
            self.env, "job", "download", job_id, "-o", out, "--force", "--startup-kit", self.admin_kit, timeout=120
        )
        return Path(data["path"])

    def logs(self, job_id: str | None) -> str:
        return site_logs(self.prod, job_id)


@contextmanager
def poc_deployment(tmp_path: Path, site_values: dict[str, dict[str, str]]) -> Iterator[Deployment]:
    """Provision, set up (``clara-fl site setup --set`` with each site's values) and start server + 3 sites;
    afterwards stop them and kill whatever is left (the process group of ``poc start`` and this workspace's)."""
    env = poc_environment(tmp_path)
    workspace = tmp_path / "poc"
    port = free_port()
    sites = "".join(f"  - name: {site}\n    type: client\n    org: nvidia\n" for site in SITES)
    project_yml = tmp_path / "project.yml"
    project_yml.write_text(PROJECT_YML.format(project=PROJECT, port=port, admin=ADMIN, sites=sites))
    flare(env, "poc", "prepare", "-i", project_yml, "--force", timeout=120)
    prod = workspace / PROJECT / "prod_00"
    fed_server = prod / "server" / "startup" / "fed_server.json"
    server_config = json.loads(fed_server.read_text())
    server_config["servers"][0]["service"]["target"] = f"localhost:{port}"  # loopback only
    fed_server.write_text(json.dumps(server_config, indent=2))
    assert run([CLARA_FL, "site", "setup", prod / "server"], env, 60).returncode == 0
    for site in SITES:
        values = [f"{k}={v}" for k, v in site_values.get(site, {}).items()]
        setup = run([CLARA_FL, "site", "setup", prod / site, *(["--set", *values] if values else [])], env, 60)
        assert setup.returncode == 0, setup.stderr

    starter: subprocess.Popen | None = None
    try:
        # the deployment gets its own process group, killed whole at the end
        starter = start_poc(env, prod, SITES, new_session=True)
        yield Deployment(env=env, workspace=workspace, prod=prod, admin_kit=prod / ADMIN)
    finally:
        try:
            run([NVFLARE, "--format", "json", "poc", "stop"], env, 120)
        except subprocess.TimeoutExpired:
            pass
        wait_gone(pid_file_pids(prod) | deployment_pids(workspace), 30)
        if starter is not None:
            try:
                os.killpg(starter.pid, signal.SIGKILL)
            except OSError:  # the group is already empty
                pass
        kill_all(pid_file_pids(prod) | deployment_pids(workspace))
        assert not alive(deployment_pids(workspace)), "processes of the deployment are left"


def site_data(tmp_path: Path):
    from clara_fl.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path / "data", cases=12, sites=3, shape=(32, 32, 32))


def healthy_site(data_root: Path) -> dict[str, str]:
    return {"DATA_ROOT": str(data_root), "DATASET_JSON": f"{data_root}/dataset_{{SITE_NAME}}.json"}


# -- processes -------------------------------------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process now."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry.name)] = (parent, command)
    return table


def site_job_processes(job_id: str, deployment: Deployment) -> dict[int, str]:
    """The job's processes at the sites (FLARE's client job processes) and all their descendants (torchrun
    and its workers), by pid -> command line."""
    table = process_table()
    ours = deployment_pids(deployment.workspace)
    roots = {p for p, (_, cmd) in table.items() if p in ours and job_id in cmd and "worker_process" in cmd}
    found = set(roots)
    grew = True
    while grew:
        children = {p for p, (parent, _) in table.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return {p: table[p][1] for p in found if p in table}


def workers_of(processes: dict[int, str]) -> set[int]:
    """The DDP workers (not torchrun, clara_fl.fl.site.torchrun, whose command line names the worker module too)."""
    return {p for p, cmd in processes.items() if "-m clara_fl.fl.site.worker" in cmd and "site.torchrun" not in cmd}


def watch_until_gone(pids: set[int], timeout: float) -> dict[int, float]:
    """When (``time.time()``) each of ``pids`` ended, watched every 0.1 s until all have or ``timeout`` passed."""
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(pids) and time.monotonic() < deadline:
        now = time.time()
        ended.update({p: now for p in pids - alive(pids) if p not in ended})
        time.sleep(0.1)
    return ended


def abort_received_at(job_log: Path) -> float:
    """When the site's job process logged FLARE's "Received command to abort job" (``time.time()`` scale)."""
    for line in job_log.read_text(errors="replace").splitlines():
        if "Received command to abort job" in line:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise AssertionError(f"{job_log} does not say the abort arrived")


# -- scenario 3: abort -----------------------------------------------------------------------------------------------


def test_abort_during_local_training_stops_every_site_process_within_5_s_and_the_next_job_runs(
    tmp_path: Path,
) -> None:
    data = site_data(tmp_path)
    long_job = create_job(
        SPLEEN_MMAR,
        tmp_path / "jobs" / "long",
        num_rounds=2,
        local_epochs=200,  # far longer than the test: it is aborted in its first round
        min_clients=3,
        nproc_per_site=2,
        overrides={**SMALL, "num_interval_per_valid": 1000},
    )
    next_job = create_job(
        SPLEEN_MMAR,
        tmp_path / "jobs" / "next",
        settings=FedAvgSettings(num_rounds=1, local_epochs=1, min_clients=3, cross_site_eval=False, overrides=SMALL),
    )

    with poc_deployment(tmp_path, {site: healthy_site(data.root) for site in SITES}) as deployment:
        job_id = deployment.submit(long_job)
        deadline = time.monotonic() + 240
        processes: dict[int, str] = {}
        while time.monotonic() < deadline:
            processes = site_job_processes(job_id, deployment)
            if len(workers_of(processes)) == 2 * len(SITES):
                break
            time.sleep(1.0)
        assert len(workers_of(processes)) == 2 * len(SITES), (
            f"expected {2 * len(SITES)} torchrun workers, found {processes}\n{deployment.logs(job_id)}"
        )
        time.sleep(5.0)  # into local training
        processes = site_job_processes(job_id, deployment)
        assert len(workers_of(processes)) == 2 * len(SITES), f"the workers ended before the abort: {processes}"

        abort = subprocess.Popen(
            [str(NVFLARE), "--format", "json", "job", "abort", job_id, "--force"]
            + ["--startup-kit", str(deployment.admin_kit)],
            env=deployment.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        issued = time.time()
        ended_at = watch_until_gone(set(processes), timeout=120)
        out, err = abort.communicate(timeout=120)
        assert abort.returncode == 0, f"nvflare job abort: {out}\n{err}"

        left = {p: processes[p] for p in processes if p not in ended_at}
        assert not left, f"still alive 120 s after the abort: {left}\n{deployment.logs(job_id)}"
        for site in SITES:
            received = abort_received_at(deployment.prod / site / job_id / "log.txt")
            pids = [p for p in processes if re.search(rf"/{site}(/|\s|$)", processes[p])]
            assert pids, f"no process of {site} was found: {processes}"
            slowest = max(ended_at[p] for p in pids) - received
            print(f"{site}: its job's processes ended {slowest:.1f} s after the abort reached it")
            assert slowest <= ABORT_LIMIT_S, (
                f"{site}: {slowest:.1f} s from the abort reaching it to its last training process ending: "
                f"{ {p: processes[p] for p in pids} }\n{deployment.logs(job_id)}"
            )
        print(f"all gone {max(ended_at.values()) - issued:.1f} s after `nvflare job abort` was started")
        assert deployment.wait(job_id, 60).startswith("FINISHED:ABORTED")

        next_id = deployment.submit(next_job)
        status = deployment.wait(next_id, 300)
        assert status == "FINISHED:COMPLETED", f"{status}\n{deployment.logs(next_id)}"


# -- scenario 4: a broken site ---------------------------------------------------------------------------------------

# Adam's first step moves every weight by about 3e36 (still finite in float32); the next forward pass overflows
# and the loss, the gradients and then the weights become NaN
NAN_RATE = "3e37"


def test_broken_sites_report_one_line_to_the_server_and_the_job_finishes_marking_their_cells_failed(
    tmp_path: Path,
) -> None:
    from clara_fl.fl.jobs.results import format_cross_site_table, load_cross_site_failures, load_cross_site_results

    data = site_data(tmp_path)
    # site-1 is healthy; site-2's own values set a learning rate that diverges; site-3's datalist does not exist
    site_values = {
        "site-1": healthy_site(data.root),
        "site-2": {**healthy_site(data.root), "learning_rate": NAN_RATE},
        "site-3": {**healthy_site(data.root), "DATASET_JSON": f"{data.root}/missing_{{SITE_NAME}}.json"},
    }
    job = create_job(
        SPLEEN_MMAR,
        tmp_path / "jobs" / "broken",
        # a round waits for all three answers (or 120 s after the first); one good answer is enough
        settings=FedAvgSettings(
            num_rounds=2, local_epochs=2, min_clients=1, wait_after_min_clients=120, overrides=SMALL
        ),
    )

    with poc_deployment(tmp_path, site_values) as deployment:
        job_id = deployment.submit(job)
        status = deployment.wait(job_id, 400)
        assert status == "FINISHED:COMPLETED", f"{status}\n{deployment.logs(job_id)}"
        result = deployment.download(job_id, tmp_path / "out")
    server_log = (result / "workspace" / "log.txt").read_text(errors="replace")

    # the server learns each failure's kind and config item, never the site's paths (they stay in its log)
    missing = f"{data.root}/missing_site-3.json"
    reason = "cannot build this site's trainer: ConfigError at config/config_train.json: train.dataset"
    site_3_lines = [line for line in server_log.splitlines() if "site-3 failed task 'train'" in line]
    assert site_3_lines and all(reason in line for line in site_3_lines), server_log[-3000:]
    assert missing not in server_log and str(data.root) not in server_log
    assert "site-2 failed task 'train': EXECUTION_EXCEPTION: local training failed: non_finite_weights" in server_log
    # the best-model selector fired (its key metric passed job create's check and the healthy site returns it)
    assert (result / "workspace" / "app_server" / "best_FL_global_model.pt").is_file()

    results_file = result / "workspace" / "cross_site_val" / "cross_val_results.json"
    failures = load_cross_site_failures(results_file)
    assert set(failures.models) == {"site-3"} and reason.split(":")[0] in failures.models["site-3"]
    assert missing not in failures.models["site-3"]
    assert set(failures.validations) == {"site-3"}
    table = format_cross_site_table(load_cross_site_results(results_file), "val_mean_dice", failures=failures)
    print(table)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[3:] if line.startswith("site-")}
    assert rows["site-3"] == ["failed"] * len(rows["site-3"]), table
    assert all(row[-1] == "failed" for row in rows.values()), f"site-3's model column is failed everywhere:\n{table}"
    assert all(cell != "-" for row in rows.values() for cell in row), table
