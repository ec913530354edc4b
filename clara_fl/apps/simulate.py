"""``clara-fl simulate``: run a job in FLARE's simulator and print the cross-site table."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from clara_fl.apps.common import check_simulation, positive_int

SIMULATOR_OUTPUT = "simulator_output.txt"
SIMULATOR_MODULE = "nvflare.private.fed.app.simulator.simulator"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("simulate", help="run a FLARE job in the simulator and print cross-site results")
    parser.add_argument("job", help="job folder (e.g. from clara-fl job create)")
    parser.add_argument("-w", "--workspace", required=True, help="simulator workspace")
    parser.add_argument("-n", "--n-clients", type=positive_int, default=2, help="simulated sites (default 2)")
    parser.add_argument("-t", "--threads", type=positive_int, default=2, help="sites run at once, <= -n (default 2)")
    parser.add_argument("--site-config", help="site file with the sites' data locations (sets $CLARA_FL_SITE_CONFIG)")
    parser.add_argument(
        "--metric", help="metric shown in the table (default: the job's best-model key metric, e.g. val_mean_dice)"
    )
    parser.set_defaults(run=run)


def run_simulator(
    job: str, workspace: str, n_clients: int, threads: int, site_config: str | None = None, stdout: Any = None
) -> int:
    """``nvflare simulator`` in a child process, once the inputs are checked; returns its exit code.

    Args:
        stdout: an open file for the simulator's output; None writes it to WORKSPACE/simulator_output.txt
            and shows one live progress line (round k of R, sites done, elapsed) on the terminal instead.

    Raises:
        UsageError: the job folder, the counts or the site file would fail in FLARE (see ``check_simulation``).
        ConfigError: the job's meta.json or the site file cannot be read, or an ``--he`` job finds no TenSEAL.
    """
    check_simulation(job, n_clients, threads, site_config)
    from clara_fl.fl.jobs.allow_list import write_simulator_policy
    from clara_fl.fl.jobs.he_context import job_uses_he, write_simulator_he_contexts
    from clara_fl.fl.site.context import SITE_CONFIG_ENV

    write_simulator_policy(workspace)  # the simulator copies WORKSPACE/local to every site
    if job_uses_he(job):  # what provisioning gives real sites; the simulator copies WORKSPACE/startup to each
        write_simulator_he_contexts(workspace)
    env = dict(os.environ)
    # Simulated sites share this machine's cores; torch's default of one thread per core in every
    # site oversubscribes them several times over.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, threads))))
    if site_config:
        env[SITE_CONFIG_ENV] = os.path.abspath(site_config)
    # the runner FLARE's SimEnv starts (FedJobConfig.simulator_run); `nvflare simulator` is deprecated in FLARE 2.9
    command = [sys.executable, "-m", SIMULATOR_MODULE, os.path.abspath(job), "-w", os.path.abspath(workspace)]
    command += ["-n", str(n_clients), "-t", str(threads)]
    if stdout is not None:
        return subprocess.call(command, env=env, stdout=stdout, stderr=subprocess.STDOUT)
    return _run_with_progress(command, env, job, workspace, n_clients)


def _run_with_progress(command: list[str], env: dict[str, str], job: str, workspace: str, n_clients: int) -> int:
    """The simulator's output goes to WORKSPACE/simulator_output.txt; the terminal gets one live progress line,
    read from the server's events file (its log where the job's workflows write none) as they are written."""
    import threading
    import time

    from clara_fl.report.collect import job_rounds
    from clara_fl.report.progress import DeferredOutput, LogFollower, SimulationProgress, simulator_server_events

    output_path = os.path.join(os.path.abspath(workspace), SIMULATOR_OUTPUT)
    print(f"simulator output: {output_path}", flush=True)
    progress = SimulationProgress(total_rounds=job_rounds(job), total_sites=n_clients)
    follower = LogFollower(os.path.join(os.path.abspath(workspace), "server", "log.txt"))
    events = LogFollower(simulator_server_events(workspace))
    # the simulator empties the workspace before it writes the server's log: the output file comes after that
    output = DeferredOutput(output_path, ready=follower.is_fresh)
    live = sys.stdout.isatty()  # a terminal gets one line redrawn; a log or pipe one line per step
    shown = ""
    start = time.monotonic()
    if not live:
        print(progress.line(0.0), flush=True)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    copier = threading.Thread(target=output.pump, args=(process.stdout,), daemon=True)
    copier.start()
    try:
        while True:
            finished = _wait(process, 0.5)
            steps = progress.follow(follower, events)
            elapsed = time.monotonic() - start
            if live and progress.line(elapsed) != shown:
                shown = progress.line(elapsed)
                print(f"\r{shown:<100}", end="", flush=True)
            elif not live:
                for step in steps:
                    print(progress.line(elapsed, step), flush=True)
            if finished:
                break
    finally:
        if process.poll() is None:  # interrupted: stop the simulator too
            process.terminate()
            process.wait()
        copier.join(timeout=10)  # a stray grandchild may hold the pipe open: its output is not waited for
        output.close()
        follower.close()
        events.close()
    if live:
        print()
    return process.returncode


def _wait(process: subprocess.Popen, seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def report(workspace: str, metric: str | None, command: str = "simulate") -> int:
    """Print the cross-site table of the simulation in ``workspace`` (with each site's spent DP-SGD budget where the
    sites trained with it); 1 (and one error line naming ``command``) when it has none."""
    from clara_fl.fl.jobs.results import cross_site_table, find_cross_site_results
    from clara_fl.report.collect import spent_budgets

    table = cross_site_table(workspace, metric, budgets=spent_budgets(workspace))
    if table is None:
        print(f"clara-fl {command}: error: no cross_val_results.json under {workspace}", file=sys.stderr)
        return 1
    print()
    print(table)
    print(f"\nresults: {find_cross_site_results(workspace)}")
    return 0


def run(args: argparse.Namespace) -> int:
    code = run_simulator(args.job, args.workspace, args.n_clients, args.threads, args.site_config)
    if code != 0:
        print(f"clara-fl simulate: error: the simulator exited with code {code}", file=sys.stderr)
        return code
    code = report(args.workspace, args.metric)
    if code == 0:
        write_html_report(args.workspace)
    return code


def write_html_report(workspace: str) -> None:
    """report.html for a finished run; a run that worked still counts as worked if drawing fails."""
    from clara_fl.config.errors import describe_failure
    from clara_fl.report.build import write_report

    try:
        written = write_report(workspace)
    except Exception as e:  # the simulation's results are on disk either way
        print(f"clara-fl: warning: no report.html: {describe_failure(e)}", file=sys.stderr)
        return
    print(f"report: {written.html}")
