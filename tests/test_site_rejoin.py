"""A site whose job process died rejoins the running job when its client restarts (clara_fl.fl.flare_internals.rejoin).

These tests drive the launcher as FLARE's client parent does (SYSTEM_START, then ``start_app`` calling
``launch_job``) with FLARE's process spawn replaced by a recorder; the POC run with real processes is
tests/test_poc_site_failure.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_launcher_spec import JobProcessArgs, JobProcessEnv
from nvflare.apis.workspace import Workspace
from nvflare.app_common.job_launcher.process_launcher import ProcessJobLauncher
from nvflare.utils.job_launcher_utils import get_credential_env

from clara_fl.fl.flare_internals.rejoin import (
    RECORD_NAME,
    LaunchRecord,
    RejoiningJobLauncher,
    read_launch,
    record_launch,
)


class Site:
    """A site's workspace and a client parent with ``token``: ``start_app`` launches as FLARE's does."""

    def __init__(self, root: Path, token: str = "token-now", reply: str = "Start the client app...") -> None:
        for folder in ("startup", "local"):
            (root / folder).mkdir(exist_ok=True)
        self.workspace = Workspace(str(root), site_name="site-3")
        self.token, self.reply = token, reply
        self.launcher = RejoiningJobLauncher()

    @property
    def launched(self) -> list[dict[str, str]]:
        """The credentials each job process this client spawned got (see :func:`no_process_spawn`)."""
        return getattr(self.launcher, "spawned_with", [])

    def deploy(self, job_id: str) -> Path:
        run_dir = Path(self.workspace.get_run_dir(job_id))
        (run_dir / f"app_{self.workspace.site_name}").mkdir(parents=True)
        (run_dir / "meta.json").write_text(json.dumps({"job_id": job_id, "name": "spleen"}))
        return run_dir

    def context(self) -> FLContext:
        fl_ctx = FLContext()
        fl_ctx.put(
            ReservedKey.ENGINE,
            SimpleNamespace(start_app=self.start_app, fire_event=lambda *args: None),
            private=True,
            sticky=False,
        )
        fl_ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, self.workspace, private=True, sticky=False)
        return fl_ctx

    def start_app(self, job_id: str, job_meta: dict[str, Any]) -> str:
        if self.reply.startswith("NVFLARE_ERROR"):
            return self.reply
        fl_ctx = self.context()
        args = {
            JobProcessArgs.JOB_ID: ("-n", job_id),
            JobProcessArgs.AUTH_TOKEN: ("-t", self.token),
            JobProcessArgs.TOKEN_SIGNATURE: ("-ts", f"signature-of-{self.token}"),
        }
        fl_ctx.set_prop(FLContextKey.JOB_PROCESS_ARGS, args, private=True, sticky=False)
        self.launcher.launch_job(job_meta, fl_ctx)
        return self.reply

    def client_starts(self) -> list[str]:
        return self.launcher.rejoin_died_jobs(self.context())


@pytest.fixture(autouse=True)
def no_process_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLARE's spawn of the job process records the credentials it would put in the process's environment."""

    def spawn(launcher: Any, job_meta: dict, fl_ctx: FLContext) -> str:
        credentials = get_credential_env(fl_ctx.get_prop(FLContextKey.JOB_PROCESS_ARGS))
        launcher.__dict__.setdefault("spawned_with", []).append(credentials)
        return "handle"

    monkeypatch.setattr(ProcessJobLauncher, "launch_job", spawn)


def test_a_launch_records_the_credentials_of_the_job_process_readable_by_the_site_only(tmp_path: Path) -> None:
    site = Site(tmp_path)
    run_dir = site.deploy("job-1")

    site.start_app("job-1", {"job_id": "job-1"})

    assert read_launch(str(run_dir)) == LaunchRecord("job-1", "token-now", "signature-of-token-now", 0)
    assert stat.S_IMODE(os.stat(run_dir / RECORD_NAME).st_mode) == 0o600


