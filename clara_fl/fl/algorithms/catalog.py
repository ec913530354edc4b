"""The FL algorithms clara-fl runs, one object each: ``--algorithm NAME`` on the job side, the Learner's
``algorithm`` at the sites, and the server part the job runs for it all come from here.

Adding an algorithm is adding one :class:`~clara_fl.fl.algorithms.spec.Algorithm` to :data:`ALGORITHMS` (and
its site class module when it changes what a site does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clara_fl.fl.algorithms.spec import Algorithm, AlgorithmParameter, ServerPart, refusal

__all__ = [
    "ALGORITHMS",
    "BUDGET_RULE",
    "DEFAULT_ALGORITHM",
    "MODEL_CONTROLLER_TEMPLATE",
    "algorithm_named",
    "algorithms_help",
]

MODEL_CONTROLLER_TEMPLATE = "clara_fedavg_cse_mc"
_SITE = "clara_fl.fl.site"
FEDAVG_SITE = f"{_SITE}.local_algorithm.LocalAlgorithm"


#: the server lr when ``lr`` is not given, by server optimizer: the settings that learned fastest in a few rounds of
#: both shipped MMARs (Adam at the sites; bench/fedopt_defaults.py, docs/benchmarks.md)
FEDOPT_DEFAULT_LR = {"sgd": 1.0, "adam": 0.001}


def _fedopt_generator_args(args: Mapping[str, Any], persistor_id: str, num_rounds: int) -> dict[str, Any]:
    lr = args["lr"] if args.get("lr") is not None else FEDOPT_DEFAULT_LR[args["optimizer"]]
    generator: dict[str, Any] = {
        "server_optimizer": args["optimizer"],
        "lr": lr,
        "momentum": args["momentum"],
        "persistor_id": persistor_id,
    }
    if args["lr_scheduler"]:
        generator["cosine_rounds"] = num_rounds
    return generator


FEDAVG = Algorithm(
    name="fedavg",
    summary="the sites' weight updates averaged, weighted by their training steps (FLARE's FedAvg)",
    site_class=FEDAVG_SITE,
)
FEDPROX = Algorithm(
    name="fedprox",
    summary="FedAvg with a proximal term mu/2*||w - w_global||^2 in each site's loss (FLARE's PTFedProxLoss)",
    site_class=f"{_SITE}.fedprox.FedProx",
    parameters=(
        AlgorithmParameter(
            "mu", float, 0.01, "weight of the proximal term (>= 0)", check=lambda v: v >= 0, expected=">= 0"
        ),
    ),
    supports_nproc_per_site=False,
)
FEDOPT = Algorithm(
    name="fedopt",
    summary="the averaged update taken as a gradient by a server optimizer (FLARE's FedOpt generator)",
    site_class=FEDAVG_SITE,
    parameters=(
        AlgorithmParameter("optimizer", str, "sgd", "the server optimizer", choices=("sgd", "adam"), side="server"),
        AlgorithmParameter(
            "lr",
            float,
            None,
            "the server learning rate",
            check=lambda v: v > 0,
            expected="> 0",
            side="server",
            default_text="1.0 with sgd, 0.001 with adam",
        ),
        AlgorithmParameter(
            "momentum",
            float,
            0.6,
            "the server SGD momentum (not used by adam)",
            check=lambda v: 0 <= v < 1,
            expected=">= 0 and < 1",
            side="server",
        ),
        AlgorithmParameter(
            "lr_scheduler", bool, False, "a cosine decay of the server lr over the job's rounds", side="server"
        ),
    ),
    server=ServerPart(
        needs="scatter_and_gather",
        shareable_generator="clara_fl.fl.server.fedopt.FedOptShareableGenerator",
        generator_args=_fedopt_generator_args,
        needs_weight_diff=True,
    ),
    supports_he=False,
)
SCAFFOLD = Algorithm(
    name="scaffold",
    summary="control variates on server and sites correct the local drift (FLARE's Scaffold, PTScaffoldHelper)",
    site_class=f"{_SITE}.scaffold.Scaffold",
    server=ServerPart(
        workflow="clara_fl.fl.server.controllers.Scaffold", workflow_id="scaffold", needs="model_controller"
    ),
    supports_nproc_per_site=False,
    supports_he=False,
    job_template=MODEL_CONTROLLER_TEMPLATE,
    supports_robust_aggregation=False,
    assumes_sgd=True,
    dp_refusal="its control-variate correction changes the weights after each of Opacus's noised steps, a path not "
    "validated under DP-SGD here",
)
DITTO = Algorithm(
    name="ditto",
    summary="a personalized model per site, pulled towards the global model (FLARE's Ditto helper)",
    site_class=f"{_SITE}.ditto.Ditto",
    parameters=(
        AlgorithmParameter(
            "lambda",
            float,
            0.1,
            "the weight of the personalized model's pull to the global model",
            check=lambda v: v >= 0,
            expected=">= 0",
        ),
        AlgorithmParameter(
            "personal_epochs",
            int,
            None,
            "epochs of personalized training per round",
            check=lambda v: v >= 1,
            expected=">= 1",
            default_text="the round's local training, iteration for iteration",
        ),
        AlgorithmParameter(
            "personal_start",
            str,
            "every_round",
            "where each round's personalized training starts: every_round, the round's global model (local "
            "fine-tuning pulled to it); first_round, the last round's personalized model (FLARE's Ditto)",
            choices=("every_round", "first_round"),
        ),
    ),
    supports_nproc_per_site=False,
    dp_refusal="its personalized model trains on the site's data with its own optimizer, outside Opacus's "
    "accounting, and is released for cross-site validation",
)
FEDBN = Algorithm(
    name="fedbn",
    summary="FedAvg whose normalization layers stay at each site: neither loaded from nor sent to the server",
    site_class=f"{_SITE}.fedbn.FedBN",
    supports_he=False,
)

DEFAULT_ALGORITHM = FEDAVG.name
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (FEDAVG, FEDPROX, FEDOPT, SCAFFOLD, DITTO, FEDBN)}


#: what every algorithm's defaults keep equal (``clara-fl job create --help``, docs/fl.md)
BUDGET_RULE = (
    "Every algorithm gets the same training budget by default: in each round every site trains the round's local "
    "training (--local-epochs epochs, else the MMAR's own Clara FL config's epochs per round, else 1; or "
    "steps_aggregation iterations where the job counts steps), and Ditto's personalized model trains as many "
    "iterations again unless personal_epochs is given. --algorithm-arg overrides any default."
)


def algorithms_help() -> str:
    """Each algorithm's ``--algorithm-arg`` parameters with their defaults, then :data:`BUDGET_RULE` (``--help``)."""
    lines = ["algorithms and their --algorithm-arg NAME=VALUE (default):"]
    for algorithm in ALGORITHMS.values():
        described = ", ".join(p.described() for p in algorithm.parameters) or "no arguments"
        lines.append(f"  {algorithm.name}: {described}")
    lines.append(BUDGET_RULE)
    return "\n".join(lines)


def algorithm_named(name: str, where: str = "--algorithm") -> Algorithm:
    """The algorithm called ``name``.

    Args:
        name: the algorithm's name.
        where: the option (``--algorithm``) or the Learner's config path at a site the name comes from.

    Raises:
        UsageError: no algorithm has that name, where ``where`` is an option (the message lists the valid ones).
        ConfigError: the same, where ``where`` is a config path.
    """
    try:
        return ALGORITHMS[name]
    except KeyError:
        valid = ", ".join(sorted(ALGORITHMS))
        raise refusal(where, name, f"unknown FL algorithm '{name}' (valid: {valid})") from None
