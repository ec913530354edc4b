"""End to end on a real FLARE deployment on this machine: provisioned server and two clients as separate
processes (POC mode, mutual TLS, FLARE's authorization and class allow-list), set up with ``clara-fl site
setup``, a job submitted, awaited and downloaded from the admin kit, then everything stopped.

These are the commands of docs/deployment.md. Only loopback traffic: the server binds 127.0.0.1 on a free
port. HOME, TMPDIR and the POC workspace live in tmp_path (POC rewrites ~/.nvflare/config.conf and stages
jobs in TMPDIR). About a minute on 2 cores; every subprocess has a time limit, and whatever happens, the
``finally`` stops POC and kills any process of this deployment that is left.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clara_fl.recipes.job_folder import create_job
from tests.conftest import SPLEEN_MMAR

BIN = Path(sys.executable).parent  # the venv running the tests: nvflare, clara-fl, and clara_fl for the sites
NVFLARE, CLARA_FL = BIN / "nvflare", BIN / "clara-fl"
# `nvflare poc start` waits for the server and every site to come up; the e2e run shares 2 cores between 3
# workers, where starting a deployment (each process imports FLARE and torch) took over 90 s
POC_START_TIMEOUT_S = 240
PROJECT = "clara_poc"
SITES = ["site-1", "site-2"]
ADMIN = "admin@nvidia.com"
JOB_SETTINGS = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 3, "learning_rate": 0.001}
MODELS = {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POC start scripts and /proc are Linux"),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROJECT_YML = """\
api_version: 3
name: {project}
description: clara-fl on a provisioned FLARE system
participants:
  - name: server
    type: server
    org: nvidia
    fed_learn_port: {port}
    admin_port: {port}
    default_host: localhost
  - name: site-1
    type: client
    org: nvidia
  - name: site-2
    type: client
    org: nvidia
  - name: {admin}
    type: admin
    org: nvidia
    role: project_admin
builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
  - path: nvflare.lighter.impl.static_file.StaticFileBuilder
    args:
      config_folder: config
  - path: nvflare.lighter.impl.cert.CertBuilder
  - path: nvflare.lighter.impl.signature.SignatureBuilder
