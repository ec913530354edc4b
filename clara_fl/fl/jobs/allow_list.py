"""FLARE's class allow-list (2.8+) and what clara-fl jobs need on it.

A job without an app ``custom/`` folder may only build components whose class paths are on the
site's ``local/resources.json`` ``class_allow_list``. FLARE's default list lacks our classes and a
few FLARE classes our templates use.
"""

from __future__ import annotations

import json
import os
from typing import Any

from clara_fl.runtime.files import write_json_atomic

__all__ = ["CLARA_ALLOW_LIST", "resources_with_allow_list", "write_simulator_policy"]

CLARA_ALLOW_LIST = (
    "clara_fl.",
    "nvflare.app_common.executors.learner_executor.LearnerExecutor",
    "nvflare.app_common.workflows.cross_site_eval.CrossSiteEval",
)


def resources_with_allow_list(resources: dict[str, Any] | None) -> dict[str, Any]:
    """``resources`` with CLARA_ALLOW_LIST added to its class_allow_list (FLARE's default list if it had none)."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    resources = dict(resources or {})
    current = list(resources.get("class_allow_list", DEFAULT_CLASS_ALLOW_LIST))
    if "*" not in current:
        current += [entry for entry in CLARA_ALLOW_LIST if entry not in current]
    resources["class_allow_list"] = current
    return resources


def write_simulator_policy(workspace: str) -> str:
    """Put the allow-list into ``WORKSPACE/local/resources.json``; the simulator copies it to every site."""
    local = os.path.join(workspace, "local")
    os.makedirs(local, exist_ok=True)
    path = os.path.join(local, "resources.json")
    existing = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
    write_json_atomic(path, resources_with_allow_list(existing))
    return path
