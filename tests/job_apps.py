"""Applying an FL algorithm to app configs written as dicts, for the algorithm tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clara_fl.recipes.algorithms import apply_algorithm
from clara_fl.recipes.job_model import ClientApp, ServerApp

LEARNER = {"id": "clara_learner", "path": "clara_fl.fl.site.learner.ClaraLearner", "args": {}}


def configured(
    server: Mapping[str, Any],
    client: Mapping[str, Any],
    name: str,
    args: Mapping[str, Any] | None,
    nproc_per_site: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The server and client configs with algorithm ``name`` applied (the job model's configs)."""
    server_app, client_app = ServerApp.from_config(server), ClientApp.from_config(client)
    apply_algorithm(server_app, client_app, name, args, nproc_per_site)
    return server_app.to_config(), client_app.to_config()