"""


def poc_environment(root: Path, folders: tuple[str, ...] = ("home", "tmp", "poc")) -> dict[str, str]:
    """The environment of every command against a POC deployment in ``root``: its own HOME, TMPDIR and POC
    workspace (``root/poc``), this venv's ``bin`` first on PATH (site processes run ``python3`` and import
    clara_fl), one thread per process, no clara-fl variables of the caller's. Makes ``folders`` under ``root``."""
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARA_FL_") and k != "NVFLARE_POC_WORKSPACE"}
    env.update(
        HOME=str(root / "home"),
        TMPDIR=str(root / "tmp"),
        NVFLARE_POC_WORKSPACE=str(root / "poc"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
    )
    return env


def run(
    command: list[str | Path], env: dict[str, str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def flare(env: dict[str, str], *args: str | Path, timeout: float) -> dict:
    """``nvflare --format json ARGS``: the ``data`` of its JSON envelope; a failure shows its output."""
    proc = run([NVFLARE, "--format", "json", *args], env, timeout)
    assert proc.returncode == 0, (
        f"nvflare {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    envelope = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert envelope["status"] == "ok", envelope
    return envelope.get("data", {})


def start_poc(env: dict[str, str], prod: Path, sites: list[str], new_session: bool = False) -> subprocess.Popen:
    """``nvflare poc start``, asserted ready with every site in ``sites``; returns the finished command.

    FLARE's readiness wait can hang: once in CI its admin session connected while the server was starting, never
    logged in, and the command outlived its own ``--timeout`` although the server and both sites were up within
    4 s. Such a command is ended (the deployment it started runs on) and FLARE's readiness wait runs again, each
    try in a new process with a time limit.

    Args:
        new_session: start the deployment in a process group of its own (the command's pid is the group's id).
    """
    starter = subprocess.Popen(
        [str(NVFLARE), "--format", "json", "poc", "start", "--timeout", str(POC_START_TIMEOUT_S)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )
    try:
        out, err = starter.communicate(timeout=POC_START_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        starter.kill()  # the command alone: the services it started are not its children to end
        starter.communicate()
        wait_until_ready(env, prod, sites)
        return starter
    started = json.loads(out[out.index("{") :]).get("data", {}) if "{" in out else {}
    assert started.get("ready") is True and sorted(started.get("clients", [])) == sorted(sites), f"{out}\n{err}"
    return starter


def wait_until_ready(env: dict[str, str], prod: Path, sites: list[str], tries: int = 3) -> None:
    """FLARE's own readiness wait (the one ``poc start`` runs), in a new process per try, 60 s each."""
    code = (
        "import sys; from nvflare.tool.api_utils import wait_for_system_start; "
        "wait_for_system_start(0, sys.argv[1], username=sys.argv[2], secure_mode=True, second_to_wait=0, "
        "timeout_in_sec=60, poll_interval=1.0, conn_timeout=1.0, expected_clients=sys.argv[3:]); print('READY')"
    )
    outcomes = []
    for _ in range(tries):
        try:
            proc = run([sys.executable, "-c", code, prod, ADMIN, *sites], env, 90)
        except subprocess.TimeoutExpired:
            outcomes.append("hung")
            continue
        if proc.returncode == 0 and "READY" in proc.stdout:
            return
        outcomes.append(f"exit {proc.returncode}: {proc.stderr[-300:]}")
    raise AssertionError(f"the POC deployment in {prod} never became ready: {outcomes}")


def deployment_pids(workspace: Path) -> set[int]:
    """Processes of this deployment: everything started by ``poc start`` inherits NVFLARE_POC_WORKSPACE."""
    marker = f"NVFLARE_POC_WORKSPACE={workspace}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def pid_file_pids(prod: Path) -> set[int]:
    """The pids FLARE's start scripts record: ``pid.fl`` (the site process) and ``daemon_pid.fl`` (its watchdog)."""
    pids = set()
    for pid_file in [*prod.glob("*/pid.fl"), *prod.glob("*/daemon_pid.fl")]:
        try:
            pids.add(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def alive(pids: set[int]) -> set[int]:
    left = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.add(pid)
    return left


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive(pids)


def kill_all(pids: set[int]) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in alive(pids):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not wait_gone(pids, grace):
            return


def site_logs(prod: Path, job_id: str | None) -> str:
    """The error logs of every site (and of the job at every site), for a failure message."""
    text = []
    patterns = ["*/error_log.txt", "*/poc_console.log"] + ([f"*/{job_id}/error_log.txt"] if job_id else [])
    for pattern in patterns:
        for log in sorted(prod.glob(pattern)):
            text.append(f"--- {log.relative_to(prod)}\n{log.read_text(errors='replace')[-2000:]}")
    return "\n".join(text)


PRIVATE_SITE = "site-1"
PRIVACY = "PercentilePrivacy:percentile=10,gamma=0.01"


def test_job_runs_on_a_provisioned_deployment_set_up_with_clara_fl_site_setup(tmp_path: Path) -> None:
    from clara_fl.data.synthetic import make_synthetic_dataset

    assert NVFLARE.is_file() and CLARA_FL.is_file(), f"nvflare and clara-fl must be installed in {BIN}"
    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(step: str) -> None:
        timings[step] = round(time.monotonic() - started - sum(timings.values()), 1)

    env = poc_environment(tmp_path, ("home", "tmp", "poc", "data", "out"))
    workspace = tmp_path / "poc"

    # Each hospital's data, which never leaves the hospital; the job names none of it.
    data = make_synthetic_dataset(tmp_path / "data", cases=12, sites=2, shape=(32, 32, 32))
    job = create_job(
        SPLEEN_MMAR, tmp_path / "jobs" / "spleen", num_rounds=2, local_epochs=1, min_clients=2, overrides=JOB_SETTINGS
    )
    assert not (job / "app" / "custom").exists(), (
        "an MMAR without BYOC code must give a job without custom/ (the allow-list applies)"
    )
    lap("data and job")

    port = free_port()
    project_yml = tmp_path / "project.yml"
    project_yml.write_text(PROJECT_YML.format(project=PROJECT, port=port, admin=ADMIN))
    flare(env, "poc", "prepare", "-i", project_yml, "--force", timeout=120)
    prod = workspace / PROJECT / "prod_00"
    admin_kit = prod / ADMIN
    # The provisioned target "server:PORT" binds every interface; the POC kit is unsigned, so bind loopback only.
    fed_server = prod / "server" / "startup" / "fed_server.json"
    server_config = json.loads(fed_server.read_text())
    assert server_config["servers"][0]["service"]["target"] == f"server:{port}"
    server_config["servers"][0]["service"]["target"] = f"localhost:{port}"
    fed_server.write_text(json.dumps(server_config, indent=2))
    lap("poc prepare")

    # Every site's IT staff: one command on their own kit.
    setup = run([CLARA_FL, "site", "setup", prod / "server"], env, 60)
    assert setup.returncode == 0, setup.stderr
    for site in SITES:
        # site-1 also requires a privacy filter on everything it sends, whatever the job says
        privacy = ["--privacy", PRIVACY] if site == PRIVATE_SITE else []
        setup = run(
            [
                CLARA_FL,
                "site",
                "setup",
                prod / site,
                "--set",
                f"DATA_ROOT={data.root}",
                f"DATASET_JSON={data.root}/dataset_{{SITE_NAME}}.json",
                *privacy,
            ],
            env,
            60,
        )
        assert setup.returncode == 0, setup.stderr
        assert "changed the files above" in setup.stdout
        site_file = json.loads((prod / site / "local" / "clara_fl_site.json").read_text())
        assert site_file == {
            "environment": {"DATA_ROOT": str(data.root), "DATASET_JSON": f"{data.root}/dataset_{{SITE_NAME}}.json"},
            "code_policy": "restricted",
            "confinement": "preferred",
        }
    lap("clara-fl site setup")

    poc_started, job_id = False, None
    try:
        poc_started = True  # from here on, the finally stops whatever came up
        start_poc(env, prod, SITES)
        site_pids = pid_file_pids(prod)
        lap("poc start")

        submitted = flare(env, "job", "submit", "-j", job, "--startup-kit", admin_kit, timeout=120)
        job_id = submitted["job_id"]
        waited = run(
            [
                NVFLARE,
                "--format",
                "json",
                "job",
                "wait",
                job_id,
                "--timeout",
                "200",
                "--interval",
                "2",
                "--startup-kit",
                admin_kit,
            ],
            env,
            240,
        )
        lap("job submit + wait")
        assert waited.returncode == 0, (
            f"job {job_id} did not complete:\n{waited.stdout[-2000:]}\n{site_logs(prod, job_id)}"
        )
        assert json.loads(waited.stdout[waited.stdout.index("{") :])["data"]["status"] == "FINISHED:COMPLETED"

        downloaded = flare(
            env, "job", "download", job_id, "-o", tmp_path / "out", "--force", "--startup-kit", admin_kit, timeout=120
        )
        lap("job download")
        results_file = Path(downloaded["path"]) / "workspace" / "cross_site_val" / "cross_val_results.json"
        results = json.loads(results_file.read_text())
        # every data site scored every model: the server's global and best global models and each site's best model
        assert set(results) == set(SITES), results
        for site in SITES:
            assert set(results[site]) == MODELS, results[site]
            for owner, metrics in results[site].items():
                dice = metrics["val_mean_dice"]
                assert isinstance(dice, float) and math.isfinite(dice) and 0.0 <= dice <= 1.0, (site, owner, metrics)
        # each site read its own data from its kit's site file (the job's environment.json points into an empty HOME)
        for site in SITES:
            log = (prod / site / job_id / "log.txt").read_text(errors="replace")
            assert f"site values from {prod / site / 'local' / 'clara_fl_site.json'}" in log
            # the site's own privacy policy filtered its updates (PercentilePrivacy logs its cutoff); the other's not
            assert ("cutoff:" in log) == (site == PRIVATE_SITE), f"{site}: privacy filter applied as the site set it"

        pids = site_pids | deployment_pids(workspace)
        assert pids, "no process of the deployment was found while it ran"
        # FLARE's own wait for the server gives up after 30 s, which a loaded machine can exceed while the server
        # is going down as asked; what this test holds is that every process of the deployment exits on request
        stopped = flare(env, "poc", "stop", "--no-wait", timeout=120)
        poc_started = False
        assert stopped["status"] == "shutdown_initiated", stopped
        left = wait_gone(pids | deployment_pids(workspace), 180)
        lap("poc stop")
        assert not left, f"processes left after poc stop: {sorted(left)}"
        assert not deployment_pids(workspace)
    finally:
        if poc_started:
            try:
                run([NVFLARE, "--format", "json", "poc", "stop"], env, 120)
            except subprocess.TimeoutExpired:
                pass
            wait_gone(pid_file_pids(prod) | deployment_pids(workspace), 30)
        kill_all(pid_file_pids(prod) | deployment_pids(workspace))
        timings["total"] = round(time.monotonic() - started, 1)
        (tmp_path / "timings.json").write_text(json.dumps(timings, indent=2))
        print(f"POC timings (s): {timings}")
