"""``clara-fl evaluate``: score given models on every site's validation data, no training (federated evaluation).

With ``-w WORKSPACE`` the job runs in FLARE's simulator (as ``clara-fl simulate``, its sites ``site-1`` ..
``site-N`` of ``-n``) and the cross-site table is printed; otherwise ``-o JOB`` is written for ``nvflare job
submit`` on a POC or production deployment, for the sites ``--sites`` names (the models stay in the server's app).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from clara_fl.apps.common import add_set_argument, positive_int, require_mmar
from clara_fl.config.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score given models on every site's validation data, no training (federated evaluation)",
        description="Every site scores every --model with the MMAR's config_cross_validation.json (or its "
        "validation config with the train network) on its own data. The models are loaded weights-only and "
        "checked against the MMAR's network first. With -w the job runs in FLARE's simulator and the cross-site "
        "table is printed; with -o only the job folder is written (nvflare job submit -j JOB) for the sites "
        "--sites names.",
    )
    parser.add_argument("-m", "--mmar", required=True, help="MMAR root folder")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a model to evaluate: a checkpoint (Clara's {'model': weights} or a state_dict) named NAME in the "
        "table; repeat for several",
    )
    add_set_argument(parser, "values for the job's environment.json")
    parser.add_argument("-o", "--output", help="job folder to write (required without -w)")
    parser.add_argument("--force", action="store_true", help="replace an existing job folder at -o")
    parser.add_argument(
        "--sites",
        metavar="NAME,...",
        help="the sites the job goes to (required with -o alone: the models stay on the server, so the job names "
        "its sites); with -w the simulator's site-1..site-N of -n",
    )
    parser.add_argument(
        "--site-models",
        action="store_true",
        help="each site also submits its own model (its site file's own_model, else the newest models/model.pt a "
        "training job left in its workspace), scored by every site",
    )
    parser.add_argument("--min-clients", type=positive_int, help="sites the job needs to start (default 2)")
    parser.add_argument("-w", "--workspace", help="run the job in FLARE's simulator in this workspace")
    parser.add_argument("-n", "--n-clients", type=positive_int, default=2, help="simulated sites (default 2)")
    parser.add_argument("-t", "--threads", type=positive_int, default=2, help="sites run at once, <= -n (default 2)")
    parser.add_argument("--site-config", help="site file with the sites' data locations (sets $CLARA_FL_SITE_CONFIG)")
    parser.add_argument("--metric", help="metric shown in the table (default: the first the sites return)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clara_fl.config.variables import parse_set_args
    from clara_fl.fl.jobs.model_check import parse_model_options
    from clara_fl.recipes.evaluate import create_evaluation_job, default_sites, parse_sites

    require_mmar(args.mmar)
    models = parse_model_options(args.model)
    if args.workspace is None and args.output is None:
        raise UsageError("-o", None, "expected a job folder to write, or -w WORKSPACE to run it in the simulator")
    if args.output is not None and os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError("-o", args.output, "the job folder to write is a file")
    if args.workspace is not None and args.sites is not None:
        raise UsageError("--sites", args.sites, "the simulator names its sites site-1..site-N from -n: leave it out")
    if args.workspace is None and args.sites is None:
        raise UsageError("--sites", None, "expected the sites the job goes to, e.g. --sites site-1,site-2")
    sites = default_sites(args.n_clients) if args.workspace is not None else parse_sites(args.sites)
    overrides = parse_set_args(args.set)
    if args.workspace is None:
        job = create_evaluation_job(
            args.mmar, args.output, models, overrides, args.min_clients, args.force, sites, args.site_models
        )
        print(f"wrote FLARE job {job}: {', '.join(m.name for m in models)} on the validation data of {args.sites}")
        print(f"  run it: nvflare job submit -j {job}")
        return 0
    with tempfile.TemporaryDirectory(prefix="clara_fl_eval_") as scratch:
        output = args.output or os.path.join(scratch, "job")
        job = create_evaluation_job(
            args.mmar, output, models, overrides, args.min_clients, args.force, sites, args.site_models
        )
        return _simulate(str(job), args)


def _simulate(job: str, args: argparse.Namespace) -> int:
    from clara_fl.apps.simulate import report, run_simulator, write_html_report

    code = run_simulator(job, args.workspace, args.n_clients, args.threads, args.site_config)
    if code != 0:
        print(f"clara-fl evaluate: error: the simulator exited with code {code}", file=sys.stderr)
        return code
    code = report(args.workspace, args.metric, command="evaluate")
    if code == 0:
        write_html_report(args.workspace)
    return code
