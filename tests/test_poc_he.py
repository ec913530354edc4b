"""An ``--he`` job on a real FLARE deployment on this machine (POC mode): the TenSEAL contexts come from FLARE's own
provisioning (``HEBuilder`` in project.yml, as ``nvflare poc prepare --he`` adds it), the sites are set up with
``clara-fl site setup``, and the job runs 2 rounds and cross-site evaluation on encrypted models.

The deployment helpers are those of test_poc_deployment.py (same loopback-only setup and clean-up).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from clara_fl.recipes.app_configs import FedAvgSettings
from clara_fl.recipes.job_folder import create_job
from tests.test_poc_deployment import (
    ADMIN,
    CLARA_FL,
    JOB_SETTINGS,
    MODELS,
    NVFLARE,
    PROJECT,
    PROJECT_YML,
    SITES,
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
from tests.test_privacy_he_simulation import make_narrow_spleen

pytestmark = [pytest.mark.e2e]
ts = pytest.importorskip("tenseal")

# clara-fl's CKKS parameters (clara_fl.fl.jobs.he_context.CKKS_PARAMETERS), as docs/fl.md gives them to HEBuilder
HE_BUILDER = (
    "  - path: nvflare.lighter.impl.he.HEBuilder\n"
    "    args: {poly_modulus_degree: 2048, coeff_mod_bit_sizes: [36, 18], scale_bits: 20}\n"
)
SIGNATURE_BUILDER = "  - path: nvflare.lighter.impl.signature.SignatureBuilder\n"
SERVER = "localhost"


def test_an_he_job_runs_on_a_poc_deployment_provisioned_with_flares_he_builder(tmp_path: Path) -> None:
    from clara_fl.data.synthetic import make_synthetic_dataset

    env = poc_environment(tmp_path, ("home", "tmp", "poc", "data", "out"))
    workspace = tmp_path / "poc"
    data = make_synthetic_dataset(tmp_path / "data", cases=12, sites=2, shape=(32, 32, 32))
    mmar = make_narrow_spleen(tmp_path / "spleen_ct_seg")
    job = create_job(
        mmar,
        tmp_path / "jobs" / "spleen_he",
        num_rounds=2,
        local_epochs=1,
        min_clients=2,
        overrides=JOB_SETTINGS,
        settings=FedAvgSettings(he=True),
    )
    port = free_port()
    project_yml = tmp_path / "project.yml"
    project = PROJECT_YML.format(project=PROJECT, port=port, admin=ADMIN)
    # HEBuilder goes before SignatureBuilder, which signs the contexts and the startup files: a signed fed_server.json
    # may not be edited, so the server is named localhost to bind loopback only (its target is "NAME:PORT")
    project = project.replace(SIGNATURE_BUILDER, HE_BUILDER + SIGNATURE_BUILDER).replace(
        "name: server", f"name: {SERVER}"
    )
    project_yml.write_text(project)
    flare(env, "poc", "prepare", "-i", project_yml, "--force", timeout=120)
    prod = workspace / PROJECT / "prod_00"
    server_config = json.loads((prod / SERVER / "startup" / "fed_server.json").read_text())
    assert server_config["servers"][0]["service"]["target"] == f"localhost:{port}"
    # provisioning gave the server a public context and each site the secret one
    server_context = ts.context_from((prod / SERVER / "startup" / "server_context.tenseal").read_bytes())
    assert not server_context.is_private() and server_context.global_scale == 2**20
    for site in SITES:
        assert ts.context_from((prod / site / "startup" / "client_context.tenseal").read_bytes()).is_private()
    assert run([CLARA_FL, "site", "setup", prod / SERVER], env, 60).returncode == 0
    for site in SITES:
        values = [f"DATA_ROOT={data.root}", f"DATASET_JSON={data.root}/dataset_{{SITE_NAME}}.json"]
        assert run([CLARA_FL, "site", "setup", prod / site, "--set", *values], env, 60).returncode == 0

    admin_kit, job_id, started = prod / ADMIN, None, time.monotonic()
    try:
        start_poc(env, prod, SITES)
        job_id = flare(env, "job", "submit", "-j", job, "--startup-kit", admin_kit, timeout=120)["job_id"]
        wait = [NVFLARE, "--format", "json", "job", "wait", job_id, "--timeout", "400", "--interval", "2"]
        waited = run([*wait, "--startup-kit", admin_kit], env, 450)
        assert waited.returncode == 0, f"{waited.stdout[-2000:]}\n{site_logs(prod, job_id)}"
        assert json.loads(waited.stdout[waited.stdout.index("{") :])["data"]["status"] == "FINISHED:COMPLETED"
        out = flare(
            env, "job", "download", job_id, "-o", tmp_path / "out", "--force", "--startup-kit", admin_kit, timeout=120
        )
        results = json.loads(
            (Path(out["path"]) / "workspace" / "cross_site_val" / "cross_val_results.json").read_text()
        )
        assert set(results) == set(SITES), results
        for site in SITES:
            assert set(results[site]) == MODELS, results[site]
            assert all(math.isfinite(m["val_mean_dice"]) for m in results[site].values())
            log = (prod / site / job_id / "log.txt").read_text(errors="replace")
            assert "Encryption time" in log and "Decryption time" in log
    finally:
        try:
            run([NVFLARE, "--format", "json", "poc", "stop"], env, 120)
        finally:
            wait_gone(pid_file_pids(prod) | deployment_pids(workspace), 60)
            kill_all(pid_file_pids(prod) | deployment_pids(workspace))
        print(f"POC HE job: {time.monotonic() - started:.0f} s")
