"""``--dp epsilon=E,delta=D,max_grad_norm=C`` in a job: DP-SGD at every site (:mod:`clara_fl.fl.site.dp`).

The Learner and the cross-site Validator get the settings (with the job's number of rounds, which the noise is
planned over); the server's persistor builds the global model as the sites train it (DP-compatible: BatchNorm
replaced by GroupNorm). Refused in one line before anything is written: an algorithm whose local step Opacus
cannot wrap (the catalog's ``dp_refusal``), and several DDP processes per site.

DP runs with ``--he`` (each site's noised update is then also encrypted: the two protect different things) and
with privacy filters (they post-process an update that is already differentially private).
"""

from __future__ import annotations

from typing import Any

from clara_fl.config.errors import UsageError
from clara_fl.fl.algorithms import algorithm_named
from clara_fl.fl.dp_settings import DPSettings, parse_dp_option
from clara_fl.recipes.job_model import LEARNER_ID, PERSISTOR_ID, ClientApp, ServerApp

__all__ = ["apply_dp", "check_dp", "coerce_dp", "parse_dp_option"]


def coerce_dp(dp: DPSettings | str | None) -> DPSettings | None:
    """``dp`` as :class:`DPSettings`: the recipe takes the settings or the ``--dp`` text.

    Raises:
        UsageError: bad ``--dp`` text.
    """
    return parse_dp_option(dp) if isinstance(dp, str) else dp


def check_dp(algorithm: str, nproc_per_site: int | None) -> None:
    """Refuse ``--dp`` with an algorithm that cannot run under DP-SGD, or several processes per site.

    Raises:
        UsageError: naming ``--dp`` and why.
    """
    refusal = algorithm_named(algorithm).dp_refusal
    if refusal:
        raise UsageError("--dp", None, f"{algorithm} cannot train with DP-SGD: {refusal}")
    if nproc_per_site is not None and nproc_per_site > 1:
        raise UsageError("--dp", None, "DP-SGD trains in one process per site: drop --nproc-per-site")


def apply_dp(server: ServerApp, client: ClientApp, dp: DPSettings, num_rounds: int | None) -> DPSettings:
    """Give the job's Learner, Validator and persistor the DP settings; returns them with the job's rounds.

    Args:
        server: the server's app (its persistor builds the DP-compatible network).
        client: the sites' app (Learner and Validator).
        dp: the ``--dp`` settings.
        num_rounds: the job's rounds; None: the template's.

    Raises:
        UsageError: the template has no Learner or persistor to take them.
    """
    rounds = num_rounds if num_rounds is not None else _template_rounds(server)
    planned = DPSettings(dp.epsilon, dp.delta, dp.max_grad_norm, rounds=max(1, int(rounds or 1)))
    learner, persistor = client.component(LEARNER_ID), server.component(PERSISTOR_ID)
    if learner is None or persistor is None:
        raise UsageError("--dp", None, "the job template has no clara_learner or persistor to train with DP-SGD")
    learner.args["dp"] = planned.as_args()
    if client.validator is not None:
        client.validator.args["dp"] = planned.as_args()
    persistor.args["dp_compatible"] = True
    return planned


def _template_rounds(server: ServerApp) -> Any:
    for workflow in server.workflows:
        if "num_rounds" in workflow.args:
            return workflow.args["num_rounds"]
    return None
