"""``clara-fl job create``: a FLARE job folder from an MMAR and a job template."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clara_fl.apps.common import add_set_argument, positive_int, require_mmar
from clara_fl.config.errors import UsageError
from clara_fl.fl.algorithms import ALGORITHMS, DEFAULT_ALGORITHM
from clara_fl.fl.algorithms.catalog import algorithms_help

if TYPE_CHECKING:
    from clara_fl.recipes.app_configs import FedAvgSettings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    job = subparsers.add_parser("job", help="create FLARE jobs from MMARs")
    actions = job.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="write a FLARE job folder for an MMAR",
        epilog=algorithms_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("-m", "--mmar", required=True, help="MMAR root folder")
    create.add_argument("-o", "--output", required=True, help="job folder to write")
    create.add_argument(
        "--template",
        help="job template name or folder (default clara_fedavg_cse_mc, FLARE's ModelController; clara_fedavg_cse, "
        "ScatterAndGather, when the algorithm or --he needs it)",
    )
    create.add_argument("--num-rounds", type=positive_int, help="FL rounds")
    create.add_argument("--local-epochs", type=positive_int, help="local epochs per round at each site")
    create.add_argument("--min-clients", type=positive_int, help="sites needed per round")
    create.add_argument(
        "--nproc-per-site", type=positive_int, help="DDP processes each site trains with (sets multi_gpu=True)"
    )
    create.add_argument(
        "--algorithm",
        default=DEFAULT_ALGORITHM,
        help="FL algorithm: " + ", ".join(sorted(ALGORITHMS)) + f" (default {DEFAULT_ALGORITHM})",
    )
    create.add_argument(
        "--algorithm-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an argument of the algorithm, e.g. mu=0.01 for fedprox; repeat for several",
    )
    add_set_argument(create, "values for the job's environment.json")
    create.add_argument("--force", action="store_true", help="replace an existing job folder")
    create.add_argument(
        "--privacy",
        action="append",
        metavar="SPEC",
        help="a FLARE privacy filter on what each site sends for training: PercentilePrivacy, SVTPrivacy or "
        "ExcludeVars with its arguments, e.g. 'PercentilePrivacy:percentile=10,gamma=0.01'; repeat for several",
    )
    create.add_argument(
        "--he",
        action="store_true",
        help="homomorphic encryption (FLARE's TenSEAL components): the server aggregates encrypted updates; "
        "needs pip install clara-fl[he]",
    )
    create.add_argument(
        "--he-layers",
        metavar="all|REGEX,...",
        help="under --he, the tensors the sites encrypt: 'all' (the default: nothing leaves a site in the clear) or "
        "comma-separated regular expressions of state_dict names; the others are sent in the clear",
    )
    create.add_argument(
        "--aggregator",
        metavar="RULE",
        help="a robust aggregation rule in place of the weighted mean, against a bad site: median, "
        "trimmed_mean:beta=0.1, krum:f=1 or multikrum:f=1,m=2 (not with scaffold or --he; docs/fl.md)",
    )
    create.add_argument(
        "--dp",
        metavar="epsilon=E,delta=D,max_grad_norm=C",
        help="DP-SGD at every site (Opacus; pip install clara-fl[dp]): a privacy budget epsilon at delta for the "
        "whole job and per case (one item of the training datalist), each batch row's gradient clipped to "
        "max_grad_norm; each site stops once its budget is spent",
    )
    create.set_defaults(run=run_create)
    add_resume_parser(actions)


def run_create(args: argparse.Namespace) -> int:
    from clara_fl.config.variables import parse_set_args
    from clara_fl.fl.algorithms.optimizer_notes import optimizer_note
    from clara_fl.recipes.algorithms import parse_algorithm_args
    from clara_fl.recipes.job_folder import create_job, find_template

    require_mmar(args.mmar)
    if args.template is not None:
        find_template(args.template)  # before --force removes an existing job
    algorithm_args = parse_algorithm_args(args.algorithm, args.algorithm_arg)
    privacy_filters = _privacy_and_he_options(args)
    he_layers = _he_layers_option(args)
    settings = _dp_settings(args, _aggregator_settings(args))
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError("--output", args.output, "the job folder to write is a file")
    job = create_job(
        args.mmar,
        args.output,
        args.template,
        args.num_rounds,
        args.local_epochs,
        args.min_clients,
        parse_set_args(args.set),
        args.force,
        nproc_per_site=args.nproc_per_site,
        algorithm=args.algorithm,
        algorithm_args=algorithm_args,
        privacy_filters=privacy_filters,
        he=args.he or None,
        he_layers=he_layers,
        say=lambda line: print(f"  privacy: {line}"),
        settings=settings,
    )
    print(f"wrote FLARE job {job}")
    if settings is not None and settings.aggregator is not None:
        _print_aggregator(settings.aggregator, job)
    note = optimizer_note(args.algorithm, args.mmar)
    if note:
        print(f"  note: {note}")
    _print_fl_configs_taken(args.mmar)
    print(f"  run it: clara-fl simulate {job} -w WORKSPACE -n 2 -t 2   (or: nvflare job submit -j {job})")
    return 0


def _privacy_and_he_options(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The --privacy filters, checked, and --he's TenSEAL checked, before anything is written.

    Raises:
        UsageError: a bad privacy filter or argument, or --he without TenSEAL installed.
    """
    from clara_fl.fl.jobs.he_context import require_tenseal
    from clara_fl.fl.jobs.privacy import parse_privacy_option

    filters = [parse_privacy_option(spec) for spec in args.privacy or []]
    if args.he:
        require_tenseal()
    if args.he_layers is not None and not args.he:
        raise UsageError("--he-layers", args.he_layers, "only applies with --he")
    return filters


