"""Jobs a server restart strands: ended when the server starts, with a line that says how to continue them.

A server killed mid-job (``kill -9``, a power cut) comes back through FLARE's start script, but FLARE 2.9
neither restores the job (no server snapshot) nor ends it: the job store keeps it RUNNING with no process,
``nvflare job abort`` answers "Job ... is not running", and ``nvflare job delete`` refuses a running job.
FLARE's ``JobRunner.update_abnormal_finished_jobs`` marks such jobs ``FINISHED:ABNORMAL`` but nothing in
2.9 calls it. This server component (``clara-fl site setup`` adds it to the server kit's
``local/resources.json``) calls it when the server starts, when no job can be running yet; then the
sites abort their processes of that job at their next heartbeat (FLARE's job sync), and the operator
continues it with ``clara-fl job resume`` (:mod:`clara_fl.recipes.resume`). The job runner is the private
server engine's (``nvflare.private.fed.server``): the patch is gated (:data:`PATCH`, switch ``end_stranded_jobs``).
"""

from __future__ import annotations

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import SystemComponents
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_def import RunStatus

from clara_fl.fl.flare_internals.gate import FlarePatch

__all__ = ["PATCH", "EndStrandedJobs"]

PATCH = FlarePatch(
    switch="end_stranded_jobs",
    does="end, at server start, the jobs a server restart left RUNNING with no process",
    relies_on="the server engine's job_runner.update_abnormal_finished_jobs and run_processes (nvflare.private)",
)


class EndStrandedJobs(FLComponent):
    """At server start, ends the jobs the job store still has as running (see the module doc)."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.SYSTEM_START and PATCH.active(self, fl_ctx):
            self._end_stranded_jobs(fl_ctx)

    def _end_stranded_jobs(self, fl_ctx: FLContext) -> None:
        engine = fl_ctx.get_engine()
        job_manager = engine.get_component(SystemComponents.JOB_MANAGER)
        job_runner = getattr(engine, "job_runner", None)
        if job_manager is None or job_runner is None:
            self.log_warning(fl_ctx, "no job manager or job runner: jobs a restart stranded stay RUNNING")
            return
        stranded = job_manager.get_jobs_by_status([RunStatus.RUNNING, RunStatus.DISPATCHED], fl_ctx)
        if not stranded:
            return
        job_runner.update_abnormal_finished_jobs(running_job_ids=list(engine.run_processes), fl_ctx=fl_ctx)
        workspace = engine.get_workspace()
        for job in stranded:
            self.log_warning(
                fl_ctx,
                f"job {job.job_id} was running when the server stopped: ended as {RunStatus.FINISHED_ABNORMAL.value}; "
                f"continue it from its last saved round: "
                f"clara-fl job resume JOB_FOLDER {workspace.get_run_dir(job.job_id)}",
            )
