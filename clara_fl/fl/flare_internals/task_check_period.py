"""FLARE's server workflows, polling at the ``task_check_period`` they are given.

In FLARE 2.9, ``Controller.set_communicator`` sets ``communicator.task_check_period``, but ``WFCommServer``
polls with ``_task_check_period``, fixed at 0.2 s: the period a job configures never takes effect, and each
round waits on two such polls. :class:`PollsAtItsTaskCheckPeriod` passes the period through (both attributes
are private: :func:`clara_fl.runtime.private_api.set_task_check_period`). Gated (:data:`PATCH`, switch
``task_check_period``): the version when the communicator is set, the site's switch when the workflow starts
(the first moment the site file can be found); off, the communicator keeps FLARE's own period.
"""

from __future__ import annotations

from typing import Any, cast

from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from clara_fl.fl.flare_internals.gate import FlarePatch
from clara_fl.runtime.private_api import (
    communicator_task_check_period,
    controller_task_check_period,
    set_task_check_period,
)

__all__ = ["PATCH", "PollsAtItsTaskCheckPeriod"]

PATCH = FlarePatch(
    switch="task_check_period",
    does="have this workflow's communicator poll at the job's task_check_period (FLARE polls every 0.2 s)",
    relies_on="WFCommServer._task_check_period and Controller._task_check_period",
)


class PollsAtItsTaskCheckPeriod:
    """Mixin, before a FLARE ``Controller`` in the bases: its communicator polls at the controller's period."""

    _flare_period: float | None = None

    def set_communicator(self, communicator: Any) -> None:
        super().set_communicator(communicator)  # type: ignore[misc]
        self._flare_period = communicator_task_check_period(communicator)
        if PATCH.written_for_this_flare():
            set_task_check_period(communicator, controller_task_check_period(self))

    def initialize(self, fl_ctx: FLContext) -> None:
        communicator = getattr(self, "communicator", None)
        if communicator is not None and not PATCH.active(cast(FLComponent, self), fl_ctx):
            if self._flare_period is not None:
                set_task_check_period(communicator, self._flare_period)
        super().initialize(fl_ctx)  # type: ignore[misc]
