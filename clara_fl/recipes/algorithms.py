"""The FL algorithms a job can ask for (``clara-fl job create --algorithm NAME --algorithm-arg K=V``).

Each :class:`~clara_fl.recipes.algorithm_spec.Algorithm` edits the job's FLARE app configs; the site side of
the same name is a :class:`~clara_fl.fl.site.local_algorithm.LocalAlgorithm` the Learner builds from its
``algorithm`` and ``algorithm_args``. Names and arguments are checked here, before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.variables import as_bool
from clara_fl.recipes.algorithm_spec import Algorithm, AlgorithmParameter

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "LEARNER_ID",
    "algorithm_named",
    "check_algorithm_args",
    "check_algorithm_under_he",
    "configure_algorithm",
    "parse_algorithm_args",
    "set_learner_algorithm",
    "set_validator_algorithm",
    "template_for",
]

DEFAULT_ALGORITHM = "fedavg"
LEARNER_ID = "clara_learner"


def set_learner_algorithm(client: dict[str, Any], name: str, args: Mapping[str, Any]) -> None:
    """Tell the site Learner (component ``clara_learner``) which :class:`LocalAlgorithm` to run, with its arguments.

    Raises:
        ConfigError: the client config has no ``clara_learner`` component.
    """
    for component in client.get("components", []):
        if component.get("id") == LEARNER_ID:
            component.setdefault("args", {}).update(algorithm=name, algorithm_args=dict(args))
            return
    raise ConfigError(f"the job template has no '{LEARNER_ID}' component to run --algorithm {name} at the sites")


def _fedavg(server: dict[str, Any], client: dict[str, Any], args: Mapping[str, Any]) -> None:
    """FedAvg is what the templates already describe."""


FEDAVG = Algorithm(
    name="fedavg",
    summary="the sites' weight updates averaged, weighted by their training steps (FLARE's FedAvg)",
    parameters=(),
    configure=_fedavg,
)


VALIDATOR_ID = "clara_validator"
MODEL_CONTROLLER_TEMPLATE = "clara_fedavg_cse_mc"


def set_validator_algorithm(client: dict[str, Any], name: str, args: Mapping[str, Any]) -> None:
    """Tell the cross-site validator (executor ``clara_validator``, when the job has one) the site's algorithm."""
    for entry in client.get("executors", []):
        executor = entry.get("executor", {})
        if executor.get("id") == VALIDATOR_ID:
            executor.setdefault("args", {}).update(algorithm=name, algorithm_args=dict(args))


def _fedprox(server: dict[str, Any], client: dict[str, Any], args: Mapping[str, Any]) -> None:
    if args["mu"] < 0:
        raise ConfigError(f"fedprox: mu must be >= 0, got {args['mu']}", path="--algorithm-arg mu")
    set_learner_algorithm(client, "fedprox", args)


def _fedbn(server: dict[str, Any], client: dict[str, Any], args: Mapping[str, Any]) -> None:
    set_learner_algorithm(client, "fedbn", args)
    set_validator_algorithm(client, "fedbn", args)


def _scaffold(server: dict[str, Any], client: dict[str, Any], args: Mapping[str, Any]) -> None:
    """FLARE's Scaffold controller (ModelController API) in place of its FedAvg: global control variate in the
    task meta, the sites' control variate changes aggregated from the result meta."""
    workflow = next((w for w in server.get("workflows", []) if w.get("id") == "fedavg"), None)
    if workflow is None:
        raise ConfigError(
            f"scaffold runs on FLARE's Scaffold controller: use --template {MODEL_CONTROLLER_TEMPLATE} "
            "(the job template has no 'fedavg' ModelController workflow)",
            path="--template",
        )
    workflow.update(id="scaffold", path="clara_fl.fl.server.controllers.Scaffold")
    set_learner_algorithm(client, "scaffold", args)


FEDPROX = Algorithm(
    name="fedprox",
    summary="FedAvg with a proximal term mu/2*||w - w_global||^2 in each site's loss (FLARE's PTFedProxLoss)",
    parameters=(AlgorithmParameter("mu", float, 0.01, "weight of the proximal term (>= 0)"),),
    configure=_fedprox,
    supports_nproc_per_site=False,
)
FEDBN = Algorithm(
    name="fedbn",
    summary="FedAvg whose normalization layers stay at each site: neither loaded from nor sent to the server",
    parameters=(),
    configure=_fedbn,
    supports_he=False,
)
SCAFFOLD = Algorithm(
    name="scaffold",
    summary="control variates on server and sites correct the local drift (FLARE's Scaffold, PTScaffoldHelper)",
    parameters=(),
    configure=_scaffold,
    supports_nproc_per_site=False,
    job_template=MODEL_CONTROLLER_TEMPLATE,
    supports_he=False,
)


