"""A site's job process that ends promptly when its job is aborted.

On ``nvflare job abort`` FLARE 2.9's client job process stops its tasks and fires END_RUN within about a
second, then sleeps a fixed 3 s before it starts its own clean-up (``MPM.run``'s ``shutdown_grace_time``, not
configurable for a job process) and may then take longer to exit; the site's parent process waits up to a
hard-coded 10 s (``ClientExecutor._terminate_job``) before it kills it. Meanwhile the process holds the
training memory. :class:`ExitPromptlyOnAbort` ends the process ``grace_s`` seconds after END_RUN of an
aborted run (FLARE's ``RUN_ABORT_REQUESTED``): the tasks have returned by then, the Learner has stopped its
torchrun workers, and nothing of an aborted run is kept. A job that ends normally is left to FLARE.
The hard exit skips FLARE's own shutdown of the job process, which is safe only as long as FLARE does nothing
after END_RUN of an aborted run that must finish: the patch is gated (:data:`PATCH`, switch
``exit_promptly_on_abort``).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from clara_fl.fl.flare_internals.gate import FlarePatch

__all__ = ["PATCH", "ExitPromptlyOnAbort"]

PATCH = FlarePatch(
    switch="exit_promptly_on_abort",
    does="end this job process right after END_RUN when its job is aborted (FLARE takes 3 to 10 s more)",
    relies_on="a job process having nothing left to do after END_RUN of an aborted run (MPM.run's shutdown)",
)


class ExitPromptlyOnAbort(FLComponent):
    """Ends the site's job process ``grace_s`` seconds after END_RUN when the run was aborted.

    Args:
        grace_s: seconds left to FLARE after END_RUN (its "client is stopping" messages to the server).
    """

    def __init__(self, grace_s: float = 0.5) -> None:
        super().__init__()
        self.grace_s = float(grace_s)
        self._aborted = False
        self._active = False

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._aborted = False
            self._active = PATCH.active(self, fl_ctx)
        elif event_type == EventType.ABORT_TASK and fl_ctx.get_prop(FLContextKey.RUN_ABORT_REQUESTED, False):
            self._aborted = True
        elif event_type == EventType.END_RUN and self._aborted and self._active:
            self.log_info(fl_ctx, f"the job was aborted: this job process exits in {self.grace_s} s")
            threading.Thread(target=self._exit, name="clara-fl-exit-on-abort", daemon=True).start()

    def _exit(self) -> None:
        time.sleep(self.grace_s)
        logging.shutdown()  # flush the job's log files
        os._exit(0)
