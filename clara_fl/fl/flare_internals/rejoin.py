"""A site whose job process died rejoins the running job when its client restarts.

FLARE 2.9 starts a job's process at a site once, when the server starts the job. A site whose job process
dies (``kill -9``, an out-of-memory kill) drops out (:mod:`clara_fl.fl.site.dropout`) and, in FLARE alone,
stays out until the job ends, even if the operator restarts the site's client: the restarted client logs
in with a new identity token, which the server's job process, holding the tokens of the job's sites from
its start, does not know.

:class:`RejoiningJobLauncher` is FLARE's process launcher for a site's jobs (``clara-fl site setup`` puts it
in the client kit's ``local/resources.json`` in place of ``ClientProcessJobLauncher``) with two additions:

* each launch records, in the job's run folder, the token and signature it gave the job process
  (:data:`RECORD_NAME`, readable by the site's account only); the job process removes the record when
  its run ends (END_RUN, a normal end or an abort), unless it ends because the client died, so a
  record left behind means the process died;
* when the client starts (SYSTEM_START), it starts the job process again for every job that has a record,
  once the job's previous process has ended, with the recorded token, which the server's job process
  still accepts. FLARE's own mechanisms do the rest: the site's first task request takes it off the
  server's dead-client list (the server logs it as back), and the task it gets carries the current
  global model. A job that has ended meanwhile is refused by the server's job sync at the next
  heartbeat, and the process ends.

A site rejoins one job at most :attr:`RejoiningJobLauncher.max_rejoins` times. The rejoined process gets
no GPU allocation from the site's resource manager (it sees the client's devices).

Replaying a token and starting a job through the client engine (``ClientEngine.start_app``, in
``nvflare.private``) lean on FLARE's internals: the patch is gated (:data:`PATCH`, switch
``rejoin_after_client_restart``); off, the launcher is FLARE's ``ClientProcessJobLauncher`` and nothing more.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, JobConstants
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_launcher_spec import JobHandleSpec, JobProcessArgs
from nvflare.apis.workspace import Workspace
from nvflare.app_common.job_launcher.client_process_launcher import ClientProcessJobLauncher

from clara_fl.fl.flare_internals.gate import FlarePatch

__all__ = [
    "PATCH",
    "RECORD_NAME",
    "LaunchRecord",
    "RejoiningJobLauncher",
    "forget_launch",
    "read_launch",
    "record_launch",
]

FLARE_ERROR_REPLY = "NVFLARE_ERROR"
"""How FLARE's client engine starts a reply that says a job could not start (pinned by tests/test_site_rejoin.py)."""

RECORD_NAME = "clara_fl_launch.json"
"""The launch record in a job's run folder at the site: present from launch until the run's END_RUN."""

PATCH = FlarePatch(
    switch="rejoin_after_client_restart",
    does="record each job's launch credentials and start a died job's process again when the client restarts",
    relies_on="the server job accepting the launch token again and the client engine's start_app (nvflare.private)",
)


@dataclass(frozen=True)
class LaunchRecord:
    """How a job process was launched: the credentials it was given, and how often it rejoined already."""

    job_id: str
    token: str
    token_signature: str
    rejoins: int = 0
    pid: int | None = None