FEDOPT_GENERATOR = "clara_fl.fl.server.fedopt.FedOptShareableGenerator"
SHAREABLE_GENERATOR_ID = "shareable_generator"


def _component(config: dict[str, Any], component_id: str) -> dict[str, Any] | None:
    found = [c for c in (*config.get("components", []), *config.get("workflows", [])) if c.get("id") == component_id]
    return found[0] if found else None


def _fedopt(server: dict[str, Any], client: dict[str, Any], args: Mapping[str, Any]) -> None:
    """FedOpt replaces the server's shareable generator: the averaged update becomes a server optimizer step."""
    generator = _component(server, SHAREABLE_GENERATOR_ID)
    workflow = _component(server, "scatter_and_gather")
    if generator is None or workflow is None:
        raise ConfigError(
            "fedopt needs a template with ScatterAndGather and a shareable generator (clara_fedavg_cse)",
            path="--template",
        )
    aggregator = _component(server, "aggregator")
    learner = _component(client, LEARNER_ID)
    sends_diff = (learner or {}).get("args", {}).get("send_weight_diff", True)
    if aggregator is None or aggregator.get("args", {}).get("expected_data_kind") != "WEIGHT_DIFF" or not sends_diff:
        raise ConfigError("fedopt needs the sites to send weight differences (WEIGHT_DIFF)", path="--algorithm")
    if args["lr"] <= 0 or not 0 <= args["momentum"] < 1:
        raise ConfigError(
            f"fedopt needs lr > 0 and 0 <= momentum < 1, got lr={args['lr']}, momentum={args['momentum']}",
            path="--algorithm-arg",
        )
    workflow_args = workflow.get("args", {})
    generator["path"] = FEDOPT_GENERATOR
    generator["args"] = {
        "server_optimizer": args["optimizer"],
        "lr": args["lr"],
        "momentum": args["momentum"],
        "persistor_id": workflow_args.get("persistor_id", "persistor"),
    }
    if args["lr_scheduler"]:
        generator["args"]["cosine_rounds"] = int(workflow_args.get("num_rounds", 1))


FEDOPT = Algorithm(
    name="fedopt",
    summary="the averaged update taken as a gradient by a server optimizer (FLARE's FedOpt generator)",
    parameters=(
        AlgorithmParameter("optimizer", str, "sgd", "the server optimizer", choices=("sgd", "adam")),
        AlgorithmParameter("lr", float, 1.0, "the server learning rate (1.0 suits sgd; adam wants ~0.01)"),
        AlgorithmParameter("momentum", float, 0.6, "the server SGD momentum (not used by adam)"),
        AlgorithmParameter("lr_scheduler", bool, False, "a cosine decay of the server lr over the job's rounds"),
    ),
    configure=_fedopt,
    supports_nproc_per_site=True,
    supports_he=False,
)


def _ditto(server: dict[str, Any], client: dict[str, Any], args: Mapping[str, Any]) -> None:
    """Ditto is a site-side algorithm: the server averages the global model as FedAvg does."""
    if args["lambda"] < 0 or args["personal_epochs"] < 1:
        raise ConfigError(
            f"ditto needs lambda >= 0 and personal_epochs >= 1, got {args['lambda']}, {args['personal_epochs']}",
            path="--algorithm-arg",
        )
    set_learner_algorithm(client, "ditto", {"ditto_lambda": args["lambda"], "personal_epochs": args["personal_epochs"]})


DITTO = Algorithm(
    name="ditto",
    summary="a personalized model per site, pulled towards the global model (FLARE's Ditto helper)",
    parameters=(
        AlgorithmParameter("lambda", float, 0.1, "the weight of the personalized model's pull to the global model"),
        AlgorithmParameter("personal_epochs", int, 1, "epochs of personalized training per round"),
    ),
    configure=_ditto,
    supports_nproc_per_site=False,
)

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (FEDAVG, FEDPROX, FEDOPT, SCAFFOLD, DITTO, FEDBN)}


