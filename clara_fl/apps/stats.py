"""``clara-fl stats``: federated statistics of the sites' data from an MMAR, in FLARE's simulator.

Builds a :class:`~clara_fl.recipes.stats.ClaraFedStatsRecipe`, runs it with ``-n`` sites (each site's data from
``--site-config``, as ``clara-fl simulate``), writes ``WORKSPACE/clara_fl_stats.json`` (FLARE's result and Clara's
per-site summary), prints the differences between the sites and writes the report.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from clara_fl.apps.common import non_negative_float, positive_int, require_file, require_mmar

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stats", help="federated statistics of the sites' data (FLARE's simulator)")
    parser.add_argument("-m", "--mmar", required=True, help="MMAR root folder")
    parser.add_argument("-w", "--workspace", required=True, help="simulator workspace")
    parser.add_argument("-n", "--n-clients", type=positive_int, default=2, help="simulated sites (default 2)")
    parser.add_argument("-t", "--threads", type=positive_int, default=2, help="sites run at once, <= -n (default 2)")
    parser.add_argument("--site-config", help="site file with the sites' data locations (sets $CLARA_FL_SITE_CONFIG)")
    parser.add_argument("--min-count", type=positive_int, default=10, help="cases per feature and bin (default 10)")
    parser.add_argument("--min-noise", type=non_negative_float, default=0.1, help="least noise on min/max (0.1)")
    parser.add_argument("--max-noise", type=non_negative_float, default=0.3, help="most noise on min/max (0.3)")
    parser.add_argument(
        "--max-bins-percent", type=non_negative_float, default=10.0, help="bins per count, in percent (default 10)"
    )
    parser.add_argument("--bins", type=positive_int, default=20, help="histogram bins (default 20)")
    parser.add_argument(
        "--datalist-key", action="append", help="a datalist key to describe (repeatable; default training, validation)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clara_fl.apps.simulate import run_simulator, write_html_report
    from clara_fl.fl.site.context import read_site_file
    from clara_fl.fl.stats.privacy import StatsPrivacy, site_privacy
    from clara_fl.fl.stats.summary import STATS_FILE, write_stats_file
    from clara_fl.recipes.stats import FLARE_STATS_FILE, ClaraFedStatsRecipe

    mmar = require_mmar(args.mmar)
    recipe = ClaraFedStatsRecipe(
        mmar,
        min_count=args.min_count,
        min_noise_level=args.min_noise,
        max_noise_level=args.max_noise,
        max_bins_percent=args.max_bins_percent,
        bins=args.bins,
        datalist_keys=args.datalist_key,
    )
    if args.site_config:  # a site file that would fail at the sites fails here, before anything runs
        site_file = require_file(args.site_config, "--site-config", "site file")
        site_privacy(StatsPrivacy(), read_site_file(site_file), site_file)
    workspace = os.path.abspath(args.workspace)
    with tempfile.TemporaryDirectory(prefix="clara_fl_stats_job_") as jobs:
        recipe.export(jobs)
        job = os.path.join(jobs, recipe.name)
        code = run_simulator(job, workspace, args.n_clients, args.threads, args.site_config)
    if code != 0:
        print(f"clara-fl stats: error: the simulator exited with code {code}", file=sys.stderr)
        return code
    flare_file = os.path.join(workspace, "server", "simulate_job", FLARE_STATS_FILE)
    if not os.path.isfile(flare_file):
        print(f"clara-fl stats: error: no statistics result at {flare_file}", file=sys.stderr)
        return 1
    import json

    with open(flare_file, encoding="utf-8") as f:
        content = write_stats_file(os.path.join(workspace, STATS_FILE), json.load(f))
    print(differences_table(content["summary"]))
    print(f"\nstatistics: {os.path.join(workspace, STATS_FILE)}")
    write_html_report(workspace)
    return 0


def differences_table(summary: dict) -> str:
    """The sites' means of every feature, one line each, with the spread between the sites."""
    rows = summary.get("differences", [])
    sites = sorted({s for r in rows for s in r["means"]})
    header = f"{'dataset':<12} {'feature':<26}" + "".join(f"{s:>14}" for s in sites) + f"{'rel. spread':>13}"
    lines = [header, "-" * len(header)]
    for r in rows:
        values = "".join(f"{r['means'].get(s, float('nan')):>14.4g}" for s in sites)
        relative = "-" if r["relative_spread"] is None else f"{r['relative_spread']:.1%}"
        lines.append(f"{r['dataset']:<12} {r['feature']:<26}{values}{relative:>13}")
    return "\n".join(lines)
