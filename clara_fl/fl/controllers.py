"""FLARE's server workflows, polling at the ``task_check_period`` they are given.

In FLARE 2.9, ``Controller.set_communicator`` sets ``communicator.task_check_period``, but
``WFCommServer`` polls with ``_task_check_period``, fixed at 0.2 s: the period a job configures
never takes effect, and each round waits on two such polls. These subclasses pass the period
through and change nothing else; the job templates use them. (Both attributes are private: see
``clara_fl.runtime.private_api``.)
"""

from __future__ import annotations

from typing import Any

from nvflare.app_common.workflows.cross_site_eval import CrossSiteEval as _CrossSiteEval
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval as _CrossSiteModelEval
from nvflare.app_common.workflows.fedavg import FedAvg as _FedAvg
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather as _ScatterAndGather

__all__ = ["ScatterAndGather", "CrossSiteModelEval", "FedAvg", "CrossSiteEval"]


class _PollsAtItsTaskCheckPeriod:
    _task_check_period: float

    def set_communicator(self, communicator: Any) -> None:
        from clara_fl.runtime.private_api import controller_task_check_period, set_task_check_period

        super().set_communicator(communicator)  # type: ignore[misc]
        set_task_check_period(communicator, controller_task_check_period(self))


class ScatterAndGather(_PollsAtItsTaskCheckPeriod, _ScatterAndGather):
    """FLARE's ScatterAndGather (FedAvg rounds), polling every ``task_check_period`` seconds."""


class CrossSiteModelEval(_PollsAtItsTaskCheckPeriod, _CrossSiteModelEval):
    """FLARE's CrossSiteModelEval, polling every ``task_check_period`` seconds."""


class FedAvg(_PollsAtItsTaskCheckPeriod, _FedAvg):
    """FLARE's FedAvg on the ModelController API, polling every ``task_check_period`` seconds."""


class CrossSiteEval(_PollsAtItsTaskCheckPeriod, _CrossSiteEval):
    """FLARE's CrossSiteEval on the ModelController API, polling every ``task_check_period`` seconds."""