def _known() -> str:
    return ", ".join(sorted(ALGORITHMS))


def algorithm_named(name: str) -> Algorithm:
    """The algorithm called ``name``.

    Raises:
        ConfigError: no algorithm has that name (the message lists the valid ones).
    """
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(f"unknown FL algorithm '{name}' (valid: {_known()})", path="--algorithm") from None


def _valid_args(algorithm: Algorithm) -> str:
    described = [f"{p.name} ({p.type.__name__}, default {p.default!r})" for p in algorithm.parameters]
    return ", ".join(described) or "none"


def _converted(algorithm: Algorithm, parameter: AlgorithmParameter, value: Any) -> Any:
    where = f"--algorithm-arg {parameter.name}"
    expected = parameter.type.__name__
    converted: Any
    if parameter.type is bool:
        converted = as_bool(value)
    elif parameter.type in (int, float) and not isinstance(value, bool):
        try:
            converted = parameter.type(value)
        except (TypeError, ValueError):
            converted = None
        if parameter.type is int and isinstance(value, float) and not value.is_integer():
            converted = None
    elif parameter.type is str and isinstance(value, str):
        converted = value
    else:
        converted = None
    if converted is None:
        raise ConfigError(f"{algorithm.name} expects {expected} for {parameter.name}, got {value!r}", path=where)
    if parameter.choices is not None and converted not in parameter.choices:
        valid = ", ".join(str(c) for c in parameter.choices)
        raise ConfigError(f"{algorithm.name}: {parameter.name} must be one of {valid}, got {value!r}", path=where)
    return converted


def check_algorithm_args(name: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every argument of algorithm ``name``: the given ones converted to their types, the others at their defaults.

    Raises:
        ConfigError: an unknown algorithm, an argument it does not take, or a value of the wrong type.
    """
    algorithm = algorithm_named(name)
    by_name = {p.name: p for p in algorithm.parameters}
    given = dict(args or {})
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise ConfigError(
            f"{algorithm.name} takes no argument {', '.join(unknown)} (valid: {_valid_args(algorithm)})",
            path="--algorithm-arg",
        )
    return {
        p.name: _converted(algorithm, p, given[p.name]) if p.name in given else p.default for p in algorithm.parameters
    }


def parse_algorithm_args(name: str, pairs: Iterable[str]) -> dict[str, Any]:
    """``--algorithm-arg NAME=VALUE`` strings for algorithm ``name``, checked (see :func:`check_algorithm_args`).

    Raises:
        ConfigError: a pair without ``=``, an unknown algorithm or argument, or a value of the wrong type.
    """
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected NAME=VALUE, got {pair!r}", path="--algorithm-arg")
        given[key.strip()] = value.strip()
    return check_algorithm_args(name, given)


def check_algorithm_under_he(name: str) -> None:
    """Raises ConfigError when algorithm ``name`` cannot run with homomorphic encryption (``--he``)."""
    algorithm = algorithm_named(name)
    if not algorithm.supports_he:
        valid = ", ".join(sorted(a.name for a in ALGORITHMS.values() if a.supports_he))
        raise ConfigError(f"{algorithm.name} cannot run with --he (with --he: {valid})", path="--he")


def configure_algorithm(
    server: dict[str, Any],
    client: dict[str, Any],
    name: str,
    args: Mapping[str, Any] | None,
    nproc_per_site: int | None = None,
) -> None:
    """Apply algorithm ``name`` to a job's server and client app configs (in place).

    Raises:
        ConfigError: an unknown algorithm or argument, or one that cannot train in several processes per site.
    """
    algorithm = algorithm_named(name)
    checked = check_algorithm_args(name, args)
    if nproc_per_site and nproc_per_site > 1 and not algorithm.supports_nproc_per_site:
        raise ConfigError(f"{algorithm.name} cannot train in several processes per site", path="--nproc-per-site")
    algorithm.configure(server, client, checked)


def template_for(name: str, template: str, default_template: str) -> str:
    """The job template for algorithm ``name``: its own when the job asks for the default one.

    Raises:
        ConfigError: an unknown algorithm.
    """
    algorithm = algorithm_named(name)
    return algorithm.job_template if algorithm.job_template and template == default_template else template