def record_launch(run_dir: str, record: LaunchRecord) -> None:
    """Write ``record`` into ``run_dir`` atomically, readable by this account only (it holds a token)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{RECORD_NAME}.", dir=run_dir)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(record), f)
        os.replace(tmp, os.path.join(run_dir, RECORD_NAME))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_launch(run_dir: str) -> LaunchRecord | None:
    """The launch record in ``run_dir``; None if there is none or it cannot be read as one."""
    try:
        with open(os.path.join(run_dir, RECORD_NAME), encoding="utf-8") as f:
            return LaunchRecord(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def forget_launch(run_dir: str) -> None:
    """Remove the launch record: the run ended, there is nothing to rejoin."""
    try:
        os.remove(os.path.join(run_dir, RECORD_NAME))
    except FileNotFoundError:
        pass


class RejoiningJobLauncher(ClientProcessJobLauncher):
    """FLARE's client process launcher that records each launch and relaunches died jobs at client start.

    Args:
        max_rejoins: how many times one job's process may be started again at this site.
        previous_process_wait_s: how long to wait, at client start, for the job's previous process to end
            (a job process whose client died stops its run by itself, within seconds).
    """

    def __init__(self, max_rejoins: int = 3, previous_process_wait_s: float = 30.0) -> None:
        super().__init__()
        self.max_rejoins = int(max_rejoins)
        self.previous_process_wait_s = float(previous_process_wait_s)
        self._active: bool | None = None  # decided at the first event or launch (FLARE version, site switch)

    def active(self, fl_ctx: FLContext) -> bool:
        """Whether this client records launches and rejoins jobs (:data:`PATCH`); decided once, logged if not."""
        if self._active is None:
            self._active = PATCH.active(self, fl_ctx)
        return self._active

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.SYSTEM_START and self.active(fl_ctx):
            # the client is logged in and heartbeating; do not hold up the rest of its start
            threading.Thread(target=self.rejoin_died_jobs, args=(fl_ctx,), name="clara-fl-rejoin", daemon=True).start()

    def launch_job(self, job_meta: dict, fl_ctx: FLContext) -> JobHandleSpec:
        if not self.active(fl_ctx):
            return super().launch_job(job_meta, fl_ctx)
        job_id = str(job_meta.get(JobConstants.JOB_ID))
        run_dir = _workspace(fl_ctx).get_run_dir(job_id)
        args: dict[str, Any] = dict(fl_ctx.get_prop(FLContextKey.JOB_PROCESS_ARGS) or {})
        # a record from an earlier launch of this job at this site: a rejoin (a new job has none)
        rejoin = read_launch(run_dir)
        if rejoin is None:
            token, signature = _arg(args, JobProcessArgs.AUTH_TOKEN), _arg(args, JobProcessArgs.TOKEN_SIGNATURE)
            record = LaunchRecord(job_id, token, signature)
        else:
            record = LaunchRecord(job_id, rejoin.token, rejoin.token_signature, rejoin.rejoins + 1)
            args[JobProcessArgs.AUTH_TOKEN] = ("-t", rejoin.token)
            args[JobProcessArgs.TOKEN_SIGNATURE] = ("-ts", rejoin.token_signature)
            fl_ctx.set_prop(FLContextKey.JOB_PROCESS_ARGS, args, private=True, sticky=False)
        handle = super().launch_job(job_meta, fl_ctx)
        if record.token:
            pid = getattr(getattr(handle, "adapter", None), "pid", None)
            record_launch(run_dir, replace(record, pid=pid if isinstance(pid, int) else None))
        return handle

    def rejoin_died_jobs(self, fl_ctx: FLContext) -> list[str]:
        """Start the process of every job whose launch record outlived its process; returns their ids."""
        if not self.active(fl_ctx):
            return []
        engine = fl_ctx.get_engine()
        try:
            workspace = _workspace(fl_ctx)
        except RuntimeError as e:
            self.log_warning(fl_ctx, f"cannot look for jobs to rejoin: {e}")
            return []
        rejoined = []
        root = workspace.get_root_dir()
        for job_id in sorted(os.listdir(root)):
            if not os.path.isfile(os.path.join(root, job_id, RECORD_NAME)):
                continue
            run_dir = workspace.get_run_dir(job_id)
            record = read_launch(run_dir)
            if record is None or record.job_id != job_id:
                forget_launch(run_dir)
                self.log_warning(fl_ctx, f"job {job_id}: not rejoining, its launch record is unreadable")
                continue
            if record.rejoins >= self.max_rejoins:
                forget_launch(run_dir)
                started = record.rejoins + 1
                self.log_warning(fl_ctx, f"job {job_id}: not rejoining, its process was started {started} times")
                continue
            if record.pid is not None and not _ended(record.pid, job_id, self.previous_process_wait_s):
                # the client died and the job process is still winding down; the next client start retries
                self.log_warning(fl_ctx, f"job {job_id}: not rejoining, its process {record.pid} is still running")
                continue
            try:
                with open(workspace.get_job_meta_path(job_id), encoding="utf-8") as f:
                    job_meta = json.load(f)
                # FLARE's own start path (deployed meta checks, process watch, outcome report), as for START_JOB;
                # it calls launch_job, which finds the record and launches with its token
                reply = str(engine.start_app(job_id, job_meta=job_meta))
                failure = reply if reply.startswith(FLARE_ERROR_REPLY) else None
            except Exception as e:  # noqa: BLE001 - one line in the client's log, the client goes on
                failure = f"cannot start its process: {type(e).__name__}: {e}"
            if failure:
                forget_launch(run_dir)
                self.log_warning(fl_ctx, f"job {job_id}: not rejoining: {failure}")
                continue
            self.log_info(
                fl_ctx,
                f"job {job_id}: its process died before the job ended; started it again to rejoin the job "
                f"(rejoin {record.rejoins + 1} of at most {self.max_rejoins})",
            )
            rejoined.append(job_id)
        return rejoined


def _ended(pid: int, job_id: str, wait_s: float) -> bool:
    """Whether process ``pid`` of job ``job_id`` is gone, waiting up to ``wait_s`` seconds for it."""
    deadline = time.monotonic() + wait_s
    while _running(pid, job_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def _running(pid: int, job_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return job_id.encode() in f.read().split(b"\0")  # not a recycled pid of another process
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: whether any process has this pid
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _arg(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    return str(value[1]) if value and value[1] else ""


def _workspace(fl_ctx: FLContext) -> Workspace:
    workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
    if not isinstance(workspace, Workspace):
        raise RuntimeError(f"the FL context has no {FLContextKey.WORKSPACE_OBJECT}")
    return workspace
