#!/usr/bin/env python
"""What DP-SGD (``--dp``) costs in model quality: the same FedAvg job with and without it, on the same data.

    .venv/bin/python bench/dp_cost.py [--mmar spleen_ct_seg] [--rounds 3] [--local-epochs 3] [--lr 1e-3]
        [--dp epsilon=8,delta=1e-3,max_grad_norm=1] [--cases 12]

Two arms of ``bench/privacy_cost.py``'s harness (2 simulated sites, the same synthetic data, FedAvg with cross-site
validation): no DP, then DP-SGD at both sites with ``--dp``. For each: the final global model's key metric at each
site (cross-site validation), the epsilon each site had spent after each round (the report's reader of the sites'
events), each site's DP set-up line (rows per case, noise multipliers: the epsilon is per case), the wall time and
the load average around it; and the untrained network's metric. ``--cases`` sets the synthetic cases of the data
(12 by default, ``bench/privacy_cost.py``'s: 5 and 4 training cases at the two sites). The learning rate is set
for both arms (the e2e privacy tests' 1e-3 learns on this data in 3 rounds of 3 local epochs; the MMAR's own 2e-4
does not). Results go to stdout and ``bench/results/dp_cost_<mmar>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness.data import scratch_folder, write_site_config  # noqa: E402
from bench.privacy_cost import MMARS, run_arm, site_file, untrained  # noqa: E402

DEFAULT_DP = "epsilon=8,delta=1e-3,max_grad_norm=1"
DP_SETUP = "DP at the case level"  # the site log's set-up line (clara_fl.fl.site.dp)


def data(work: Path, mmar: str, cases: int | None) -> Path:
    """The site file of the bench's data: ``privacy_cost``'s, or the spleen data with ``cases`` cases."""
    if cases is None:
        return site_file(work, mmar)
    if mmar != "spleen_ct_seg":
        raise SystemExit("--cases: only for spleen_ct_seg")
    from clara_fl.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(work / "data", cases=cases, sites=2, shape=(32, 32, 32), seed=0).root
    return write_site_config(work / "clara_fl_site.json", root)


def arm(
    work: Path, mmar: str, sites: Path, dp: str | None, rounds: int, local_epochs: int, lr: float
) -> dict[str, Any]:
    """One arm: the global model's metric per site, the epsilon per site and round (DP only), time and load."""
    from clara_fl.report.collect import collect

    name = "dp" if dp else "none"
    print(f"{mmar}: {name}, {rounds} rounds x {local_epochs} local epochs, lr {lr:g}, 2 sites", flush=True)
    load_before = os.getloadavg()
    started = time.monotonic()
    results = run_arm(work, mmar, sites, None, rounds, local_epochs, dp=dp, overrides={"learning_rate": lr}, name=name)
    seconds = time.monotonic() - started
    metric = MMARS[mmar]["metric"]
    record: dict[str, Any] = {
        "dp": dp,
        "global_model": {site: results[site]["SRV_FL_global_model.pt"][metric] for site in sorted(results)},
        "wall_s": round(seconds, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    if dp:
        spent = collect(work / name / "ws").dp_epsilon
        record["epsilon_per_round"] = {
            site: {str(r): e for r, e in sorted(rounds.items())} for site, rounds in spent.items()
        }
        record["dp_setup"] = {
            site: next((line for line in log.read_text().splitlines() if DP_SETUP in line), None)
            for site, log in ((p.parent.name, p) for p in sorted((work / name / "ws").glob("site-*/log.txt")))
        }
    print(f"  global model {metric}: {record['global_model']} ({seconds:.0f} s)", flush=True)
    if dp:
        print(f"  epsilon spent per round: {record['epsilon_per_round']}", flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmar", choices=sorted(MMARS), default="spleen_ct_seg")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dp", default=DEFAULT_DP, help=f"the DP arm's --dp (default {DEFAULT_DP})")
    parser.add_argument("--cases", type=int, default=None, help="synthetic cases (spleen; default 12)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    with scratch_folder(args.work, "clara_fl_dp_cost_") as work:
        sites = data(work, args.mmar, args.cases)
        record: dict[str, Any] = {
            "mmar": args.mmar,
            "metric": MMARS[args.mmar]["metric"],
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "learning_rate": args.lr,
            "sites": 2,
            "cases": args.cases or 12,
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
        }
        record["arms"] = {
            name: arm(work, args.mmar, sites, dp, args.rounds, args.local_epochs, args.lr)
            for name, dp in (("none", None), ("dp", args.dp))
        }
        record["untrained"] = untrained(work, args.mmar, sites)
        print(f"  untrained {record['metric']}: {record['untrained']}")
        suffix = f"_{args.cases}cases" if args.cases else ""
        out = REPO / "bench" / "results" / f"dp_cost_{args.mmar}{suffix}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
