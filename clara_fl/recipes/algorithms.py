"""The job's FL algorithm (``clara-fl job create --algorithm NAME --algorithm-arg K=V``) applied to its apps.

The algorithms themselves, with their parameters, limits, site classes and server parts, are the objects of
:mod:`clara_fl.fl.algorithms`; here their server part goes into the server's app and the site Learner (and the
cross-site validator) are told the algorithm and its site arguments. Names and arguments are checked before
anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.algorithms import ALGORITHMS, DEFAULT_ALGORITHM, MODEL_CONTROLLER_TEMPLATE, algorithm_named
from clara_fl.recipes.job_model import LEARNER_ID, ClientApp, Component, ServerApp

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "apply_algorithm",
    "check_algorithm_args",
    "check_algorithm_under_he",
    "parse_algorithm_args",
]

# the training workflow of each template family, by id
SCATTER_AND_GATHER_ID = "scatter_and_gather"
MODEL_CONTROLLER_ID = "fedavg"


def check_algorithm_args(name: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every argument of algorithm ``name``: the given ones converted to their types, the others at their defaults.

    Args:
        name: the algorithm (``--algorithm``).
        args: its arguments by name (``--algorithm-arg``), strings or values.

    Raises:
        UsageError: an unknown algorithm, an argument it does not take, or a value of the wrong type or range.
    """
    return algorithm_named(name).checked_args(args)


def parse_algorithm_args(name: str, pairs: Iterable[str]) -> dict[str, Any]:
    """``--algorithm-arg NAME=VALUE`` strings for algorithm ``name``, checked (see :func:`check_algorithm_args`).

    Raises:
        UsageError: a pair without ``=``, an unknown algorithm or argument, or a value of the wrong type.
    """
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError("--algorithm-arg", pair, "expected NAME=VALUE")
        given[key.strip()] = value.strip()
    return check_algorithm_args(name, given)


def check_algorithm_under_he(name: str) -> None:
    """Refuse an algorithm that cannot run with homomorphic encryption (``--he``).

    Raises:
        UsageError: algorithm ``name`` is unknown or cannot run with ``--he``.
    """
    algorithm = algorithm_named(name)
    if not algorithm.supports_he:
        valid = ", ".join(sorted(a.name for a in ALGORITHMS.values() if a.supports_he))
        raise UsageError("--he", None, f"{algorithm.name} cannot run with --he (with --he: {valid})")


def apply_algorithm(
    server: ServerApp,
    client: ClientApp,
    name: str,
    args: Mapping[str, Any] | None,
    nproc_per_site: int | None = None,
) -> dict[str, Any]:
    """Apply algorithm ``name`` to a job's apps (in place); returns its checked arguments.

    Raises:
        UsageError: an unknown algorithm or argument, one that cannot train in several processes per site, or a
            template (``--template``) without the server parts it replaces.
        ConfigError: a template without the site Learner.
    """
    algorithm = algorithm_named(name)
    checked = algorithm.checked_args(args)
    if nproc_per_site and nproc_per_site > 1 and not algorithm.supports_nproc_per_site:
        raise UsageError(
            "--nproc-per-site", str(nproc_per_site), f"{algorithm.name} cannot train in several processes per site"
        )
    part = algorithm.server
    if part.needs == "model_controller":
        workflow = server.workflow(MODEL_CONTROLLER_ID)
        if workflow is None:
            raise UsageError(
                "--template",
                None,
                f"{algorithm.name} runs on FLARE's {(part.workflow or '').rpartition('.')[2]} controller: use "
                f"--template {MODEL_CONTROLLER_TEMPLATE} (the job template has no '{MODEL_CONTROLLER_ID}' "
                "ModelController workflow)",
            )
    else:
        workflow = server.workflow(SCATTER_AND_GATHER_ID)
    if part.workflow is not None and workflow is not None:
        workflow.path = part.workflow
        workflow.id = part.workflow_id or workflow.id
    if part.shareable_generator is not None:
        generator, workflow = _generator_to_replace(server, client, algorithm.name, part.needs_weight_diff)
        generator.path = part.shareable_generator
        persistor_id = str(workflow.args.get("persistor_id", "persistor"))
        num_rounds = int(workflow.args.get("num_rounds", 1))
        generator_args = part.generator_args
        generator.args = (
            generator_args(algorithm.server_args(checked), persistor_id, num_rounds) if generator_args else {}
        )
    if algorithm.name != DEFAULT_ALGORITHM:
        site_args = algorithm.site_args(checked)
        learner = client.learner
        if learner is None:
            raise ConfigError(
                f"the job template has no '{LEARNER_ID}' component to run --algorithm {name} at the sites"
            )
        learner.args.update(algorithm=algorithm.name, algorithm_args=dict(site_args))
        validator = client.validator
        if validator is not None:  # validates with the site's own local layers (FedBN's norm layers)
            validator.args.update(algorithm=algorithm.name, algorithm_args=dict(site_args))
    return checked


def _generator_to_replace(
    server: ServerApp, client: ClientApp, name: str, needs_weight_diff: bool
) -> tuple[Component, Component]:
    """The ScatterAndGather job's shareable generator and workflow.

    Raises:
        UsageError: the template (``--template``) has neither, or (``needs_weight_diff``) its sites send whole
            weights (``--algorithm``).
    """
    generator = server.shareable_generator
    workflow = server.workflow(SCATTER_AND_GATHER_ID)
    if generator is None or workflow is None:
        raise UsageError(
            "--template",
            None,
            f"{name} needs a template with ScatterAndGather and a shareable generator (clara_fedavg_cse)",
        )
    if needs_weight_diff:
        aggregator = server.aggregator
        learner = client.learner
        sends_diff = (learner.args if learner else {}).get("send_weight_diff", True)
        if aggregator is None or aggregator.args.get("expected_data_kind") != "WEIGHT_DIFF" or not sends_diff:
            raise UsageError("--algorithm", name, f"{name} needs the sites to send weight differences (WEIGHT_DIFF)")
    return generator, workflow
