"""Robust aggregation (``clara-fl job create --aggregator RULE``, ``aggregator=`` on the recipe) applied to a job's
server app: the rule of :mod:`clara_fl.fl.server.robust_rules` in place of the template's weighted mean.

Plain data only (no nvflare, no torch). Refused in one line, before anything is written, where it does not apply:
an algorithm whose server step is not an aggregation of the sites' updates alone (the catalog's
``supports_robust_aggregation``), homomorphic encryption (the server cannot see the values), and a job whose rounds
may have fewer sites than the rule needs (``--min-clients``).
"""

from __future__ import annotations

from typing import Any

from clara_fl.config.errors import UsageError
from clara_fl.fl.algorithms import ALGORITHMS, algorithm_named
from clara_fl.fl.server.robust_rules import RobustRule, RuleError, parse_rule
from clara_fl.recipes.job_model import ServerApp

__all__ = ["AGGREGATOR_OPTION", "apply_robust_aggregation", "check_robust_aggregation", "describe", "parse_aggregator"]

AGGREGATOR_OPTION = "--aggregator"
_SERVER = "clara_fl.fl.server.robust_aggregation"
SCATTER_AND_GATHER_AGGREGATOR = f"{_SERVER}.RobustAggregator"
MODEL_CONTROLLER_AGGREGATOR = f"{_SERVER}.RobustModelAggregator"
SCATTER_AND_GATHER_ID = "scatter_and_gather"
MODEL_CONTROLLER_ID = "fedavg"


def parse_aggregator(text: str) -> RobustRule:
    """``--aggregator``'s value as a rule.

    Raises:
        UsageError: an unknown rule or parameter, or a value out of range.
    """
    try:
        return parse_rule(text)
    except RuleError as e:
        raise UsageError(AGGREGATOR_OPTION, text, str(e)) from None


def check_robust_aggregation(text: str, algorithm: str, he: bool = False, min_clients: int | None = None) -> RobustRule:
    """The rule ``text``, refused where it cannot apply.

    Args:
        text: the rule (``--aggregator``).
        algorithm: the job's FL algorithm (``--algorithm``).
        he: the job uses homomorphic encryption (``--he``).
        min_clients: the fewest sites a round aggregates; None: not known yet.

    Raises:
        UsageError: a bad rule; an algorithm that does not allow it; HE; a rule the round's sites cannot meet.
    """
    rule = parse_aggregator(text)
    chosen = algorithm_named(algorithm)
    if not chosen.supports_robust_aggregation:
        valid = ", ".join(sorted(a.name for a in ALGORITHMS.values() if a.supports_robust_aggregation))
        raise UsageError(
            AGGREGATOR_OPTION,
            text,
            f"{chosen.name}'s server step is not only an aggregation of the sites' updates "
            f"(with --aggregator: {valid})",
        )
    if he:
        raise UsageError(
            AGGREGATOR_OPTION, text, "cannot run with --he: the server aggregates encrypted updates it cannot see"
        )
    if min_clients is not None:
        try:
            rule.check(min_clients)
        except RuleError as e:
            raise UsageError(
                AGGREGATOR_OPTION,
                text,
                f"{e}: a round may aggregate only --min-clients {min_clients} sites; set --min-clients "
                f"{rule.min_updates()} or more",
            ) from None
    return rule


def describe(rule: RobustRule, sites: int) -> str:
    """One line saying what the rule does with ``sites`` updates a round."""
    if rule.name in ("median", "trimmed_mean"):
        cut = rule.cut_per_end(sites)
        line = f"{rule.spec}: per coordinate, the {cut} smallest and {cut} largest of {sites} sites' values are cut"
        if cut == 0:
            line += " (nothing: the plain mean" + ("; raise beta)" if rule.name == "trimmed_mean" else " of two)")
        return line
    kept = 1 if rule.name == "krum" else (rule.m or sites - rule.f)
    return (
        f"{rule.spec}: of {sites} sites' updates, the {kept} with the smallest sum of squared distances to their "
        f"{sites - rule.f - 2} nearest others {'is' if kept == 1 else 'are'} taken"
    )


def apply_robust_aggregation(
    server: ServerApp, text: str, algorithm: str, he: bool = False, template: str = ""
) -> RobustRule:
    """Put rule ``text`` in place of the server's weighted mean (in place): the ScatterAndGather template's
    aggregator component, or the aggregator of the ModelController template's FedAvg.

    Args:
        server: the job's server app.
        text: the rule (``--aggregator``).
        algorithm: the job's FL algorithm.
        he: the job uses homomorphic encryption.
        template: the template's name, for the error.

    Raises:
        UsageError: the rule is refused (:func:`check_robust_aggregation`), or the template has neither server part.
    """
    scatter = server.workflow(SCATTER_AND_GATHER_ID)
    fedavg = server.workflow(MODEL_CONTROLLER_ID)
    workflow = scatter if scatter is not None else fedavg
    min_clients = workflow.args.get("min_clients") if workflow is not None else None
    rule = check_robust_aggregation(text, algorithm, he, int(min_clients) if min_clients is not None else None)
    aggregator = server.aggregator
    if scatter is not None and aggregator is not None:
        args: dict[str, Any] = {"rule": rule.spec}
        args["expected_data_kind"] = aggregator.args.get("expected_data_kind", "WEIGHT_DIFF")
        args.update({k: aggregator.args[k] for k in ("exclude_vars", "aggregation_weights") if aggregator.args.get(k)})
        aggregator.path, aggregator.args = SCATTER_AND_GATHER_AGGREGATOR, args
    elif fedavg is not None:
        args = {"rule": rule.spec}
        args.update({k: fedavg.args[k] for k in ("exclude_vars", "aggregation_weights") if fedavg.args.get(k)})
        fedavg.args["aggregator"] = {"path": MODEL_CONTROLLER_AGGREGATOR, "args": args}
    else:
        raise UsageError(
            "--template",
            template or None,
            "--aggregator needs a template with ScatterAndGather and an aggregator, or FLARE's FedAvg controller",
        )
    return rule
