"""A site whose job process dies abruptly drops out of the job; it does not fail the whole job.

FLARE 2.9's client parent process maps any exit of the job process that is not 0 or 9 (a ``kill -9``, an
out-of-memory kill, a segfault: a negative return code) to "exception" and reports it to the server,
which then fails the WHOLE job (``Failing job ... due to reported failure from site-3``,
``FINISHED:EXECUTION_EXCEPTION``), whatever ``min_clients`` allows. The parent first reads the code the
job process itself left in ``<run dir>/_process_rc.txt`` (FLARE's ``FLMetaKey.PROCESS_RC_FILE``): that is
where this component records, when the run starts, :data:`ABRUPT_EXIT_CODE`, a code FLARE does not
report as a failure. A run that ends normally removes the record at its end, so FLARE's own code (a real
configuration error or exception) is reported as before; a process killed before its end leaves it.
This relies on how FLARE's client parent reads that file (``fed_utils.get_return_code``): the patch is gated
(:data:`PATCH`, switch ``dropout_on_abrupt_exit``).

The server then handles the site as FLARE handles a site that disappears: its parent reports the job
missing, the site goes on FLARE's dead-client watch list, rounds complete with ``min_clients`` results,
and FLARE ends the job only when fewer than the job's ``min_clients`` sites (or a ``mandatory_clients``
site) are left. (``clara_fl.fl.server.controllers.ScatterAndGather`` logs the site as dropped.)

At the run's end the component also removes the launch record of :mod:`clara_fl.fl.flare_internals.rejoin`
(whatever this patch's gate says: the record is clara-fl's own file): a job whose process ended its run has
nothing to rejoin when the site's client restarts. Except when the run ended because the site's client (the
job process's parent) died: FLARE's job process then stops its run by itself, and the record stays, so that
the restarted client starts the job's process again.
"""

from __future__ import annotations

import os

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.apis.fl_context import FLContext

from clara_fl.fl.flare_internals.gate import FlarePatch
from clara_fl.fl.flare_internals.rejoin import forget_launch

__all__ = ["ABRUPT_EXIT_CODE", "PATCH", "DropOutOnAbruptExit"]

ABRUPT_EXIT_CODE = 137
"""What the client parent sees for a job process that ended without finishing its run (128 + SIGKILL)."""

PATCH = FlarePatch(
    switch="dropout_on_abrupt_exit",
    does=f"record exit code {ABRUPT_EXIT_CODE} for this job process (a site whose job process dies would drop out "
    "instead of failing the whole job)",
    relies_on=f"the client parent reading the job's {FLMetaKey.PROCESS_RC_FILE} and not reporting {ABRUPT_EXIT_CODE}",
)


class DropOutOnAbruptExit(FLComponent):
    """Records :data:`ABRUPT_EXIT_CODE` as the job process's exit code for the run's lifetime (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._parent_pid = os.getppid()
        self._recorded = False

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._recorded = PATCH.active(self, fl_ctx) and self._write(fl_ctx)
        elif event_type == EventType.END_RUN:
            self._remove(fl_ctx)

    @staticmethod
    def run_dir(fl_ctx: FLContext) -> str:
        return fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())

    @classmethod
    def rc_file(cls, fl_ctx: FLContext) -> str:
        """The job's return-code file that FLARE's client parent reads when the job process has exited."""
        return os.path.join(cls.run_dir(fl_ctx), FLMetaKey.PROCESS_RC_FILE)

    def _write(self, fl_ctx: FLContext) -> bool:
        path = self.rc_file(fl_ctx)
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(str(ABRUPT_EXIT_CODE))
        except OSError as e:
            self.log_warning(fl_ctx, f"cannot record the drop-out exit code in {path}: {e}")
            return False
        self.log_info(fl_ctx, f"if this job process dies, the site drops out of the job (exit code {ABRUPT_EXIT_CODE})")
        return True

    def _remove(self, fl_ctx: FLContext) -> None:
        if self._recorded:
            try:
                os.remove(self.rc_file(fl_ctx))
            except FileNotFoundError:
                pass
            except OSError as e:
                self.log_warning(fl_ctx, f"cannot remove the drop-out exit code: {e}; an error exit may be missed")
        if os.getppid() != self._parent_pid:  # re-parented: the site's client died, the run did not end
            self.log_warning(fl_ctx, "the site's client is gone: its restart starts this job's process again")
            return
        try:
            forget_launch(self.run_dir(fl_ctx))
        except OSError as e:
            self.log_warning(fl_ctx, f"cannot remove the launch record: {e}; a client restart may start this job again")
