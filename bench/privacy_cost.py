#!/usr/bin/env python
"""What each privacy filter costs in model quality at clara-fl's defaults, against plain FedAvg in the same run.

    .venv/bin/python bench/privacy_cost.py [--mmar spleen_ct_seg|chest_xray_cls] [--rounds 3] [--local-epochs 2]

One FedAvg job per arm (no filter, then ``PercentilePrivacy``, ``SVTPrivacy`` and ``ExcludeVars`` each named
with nothing else, ExcludeVars keeping the network's first block at the site) on the same synthetic data, 2
simulated sites, then the global model's key metric at each site from cross-site validation, and the untrained
network's. The MMAR keeps its own learning rate. Results go to stdout and ``bench/results/privacy_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness.data import scratch_folder, write_site_config  # noqa: E402

MMARS: dict[str, dict[str, Any]] = {
    "spleen_ct_seg": {
        "metric": "val_mean_dice",
        "keep_at_site": "model\\.0\\.",
        "overrides": {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 100},
    },
    "chest_xray_cls": {
        "metric": "val_auc",
        "keep_at_site": "class_layers\\.",
        "overrides": {"num_workers": 0, "batch_size": 4, "num_interval_per_valid": 100},
    },
}


def site_file(work: Path, mmar: str) -> Path:
    from clara_fl.data.synthetic import make_synthetic_dataset

    if mmar == "spleen_ct_seg":
        root = make_synthetic_dataset(work / "data", cases=12, sites=2, shape=(32, 32, 32), seed=0).root
    else:
        from clara_fl.data.synthetic_classification import make_classification_dataset

        root = make_classification_dataset(work / "data", cases=36, sites=2, size=32).root
    return write_site_config(work / "clara_fl_site.json", root)


def run_arm(
    work: Path,
    mmar: str,
    sites: Path,
    privacy: str | None,
    rounds: int,
    local_epochs: int,
    *,
    dp: str | None = None,
    overrides: dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """One FedAvg job with ``privacy`` (or none) at both sites: its cross-site table (site -> model -> metrics).

    Args:
        dp: DP-SGD at the sites (``--dp`` text), or None.
        overrides: MMAR variables on top of the bench's own (e.g. the learning rate).
        name: the arm's folder under ``work``; None: the filter's name (or "none").

    Raises:
        SystemExit: the simulation failed.
    """
    from dataclasses import replace

    from clara_fl.apps.simulate import run_simulator
    from clara_fl.fl.dp_settings import parse_dp_option
    from clara_fl.fl.jobs.privacy import parse_privacy_option
    from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results
    from clara_fl.recipes.job_folder import create_job, job_settings

    name = name or (privacy.split(":")[0] if privacy else "none")
    arm = work / name
    shutil.rmtree(arm, ignore_errors=True)
    filters = [parse_privacy_option(privacy)] if privacy else None
    settings = replace(job_settings(REPO / "mmars" / mmar), dp=parse_dp_option(dp)) if dp else None
    job = create_job(
        REPO / "mmars" / mmar,
        arm / "job",
        num_rounds=rounds,
        local_epochs=local_epochs,
        min_clients=2,
        overrides={**MMARS[mmar]["overrides"], **(overrides or {})},
        settings=settings,
        privacy_filters=filters,
        say=lambda line: print(f"  {line}"),
    )
    with open(arm / "simulator.log", "w") as log:
        code = run_simulator(str(job), str(arm / "ws"), 2, 2, str(sites), stdout=log)
    results = find_cross_site_results(arm / "ws")
    if code != 0 or results is None:
        raise SystemExit(f"{name}: the simulation failed; see {arm / 'simulator.log'}")
    return load_cross_site_results(results)


def untrained(work: Path, mmar: str, sites: Path) -> dict[str, float]:
    """The server's initial network's metric at each site, validated as cross-site validation validates."""
    from clara_fl.config.mmar import load_config
    from clara_fl.fl.site.context import read_site_file
    from clara_fl.fl.site.weights import load_global_weights, network_weights
    from clara_fl.workflows.evaluate import EvaluateWorkflow
    from clara_fl.workflows.network import build_train_network

    app = str(work / "none" / "job" / "app")
    initial = network_weights(build_train_network(app, extra_environment={"SITE_NAME": "server"}))
    scores = {}
    for site in ("site-1", "site-2"):
        environment = {**read_site_file(str(sites))["environment"], "SITE_NAME": site}
        output = {"MMAR_EVAL_OUTPUT_PATH": str(work / "untrained" / site)}
        loaded = load_config(
            app, "config/config_cross_validation.json", extra_environment=environment, overrides=output
        )
        workflow = EvaluateWorkflow.build(loaded)
        load_global_weights(workflow.network, initial)
        scores[site] = float(workflow.run(progress=False)[MMARS[mmar]["metric"]])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmar", choices=sorted(MMARS), default="spleen_ct_seg")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    with scratch_folder(args.work, "clara_fl_privacy_cost_") as work:
        sites = site_file(work, args.mmar)
        metric = MMARS[args.mmar]["metric"]
        arms = [None, "PercentilePrivacy", "SVTPrivacy", f"ExcludeVars:exclude_vars={MMARS[args.mmar]['keep_at_site']}"]
        table: dict[str, dict[str, float]] = {}
        for privacy in arms:
            name = privacy.split(":")[0] if privacy else "none"
            print(f"{args.mmar}: {name}, {args.rounds} rounds x {args.local_epochs} local epochs, 2 sites")
            results = run_arm(work, args.mmar, sites, privacy, args.rounds, args.local_epochs)
            table[name] = {site: results[site]["SRV_FL_global_model.pt"][metric] for site in sorted(results)}
            print(f"  global model {metric}: {table[name]}")
        table["untrained"] = untrained(work, args.mmar, sites)
        print(f"  untrained {metric}: {table['untrained']}")
        record = {"mmar": args.mmar, "metric": metric, "rounds": args.rounds, "local_epochs": args.local_epochs}
        record["global_model"] = table
        out = REPO / "bench" / "results" / f"privacy_cost_{args.mmar}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
