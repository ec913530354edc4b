"""``clara-fl simulate``: run a job in FLARE's simulator and print the cross-site table."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from clara_fl.apps.common import check_simulation, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("simulate", help="run a FLARE job in the simulator and print cross-site results")
    parser.add_argument("job", help="job folder (e.g. from clara-fl job create)")
    parser.add_argument("-w", "--workspace", required=True, help="simulator workspace")
    parser.add_argument("-n", "--n-clients", type=positive_int, default=2, help="simulated sites (default 2)")
    parser.add_argument("-t", "--threads", type=positive_int, default=2, help="sites run at once, <= -n (default 2)")
    parser.add_argument("--site-config", help="site file with the sites' data locations (sets $CLARA_FL_SITE_CONFIG)")
    parser.add_argument("--metric", default="val_mean_dice", help="metric shown in the table")
    parser.set_defaults(run=run)


def run_simulator(
    job: str, workspace: str, n_clients: int, threads: int, site_config: str | None = None, stdout: Any = None
) -> int:
    """``nvflare simulator`` in a child process, once the inputs are checked; returns its exit code.

    Raises:
        ConfigError: the job, the counts or the site file would fail in FLARE (see ``check_simulation``).
    """
    check_simulation(job, n_clients, threads, site_config)
    from clara_fl.fl.policy import write_simulator_policy
    from clara_fl.fl.site import SITE_CONFIG_ENV

    write_simulator_policy(workspace)  # the simulator copies WORKSPACE/local to every site
    env = dict(os.environ)
    # Simulated sites share this machine's cores; torch's default of one thread per core in every
    # site oversubscribes them several times over.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, threads))))
    if site_config:
        env[SITE_CONFIG_ENV] = os.path.abspath(site_config)
    command = [sys.executable, "-m", "nvflare.cli", "simulator", os.path.abspath(job), "-w", os.path.abspath(workspace)]
    command += ["-n", str(n_clients), "-t", str(threads)]
    return subprocess.call(command, env=env, stdout=stdout, stderr=subprocess.STDOUT if stdout else None)


def report(workspace: str, metric: str) -> int:
    from clara_fl.fl.results import find_cross_site_results, format_cross_site_table, load_cross_site_results

    results = find_cross_site_results(workspace)
    if results is None:
        print(f"clara-fl simulate: error: no cross_val_results.json under {workspace}", file=sys.stderr)
        return 1
    print()
    print(format_cross_site_table(load_cross_site_results(results), metric))
    print(f"\nresults: {results}")
    return 0


def run(args: argparse.Namespace) -> int:
    code = run_simulator(args.job, args.workspace, args.n_clients, args.threads, args.site_config)
    if code != 0:
        print(f"clara-fl simulate: error: the simulator exited with code {code}", file=sys.stderr)
        return code
    return report(args.workspace, args.metric)
