"""``clara-fl job create``: a FLARE job folder from an MMAR and a job template."""

from __future__ import annotations

import argparse
import os
from typing import Any

from clara_fl.apps.common import add_set_argument, positive_int, require_mmar
from clara_fl.config.errors import UsageError
from clara_fl.fl.algorithms import ALGORITHMS, DEFAULT_ALGORITHM


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    job = subparsers.add_parser("job", help="create FLARE jobs from MMARs")
    actions = job.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="write a FLARE job folder for an MMAR")
    create.add_argument("-m", "--mmar", required=True, help="MMAR root folder")
    create.add_argument("-o", "--output", required=True, help="job folder to write")
    create.add_argument(
        "--template", default="clara_fedavg_cse", help="job template name or folder (default clara_fedavg_cse)"
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
    create.set_defaults(run=run_create)
    add_resume_parser(actions)


def run_create(args: argparse.Namespace) -> int:
    from clara_fl.config.variables import parse_set_args
    from clara_fl.recipes.algorithms import parse_algorithm_args
    from clara_fl.recipes.job_folder import create_job, find_template

    require_mmar(args.mmar)
    find_template(args.template)  # before --force removes an existing job
    algorithm_args = parse_algorithm_args(args.algorithm, args.algorithm_arg)
    privacy_filters = _privacy_and_he_options(args)
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
        say=lambda line: print(f"  privacy: {line}"),
    )
    print(f"wrote FLARE job {job}")
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
    return filters


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
