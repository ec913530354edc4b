#!/usr/bin/env python
"""What robust aggregation buys against one bad site, and what it costs: every ``--aggregator`` rule on the same job.

    .venv/bin/python bench/robust_aggregation.py [--rounds 3] [--local-epochs 3] [--template clara_fedavg_cse]

The spleen MMAR on the synthetic data of the e2e tests (12 cases, 32^3, 16^3 crops, lr 1e-3), 3 rounds of 3 local
epochs by default. Arms: FedAvg on the 2 honest sites (the reference), then 3 sites of which site-3 (training on
site-1's cases) has its update scaled by -10 by a task-result filter (tests/robust_attack_filter.py), with plain
FedAvg, ``median``, ``trimmed_mean:beta=0.34`` (one value cut at each end of 3), ``krum:f=0`` and
``multikrum:f=0,m=2`` (with 3 sites Krum's precondition n > 2f+2 allows f = 0 only: the most central update is kept).
Score: the final global model's val_mean_dice on the honest sites' validation data, evaluated as cross-site
evaluation evaluates it. The default template is the ScatterAndGather one, so this exercises the ScatterAndGather
aggregator while the e2e test (tests/test_robust_aggregation_e2e.py) exercises the ModelController one. Results go to
stdout and ``bench/results/robust_aggregation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.test_robust_aggregation_e2e import (  # noqa: E402
    HONEST,
    global_model_dice,
    simulate_with_bad_site,
    three_site_data,
)

#: (arm, --aggregator, sites, whether site-3 is bad)
ARMS: tuple[tuple[str, str | None, int, bool], ...] = (
    ("FedAvg, 2 honest sites", None, 2, False),
    ("FedAvg, bad site", None, 3, True),
    ("median, bad site", "median", 3, True),
    ("trimmed_mean:beta=0.34, bad site", "trimmed_mean:beta=0.34", 3, True),
    ("krum:f=0, bad site", "krum:f=0", 3, True),
    ("multikrum:f=0,m=2, bad site", "multikrum:f=0,m=2", 3, True),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--template", default="clara_fedavg_cse")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "robust_aggregation.json"))
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="robust_bench_") as tmp:
        site_file = three_site_data(Path(tmp) / "data")
        for index, (arm, aggregator, sites, bad) in enumerate(ARMS):
            out = Path(tmp) / f"arm{index}"
            started = time.monotonic()
            server = simulate_with_bad_site(
                out,
                site_file,
                aggregator,
                sites=sites,
                bad_site="site-3" if bad else None,
                template=args.template,
                rounds=args.rounds,
                local_epochs=args.local_epochs,
            )
            dice = {s: global_model_dice(server, out / "job", site_file, s) for s in HONEST}
            wall = time.monotonic() - started
            mean = sum(dice.values()) / len(dice)
            results.append(
                {"arm": arm, "aggregator": aggregator, "sites": sites, "dice": dice, "mean": mean, "wall_s": wall}
            )
            print(f"{arm:36s} Dice {mean:.3f} ({', '.join(f'{s} {d:.3f}' for s, d in dice.items())}), {wall:.0f} s")
    record = {"rounds": args.rounds, "local_epochs": args.local_epochs, "template": args.template, "arms": results}
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
