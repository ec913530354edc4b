"""The FL algorithms, one object each, read by the job side and the site side alike (no nvflare, no torch)."""

from __future__ import annotations

from clara_fl.fl.algorithms.catalog import ALGORITHMS, DEFAULT_ALGORITHM, MODEL_CONTROLLER_TEMPLATE, algorithm_named
from clara_fl.fl.algorithms.spec import Algorithm, AlgorithmParameter, ServerPart, WorkflowKind

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "MODEL_CONTROLLER_TEMPLATE",
    "Algorithm",
    "AlgorithmParameter",
    "ServerPart",
    "WorkflowKind",
    "algorithm_named",
]