def test_a_restarted_client_starts_the_died_job_again_with_the_token_the_server_job_knows(tmp_path: Path) -> None:
    before = Site(tmp_path, token="token-at-job-start")
    run_dir = before.deploy("job-1")
    before.start_app("job-1", {"job_id": "job-1"})  # then the job process is killed: its record stays
    restarted = Site(tmp_path, token="token-after-restart")

    rejoined = restarted.client_starts()

    assert rejoined == ["job-1"]
    assert restarted.launched[-1][JobProcessEnv.AUTH_TOKEN] == "token-at-job-start"
    assert restarted.launched[-1][JobProcessEnv.TOKEN_SIGNATURE] == "signature-of-token-at-job-start"
    assert read_launch(str(run_dir)) == LaunchRecord(
        "job-1", "token-at-job-start", "signature-of-token-at-job-start", 1
    )


def test_a_client_waits_for_the_previous_process_of_the_job_and_never_starts_a_second(tmp_path: Path) -> None:
    import subprocess
    import sys

    site = Site(tmp_path)
    site.launcher.previous_process_wait_s = 0.5
    run_dir = site.deploy("job-1")
    previous = subprocess.Popen(
        [sys.executable, "-c", "print(flush=True); import time; time.sleep(60)", "job-1"], stdout=subprocess.PIPE
    )
    assert previous.stdout is not None
    previous.stdout.readline()  # it runs (a process just forked still has this process's command line)
    record_launch(str(run_dir), LaunchRecord("job-1", "t", "s", pid=previous.pid))
    try:
        while_running = site.client_starts()
    finally:
        previous.kill()
        previous.communicate()

    after_it_ended = site.client_starts()

    assert while_running == [] and after_it_ended == ["job-1"] and len(site.launched) == 1


def test_a_job_whose_run_ended_is_not_started_again(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.deploy("job-1")

    assert site.client_starts() == [] and site.launched == []


def test_a_job_is_rejoined_at_most_max_rejoins_times(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site = Site(tmp_path)
    run_dir = site.deploy("job-1")
    record_launch(str(run_dir), LaunchRecord("job-1", "t", "s", rejoins=site.launcher.max_rejoins))

    rejoined = site.client_starts()

    assert rejoined == [] and site.launched == [] and read_launch(str(run_dir)) is None
    assert "job job-1: not rejoining, its process was started 4 times" in caplog.text


def test_a_job_the_client_cannot_start_is_one_line_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = Site(tmp_path, reply="NVFLARE_ERROR: Client app does not exist. Please deploy it before starting client.")
    run_dir = site.deploy("job-1")
    record_launch(str(run_dir), LaunchRecord("job-1", "t", "s"))

    rejoined = site.client_starts()

    assert rejoined == [] and read_launch(str(run_dir)) is None
    warning = [r.getMessage() for r in caplog.records if "not rejoining" in r.getMessage()]
    assert len(warning) == 1 and warning[0].endswith(f"job job-1: not rejoining: {site.reply}")


def test_a_job_without_its_deployed_meta_is_one_line_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = Site(tmp_path)
    run_dir = site.deploy("job-1")
    (run_dir / "meta.json").unlink()
    record_launch(str(run_dir), LaunchRecord("job-1", "t", "s"))

    rejoined = site.client_starts()

    assert rejoined == [] and site.launched == [] and read_launch(str(run_dir)) is None
    assert "job job-1: not rejoining: cannot start its process: FileNotFoundError" in caplog.text


def test_flare_still_starts_a_failed_start_reply_as_the_rejoin_expects() -> None:
    from nvflare.private.defs import ERROR_MSG_PREFIX

    from clara_fl.fl.flare_internals.rejoin import FLARE_ERROR_REPLY

    assert ERROR_MSG_PREFIX == FLARE_ERROR_REPLY


def test_flare_client_engine_still_starts_a_deployed_job_from_its_id_and_meta() -> None:
    """The rejoin starts the job through the client engine's ``start_app(job_id, job_meta=...)``, the call
    FLARE's START_JOB handler makes; an upgrade that changes it fails here rather than at a site."""
    import inspect

    from nvflare.private.fed.client.client_engine import ClientEngine

    parameters = list(inspect.signature(ClientEngine.start_app).parameters.values())

    assert [p.name for p in parameters[:3]] == ["self", "job_id", "job_meta"]
    assert all(p.default is not inspect.Parameter.empty for p in parameters[3:])
