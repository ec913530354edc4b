"""``clara-fl demo``: synthetic data, a 2-site federated run of the spleen MMAR, the cross-site table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from clara_fl.resources import simulator_configs_dir

DEMO_JOB = simulator_configs_dir() / "spleen_fedavg"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="federated spleen segmentation on synthetic data, with cross-site validation"
    )
    parser.add_argument("--workspace", default="demo_workspace", help="folder for data, simulation and results")
    parser.add_argument(
        "--job", default=str(DEMO_JOB), help="FLARE job to simulate (default simulator_configs/spleen_fedavg)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clara_fl.apps.common import check_simulation
    from clara_fl.apps.simulate import SIMULATOR_OUTPUT, report, run_simulator, write_html_report
    from clara_fl.data.synthetic import make_synthetic_dataset
    from clara_fl.fl.site.context import SITE_FILE_NAME
    from clara_fl.runtime.files import write_json_atomic

    check_simulation(args.job, 2, 2)
    workspace = Path(args.workspace).resolve()
    start = time.perf_counter()
    data = make_synthetic_dataset(workspace / "data", cases=12, sites=2, shape=(48, 48, 48))
    print(f"[1/3] synthetic CT data for 2 sites: {data.root}")
    # The job carries no data paths: each site's DATA_ROOT comes from a site file (local/ in a real site).
    site_file = workspace / SITE_FILE_NAME
    write_json_atomic(site_file, {"environment": {"DATA_ROOT": str(data.root)}})
    simulation = workspace / "simulation"
    print(f"[2/3] simulating {args.job} with 2 sites (logs: {simulation}/server/log.txt) ...", flush=True)
    log_path = simulation / SIMULATOR_OUTPUT
    code = run_simulator(args.job, str(simulation), 2, 2, str(site_file))
    if code != 0:
        print(f"clara-fl demo: error: the simulator exited with code {code}; see {log_path}")
        return code
    print(f"[3/3] done in {time.perf_counter() - start:.0f} s")
    result = report(str(simulation), "val_mean_dice")
    job = simulation / "server" / "simulate_job"
    print("\nwhere things are:")
    print(f"  global models:        {job / 'app_server'}/FL_global_model.pt, best_FL_global_model.pt")
    print(f"  site models:          {simulation}/site-N/simulate_job/app_site-N/models/model.pt, final_model.pt")
    print(f"  TensorBoard:          tensorboard --logdir {job / 'tb_events'}   (every site's curves)")
    print(f"  per-case metrics:     {simulation}/site-N/simulate_job/app_site-N/eval/cross_site_val/<model>/")
    print(f"  simulator output:     {log_path}")
    if result == 0:
        write_html_report(str(simulation))
    return result