def _he_layers_option(args: argparse.Namespace) -> str | None:
    """--he-layers as FLARE's encrypt_layers (one regular expression; None: all), each expression checked against
    the MMAR's network (built only when one is given).

    Raises:
        UsageError: an expression that does not compile or finds no tensor of the network.
    """
    from clara_fl.config.variables import parse_set_args
    from clara_fl.recipes.he import check_he_layers_for_mmar, he_layers_regex, parse_he_layers

    expressions = parse_he_layers(args.he_layers)
    if expressions is None:
        return None
    for expression in expressions:
        check_he_layers_for_mmar(args.mmar, expression, parse_set_args(args.set), "--he-layers")
    return he_layers_regex(expressions)


def _aggregator_settings(args: argparse.Namespace) -> FedAvgSettings | None:
    """The job's settings with --aggregator's rule, checked (the rule, the algorithm, --he, --min-clients) before
    anything is written; None without --aggregator.

    Raises:
        UsageError: a bad rule, or one that does not apply to the algorithm, --he or --min-clients.
    """
    if args.aggregator is None:
        return None
    from clara_fl.recipes.job_folder import job_settings
    from clara_fl.recipes.robust_aggregation import check_robust_aggregation

    rule = check_robust_aggregation(args.aggregator, args.algorithm, args.he, args.min_clients)
    return job_settings(Path(args.mmar).resolve(), None, aggregator=rule.spec)


def _dp_settings(args: argparse.Namespace, settings: FedAvgSettings | None) -> FedAvgSettings | None:
    """``settings`` (None: the job's from the MMAR) with --dp's DP-SGD settings, checked; unchanged without --dp.

    Raises:
        UsageError: bad --dp syntax or values.
    """
    if args.dp is None:
        return settings
    import dataclasses

    from clara_fl.recipes.dp import parse_dp_option
    from clara_fl.recipes.job_folder import job_settings

    dp = parse_dp_option(args.dp)
    return dataclasses.replace(settings or job_settings(Path(args.mmar).resolve(), None), dp=dp)


def _print_aggregator(spec: str, job: Path) -> None:
    """What the rule does with the job's fewest sites a round."""
    from clara_fl.recipes.robust_aggregation import describe, parse_aggregator

    sites = int(json.loads((job / "meta.json").read_text()).get("min_clients", 2))
    print(f"  aggregator: {describe(parse_aggregator(spec), sites)}")


def _print_fl_configs_taken(mmar: str) -> None:
    """What the job took from the MMAR's own Clara FL configs (command-line values went on top)."""
    from clara_fl.recipes.clara_configs import read_fl_configs

    imported = read_fl_configs(mmar)
    if imported is None:
        return
    print(f"  from the MMAR's {' and '.join(imported.files)} (command-line values on top):")
    for line in imported.taken:
        print(f"    took    {line}")
    for line in imported.ignored:
        print(f"    ignored {line}")


def add_resume_parser(actions: argparse._SubParsersAction) -> None:
    resume = actions.add_parser(
        "resume",
        help="write a job that continues a job whose server died, from its last saved round",
        description="After a server restart FLARE leaves the job RUNNING with no process: end it with "
        "'nvflare job abort JOB_ID', then submit the job this writes. It starts at the round after the last "
        "one the server saved, from the saved global model, and keeps the saved best global model.",
    )
    resume.add_argument("job", metavar="JOB", help="the job folder that was submitted")
    resume.add_argument(
        "run_folder", metavar="RUN", help="the job's folder in the server's workspace (SERVER_WORKSPACE/JOB_ID)"
    )
    resume.add_argument("-o", "--output", required=True, help="continuation job folder to write")
    resume.add_argument("--force", action="store_true", help="replace an existing folder at --output")
    resume.set_defaults(run=run_resume)


def run_resume(args: argparse.Namespace) -> int:
    from clara_fl.recipes.resume import plan_resume, write_continuation_job

    plan = plan_resume(args.job, args.run_folder)
    job = write_continuation_job(plan, args.output, args.force)
    state = plan.state
    print(f"wrote FLARE job {job}")
    print(
        f"  continues job {state.job_id}: rounds {state.rounds_done}-{state.total_rounds - 1} of {state.total_rounds}"
    )
    if state.best_round is not None:
        print(f"  best global model so far: chosen at round {state.best_round}")
    print(f"  end the stranded job first: nvflare job abort {state.job_id}")
    print(f"  then: nvflare job submit -j {job}")
    return 0
