"""A POC deployment on loopback for the failure tests: server + N sites, set up with ``clara-fl site setup``.

The same commands as tests/test_poc_deployment.py (whose helpers it uses), with more sites and hooks to
find and kill the processes of one participant. Everything runs under ``tmp_path``; :meth:`stop` (call it
in a ``finally``) stops POC and kills whatever process of this deployment is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

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

PROJECT = "clara_poc"
SITE_YML = """\
  - name: {site}
    type: client
    org: nvidia
"""
PROJECT_YML = """\
api_version: 3
name: {project}
description: clara-fl failure scenarios on a provisioned FLARE system
participants:
  - name: server
    type: server
    org: nvidia
    fed_learn_port: {port}
    admin_port: {port}
    default_host: localhost
{sites}  - name: {admin}
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


class Poc:
    """One POC deployment in ``root``; ``env`` is the environment of every command run against it."""

    def __init__(self, root: Path, sites: list[str], extra_env: dict[str, str] | None = None) -> None:
        self.root, self.sites = root, sites
        self.workspace = root / "poc"
        self.env = {**poc_environment(root), **(extra_env or {})}
        self.prod = self.workspace / PROJECT / "prod_00"
        self.admin_kit = self.prod / ADMIN
        self.started = False

    def prepare(self, data_root: Path) -> None:
        """``poc prepare`` bound to loopback, then ``clara-fl site setup`` on the server and every site."""
        port = free_port()
        project_yml = self.root / "project.yml"
        sites = "".join(SITE_YML.format(site=s) for s in self.sites)
        project_yml.write_text(PROJECT_YML.format(project=PROJECT, port=port, admin=ADMIN, sites=sites))
        flare(self.env, "poc", "prepare", "-i", project_yml, "--force", timeout=120)
        fed_server = self.prod / "server" / "startup" / "fed_server.json"
        config = json.loads(fed_server.read_text())
        config["servers"][0]["service"]["target"] = f"localhost:{port}"
        fed_server.write_text(json.dumps(config, indent=2))
        setup = run([CLARA_FL, "site", "setup", self.prod / "server"], self.env, 60)
        assert setup.returncode == 0, setup.stderr
        for site in self.sites:
            values = [f"DATA_ROOT={data_root}", f"DATASET_JSON={data_root}/dataset_{{SITE_NAME}}.json"]
            setup = run([CLARA_FL, "site", "setup", self.prod / site, "--set", *values], self.env, 60)
            assert setup.returncode == 0, setup.stderr

    def start(self) -> None:
        self.started = True
        start_poc(self.env, self.prod, self.sites)

    def submit(self, job: Path) -> str:
        return flare(self.env, "job", "submit", "-j", job, "--startup-kit", self.admin_kit, timeout=120)["job_id"]

    def wait(self, job_id: str, timeout: int) -> str:
        """The job's final status (``FINISHED:COMPLETED``...) once it has one; fails after ``timeout`` seconds."""
        waited = run(
            [NVFLARE, "--format", "json", "job", "wait", job_id, "--timeout", str(timeout), "--interval", "2"]
            + ["--startup-kit", self.admin_kit],
            self.env,
            timeout + 60,
        )
        text = waited.stdout[waited.stdout.find("{") :] if "{" in waited.stdout else "{}"
        status = json.loads(text).get("data", {}).get("status")
        assert status, (
            f"job {job_id} did not end:\n{waited.stdout[-2000:]}\n{waited.stderr[-2000:]}\n{self.logs(job_id)[-4000:]}"
        )
        return status

    def status(self, job_id: str) -> str | None:
        """The job's status on the server; None while the server does not answer (restarting)."""
        got = run([NVFLARE, "--format", "json", "job", "meta", job_id, "--startup-kit", self.admin_kit], self.env, 60)
        if got.returncode != 0 or "{" not in got.stdout:
            return None
        return json.loads(got.stdout[got.stdout.index("{") :]).get("data", {}).get("status")

    def download(self, job_id: str, output: Path) -> Path:
        got = flare(
            self.env, "job", "download", job_id, "-o", output, "--force", "--startup-kit", self.admin_kit, timeout=120
        )
        return Path(got["path"])

    def job_log(self, participant: str, job_id: str) -> str:
        log = self.prod / participant / job_id / "log.txt"
        return log.read_text(errors="replace") if log.is_file() else ""

    def logs(self, job_id: str | None) -> str:
        server = self.prod / "server" / (job_id or "") / "log.txt"
        text = server.read_text(errors="replace")[-3000:] if job_id and server.is_file() else ""
        return f"{site_logs(self.prod, job_id)}\n--- server job log\n{text}"

    def job_pids(self, participant: str, job_id: str) -> set[int]:
        """The job processes of one participant: the deployment's processes whose command line names the job
        and the participant's workspace (FLARE starts a job process per participant, beside its parent)."""
        found = set()
        workspace = str(self.prod / participant)
        for pid in deployment_pids(self.workspace):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in args]
            if job_id in words and any(w.rstrip("/") == workspace for w in words):
                found.add(pid)
        return alive(found)

    def kill(self, pids: set[int]) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert not wait_gone(pids, 10), f"still alive after kill -9: {pids}"

    def stop(self) -> None:
        """Stop POC and kill whatever is left of this deployment."""
        if self.started:
            try:
                run([NVFLARE, "--format", "json", "poc", "stop"], self.env, 120)
            except subprocess.TimeoutExpired:
                pass
            wait_gone(pid_file_pids(self.prod) | deployment_pids(self.workspace), 30)
            self.started = False
        for _ in range(3):  # a process may be starting (FLARE's start script restarts what died) as we kill
            left = alive(pid_file_pids(self.prod) | deployment_pids(self.workspace))
            if not left:
                break
            kill_all(left)
        assert not alive(deployment_pids(self.workspace)), "processes of the deployment are left"


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll ``condition`` until it returns something true; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
